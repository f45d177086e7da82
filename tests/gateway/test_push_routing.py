"""Changes reach the gateway by push, and a service is Running only once routed.

A gateway with the timed full reload off (tests/gateway/conftest.py) in front
of a real demo container, on the test database; services move through the
real service_deploy_run. The pure patching of the table is tested at the end.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
import uuid
from urllib.parse import urlsplit

import psycopg
import pytest
from django.db import connection, connections

from access.actions import access_token_create, access_token_revoke, app_code_create, app_code_revoke
from access.models import AccessToken
from gateway.keeper import SEND_PROBE, parse_batch
from gateway.routing import RoutingTable, ServiceRoute, build_table
from services.choices import ServiceStatus
from services.contract import RoutingNotice
from services.lifecycle import service_deploy_run
from services.models import Instance, Service, ServiceEvent
from services.routing_sync import routing_sync
from services.transitions import service_transition
from tests.conftest import free_port
from tests.factories import create_service
from tests.gateway.conftest import gateway_health
from tests.waiting import eventually

HOST = "127.0.0.1"
SVC_A = "0d6f3c1e-0000-4000-8000-00000000000a"
SVC_B = "0d6f3c1e-0000-4000-8000-00000000000b"
# How soon a pushed change must be in the gateway's table: far below any timer
# the gateway has (its timed full reload is an hour here).
PUSH_BOUND_SECONDS = 1.0


class Caller:
    """One keep-alive connection to the gateway, as a client in a hurry would hold."""

    def __init__(self, base_url: str) -> None:
        url = urlsplit(base_url)
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)

    def call(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        self.conn.request("GET", path, headers=headers)
        response = self.conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.conn.close()


def time_until_refused(caller: Caller, path: str, headers: dict[str, str], status: int) -> float:
    started = time.monotonic()
    eventually(lambda: caller.call(path, headers)[0] == status, timeout=5, interval=0.005)
    return time.monotonic() - started


@pytest.fixture
def running(engine, pool, flavors, owner, demo_version, enqueued) -> tuple[Service, str]:
    """A Running 1-instance demo service (deployed inline) and its owner's token."""
    service = create_service(owner, demo_version, name="svc-push")
    assert service_deploy_run(service_id=service.id) == "running"
    return Service.objects.get(id=service.id), access_token_create(owner=owner, name="push", days=1).secret


# --- Running only once routed --------------------------------------------------------------


def test_a_service_answers_as_soon_as_it_reads_running_over_50_deploys(push_url, running):
    """The status is read in a tight loop and the call made at once: a 503
    "is Deploying" would mean the status ran ahead of the gateway."""
    service, token = running
    path = f"/v1/infers/{service.id}/health"
    headers = {"X-Auth-Token": token}
    caller = Caller(push_url)
    eventually(lambda: caller.call(path, headers)[0] == 200, timeout=5, interval=0.01)
    failures = []
    try:
        for attempt in range(50):
            # Back to Deploying with the container still up: each deploy marks
            # the instance unhealthy, probes it, syncs, then says Running.
            for status in (ServiceStatus.STOPPING, ServiceStatus.STOPPED, ServiceStatus.DEPLOYING):
                assert service_transition(service.id, to=status)
            results: list[str] = []

            def deploy(results: list[str] = results) -> None:
                try:
                    results.append(service_deploy_run(service_id=service.id))
                finally:
                    connections.close_all()

            thread = threading.Thread(target=deploy)
            thread.start()
            deadline = time.monotonic() + 20
            while Service.objects.filter(id=service.id).values_list("status", flat=True).get() != "running":
                assert time.monotonic() < deadline, "the deploy never reached Running"
            status, body = caller.call(path, headers)
            if status != 200:
                failures.append((attempt, status, body[:200]))
            thread.join(timeout=20)
            assert results == ["running"]
    finally:
        caller.close()
    assert failures == []
    assert not ServiceEvent.objects.filter(service=service, level=ServiceEvent.Level.WARNING).exists()


def test_a_deploying_service_with_no_healthy_instance_still_answers_503_deploying(push_url, running):
    service, token = running
    caller = Caller(push_url)
    path = f"/v1/infers/{service.id}/health"
    headers = {"X-Auth-Token": token}
    try:
        eventually(lambda: caller.call(path, headers)[0] == 200, timeout=5, interval=0.01)
        for status in (ServiceStatus.STOPPING, ServiceStatus.STOPPED, ServiceStatus.DEPLOYING):
            assert service_transition(service.id, to=status)
        Instance.objects.filter(service=service).update(is_healthy=False)
        # The pushes of Stopping and Stopped answer 503 too: wait for the last one.
        deploying = f"Service {service.id} is Deploying, not Running.".encode()
        eventually(
            lambda: (lambda answer: answer[0] == 503 and deploying in answer[1])(caller.call(path, headers)),
            timeout=5,
            interval=0.005,
            message="the gateway never answered 503 Deploying",
        )
        # One healthy instance is enough to route a Deploying service.
        Instance.objects.filter(service=service).update(is_healthy=True)
        time_until_refused(caller, path, headers, 200)
    finally:
        caller.close()


# --- Push, not poll ----------------------------------------------------------------------------


def test_changes_reach_the_gateway_without_a_timed_reload(push_url, running):
    service, token = running
    app_code = app_code_create(service=service)
    caller = Caller(push_url)
    path = f"/v1/infers/{service.id}/health"
    with_token = {"X-Auth-Token": token}
    with_code = {"X-Apig-AppCode": app_code.secret}
    try:
        eventually(lambda: caller.call(path, with_code)[0] == 200, timeout=5, interval=0.01)
        assert caller.call(path, with_token)[0] == 200
        reloads = gateway_health(push_url)["full_reloads"]

        assert access_token_revoke(token=AccessToken.objects.get(owner=service.owner, name="push"))
        assert time_until_refused(caller, path, with_token, 401) < PUSH_BOUND_SECONDS
        assert app_code_revoke(code=app_code.record)
        assert time_until_refused(caller, path, with_code, 401) < PUSH_BOUND_SECONDS

        token = access_token_create(owner=service.owner, name="again", days=1).secret
        assert time_until_refused(caller, path, {"X-Auth-Token": token}, 200) < PUSH_BOUND_SECONDS
        type(service.owner).objects.filter(id=service.owner_id).update(is_active=False)
        assert time_until_refused(caller, path, {"X-Auth-Token": token}, 401) < PUSH_BOUND_SECONDS
        type(service.owner).objects.filter(id=service.owner_id).update(is_active=True)
        assert time_until_refused(caller, path, {"X-Auth-Token": token}, 200) < PUSH_BOUND_SECONDS

        closed_port = free_port()
        Instance.objects.filter(service=service).update(host_port=closed_port)
        assert time_until_refused(caller, path, {"X-Auth-Token": token}, 502) < PUSH_BOUND_SECONDS

        assert service_transition(service.id, to=ServiceStatus.STOPPING)
        assert time_until_refused(caller, path, {"X-Auth-Token": token}, 503) < PUSH_BOUND_SECONDS
        assert b"is Stopping, not Running" in caller.call(path, {"X-Auth-Token": token})[1]
        # Everything above was patched in: not one full reload happened.
        assert gateway_health(push_url)["full_reloads"] == reloads
    finally:
        caller.close()


def test_healthz_loaded_at_covers_a_commit_made_before_it_was_asked(push_url, owner):
    before = time.time()
    eventually(lambda: gateway_health(push_url)["loaded_at"] > before, timeout=5, interval=0.02)


# --- routing_sync ------------------------------------------------------------------------------


def test_routing_sync_waits_for_every_live_gateway_of_this_database(push_url):
    gateway_id = gateway_health(push_url)["gateway_id"]
    result = routing_sync(timeout=5)
    assert gateway_id in result.gateways
    assert result.is_complete
    assert result.seconds < 1.0


def test_routing_sync_gives_up_on_a_wedged_gateway_and_says_so(push_url, running):
    service, _ = running
    db = connection.settings_dict
    # Listens and looks live, but never answers.
    with psycopg.connect(
        dbname=db["NAME"], user=db["USER"], host=db["HOST"], port=db["PORT"], autocommit=True
    ) as wedged:
        wedged.execute(f"LISTEN {RoutingNotice.CHANNEL}")
        wedged.execute("SELECT set_config('application_name', %s, false)", (RoutingNotice.application_name("wedged"),))
        started = time.monotonic()
        result = routing_sync(service_id=service.id, timeout=0.5)
        elapsed = time.monotonic() - started
    assert result.missing == {"wedged"}
    assert gateway_health(push_url)["gateway_id"] in result.gateways - result.missing
    assert 0.5 <= elapsed < 2.0
    warning = ServiceEvent.objects.get(service=service, level=ServiceEvent.Level.WARNING)
    assert "did not confirm" in warning.message


# --- Patching the table in place (pure) ----------------------------------------------------------


def rows(service_id: str, status: str, *instances: tuple[int, int, int | None], owner: int = 1) -> list[tuple]:
    return [(service_id, owner, status, config, weight, "/predict", port) for config, weight, port in instances]


def test_patch_services_replaces_one_service_and_keeps_round_robin_positions():
    table = build_table(
        rows(SVC_A, "running", (10, 100, 30001), (10, 100, 30002), (10, 100, 30003))
        + rows(SVC_B, "running", (20, 100, 30009)),
        [],
        [],
        HOST,
    )
    held: ServiceRoute = table.services[SVC_A]
    version = held.versions[0]
    assert [version.pick_upstream(set())[1] for _ in range(2)] == [30001, 30002]
    untouched = table.services[SVC_B]

    # An instance turns unhealthy (30002 leaves), another joins (30004).
    table.patch_services([SVC_A], rows(SVC_A, "running", (10, 100, 30004), (10, 100, 30001), (10, 100, 30003)), HOST)
    patched = table.services[SVC_A]
    assert patched is not held, "a call holding the old route must not see it change"
    assert held.versions[0].upstreams == [(HOST, 30001), (HOST, 30002), (HOST, 30003)]
    assert patched.versions[0].upstreams == [(HOST, 30001), (HOST, 30003), (HOST, 30004)]
    # The position carries on (2 picks made), over the new list of instances.
    assert [patched.versions[0].pick_upstream(set())[1] for _ in range(3)] == [30004, 30001, 30003]
    assert table.services[SVC_B] is untouched

    # Named but without rows: the service is gone. Not named: left alone.
    table.patch_services([SVC_A], [], HOST)
    assert set(table.services) == {SVC_B}


def test_patch_services_status_decides_routability():
    table = RoutingTable()
    table.patch_services([SVC_A], rows(SVC_A, "deploying", (10, 100, None)), HOST)
    assert not table.services[SVC_A].is_routable
    table.patch_services([SVC_A], rows(SVC_A, "deploying", (10, 100, 30001)), HOST)
    assert table.services[SVC_A].is_routable
    for status, routable in (("running", True), ("alarm", True), ("stopping", False), ("abnormal", False)):
        table.patch_services([SVC_A], rows(SVC_A, status, (10, 100, 30001)), HOST)
        assert table.services[SVC_A].is_routable is routable, status


def test_patch_tokens_and_app_codes():
    table = build_table([], [("h1", 1, 2e9), ("h2", 1, 2e9), ("h3", 2, 2e9)], [("c1", SVC_A), ("c2", SVC_B)], HOST)
    # A revoked token, a new one, and one named whose row is gone (deleted).
    table.patch_tokens(["h1", "h4", "h2"], [("h1", 1, 2e9, False), ("h4", 3, 2e9, True)])
    assert table.tokens == {"h3": (2, 2e9), "h4": (3, 2e9)}
    # A user's tokens re-read by owner: every row says what to keep.
    table.patch_tokens((), [("h3", 2, 2e9, False)])
    assert table.tokens == {"h4": (3, 2e9)}
    table.patch_app_codes(["c1", "c3"], [("c1", SVC_A, False), ("c3", uuid.UUID(SVC_B), True)])
    assert table.app_codes == {"c2": SVC_B, "c3": SVC_B}


def test_a_burst_of_notifications_is_coalesced():
    gateway_id = "g1"
    payloads = [f"s:{SVC_A}", f"s:{SVC_B}", f"s:{SVC_A}", "t:h1", "t:h1", "u:7", "c:c1", "v:3", "y:tok", "h:g1 12.5"]
    changes = parse_batch([*payloads, "h:g2 99", SEND_PROBE], gateway_id)
    assert changes.services == {SVC_A, SVC_B}
    assert (changes.tokens, changes.users, changes.app_codes, changes.app_versions) == ({"h1"}, {7}, {"c1"}, {3})
    assert changes.syncs == ["tok"] and changes.probes == [12.5] and changes.send_probe
    assert not changes.reload_all
    assert parse_batch(["*"], gateway_id).reload_all
    with pytest.raises(ConnectionError):
        parse_batch(["s:x", ConnectionError("lost")], gateway_id)


def test_patching_keeps_weighted_choice_working():
    table = RoutingTable()
    table.patch_services([SVC_A], rows(SVC_A, "running", (10, 70, 30001), (11, 30, 30002)), HOST)
    rng = random.Random(3)
    picks = [table.services[SVC_A].pick_version(rng).config_id for _ in range(2000)]
    assert abs(picks.count(10) / 2000 - 0.7) < 0.05
