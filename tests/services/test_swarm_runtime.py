"""services.runtime.swarm against a real single-node swarm (the swarm_manager fixture)."""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from contextlib import closing

import docker
import pytest
from django.conf import settings

from services import runtime
from services.runtime import swarm
from tests.factories import DEMO_IMAGE_V1
from tests.waiting import eventually

pytestmark = pytest.mark.docker

UNREACHABLE = "unix:///var/run/no-such.sock"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def swarm_api(swarm_manager):
    """The manager engine's own API, to look at and kill the containers of tasks."""
    client = docker.APIClient(base_url=swarm_manager, version="auto", timeout=30)
    with closing(client):
        yield client


@pytest.fixture
def made_services(swarm_manager):
    """Names of the services a test made; each is removed when the test ends."""
    names: list[str] = []
    yield names
    for name in names:
        swarm.remove_version_service(swarm_manager, name)


def spec_for(name: str, console_id: str | None = None, **overrides) -> swarm.VersionServiceSpec:
    fields = {
        "name": name,
        "image": DEMO_IMAGE_V1,
        "container_port": 8080,
        "replicas": 2,
        "cpus": 0.5,
        "memory_mib": 128,
        "cpu_reservation": 0.05,
        "memory_reservation_mib": 32,
        "environment": {"MODEL_VERSION": "1.0.0"},
        "labels": {
            runtime.LABEL_MANAGED: "1",
            runtime.LABEL_CONSOLE: console_id or settings.CONSOLE_ID,
            runtime.LABEL_SERVICE: name,
            runtime.LABEL_CONFIG: "1",
        },
        "restart_delay_seconds": 0.2,
        "health_path": "/health",
    }
    fields.update(overrides)
    return swarm.VersionServiceSpec(**fields)


def unique_name() -> str:
    return f"rts-swarm-test-{uuid.uuid4().hex[:10]}"


def tasks_of(manager: str, name: str, *, running_only: bool = True, console_id: str | None = None) -> list:
    tasks = swarm.list_managed_tasks(manager, console_id or settings.CONSOLE_ID, running_only=running_only)
    return [task for task in tasks if task.labels.get(runtime.LABEL_SERVICE) == name]


def wait_for_running(
    manager: str, name: str, count: int, *, console_id: str | None = None, timeout: float = 60.0
) -> list:
    """The service's `count` running tasks with a port, once exactly that many are listed."""
    seen: list = []

    def running() -> list:
        nonlocal seen
        seen = tasks_of(manager, name, console_id=console_id)
        ready = [task for task in seen if task.is_running and task.host_port]
        return ready if len(ready) == len(seen) == count else []

    return eventually(
        running,
        timeout=timeout,
        interval=0.1,
        message=lambda: f"{name}: wanted {count} running tasks, saw {[(t.slot, t.state, t.error) for t in seen]}",
    )


def get_health(port: int) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    with closing(connection):
        connection.request("GET", "/health")
        response = connection.getresponse()
        return response.status, json.loads(response.read())


def container_env(api: docker.APIClient, container_id: str) -> dict[str, str]:
    env = api.inspect_container(container_id)["Config"]["Env"]
    return dict(item.partition("=")[::2] for item in env)


def wait_for_update(manager: str, name: str, final_state: str) -> list[tuple[str, str]]:
    """The (update state, message) pairs the service went through until `final_state`, in order."""
    seen: list[tuple[str, str]] = []

    def reached() -> bool:
        info = swarm.version_service(manager, name)
        if not seen or seen[-1] != (info.update_state, info.update_message):
            seen.append((info.update_state, info.update_message))
        return info.update_state == final_state

    eventually(reached, timeout=90, interval=0.1, message=lambda: f"update of {name} went through {seen}")
    return seen


class CallLoop(threading.Thread):
    """Calls /health of every running task in turn, as the gateway would: the
    task list is read again every 100 ms (running_only), and a call that finds
    no listener is tried once on another task."""

    def __init__(self, manager: str, name: str) -> None:
        super().__init__(daemon=True)
        self.manager = manager
        self.name = name
        self.stopping = threading.Event()
        self.calls = 0
        self.retried = 0
        self.failures: list[str] = []
        self.versions: set[str] = set()

    def call(self, port: int) -> bool:
        try:
            status, body = get_health(port)
        except (OSError, http.client.HTTPException):
            return False
        if status != 200:
            self.failures.append(f"port {port}: status {status}")
        self.versions.add(body.get("version", ""))
        return True

    def run(self) -> None:
        tasks: list = []
        read_at = 0.0
        while not self.stopping.is_set():
            if time.monotonic() - read_at >= 0.1:
                try:
                    tasks = [task for task in tasks_of(self.manager, self.name) if task.is_running and task.host_port]
                except runtime.EngineError as exc:
                    self.failures.append(f"task list: {exc}")
                read_at = time.monotonic()
            for task in tasks:
                self.calls += 1
                if self.call(task.host_port):
                    continue
                others = [other for other in tasks if other.task_id != task.task_id]
                self.retried += 1
                if not (others and self.call(others[0].host_port)):
                    self.failures.append(f"slot {task.slot} (port {task.host_port}) and its retry failed")
            time.sleep(0.02)

    def __enter__(self) -> CallLoop:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self.join(timeout=10)


def test_swarm_nodes_lists_the_one_manager(swarm_manager):
    nodes = swarm.swarm_nodes(swarm_manager)

    assert len(nodes) == 1
    node = nodes[0]
    assert node.is_manager and node.is_usable
    assert (node.availability, node.state) == ("active", "ready")
    assert node.address == "127.0.0.1"
    assert node.cpu_count >= 1 and node.memory_mib > 0
    assert node.node_id and node.hostname


def test_ensure_version_service_runs_hardened_replicas_and_scales_them(swarm_manager, swarm_api, made_services):
    name = unique_name()
    made_services.append(name)
    spec = spec_for(name)

    created = swarm.ensure_version_service(swarm_manager, spec)
    again = swarm.ensure_version_service(swarm_manager, spec)

    assert again.service_id == created.service_id
    assert (created.name, created.replicas, created.labels) == (name, 2, spec.labels)
    assert [info.name for info in swarm.list_managed_services(swarm_manager, settings.CONSOLE_ID)].count(name) == 1
    tasks = wait_for_running(swarm_manager, name, 2)
    assert {task.slot for task in tasks} == {1, 2}
    assert len({task.host_port for task in tasks}) == 2
    for task in tasks:
        assert task.service_name == name
        assert task.labels == spec.labels
        assert task.desired_state == "running" and task.exit_code is None and task.error == ""
        assert get_health(task.host_port) == (200, {"status": "ok", "version": "1.0.0"})

        container = swarm_api.inspect_container(task.container_id)
        assert container["Config"]["Labels"].items() >= spec.labels.items()
        assert container_env(swarm_api, task.container_id)["MODEL_VERSION"] == "1.0.0"
        host_config = container["HostConfig"]
        assert host_config["CapDrop"] == ["ALL"]
        assert set(host_config["CapAdd"]) == set(spec.hardening.capabilities)
        assert host_config["PidsLimit"] == spec.hardening.pids_limit
        assert host_config["Memory"] == 128 * MIB
        assert host_config["NanoCpus"] == 500_000_000
        assert host_config["Init"] is True
        assert host_config["Privileged"] is False
        assert host_config["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "3", "max-size": "10m"}}
        [tmp] = [mount for mount in host_config["Mounts"] if mount["Target"] == "/tmp"]
        assert tmp["Type"] == "tmpfs" and tmp["TmpfsOptions"]["SizeBytes"] == spec.hardening.tmp_mib * MIB

    logs = swarm.version_service_logs(swarm_manager, name, tail=5)
    assert f"{name}.1 | model server 1.0.0 listening on :8080" in logs
    assert f"{name}.2 | model server 1.0.0 listening on :8080" in logs

    scaled = swarm.ensure_version_service(swarm_manager, spec_for(name, replicas=3))

    assert (scaled.service_id, scaled.replicas) == (created.service_id, 3)
    tasks_after = wait_for_running(swarm_manager, name, 3)
    assert {task.slot for task in tasks_after} == {1, 2, 3}
    # Scaling added a task and left the two that ran alone.
    assert {task.task_id for task in tasks} < {task.task_id for task in tasks_after}


def test_a_killed_task_is_replaced_in_its_slot(swarm_manager, swarm_api, made_services):
    name = unique_name()
    made_services.append(name)
    swarm.ensure_version_service(swarm_manager, spec_for(name))
    before = {task.slot: task for task in wait_for_running(swarm_manager, name, 2)}

    swarm_api.kill(before[1].container_id)

    def replaced() -> list:
        tasks = wait_for_running(swarm_manager, name, 2)
        return tasks if {task.slot: task.task_id for task in tasks}[1] != before[1].task_id else []

    after = {task.slot: task for task in eventually(replaced, timeout=60, message=f"slot 1 of {name} not replaced")}
    assert after[2].task_id == before[2].task_id
    assert after[1].container_id != before[1].container_id
    for task in after.values():
        assert get_health(task.host_port)[0] == 200
    [killed] = [task for task in tasks_of(swarm_manager, name, running_only=False) if task.task_id == before[1].task_id]
    assert (killed.state, killed.desired_state, killed.exit_code) == ("failed", "shutdown", 137)


def test_a_rolling_update_completes_without_failed_calls_and_a_broken_one_rolls_back(
    swarm_manager, swarm_api, made_services
):
    name = unique_name()
    made_services.append(name)
    swarm.ensure_version_service(swarm_manager, spec_for(name))
    wait_for_running(swarm_manager, name, 2)
    good = spec_for(name, environment={"MODEL_VERSION": "1.0.1"})

    with CallLoop(swarm_manager, name) as loop:
        started = swarm.update_version_service(swarm_manager, good, monitor_seconds=1.0)
        states = [state for state, _ in wait_for_update(swarm_manager, name, "completed")]
        updated = wait_for_running(swarm_manager, name, 2)
        time.sleep(0.3)  # a few calls to the new tasks only

    assert started.update_state in ("updating", "")
    assert states[-2:] == ["updating", "completed"]
    assert loop.failures == []
    assert loop.calls > 50
    assert loop.versions == {"1.0.0", "1.0.1"}
    assert {task.slot for task in updated} == {1, 2}
    for task in updated:
        assert container_env(swarm_api, task.container_id)["MODEL_VERSION"] == "1.0.1"
        assert get_health(task.host_port) == (200, {"status": "ok", "version": "1.0.1"})

    broken = spec_for(name, environment={"MODEL_VERSION": "1.0.2", "CRASH_ON_START": "1"})
    with CallLoop(swarm_manager, name) as loop:
        swarm.update_version_service(swarm_manager, broken, monitor_seconds=1.0)
        rollback = dict(wait_for_update(swarm_manager, name, "rollback_completed"))
        rolled_back = wait_for_running(swarm_manager, name, 2)

    assert "update rolled back due to failure" in rollback["rollback_started"]
    assert loop.failures == []
    assert loop.versions == {"1.0.1"}
    env = swarm_api.inspect_service(name)["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
    assert env == ["MODEL_VERSION=1.0.1"]
    for task in rolled_back:
        assert get_health(task.host_port) == (200, {"status": "ok", "version": "1.0.1"})


def test_update_version_service_of_a_missing_service_raises(swarm_manager):
    with pytest.raises(runtime.EngineError, match="does not exist"):
        swarm.update_version_service(swarm_manager, spec_for(unique_name()))


def test_remove_version_service_takes_its_tasks_and_containers(swarm_manager, swarm_api, made_services):
    name = unique_name()
    made_services.append(name)
    swarm.ensure_version_service(swarm_manager, spec_for(name))
    wait_for_running(swarm_manager, name, 2)

    swarm.remove_version_service(swarm_manager, name)

    assert swarm.version_service(swarm_manager, name) is None
    assert name not in [info.name for info in swarm.list_managed_services(swarm_manager, settings.CONSOLE_ID)]
    eventually(
        lambda: not tasks_of(swarm_manager, name, running_only=False),
        timeout=30,
        message=f"tasks of {name} remain",
    )
    eventually(
        lambda: not swarm_api.containers(all=True, filters={"label": f"{runtime.LABEL_SERVICE}={name}"}),
        timeout=30,
        message=f"containers of {name} remain",
    )
    swarm.remove_version_service(swarm_manager, name)  # again: nothing to do
    assert swarm.version_service_logs(swarm_manager, name) == ""


def test_listings_leave_out_services_of_another_console(swarm_manager, made_services):
    ours, theirs = unique_name(), unique_name()
    other_console = f"other-{uuid.uuid4().hex[:8]}"
    made_services.extend([ours, theirs])
    swarm.ensure_version_service(swarm_manager, spec_for(ours, replicas=1))
    swarm.ensure_version_service(swarm_manager, spec_for(theirs, console_id=other_console, replicas=1))
    wait_for_running(swarm_manager, ours, 1)
    wait_for_running(swarm_manager, theirs, 1, console_id=other_console)

    our_services = [info.name for info in swarm.list_managed_services(swarm_manager, settings.CONSOLE_ID)]
    our_tasks = swarm.list_managed_tasks(swarm_manager, settings.CONSOLE_ID, running_only=False)
    their_tasks = swarm.list_managed_tasks(swarm_manager, other_console, running_only=False)

    assert ours in our_services and theirs not in our_services
    assert [info.name for info in swarm.list_managed_services(swarm_manager, other_console)] == [theirs]
    assert ours in {task.service_name for task in our_tasks}
    assert all(task.labels[runtime.LABEL_CONSOLE] == settings.CONSOLE_ID for task in our_tasks)
    assert [task.service_name for task in their_tasks] == [theirs]


def test_an_unreachable_manager_raises_engine_error():
    for call in (
        lambda: swarm.swarm_nodes(UNREACHABLE),
        lambda: swarm.list_managed_tasks(UNREACHABLE, settings.CONSOLE_ID),
        lambda: swarm.ensure_version_service(UNREACHABLE, spec_for(unique_name())),
    ):
        with pytest.raises(runtime.EngineError) as raised:
            call()
        assert str(raised.value) == f"Swarm manager at {UNREACHABLE} does not answer"
