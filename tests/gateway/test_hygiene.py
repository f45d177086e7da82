"""The gateway's manners with hostile callers: what reaches the model, request
ids, header caps, JSON for every error it makes itself, HTTP/1.1 status lines,
and a /healthz that says only that it is up."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import pytest

from tests.gateway.test_gateway import Deployed, assert_gateway_error, call, deploy, wait_until_routed

# Deploys run inline (enqueued records the tasks instead of sending them).
pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("enqueued")]


@pytest.fixture
def deployed(engine, pool, flavors, owner, demo_version) -> Deployed:
    """A Running 1-instance service of the demo image and a token of its owner."""
    return deploy(owner, demo_version)


def raw_exchange(base_url: str, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send raw bytes, read the whole answer: (status line, headers, body)."""
    url = urlsplit(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return status_line, headers, body


def test_the_model_sees_no_hop_by_hop_headers_and_no_claims_about_the_client(gateway_url, deployed):
    wait_until_routed(gateway_url, deployed)
    reply = call(
        gateway_url,
        f"/v1/infers/{deployed.id}/echo",
        method="GET",
        headers={
            "X-Auth-Token": deployed.token,
            "Connection": "keep-alive, X-Hop-Secret",
            "X-Hop-Secret": "for the next hop only",
            "Forwarded": "for=6.6.6.6",
            "X-Real-IP": "6.6.6.6",
            "X-Forwarded-Proto": "https",
            "X-Kept": "yes",
        },
    )
    assert reply.status == 200, reply.body[:300]
    seen = reply.json()["headers"]
    assert seen["x-kept"] == "yes"
    for name in ("x-hop-secret", "forwarded", "x-real-ip", "connection", "x-auth-token"):
        assert name not in seen, name
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    # The model and the caller see the same request id.
    assert seen["x-request-id"] == reply.header("X-Request-Id")
    assert len(seen["x-request-id"]) >= 8


def test_a_callers_request_id_is_kept_when_it_looks_like_one(gateway_url, deployed):
    wait_until_routed(gateway_url, deployed)
    path = f"/v1/infers/{deployed.id}/echo"
    kept = call(gateway_url, path, method="GET", headers={"X-Auth-Token": deployed.token, "X-Request-Id": "trace-0001"})
    assert kept.header("X-Request-Id") == "trace-0001" == kept.json()["headers"]["x-request-id"]
    replaced = call(gateway_url, path, method="GET", headers={"X-Auth-Token": deployed.token, "X-Request-Id": "<x>"})
    assert replaced.header("X-Request-Id") not in ("<x>", None)
    # An error carries the id in its body too.
    refused = call(gateway_url, path, method="GET", headers={"X-Request-Id": "trace-0002"})
    assert assert_gateway_error(refused, 401)["request_id"] == "trace-0002"


def test_too_many_header_bytes_is_a_431(gateway_url, deployed):
    headers = {"X-Auth-Token": deployed.token, **{f"X-Filler-{n}": "x" * 1000 for n in range(40)}}
    reply = call(gateway_url, f"/v1/infers/{deployed.id}", headers=headers, body=b"{}")
    assert_gateway_error(reply, 431)


def test_a_header_line_over_aiohttps_limit_is_a_json_431(gateway_url):
    status_line, headers, body = raw_exchange(
        gateway_url, b"GET /v1/infers/x HTTP/1.1\r\nHost: a\r\nX-Long: " + b"y" * 9000 + b"\r\n\r\n"
    )
    assert status_line.startswith("HTTP/1.1 431")
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error_code"] == "RTS.4310"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"BLAH-NOT-HTTP\r\n\r\n",
        b"GET /v1/infers/x%0d%0aSet-Cookie:%20a=b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"CONNECT example.invalid:443 HTTP/1.1\r\nHost: example.invalid:443\r\nConnection: close\r\n\r\n",
        b"GET /nowhere HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET /v1/infers/x HTTP/1.1\r\nHost: a\r\nBad Header Name: 1\r\n\r\n",
    ],
)
def test_every_error_the_gateway_makes_is_json_and_echoes_nothing(gateway_url, request_bytes):
    status_line, headers, body = raw_exchange(gateway_url, request_bytes)
    assert status_line.startswith("HTTP/1.1 4"), status_line
    assert headers["content-type"].startswith("application/json"), (status_line, body[:200])
    payload = json.loads(body)
    assert payload["error_code"].startswith("RTS.")
    assert "BLAH" not in payload["error_msg"] and "Set-Cookie" not in payload["error_msg"]
    assert "set-cookie" not in headers


def test_a_request_line_claiming_http2_gets_an_http11_answer(gateway_url):
    status_line, headers, body = raw_exchange(
        gateway_url, b"GET /healthz HTTP/2.0\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    assert status_line.startswith("HTTP/1.1 ")
    assert headers["content-type"].startswith("application/json")


def test_healthz_says_only_that_the_gateway_is_up(gateway_url):
    reply = call(gateway_url, "/healthz", method="GET")
    assert reply.status == 200
    assert reply.json() == {"status": "ok"}
    # The table's details are for the operator on this machine, not through a proxy.
    local = call(gateway_url, "/healthz/table", method="GET")
    assert local.status == 200 and "loaded_at" in local.json()
    proxied = call(gateway_url, "/healthz/table", method="GET", headers={"X-Forwarded-For": "6.6.6.6"})
    assert_gateway_error(proxied, 404)
