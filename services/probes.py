"""HTTP health probes against instances' published loopback ports."""

import http.client


def probe_health(host: str, port: int, path: str, timeout: float) -> bool:
    """True when the instance answers its health path with a 2xx status."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        response.read()
        return 200 <= response.status < 300
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()
