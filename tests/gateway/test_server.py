"""The gateway's own listening side (gateway/server.py): which requests it
answers itself, and that a connection handed to aiohttp keeps every request
and answer in order. The behaviour callers see is the rest of tests/gateway."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import pytest

from gateway.server import plain_call
from tests.gateway.test_gateway import Deployed, deploy, wait_until_routed

SERVICE = "3f2b8a1e-1111-2222-3333-444455556666"


def parsed(request: bytes, max_header_bytes: int = 16384, max_body_bytes: int = 1024):
    raw = bytearray(request)
    return plain_call(raw, raw.find(b"\r\n\r\n"), max_header_bytes, max_body_bytes)


def test_a_plain_call_is_read_with_its_path_query_headers_and_body_length():
    call = parsed(
        b"POST /v1/infers/" + SERVICE.encode() + b"/predict/x%2Fy?a=1&b=%20 HTTP/1.1\r\n"
        b"Host: gw\r\nX-Auth-Token: t\r\nX-Same: 1\r\nx-same: 2\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert call is not None
    assert (call.method, call.service_id, call.raw_path, call.query) == (
        "POST",
        SERVICE,
        f"/v1/infers/{SERVICE}/predict/x%2Fy",
        "a=1&b=%20",
    )
    assert call.headers.getall("X-Same") == ["1", "2"] and call.headers["x-auth-token"] == "t"
    assert (call.end - call.body_start, call.keep_alive) == (5, True)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"HEAD /v1/infers/%s HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"POST /v1/infers/%s HTTP/1.0\r\nHost: gw\r\nContent-Length: 0\r\n\r\n",
        b"POST /v1/infers/%s HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /v1/infers/%s HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"POST /v1/infers/%s HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
        b"POST /v1/infers/%s HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
        b"POST /v1/infers/%s HTTP/1.1\r\nHost: gw\r\nContent-Length: 2048\r\n\r\n",
        b"POST /v1/infers/%s HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"y" * 20000 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"GET http://gw/v1/infers/%s HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"GET /v1/infers/x%%0d%%0aSet-Cookie:%%20a=b HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"GET /v1/infers/%s HTTP/1.1\r\nHost: gw\r\nBad Header: 1\r\n\r\n",
        b"BLAH /v1/infers/%s HTTP/1.1\r\n\r\n",
    ],
)
def test_every_other_request_is_left_to_aiohttp(request_bytes):
    request = request_bytes % SERVICE.encode() if b"%s" in request_bytes else request_bytes.replace(b"%%", b"%")
    assert parsed(request) is None


def test_connection_close_ends_the_connection_after_the_answer():
    call = parsed(b"GET /v1/infers/" + SERVICE.encode() + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert call is not None and call.keep_alive is False


# --- Through the session's real gateway -------------------------------------------------


@pytest.fixture
def deployed(engine, pool, flavors, owner, demo_version) -> Deployed:
    return deploy(owner, demo_version)


def exchange(base_url: str, request: bytes, answers: int) -> list[tuple[str, dict[str, str], bytes]]:
    """Send bytes on one connection and read `answers` whole answers from it, in order."""
    url = urlsplit(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=20) as sock:
        sock.sendall(request)
        reader = sock.makefile("rb")
        replies = []
        for _ in range(answers):
            status_line = reader.readline().decode("latin-1").strip()
            headers: dict[str, str] = {}
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if "content-length" in headers:
                body = reader.read(int(headers["content-length"]))
            else:
                assert headers.get("transfer-encoding") == "chunked", headers
                body = b""
                while (size := int(reader.readline().split(b";")[0], 16)) != 0:
                    body += reader.read(size)
                    reader.readline()
                reader.readline()
            replies.append((status_line, headers, body))
        return replies


def echo_call(service: Deployed, request_id: str, body: bytes = b'{"n": 1}') -> bytes:
    return (
        f"POST /v1/infers/{service.id}/echo HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {service.token}\r\n"
        f"X-Request-Id: {request_id}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def chunked_echo_call(service: Deployed, request_id: str) -> bytes:
    return (
        f"POST /v1/infers/{service.id}/echo HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {service.token}\r\n"
        f"X-Request-Id: {request_id}\r\nTransfer-Encoding: chunked\r\n\r\n"
        "4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n"
    ).encode()


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("enqueued")
def test_pipelined_calls_are_answered_in_order_on_one_connection(gateway_url, deployed):
    wait_until_routed(gateway_url, deployed)
    ids = [f"pipelined-{n:04d}" for n in range(5)]
    replies = exchange(
        gateway_url, b"".join(echo_call(deployed, rid, b'{"n": %d}' % n) for n, rid in enumerate(ids)), len(ids)
    )
    assert [status for status, _, _ in replies] == ["HTTP/1.1 200 OK"] * 5
    assert [headers["x-request-id"] for _, headers, _ in replies] == ids
    assert [json.loads(body)["body_length"] for _, _, body in replies] == [8] * 5


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("enqueued")
def test_a_connection_handed_to_aiohttp_mid_way_keeps_every_request_in_order(gateway_url, deployed):
    """A plain call, then requests only aiohttp answers (a chunked body, the
    health page), then plain calls again: one connection, every answer in order."""
    wait_until_routed(gateway_url, deployed)
    request = (
        echo_call(deployed, "handover-0001")
        + chunked_echo_call(deployed, "handover-0002")
        + b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
        + echo_call(deployed, "handover-0004")
        + f"GET /v1/infers/{deployed.id}/echo HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {deployed.token}\r\n"
        f"X-Request-Id: handover-0005\r\nConnection: close\r\n\r\n".encode()
    )
    replies = exchange(gateway_url, request, 5)
    assert [status.split(" ")[1] for status, _, _ in replies] == ["200"] * 5
    assert replies[1][1]["x-request-id"] == "handover-0002"
    assert json.loads(replies[1][2])["body_length"] == 7  # the chunked body, whole
    assert json.loads(replies[2][2]) == {"status": "ok"}
    assert [replies[n][1]["x-request-id"] for n in (0, 3, 4)] == ["handover-0001", "handover-0004", "handover-0005"]
    assert json.loads(replies[4][2])["method"] == "GET"


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("enqueued")
def test_connection_close_is_answered_then_the_connection_ends(gateway_url, deployed):
    wait_until_routed(gateway_url, deployed)
    url = urlsplit(gateway_url)
    request = (
        f"GET /v1/infers/{deployed.id}/echo HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {deployed.token}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((url.hostname, url.port), timeout=20) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):  # ends only when the gateway closes
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nConnection: close" in head
    assert json.loads(body)["method"] == "GET"


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("enqueued")
def test_the_gateways_own_refusals_on_the_plain_path_are_json_with_a_date(gateway_url):
    replies = exchange(
        gateway_url,
        f"GET /v1/infers/{SERVICE} HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: nope\r\n\r\n"
        f"GET /v1/infers/{SERVICE} HTTP/1.1\r\nHost: gw\r\n\r\n".encode(),
        2,
    )
    (status1, headers1, body1), (status2, _, body2) = replies
    assert status1 == "HTTP/1.1 401 Unauthorized" and status2 == "HTTP/1.1 401 Unauthorized"
    assert headers1["content-type"] == "application/json" and headers1["date"].endswith(" GMT")
    assert json.loads(body1)["error_code"] == "RTS.4011" and json.loads(body2)["error_code"] == "RTS.4010"
