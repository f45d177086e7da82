"""The traffic limit through a real two-process gateway in front of a real demo
container: at most N calls a second pass, over both processes together; the
rest get 429 with Retry-After and are counted as limited calls."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import pytest
from django.conf import settings
from django.db.models import Sum

from access.actions import access_token_create
from services.lifecycle import service_deploy_run
from services.models import Service, ServiceCallStat
from tests.conftest import start_gateway, stop_gateway
from tests.factories import create_service
from tests.waiting import eventually

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]

LIMIT = 8


@pytest.fixture
def two_process_gateway(django_db_setup):
    process, url = start_gateway(processes=2)
    yield url
    stop_gateway(process)


async def call_for(url: str, headers: dict, seconds: float, workers: int) -> list[tuple[float, int, dict]]:
    """Calls from `workers` clients on fresh connections (so both processes get
    some) for `seconds`; (time, status, headers) of each."""
    results: list[tuple[float, int, dict]] = []
    deadline = time.time() + seconds

    async def worker() -> None:
        while time.time() < deadline:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
                async with session.post(url, json={"x": [1, 2]}, headers=headers) as response:
                    body = await response.json()
                    results.append((time.time(), response.status, {**response.headers, "body": body}))

    await asyncio.gather(*(worker() for _ in range(workers)))
    return results


def test_at_most_the_limit_passes_each_second_across_two_processes(
    two_process_gateway, engine, owner, pool, flavors, demo_version, enqueued
):
    service = create_service(owner, demo_version, name="limited")
    assert service_deploy_run(service_id=service.id) == "running"
    token = access_token_create(owner=owner, name="limit", days=1).secret
    Service.objects.filter(id=service.id).update(traffic_limit=LIMIT)
    url = f"{two_process_gateway}/v1/infers/{service.id}"
    headers = {"X-Auth-Token": token}

    # Both processes know the limit once a burst gets 429s from the start.
    def limited_now() -> bool:
        burst = asyncio.run(call_for(url, headers, 0.3, 4))
        return any(status == 429 for _, status, _ in burst)

    eventually(limited_now, timeout=10, interval=0.2, message="the gateway never applied the limit")
    time.sleep(1.0 - time.time() % 1.0)  # start on a second's boundary

    results = asyncio.run(call_for(url, headers, 3.0, 6))

    passed_per_second = Counter(int(at) for at, status, _ in results if status == 200)
    refused = [extra for _, status, extra in results if status == 429]
    assert all(status in (200, 429) for _, status, _ in results)
    assert len(results) > 4 * LIMIT * 3  # far more offered than allowed
    # Each second's window lets through at most LIMIT, whichever process took the call.
    assert max(passed_per_second.values()) <= LIMIT
    assert sum(passed_per_second.values()) >= 2 * LIMIT
    assert refused and all(extra["Retry-After"] == "1" for extra in refused)
    assert refused[0]["body"]["error_code"] == "RTS.4291"
    assert f"at most {LIMIT} calls per second" in refused[0]["body"]["error_msg"]
    # The refused calls are counted (the gateway flushes once a second).
    eventually(
        lambda: (ServiceCallStat.objects.filter(service=service).aggregate(n=Sum("limited"))["n"] or 0) >= len(refused),
        timeout=10,
        message="the limited calls were not counted",
    )


def test_without_redis_calls_go_unlimited_rather_than_fail():
    from gateway.limits import TrafficLimiter
    from tests.conftest import free_port

    async def ask() -> list[float]:
        limiter = TrafficLimiter(f"redis://127.0.0.1:{free_port()}/0")
        try:
            return [await limiter.wait_seconds("svc", 1) for _ in range(5)]
        finally:
            await limiter.close()

    assert asyncio.run(ask()) == [0.0] * 5


def test_the_limit_counts_per_second_window():
    from gateway.limits import TrafficLimiter

    async def ask() -> list[float]:
        limiter = TrafficLimiter(settings.REDIS_URL)
        service = f"unit-{time.time_ns()}"
        try:
            first = [await limiter.wait_seconds(service, 2, now=1000.25) for _ in range(3)]
            next_second = await limiter.wait_seconds(service, 2, now=1001.0)
            return [*first, next_second]
        finally:
            await limiter.close()

    assert asyncio.run(ask()) == [0.0, 0.0, 0.75, 0.0]
