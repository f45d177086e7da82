"""WebSocket services through the real gateway, in front of a real demo-model
container (which speaks WebSocket on /predict): same credentials as HTTP,
messages both ways until either side closes, and each kind of service only
over its own protocol."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from access.actions import access_token_create
from services.actions import service_create
from services.lifecycle import service_deploy_run
from services.models import Service
from services.validation import parse_deploy_request
from tests.conftest import containers_of
from tests.factories import deploy_data, make_version
from tests.waiting import eventually

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _no_queue(enqueued):
    """Deploys run inline here; nothing is left queued for a worker."""


def deployed(owner, *, websocket: bool, name: str) -> tuple[Service, str]:
    version = make_version(owner, version="3.0.0" if websocket else "1.0.0", is_websocket=websocket)
    data = deploy_data(version, name=name, websocket=websocket)
    service = service_create(owner=owner, request=parse_deploy_request(owner=owner, data=data))
    assert service_deploy_run(service_id=service.id) == "running"
    return Service.objects.get(id=service.id), access_token_create(owner=owner, name=name, days=1).secret


def ws_url(gateway_url: str, service: Service) -> str:
    return gateway_url.replace("http://", "ws://") + f"/v1/infers/{service.id}"


async def until_routed(gateway_url: str, service: Service, token: str) -> None:
    """The first handshake may come before the table has the service."""
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.ws_connect(ws_url(gateway_url, service), headers={"X-Auth-Token": token}):
                    return
            except aiohttp.WSServerHandshakeError:
                await asyncio.sleep(0.05)
    raise AssertionError("the gateway never routed the WebSocket service")


def test_messages_go_both_ways_until_the_caller_closes(gateway_url, engine, owner, pool, flavors, docker_client):
    service, token = deployed(owner, websocket=True, name="ws-svc")

    async def session_with_the_model() -> list:
        await until_routed(gateway_url, service, token)
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(
                ws_url(gateway_url, service), headers={"Authorization": f"Bearer {token}"}
            ) as ws:
                await ws.send_str(json.dumps({"numbers": [1, 2, 3.5]}))
                first = json.loads(await ws.receive_str(timeout=10))
                await ws.send_bytes(b"\x00\x01" * 40_000)
                second = json.loads(await ws.receive_str(timeout=10))
                await ws.send_str(json.dumps([10, 20]))
                third = json.loads(await ws.receive_str(timeout=10))
                await ws.close()
                return [first, second, third, ws.close_code]

    first, second, third, close_code = asyncio.run(session_with_the_model())

    assert first == {"version": "1.0.0", "prediction": 6.5, "numbers": 3}
    assert second["bytes"] == 80_000
    assert third["prediction"] == 30
    assert close_code == 1000
    # The caller's close reached the model: it logged the session's end.
    [container] = containers_of(docker_client, service.id)
    eventually(
        lambda: b"closed after 3 message(s)" in container.logs(),
        timeout=10,
        message="the model never saw the WebSocket close",
    )


def test_the_caller_sees_the_close_when_the_model_goes_away(gateway_url, engine, owner, pool, flavors, docker_client):
    service, token = deployed(owner, websocket=True, name="ws-gone")

    async def session_while_the_model_dies() -> aiohttp.WSMsgType:
        await until_routed(gateway_url, service, token)
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(ws_url(gateway_url, service), headers={"X-Auth-Token": token}) as ws:
                await ws.send_str("[1]")
                await ws.receive_str(timeout=10)
                await asyncio.to_thread(lambda: containers_of(docker_client, service.id)[0].kill())
                message = await ws.receive(timeout=10)
                return message.type

    assert asyncio.run(session_while_the_model_dies()) in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


def test_websocket_needs_the_same_credentials(gateway_url, engine, owner, pool, flavors):
    service, token = deployed(owner, websocket=True, name="ws-auth")

    async def handshake(headers: dict) -> int:
        await until_routed(gateway_url, service, token)
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(ws_url(gateway_url, service), headers=headers):
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    assert asyncio.run(handshake({})) == 401
    assert asyncio.run(handshake({"X-Auth-Token": "rts_not-a-token"})) == 401
    assert asyncio.run(handshake({"X-Auth-Token": token})) == 101


def test_each_kind_of_service_only_over_its_own_protocol(gateway_url, engine, owner, pool, flavors):
    ws_service, token = deployed(owner, websocket=True, name="ws-only")
    http_service, _ = deployed(owner, websocket=False, name="http-only")

    async def attempts() -> tuple[int, dict, int, dict]:
        await until_routed(gateway_url, ws_service, token)
        async with aiohttp.ClientSession() as session:
            headers = {"X-Auth-Token": token}
            async with session.post(
                gateway_url + f"/v1/infers/{ws_service.id}", json={"x": 1}, headers=headers
            ) as over_http:
                http_answer = (over_http.status, await over_http.json())
            for _ in range(100):
                try:
                    async with session.ws_connect(ws_url(gateway_url, http_service), headers=headers):
                        raise AssertionError("an HTTP service accepted a WebSocket")
                except aiohttp.WSServerHandshakeError as exc:
                    if exc.status != 404:  # not routed yet
                        ws_status = exc.status
                        break
                await asyncio.sleep(0.05)
            async with session.get(
                gateway_url + f"/v1/infers/{http_service.id}",
                headers={
                    **headers,
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Sec-WebSocket-Key": "x",
                    "Sec-WebSocket-Version": "13",
                },
            ) as refused:
                refused_body = await refused.json()
        return http_answer[0], http_answer[1], ws_status, refused_body

    http_status, http_body, ws_status, refused_body = asyncio.run(attempts())

    assert http_status == 426
    assert http_body["error_code"] == "RTS.4260"
    assert "connect with WebSocket" in http_body["error_msg"]
    assert ws_status == 400
    assert refused_body["error_code"] == "RTS.4003"
