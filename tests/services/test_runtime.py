"""services.runtime against the real Docker engine."""

import http.client
import uuid

import pytest
from django.conf import settings

from services import runtime
from tests.factories import DEMO_IMAGE_V1
from tests.waiting import eventually

pytestmark = pytest.mark.docker

UNREACHABLE = "unix:///tmp/nonexistent.sock"


def spec_for(name: str, console_id: str | None = None, **overrides) -> runtime.ContainerSpec:
    fields = {
        "name": name,
        "image": DEMO_IMAGE_V1,
        "container_port": 8080,
        "cpus": 0.5,
        "memory_mib": 128,
        "environment": {},
        "labels": {
            runtime.LABEL_MANAGED: "1",
            runtime.LABEL_CONSOLE: console_id or settings.CONSOLE_ID,
            runtime.LABEL_SERVICE: str(uuid.uuid4()),
            runtime.LABEL_INSTANCE: "0",
        },
    }
    fields.update(overrides)
    return runtime.ContainerSpec(**fields)


def unique_name(prefix: str = "rts-runtime-test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def test_ensure_container_running_twice_returns_the_same_running_container(engine):
    spec = spec_for(unique_name())

    first = runtime.ensure_container_running(engine, spec)
    second = runtime.ensure_container_running(engine, spec)

    assert first.is_running and second.is_running
    assert second.container_id == first.container_id
    assert second.host_port == first.host_port is not None
    assert [c.container_id for c in runtime.list_managed_containers(engine, settings.CONSOLE_ID)] == [
        first.container_id
    ]


def test_ensure_container_running_starts_a_stopped_container_instead_of_making_another(engine):
    spec = spec_for(unique_name())
    created = runtime.ensure_container_running(engine, spec)
    runtime.stop_container(engine, spec.name, timeout=2)
    assert runtime.inspect_container(engine, spec.name).state == "exited"

    restarted = runtime.ensure_container_running(engine, spec)

    assert restarted.container_id == created.container_id
    assert restarted.is_running


def test_ensure_container_running_publishes_on_loopback_and_the_server_answers(engine):
    info = runtime.ensure_container_running(engine, spec_for(unique_name()))

    def health() -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", info.host_port, timeout=2)
        try:
            connection.request("GET", "/health")
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    status, body = eventually(
        health,
        timeout=30,
        message=f"nothing answered on 127.0.0.1:{info.host_port}",
        ignoring=(OSError, http.client.HTTPException),
    )
    assert status == 200
    assert b'"ok"' in body


def test_ensure_container_running_reports_a_missing_image(engine):
    with pytest.raises(runtime.EngineError, match="image rts-demo-model:no-such-tag not found"):
        runtime.ensure_container_running(engine, spec_for(unique_name(), image="rts-demo-model:no-such-tag"))


def test_remove_container_of_a_missing_name_is_fine(engine):
    name = unique_name()
    runtime.remove_container(engine, name)
    runtime.stop_container(engine, name)
    assert runtime.inspect_container(engine, name) is None
    assert runtime.container_logs(engine, name) == ""


def test_remove_container_removes_a_running_container(engine):
    spec = spec_for(unique_name())
    runtime.ensure_container_running(engine, spec)

    runtime.remove_container(engine, spec.name)

    assert runtime.inspect_container(engine, spec.name) is None


def test_list_managed_containers_only_lists_the_given_console(engine):
    ours = spec_for(unique_name())
    theirs = spec_for(unique_name(), console_id="someone-else")
    runtime.ensure_container_running(engine, ours)
    try:
        runtime.ensure_container_running(engine, theirs)

        listed = runtime.list_managed_containers(engine, settings.CONSOLE_ID)
        listed_for_other = runtime.list_managed_containers(engine, "someone-else")
    finally:
        runtime.remove_container(engine, theirs.name)

    assert [info.name for info in listed] == [ours.name]
    assert listed[0].labels[runtime.LABEL_SERVICE] == ours.labels[runtime.LABEL_SERVICE]
    assert listed[0].is_running and listed[0].host_port
    assert [info.name for info in listed_for_other] == [theirs.name]


def test_container_logs_returns_the_servers_output(engine):
    spec = spec_for(unique_name(), environment={"CRASH_ON_START": "1"})
    runtime.ensure_container_running(engine, spec)

    def exited() -> runtime.ContainerInfo | None:
        info = runtime.inspect_container(engine, spec.name)
        return info if info.state == "exited" else None

    info = eventually(exited, timeout=30, interval=0.05, message="the container never exited")

    assert info.exit_code == 1
    assert "failed to start (CRASH_ON_START is set)" in runtime.container_logs(engine, spec.name)


def test_image_exists(engine):
    assert runtime.image_exists(engine, DEMO_IMAGE_V1) is True
    assert runtime.image_exists(engine, "rts-demo-model:no-such-tag") is False


def test_engine_info_reads_capacity(engine):
    info = runtime.engine_info(engine)
    assert info.cpu_count >= 1
    assert info.memory_mib > 256
    assert info.server_version


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda host: runtime.engine_info(host), id="engine_info"),
        pytest.param(lambda host: runtime.image_exists(host, DEMO_IMAGE_V1), id="image_exists"),
        pytest.param(lambda host: runtime.list_managed_containers(host, "test"), id="list_managed_containers"),
        pytest.param(lambda host: runtime.inspect_container(host, "x"), id="inspect_container"),
        pytest.param(lambda host: runtime.ensure_container_running(host, spec_for("x")), id="ensure_container_running"),
        pytest.param(lambda host: runtime.container_logs(host, "x"), id="container_logs"),
        pytest.param(lambda host: runtime.stop_container(host, "x"), id="stop_container"),
        pytest.param(lambda host: runtime.remove_container(host, "x"), id="remove_container"),
    ],
)
def test_an_unreachable_engine_raises_engine_error_saying_so(call):
    with pytest.raises(runtime.EngineError) as caught:
        call(UNREACHABLE)
    assert str(caught.value) == f"Docker engine at {UNREACHABLE} does not answer"
