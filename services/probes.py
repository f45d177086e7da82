"""HTTP health probes against instances' published loopback ports."""

import http.client


def probe_health_detail(host: str, port: int, path: str, timeout: float) -> tuple[bool, str]:
    """(whether the instance answers its health path with a 2xx status, what the probe got)."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        response.read()
        return 200 <= response.status < 300, f"answered {response.status} {response.reason}".strip()
    except ConnectionRefusedError:
        return False, "connection refused"
    except ConnectionResetError:
        # What a published port answers while nothing listens in the container yet.
        return False, "connection reset"
    except TimeoutError:
        return False, f"no answer within {timeout:g} s"
    except (OSError, http.client.HTTPException) as exc:
        return False, f"{type(exc).__name__}: {exc}"[:150]
    finally:
        connection.close()


def probe_health(host: str, port: int, path: str, timeout: float) -> bool:
    """True when the instance answers its health path with a 2xx status."""
    return probe_health_detail(host, port, path, timeout)[0]
