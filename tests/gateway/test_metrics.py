"""The gateway's /metrics: calls by service and status class, latencies,
upstream errors and the routing table, added up across gateway processes."""

from __future__ import annotations

import re
import time

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gateway.metrics import CallTally, histogram_add
from tests.conftest import start_gateway, stop_gateway, wait_for_gateway_reload
from tests.gateway.test_gateway import Deployed, call, deploy, wait_until_routed

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("enqueued")]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus' text format (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and ",".join(sorted((match.group(1) or "").split(","))) == (wanted if wanted else ""):
            return float(match.group(2))
    return 0.0


@pytest.fixture(scope="module")
def two_process_gateway(django_db_setup):
    process, url = start_gateway(processes=2)
    yield url
    stop_gateway(process)


@pytest.fixture
def deployed(engine, pool, flavors, owner, demo_version) -> Deployed:
    return deploy(owner, demo_version)


def scrape(url: str) -> str:
    reply = call(url, "/metrics", method="GET")
    assert reply.status == 200
    return reply.body.decode()


def test_calls_are_counted_across_every_gateway_process(two_process_gateway, deployed):
    url = two_process_gateway
    wait_until_routed(url, deployed)
    time.sleep(1.5)  # the calls of wait_until_routed reach the metrics within a second
    before = scrape(url)
    ok_before = metric(before, "rts_gateway_calls_total", service=deployed.id, status_class="2xx")
    refused_before = metric(before, "rts_gateway_calls_total", service="-", status_class="4xx")

    for _ in range(30):  # fresh connections: the kernel spreads them over both processes
        assert (
            call(url, f"/v1/infers/{deployed.id}/echo", method="GET", headers={"X-Auth-Token": deployed.token}).status
            == 200
        )
    for _ in range(5):
        assert call(url, f"/v1/infers/{deployed.id}/echo", method="GET").status == 401

    # Each process adds its calls to the shared metrics once a second.
    deadline = time.monotonic() + 5
    while True:
        after = scrape(url)
        ok = metric(after, "rts_gateway_calls_total", service=deployed.id, status_class="2xx") - ok_before
        refused = metric(after, "rts_gateway_calls_total", service="-", status_class="4xx") - refused_before
        if (ok, refused) == (30, 5) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert (ok, refused) == (30, 5)
    assert metric(after, "rts_gateway_call_seconds_count") >= 35
    assert metric(after, "rts_gateway_table_services") >= 1
    assert metric(after, "rts_gateway_table_loaded_at_seconds") > 0


def test_metrics_are_only_for_the_gateways_own_machine(gateway_url):
    wait_for_gateway_reload(gateway_url)
    assert call(gateway_url, "/metrics", method="GET").status == 200
    proxied = call(gateway_url, "/metrics", method="GET", headers={"X-Forwarded-For": "203.0.113.9"})
    assert proxied.status == 404


def test_a_histogram_added_in_bulk_reads_as_the_same_observations_one_by_one():
    amounts = [0.0004, 0.003, 0.003, 0.049, 0.05, 0.7, 12.0, 1e9]
    bounds = [0.001, 0.01, 0.05, 1.0, 30.0]
    one_by_one_registry, bulk_registry = CollectorRegistry(), CollectorRegistry()
    one_by_one = Histogram("latency_seconds", "x", buckets=bounds, registry=one_by_one_registry)
    bulk = Histogram("latency_seconds", "x", buckets=bounds, registry=bulk_registry)
    for amount in amounts:
        one_by_one.observe(amount)
    tally = CallTally()
    tally.bounds = [*bounds, float("inf")]
    tally.bucket_counts = [0] * len(tally.bounds)
    for amount in amounts:
        tally.count("svc", 200, amount)
    histogram_add(bulk, tally.bucket_counts, tally.seconds_sum)

    def samples(registry: CollectorRegistry) -> list[str]:
        return [
            line
            for line in generate_latest(registry).decode().splitlines()
            if not line.startswith(("#", "latency_seconds_created"))
        ]

    assert samples(bulk) == samples(one_by_one)
    assert 'latency_seconds_bucket{le="0.01"} 3.0' in samples(bulk)
    assert tally.calls == {("svc", 2): len(amounts)}
