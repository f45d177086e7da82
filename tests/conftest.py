import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.core.management.base import CommandError
from django.test import TransactionTestCase

from services import runtime
from services.models import Service
from tests.engines import owned_engines
from tests.factories import (
    DEMO_IMAGE_V1,
    DEMO_IMAGE_V2,
    deploy_data,
    make_flavor,
    make_pool,
    make_service,
    make_user,
    make_version,
)
from tests.waiting import eventually


def _flush_retrying_a_deadlock(flush):
    """The flush after a transactional test TRUNCATEs every table, while the
    session's gateway (a real, separate process) may be writing its once-a-second
    call statistics: PostgreSQL then breaks the deadlock by failing one of them.
    When it picks the flush, the flush is tried again; the gateway retries its own."""

    def retrying(self):
        for attempt in range(5):
            try:
                return flush(self)
            except CommandError as exc:
                if attempt == 4 or "deadlock detected" not in str(exc.__cause__):
                    raise
                time.sleep(0.2)

    return retrying


TransactionTestCase._fixture_teardown = _flush_retrying_a_deadlock(TransactionTestCase._fixture_teardown)

ROOT = Path(__file__).resolve().parent.parent

# Playwright's sync API runs an event loop in the test thread; Django's ORM
# then refuses to run unless told the thread is really synchronous.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="session", autouse=True)
def _fresh_broker():
    """Drop messages left in the test broker by earlier runs."""
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()


def remove_test_containers() -> None:
    """Every container and service network of this test run's console id on the local
    engine, and on the second engine (tests/engines.py) while this session owns it."""
    docker_hosts = [settings.DOCKER_HOST]
    for second in owned_engines():
        second.start()  # a test may have left it stopped; nothing to do when it answers
        docker_hosts.append(second.docker_host)
    for docker_host in docker_hosts:
        for info in runtime.list_managed_containers(docker_host, settings.CONSOLE_ID):
            runtime.remove_container(docker_host, info.name)
        for name in runtime.list_managed_networks(docker_host, settings.CONSOLE_ID):
            # A container removal the engine answered 409 to ("already in progress")
            # may still hold the network for a moment.
            eventually(
                lambda name=name, docker_host=docker_host: runtime.remove_network(docker_host, name) is None,
                timeout=10,
                interval=0.1,
                message=f"network {name} could not be removed from {docker_host}",
                ignoring=(runtime.EngineError,),
            )


@pytest.fixture
def engine():
    """The real local Docker engine; every test container is removed afterwards."""
    remove_test_containers()
    yield settings.DOCKER_HOST
    remove_test_containers()


@pytest.fixture
def owner(db):
    return make_user("owner")


@pytest.fixture
def other_user(db):
    return make_user("other")


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


@pytest.fixture
def pool(db):
    """The public pool "public-cpu" with one node on the test's Docker engine,
    overcommitted 16 times (the most allowed), so that it holds 30 small instances."""
    return make_pool(overcommit=16)


@pytest.fixture
def flavors(db):
    return {
        "free": make_flavor(
            "cpu.1u1g.free", display_name="CPU: 1 vCPU | 1 GiB (free)", cpus=1, memory_mib=1024, is_free=True
        ),
        "small": make_flavor("cpu.1u512m", display_name="CPU: 1 vCPU | 512 MiB", memory_mib=512, sort_order=1),
        "big": make_flavor("cpu.64u8g", display_name="CPU: 64 vCPUs | 8 GiB", cpus=64, memory_mib=8192, sort_order=2),
        "gpu": make_flavor("gpu.1p", display_name="GPU: 1 x GPU", gpus=1, sort_order=3),
    }


@pytest.fixture
def demo_version(owner):
    return make_version(owner)


@pytest.fixture
def service(owner, pool, flavors, demo_version) -> Service:
    """A Running service "svc-one" of the demo version (small flavor), in the
    database only: no containers."""
    return make_service(owner, pool, version=demo_version, flavor=flavors["small"])


@pytest.fixture
def pinned_limits(settings):
    """Pin the limits that messages under test quote, whatever the environment sets."""
    settings.MAX_INSTANCES_PER_VERSION = 128
    settings.MAX_SERVICES_PER_USER = 20
    settings.SERVICE_TIMEOUT_MIN_MINUTES = 3
    settings.SERVICE_TIMEOUT_MAX_MINUTES = 120


# --- Shared Celery stack -------------------------------------------------------
# Starting a worker and beat costs a few seconds; tests grouped in a class share
# one pair of processes. Each test still gets a clean transactional database and
# engine: the database is flushed before the containers are removed, so the
# shared reconcile loop never sees a service whose containers just vanished.


def start_celery_processes(schedule_path: Path, **env_overrides: str) -> list[subprocess.Popen]:
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="console.settings_test",
        DATABASE_NAME=settings.DATABASES["default"]["NAME"],
        SERVICE_TIMEOUT_SCALE=os.environ.get("STACK_TIMEOUT_SCALE", "0.05"),
        DATABASE_CONN_MAX_AGE="0",
        **env_overrides,
    )
    celery = [sys.executable, "-m", "celery", "-A", "console"]
    log_dir = ROOT / "test-artifacts"
    log_dir.mkdir(exist_ok=True)
    processes = []
    for name, args in (
        ("worker", ["worker", "-Q", "lifecycle,reconcile", "-c", "4", "-n", "test@%h", "--loglevel", "INFO"]),
        ("beat", ["beat", "--loglevel", "INFO", "-s", str(schedule_path)]),
    ):
        with open(log_dir / f"celery-{name}.log", "ab") as log:
            processes.append(subprocess.Popen(celery + args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    return processes


def stop_celery_processes(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="class")
def celery_processes(django_db_setup, tmp_path_factory):
    """A Celery worker and beat on the test database for every test of one class."""
    processes = start_celery_processes(tmp_path_factory.mktemp("beat") / "beat-schedule")
    yield processes
    stop_celery_processes(processes)


@pytest.fixture
def celery_stack(transactional_db, engine, tmp_path):
    """A real Celery worker (both queues) and beat in subprocesses, on the test database."""
    processes = start_celery_processes(tmp_path / "beat-schedule")
    yield processes
    stop_celery_processes(processes)


@pytest.fixture
def shared_celery_stack(celery_processes, engine, transactional_db):
    """Like celery_stack, but the worker and beat live as long as the test class."""
    for process in celery_processes:
        assert process.poll() is None, "a Celery process has exited: see test-artifacts/celery-*.log"
    yield celery_processes
    for process in celery_processes:
        assert process.poll() is None, "a Celery process has exited: see test-artifacts/celery-*.log"


@pytest.fixture
def docker_client(engine):
    """A Docker SDK client for tests that inspect what the console created."""
    import docker

    client = docker.DockerClient(base_url=engine)
    yield client
    client.close()


def containers_of(client, service_id) -> list:
    """Every container (running or not) carrying this service's label. One
    removed between the listing and its inspection is left out, not an error."""
    return client.containers.list(
        all=True,
        filters={"label": [f"{runtime.LABEL_CONSOLE}={settings.CONSOLE_ID}", f"{runtime.LABEL_SERVICE}={service_id}"]},
        ignore_removed=True,
    )


# --- Gateway subprocess ----------------------------------------------------------
# The gateway reads only committed rows, so tests that call it need a
# transactional database. One gateway serves the whole session; tests that need
# other settings start their own with start_gateway(NAME=value, ...).


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_gateway(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_gateway(processes: int = 1, **env_overrides: str) -> tuple[subprocess.Popen, str]:
    """`python -m gateway --processes N` (1 unless given) on a free port of 127.0.0.1, on the test
    database; returns (process, base URL) once /healthz answers."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_NAME": settings.DATABASES["default"]["NAME"],
        "GATEWAY_REFRESH_SECONDS": "0.2",
        **env_overrides,
    }
    log_dir = ROOT / "test-artifacts"
    log_dir.mkdir(exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "gateway",
        "--processes",
        str(processes),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log_dir / "gateway.log", "ab") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with code {process.returncode} (log: test-artifacts/gateway.log)")
        with urllib.request.urlopen(url + "/healthz", timeout=1) as response:
            return response.status == 200

    try:
        eventually(
            answers,
            timeout=20,
            interval=0.05,
            message="the gateway did not answer /healthz (log: test-artifacts/gateway.log)",
            ignoring=(OSError,),
        )
    except BaseException:
        stop_gateway(process)
        raise
    return process, url


@pytest.fixture(scope="session")
def gateway_process(django_db_setup):
    """One gateway subprocess for the session, reloading its table every 0.2 s."""
    process, url = start_gateway()
    yield process, url
    stop_gateway(process)


@pytest.fixture
def gateway_url(gateway_process, transactional_db) -> str:
    """Base URL of the session's gateway, e.g. http://127.0.0.1:41234."""
    process, url = gateway_process
    assert process.poll() is None, "the session's gateway has exited (log: test-artifacts/gateway.log)"
    return url


# --- The console calling the real gateway ------------------------------------------
# For the Prediction tab: the console's GATEWAY_URL pointed at the session's
# gateway, and a Running demo service deployed inline (no Celery).


def wait_for_gateway_reload(url: str, timeout: float = 10.0) -> None:
    """Return once the gateway has loaded its routing table from queries that
    started after this call, so it knows every row committed before it."""
    import json

    since = time.time()
    first_after = None

    def reloaded_twice() -> bool:
        nonlocal first_after
        with urllib.request.urlopen(url + "/healthz/table", timeout=1) as response:
            loaded_at = json.load(response)["loaded_at"]
        # A load that finished after `since` may have queried before it; the
        # next one started its queries after that load finished.
        if first_after is None and loaded_at > since:
            first_after = loaded_at
        return first_after is not None and loaded_at > first_after

    eventually(reloaded_twice, timeout=timeout, interval=0.05, message="the gateway did not reload its table")


@pytest.fixture
def console_gateway(gateway_url, settings) -> str:
    """The session's gateway, set as the console's settings.GATEWAY_URL."""
    settings.GATEWAY_URL = gateway_url
    return gateway_url


@pytest.fixture
def running_demo_service(engine, transactional_db, owner, pool, flavors, demo_version) -> Service:
    """The demo model (rts-demo-model:1.0.0) deployed with service_deploy_run in
    the test's thread: Running, one healthy instance."""
    from services.actions import service_create
    from services.lifecycle import service_deploy_run
    from services.validation import parse_deploy_request

    request = parse_deploy_request(owner=owner, data=deploy_data(demo_version, name="demo-svc"))
    service = service_create(owner=owner, request=request)
    assert service_deploy_run(service_id=service.id) == "running"
    service.refresh_from_db()
    return service


@pytest.fixture
def enqueued(monkeypatch):
    """Record the tasks actions enqueue instead of sending them: for tests that run
    the task bodies inline and want no worker to pick the same work up later."""
    from services import tasks

    calls: list[tuple] = []
    for name in (
        "service_deploy_task",
        "service_stop_task",
        "service_delete_task",
        "service_update_task",
        "version_check_image_task",
    ):
        monkeypatch.setattr(getattr(tasks, name), "delay", lambda *args, _name=name: calls.append((_name, *args)))
    return calls


# --- A second Docker engine ---------------------------------------------------------
# For pools with two nodes (tests/engines.py): its own socket, bridge, data root
# and exec root. Started on first use with the demo images copied to it, stopped
# when the session ends; remove_test_containers covers it meanwhile.


@pytest.fixture(scope="session")
def second_engine_daemon():
    """The second engine (tests.engines.SecondEngine), owned by this session: tests may stop() and start() it."""
    from tests.engines import SecondEngine

    daemon = SecondEngine(log_path=ROOT / "test-artifacts" / "docker-rts2.log")
    daemon.acquire()
    try:
        daemon.start()
        daemon.reset()  # whatever an earlier session left there
        daemon.ensure_images(settings.DOCKER_HOST, [DEMO_IMAGE_V1, DEMO_IMAGE_V2])
        yield daemon
    finally:
        daemon.stop()
        daemon.release()


@pytest.fixture(scope="session")
def second_engine(second_engine_daemon) -> str:
    """The second engine's docker_host, e.g. unix:///var/run/docker-rts2.sock."""
    return second_engine_daemon.docker_host


# --- A single-node Docker swarm --------------------------------------------------------
# For services.runtime.swarm: an engine of its own (tests.engines.SwarmEngine),
# manager of a swarm of one node that listens and advertises on 127.0.0.1 only.


@pytest.fixture(scope="session")
def swarm_manager():
    """The swarm manager's docker_host (unix:///var/run/docker-swarm.sock), with the
    demo images loaded; the swarm is left and its engine stopped when the session ends."""
    from tests.engines import SwarmEngine

    daemon = SwarmEngine(log_path=ROOT / "test-artifacts" / "docker-swarm.log")
    daemon.acquire()
    try:
        daemon.start()
        daemon.reset()  # a swarm, containers and networks an earlier session left
        daemon.ensure_images(settings.DOCKER_HOST, [DEMO_IMAGE_V1, DEMO_IMAGE_V2])
        daemon.swarm_init()
        yield daemon.docker_host
    finally:
        try:
            if daemon.answers():
                daemon.swarm_leave()
        finally:
            runtime.forget_client(daemon.docker_host)
            daemon.stop()
            daemon.release()
