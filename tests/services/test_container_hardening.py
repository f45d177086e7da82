"""Every model container runs hardened: pids limit, no new privileges, a small
set of capabilities, no swap beyond its memory, rotated logs, a tmpfs /tmp.
Checked on the real engine with `docker inspect` and from inside the container."""

import pytest

from services.lifecycle import service_deploy_run
from tests.factories import create_service, make_version

pytestmark = [pytest.mark.docker, pytest.mark.django_db]


def deployed_container(owner, docker_client):
    service = create_service(owner, make_version(owner))
    assert service_deploy_run(service_id=service.id) == "running"
    return docker_client.containers.get(service.instances.get().container_name)


def test_a_model_container_runs_with_the_hardening_settings(engine, docker_client, owner, pool, flavors):
    container = deployed_container(owner, docker_client)
    host = container.attrs["HostConfig"]

    assert host["PidsLimit"] == 256
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["CapDrop"] == ["ALL"]
    assert sorted(host["CapAdd"]) == ["CHOWN", "NET_BIND_SERVICE", "SETGID", "SETUID"]
    assert host["Memory"] == 512 * 1024 * 1024  # the flavor cpu.1u512m
    assert host["MemorySwap"] == host["Memory"]
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}
    assert host["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=64m"}
    assert host["Privileged"] is False
    assert not host.get("Binds") and not host.get("Devices")

    status = container.exec_run(["sh", "-c", "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status"])
    effective = dict(line.split(":\t") for line in status.output.decode().strip().splitlines())
    assert effective["NoNewPrivs"] == "1"
    # CHOWN (0), SETGID (6), SETUID (7), NET_BIND_SERVICE (10), and nothing else.
    assert int(effective["CapEff"], 16) == (1 << 0) | (1 << 6) | (1 << 7) | (1 << 10)
    assert container.exec_run(["sh", "-c", "echo ok > /tmp/probe && cat /tmp/probe"]).output == b"ok\n"


def test_the_pids_limit_stops_a_process_explosion(engine, docker_client, owner, pool, flavors, settings):
    settings.CONTAINER_PIDS_LIMIT = 24
    container = deployed_container(owner, docker_client)
    assert container.attrs["HostConfig"]["PidsLimit"] == 24

    spawn = (
        "import subprocess\n"
        "children = []\n"
        "for _ in range(60):\n"
        "    try:\n"
        "        children.append(subprocess.Popen(['sleep', '30']))\n"
        "    except OSError:\n"
        "        break\n"
        "print(len(children))\n"
        "for child in children:\n"
        "    child.kill()\n"
    )
    started = int(container.exec_run(["python3", "-c", spawn]).output.decode().strip().splitlines()[-1])
    assert 0 < started < 24
