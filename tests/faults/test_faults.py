"""The fault suite: each fault driven against the whole stack (tests/faults/conftest.py),
with a client calling through the gateway while it happens, and one row of the
table `make faults` prints: time to recover, calls sent and failed, requests lost.

The goals are those of issue 9's table. Times are measured from the moment the
broken part is back (a worker restarted and ready), or from the fault itself
when nothing needs restarting.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connections
from django.test import Client

from access.actions import access_token_create
from services.actions import service_delete, service_stop
from services.choices import ServiceStatus
from services.models import AIApplicationVersion, Instance, Service
from tests.conftest import ROOT, containers_of
from tests.factories import create_service, make_user, make_version
from tests.faults.conftest import CallLoop, FaultRow, Stack
from tests.waiting import eventually

pytestmark = [pytest.mark.faults, pytest.mark.docker]


@dataclass
class Tenant:
    user: object
    version: AIApplicationVersion
    token: str


@pytest.fixture
def tenant(live_stack, pool, flavors) -> Tenant:
    user = make_user("faults-owner")
    return Tenant(user, make_version(user), access_token_create(owner=user, name="faults", days=1).secret)


def reached(service_id, status: str | None, timeout: float = 60) -> float:
    """Wait until the service has `status` (None: until its row is gone); return when."""

    def there() -> bool:
        found = Service.objects.filter(id=service_id).values_list("status", flat=True).first()
        return found == status

    eventually(there, timeout=timeout, interval=0.02, message=f"service {service_id} never reached {status}")
    return time.monotonic()


def deployed(tenant: Tenant, name: str, instances: int = 2, **overrides) -> Service:
    service = create_service(tenant.user, tenant.version, name=name, instance_count=instances, **overrides)
    reached(service.id, ServiceStatus.RUNNING)
    return service


def infer_path(service: Service) -> str:
    return f"/v1/infers/{service.id}/predict"


def all_instances_serving(service: Service, docker_client, count: int) -> bool:
    containers = containers_of(docker_client, service.id)
    return (
        len(containers) == count
        and all(container.status == "running" for container in containers)
        and Service.objects.filter(id=service.id, status=ServiceStatus.RUNNING).exists()
        and Instance.objects.filter(service=service, is_healthy=True).count() == count
    )


def started_at(docker_client, service: Service) -> dict[str, str]:
    return {c.name: c.attrs["State"]["StartedAt"] for c in containers_of(docker_client, service.id)}


def wait_until_restarted(docker_client, service: Service, before: dict[str, str]) -> None:
    """Until a killed instance runs again (its start time moved) and the service is Running with 2/2."""
    eventually(
        lambda: started_at(docker_client, service) != before and all_instances_serving(service, docker_client, 2),
        timeout=30,
        interval=0.05,
        message="the killed instance did not come back",
    )


# --- A model container killed -------------------------------------------------------------


def test_a_killed_model_container_is_back_and_no_call_fails(live_stack: Stack, tenant, docker_client, fault_table):
    service = deployed(tenant, "f-container")
    before = started_at(docker_client, service)
    with CallLoop(live_stack.gateway_url, infer_path(service), tenant.token) as calls:
        calls.wait_for_success()
        time.sleep(0.5)
        killed_at = time.monotonic()
        containers_of(docker_client, service.id)[0].kill()
        wait_until_restarted(docker_client, service, before)
        recovered = time.monotonic() - killed_at
        time.sleep(0.5)
    row = FaultRow(
        "model container killed",
        "0 failed calls; Running with 2/2 instances",
        f"{recovered:.1f} s",
        calls.sent,
        len(calls.failed),
        None,
    )
    fault_table.append(row)
    assert calls.failed == []
    row.passed = True


# --- The Docker engine restarted -------------------------------------------------------------


def dockerd_pids() -> list[int]:
    """The live dockerd of the local engine (not the tests' second engine, which has a socket of its own)."""
    found = subprocess.run(["pgrep", "-x", "-r", "R,S,D", "dockerd"], capture_output=True, text=True).stdout
    socket = settings.DOCKER_HOST.removeprefix("unix://")
    pids = []
    for pid in found.split():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if socket in argv:
            pids.append(int(pid))
    return pids


def test_an_engine_restart_fails_no_call_and_keeps_every_container(live_stack, tenant, docker_client, fault_table):
    service = deployed(tenant, "f-engine")
    before = {c.id for c in containers_of(docker_client, service.id)}
    [dockerd] = dockerd_pids()
    with CallLoop(live_stack.gateway_url, infer_path(service), tenant.token) as calls:
        calls.wait_for_success()
        time.sleep(0.5)
        stopped_at = time.monotonic()
        os.kill(dockerd, signal.SIGTERM)
        eventually(lambda: not dockerd_pids(), timeout=30, interval=0.05, message="dockerd did not stop")
        time.sleep(1)  # the engine stays down a moment, as a crash loop or an upgrade would leave it
        subprocess.run([str(ROOT / "scripts/bootstrap.sh"), "docker"], check=True, capture_output=True)
        eventually(
            lambda: all_instances_serving(service, docker_client, 2),
            timeout=30,
            interval=0.05,
            message="the service did not return to Running",
            ignoring=(Exception,),
        )
        recovered = time.monotonic() - stopped_at
        time.sleep(1)
    after = {c.id for c in containers_of(docker_client, service.id)}
    row = FaultRow(
        "engine restarted (down 1 s)",
        "0 failed calls; containers outlive it",
        f"{recovered:.1f} s",
        calls.sent,
        len(calls.failed),
        None,
    )
    fault_table.append(row)
    assert calls.failed == []
    assert after == before, "the containers were replaced, not kept"
    row.passed = True


# --- The lifecycle worker SIGKILLed mid-deploy and mid-delete ----------------------------------


def holds_lease(service_id, status: str) -> bool:
    return Service.objects.filter(id=service_id, status=status, lease_token__isnull=False).exists()


def test_a_worker_killed_mid_deploy_is_running_soon_after_a_worker_is_back(
    live_stack, tenant, docker_client, fault_table
):
    # The model takes a moment to load: the deploy is on the worker, its containers starting.
    service = create_service(
        tenant.user, tenant.version, name="f-mid-deploy", instance_count=2, envs={"STARTUP_DELAY_SECONDS": "0.6"}
    )
    eventually(lambda: holds_lease(service.id, ServiceStatus.DEPLOYING), timeout=30, interval=0.005)
    log_offset = live_stack.crash("worker")
    assert Service.objects.get(id=service.id).status == ServiceStatus.DEPLOYING
    back_at = live_stack.wait_ready("worker", log_offset)
    running_at = reached(service.id, ServiceStatus.RUNNING)
    recovered = running_at - back_at
    lost = Service.objects.filter(id=service.id).exclude(status=ServiceStatus.RUNNING).count()
    row = FaultRow(
        "lifecycle worker SIGKILLed mid-deploy",
        "Running ≤ 5 s after a worker is back; no duplicate",
        f"{max(recovered, 0):.1f} s after the worker is back",
        None,
        None,
        lost,
    )
    fault_table.append(row)
    assert len(containers_of(docker_client, service.id)) == 2
    assert recovered <= 5
    row.passed = True


def delete_held_or_done(service: Service) -> bool:
    return holds_lease(service.id, ServiceStatus.DELETING) or not Service.objects.filter(id=service.id).exists()


def test_a_worker_killed_mid_delete_finishes_the_delete_once_a_worker_is_back(
    live_stack, tenant, docker_client, fault_table
):
    # Killing "mid-delete" needs the worker caught holding the delete: a delete
    # takes a fraction of a second, so a few attempts are allowed.
    for attempt in range(5):
        service = deployed(tenant, f"f-mid-delete-{attempt}", instances=3)
        service_delete(service=Service.objects.get(id=service.id))
        eventually(lambda service=service: delete_held_or_done(service), timeout=30, interval=0.002)
        log_offset = live_stack.crash("worker")
        caught = Service.objects.filter(id=service.id).exists()
        back_at = live_stack.wait_ready("worker", log_offset)
        gone_at = reached(service.id, None)
        if caught:
            break
    assert caught, "the worker finished every delete before it could be killed"
    recovered = gone_at - back_at
    row = FaultRow(
        "lifecycle worker SIGKILLed mid-delete",
        "deleted ≤ 5 s after a worker is back; no container left",
        f"{max(recovered, 0):.1f} s after the worker is back",
        None,
        None,
        0,
    )
    fault_table.append(row)
    assert containers_of(docker_client, service.id) == []
    assert recovered <= 5
    row.passed = True


# --- The reconciler killed -----------------------------------------------------------------


def test_a_killed_reconciler_repairs_what_broke_meanwhile_once_it_is_back(
    live_stack, tenant, docker_client, fault_table
):
    service = deployed(tenant, "f-reconciler")
    before = started_at(docker_client, service)
    with CallLoop(live_stack.gateway_url, infer_path(service), tenant.token) as calls:
        calls.wait_for_success()
        log_offset = live_stack.crash("reconciler")
        containers_of(docker_client, service.id)[0].kill()  # and nothing repairs it until it is back
        back_at = live_stack.wait_ready("reconciler", log_offset)
        wait_until_restarted(docker_client, service, before)
        recovered = time.monotonic() - back_at
        time.sleep(0.5)
    row = FaultRow(
        "reconciler SIGKILLed (and an instance killed meanwhile)",
        "repaired ≤ 5 s after it is back; 0 failed calls",
        f"{recovered:.1f} s after it is back",
        calls.sent,
        len(calls.failed),
        None,
    )
    fault_table.append(row)
    assert calls.failed == []
    assert recovered <= 5
    row.passed = True


# --- Redis restarted with deploys queued ------------------------------------------------------


def test_deploys_queued_when_redis_restarts_all_reach_running(live_stack, tenant, docker_client, fault_table):
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    live_stack.stop("worker")
    services = [create_service(tenant.user, tenant.version, name=f"f-queued-{n}", instance_count=1) for n in range(10)]
    assert broker.llen("lifecycle") >= 10
    restarted_at = time.monotonic()
    try:
        broker.shutdown(nosave=True)
    except redis.ConnectionError:
        pass  # the server closes the connection as it goes
    eventually(lambda: not redis_answers(broker), timeout=15, interval=0.05, message="Redis did not stop")
    subprocess.run([str(ROOT / "scripts/bootstrap.sh"), "redis"], check=True, capture_output=True)
    queued = b"".join(broker.lrange("lifecycle", 0, -1))
    assert not any(str(s.id).encode() in queued for s in services), "the queued deploys outlived the restart"
    back_at = live_stack.start("worker")
    eventually(
        lambda: Service.objects.filter(id__in=[s.id for s in services], status=ServiceStatus.RUNNING).count() == 10,
        timeout=90,
        interval=0.05,
        message=lambda: (
            "not all 10 deploys reached Running: "
            + str(list(Service.objects.filter(id__in=[s.id for s in services]).values_list("name", "status")))
        ),
    )
    done_at = time.monotonic()
    lost = 10 - Service.objects.filter(id__in=[s.id for s in services], status=ServiceStatus.RUNNING).count()
    row = FaultRow(
        "Redis restarted (no save) with 10 deploys queued",
        "all 10 Running",
        f"{done_at - back_at:.1f} s after the worker is back ({done_at - restarted_at:.1f} s in all)",
        None,
        None,
        lost,
    )
    fault_table.append(row)
    assert lost == 0
    for service in services:
        assert len(containers_of(docker_client, service.id)) == 1
    row.passed = True


def redis_answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


# --- PostgreSQL restarted -------------------------------------------------------------------


def postgres_cluster() -> tuple[str, str]:
    """(version, name) of the local cluster on the test database's port."""
    port = str(settings.DATABASES["default"]["PORT"] or 5432)
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines():
        version, name, cluster_port, *_ = line.split()
        if cluster_port == port:
            return version, name
    raise AssertionError(f"no local PostgreSQL cluster on port {port}: {listing}")


def pg_ctl(action: str) -> None:
    version, name = postgres_cluster()
    extra = ["-m", "fast"] if action == "stop" else []
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, action, *extra], check=True, capture_output=True
    )


def page_status(url: str, session_cookie: str) -> int:
    request = urllib.request.Request(url, headers={"Cookie": f"{settings.SESSION_COOKIE_NAME}={session_cookie}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_postgres_restart_keeps_calls_flowing_and_everything_recovers_by_itself(
    live_stack, tenant, docker_client, fault_table
):
    service = deployed(tenant, "f-postgres")
    browser = Client()
    browser.force_login(tenant.user)
    cookie = browser.cookies[settings.SESSION_COOKIE_NAME].value
    list_url = live_stack.web_url + "/"
    assert page_status(list_url, cookie) == 200
    with CallLoop(live_stack.gateway_url, infer_path(service), tenant.token) as calls:
        calls.wait_for_success()
        pg_ctl("stop")
        connections.close_all()
        try:
            time.sleep(1)
            during = page_status(list_url, cookie)
            time.sleep(1)
        finally:
            pg_ctl("start")
        back_at = time.monotonic()
        eventually(
            lambda: page_status(list_url, cookie) == 200, timeout=30, interval=0.1, message="the web did not recover"
        )
        page_back = time.monotonic() - back_at
        # Workers and the gateway pick up new work by themselves: a new deploy
        # reaches Running and answers through the gateway.
        fresh = create_service(tenant.user, tenant.version, name="f-after-postgres", instance_count=1)
        reached(fresh.id, ServiceStatus.RUNNING)
        with CallLoop(live_stack.gateway_url, infer_path(fresh), tenant.token) as fresh_calls:
            fresh_calls.wait_for_success()
        recovered = time.monotonic() - back_at
    row = FaultRow(
        "PostgreSQL restarted (down 2 s)",
        "0 failed calls; 503 page while down; pages, workers, gateway recover by themselves",
        f"pages {page_back:.1f} s, a new deploy answering {recovered:.1f} s after it is back",
        calls.sent,
        len(calls.failed),
        None,
    )
    fault_table.append(row)
    assert during == 503
    assert calls.failed == []
    row.passed = True


# --- A gateway process killed ------------------------------------------------------------


def test_a_killed_gateway_process_is_replaced_and_calls_succeed_within_a_second(live_stack, tenant, fault_table):
    service = deployed(tenant, "f-gateway")
    children = live_stack.gateway_children()
    assert len(children) == 2
    with CallLoop(live_stack.gateway_url, infer_path(service), tenant.token, interval=0.01) as calls:
        calls.wait_for_success()
        time.sleep(0.5)
        killed_at = time.monotonic()
        os.kill(children[0], signal.SIGKILL)
        eventually(
            lambda: len(set(live_stack.gateway_children()) - {children[0]}) == 2,
            timeout=15,
            interval=0.05,
            message="the gateway did not start another process",
        )
        time.sleep(1.5)
    last_failure = calls.last_failure_after(killed_at)
    row = FaultRow(
        "gateway process SIGKILLed (1 of 2)",
        "calls succeed again within 1 s",
        f"{last_failure:.2f} s to the last failed call",
        calls.sent,
        len(calls.failed),
        None,
    )
    fault_table.append(row)
    assert last_failure <= 1.0
    row.passed = True


# --- Never-healthy deploys in flight ------------------------------------------------------------


def lifecycle_round(user, version, name: str) -> tuple[float, float, float]:
    """Deploy, stop and delete one 1-instance service; the seconds each took."""
    started = time.monotonic()
    service = create_service(user, version, name=name, instance_count=1)
    deploy = reached(service.id, ServiceStatus.RUNNING) - started
    started = time.monotonic()
    service_stop(service=Service.objects.get(id=service.id))
    stop = reached(service.id, ServiceStatus.STOPPED) - started
    started = time.monotonic()
    service_delete(service=Service.objects.get(id=service.id))
    delete = reached(service.id, None) - started
    return deploy, stop, delete


def test_never_healthy_deploys_in_flight_do_not_slow_another_users_work(live_stack, tenant, fault_table):
    other = make_user("faults-other")
    other_version = make_version(other)
    lifecycle_round(other, other_version, "f-warm")  # the worker's processes are warm
    alone = lifecycle_round(other, other_version, "f-alone")
    bad = [
        create_service(
            tenant.user, tenant.version, name=f"f-never-{n}", instance_count=1, envs={"HEALTH_STATUS": "500"}
        )
        for n in range(20)
    ]
    # Every bad deploy has started its container and handed its wait to the prober.
    eventually(
        lambda: (
            Service.objects.filter(
                id__in=[s.id for s in bad], status=ServiceStatus.DEPLOYING, health_wait_started_at__isnull=False
            ).count()
            == 20
        ),
        timeout=120,
        interval=0.1,
        message="the 20 never-healthy deploys did not all reach their health wait",
    )
    loaded = lifecycle_round(other, other_version, "f-loaded")
    still_waiting = Service.objects.filter(id__in=[s.id for s in bad], status=ServiceStatus.DEPLOYING).count()

    def figures(times: tuple[float, float, float]) -> str:
        return " / ".join(f"{t:.2f}" for t in times)

    row = FaultRow(
        "20 never-healthy deploys in flight; another user deploys, stops, deletes",
        "as fast as alone (≤ alone + 1 s each)",
        f"deploy/stop/delete {figures(loaded)} s (alone {figures(alone)} s)",
        None,
        None,
        None,
    )
    fault_table.append(row)
    assert still_waiting == 20
    for under_load, by_itself in zip(loaded, alone, strict=True):
        assert under_load <= by_itself + 1.0
    row.passed = True
