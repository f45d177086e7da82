import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings

from pools.models import Flavor, Node, ResourcePool
from services import runtime
from services.models import AIApplication, AIApplicationVersion, Service, ServiceStatus, VersionStatus

ROOT = Path(__file__).resolve().parent.parent
DEMO_IMAGE_V1 = "rts-demo-model:1.0.0"
DEMO_IMAGE_V2 = "rts-demo-model:2.0.0"

# Playwright's sync API runs an event loop in the test thread; Django's ORM
# then refuses to run unless told the thread is really synchronous.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="session", autouse=True)
def _fresh_broker():
    """Drop messages left in the test broker by earlier runs."""
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()


def remove_test_containers() -> None:
    for info in runtime.list_managed_containers(settings.DOCKER_HOST, settings.CONSOLE_ID):
        runtime.remove_container(settings.DOCKER_HOST, info.name)


@pytest.fixture
def engine():
    """The real local Docker engine; every test container is removed afterwards."""
    remove_test_containers()
    yield settings.DOCKER_HOST
    remove_test_containers()


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user(username="owner", password="owner-pass-123")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user(username="other", password="other-pass-123")


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


@pytest.fixture
def pool(db):
    pool = ResourcePool.objects.create(name="public-cpu", is_public=True)
    Node.objects.create(
        pool=pool,
        name="local",
        docker_host=settings.DOCKER_HOST,
        cpu_count=2,
        memory_mib=8192,
        is_reachable=True,
    )
    return pool


@pytest.fixture
def flavors(db):
    return {
        "free": Flavor.objects.create(code="cpu.1u1g.free", display_name="CPU: 1 vCPU | 1 GiB (free)", cpus=1, memory_mib=1024, is_free=True, sort_order=0),
        "small": Flavor.objects.create(code="cpu.1u512m", display_name="CPU: 1 vCPU | 512 MiB", cpus=1, memory_mib=512, sort_order=1),
        "big": Flavor.objects.create(code="cpu.64u8g", display_name="CPU: 64 vCPUs | 8 GiB", cpus=64, memory_mib=8192, sort_order=2),
        "gpu": Flavor.objects.create(code="gpu.1p", display_name="GPU: 1 x GPU", cpus=1, memory_mib=1024, gpus=1, sort_order=3),
    }


def make_version(owner, version="1.0.0", image=DEMO_IMAGE_V1, status=VersionStatus.NORMAL, **fields) -> AIApplicationVersion:
    application, _ = AIApplication.objects.get_or_create(owner=owner, name=fields.pop("application_name", "demo-model"))
    return AIApplicationVersion.objects.create(application=application, version=version, image=image, status=status, **fields)


@pytest.fixture
def demo_version(owner):
    return make_version(owner)


def deploy_data(version, **overrides) -> dict:
    config = {
        "app_version": version.id,
        "flavor": overrides.pop("flavor", "cpu.1u512m"),
        "instance_count": overrides.pop("instance_count", 1),
        "weight": 100,
        "envs": overrides.pop("envs", {}),
    }
    data = {"name": "svc-one", "description": "", "pool": "public-cpu", "timeout_minutes": 20, "configs": [config]}
    data.update(overrides)
    return data


def wait_for_status(service_id, statuses, timeout: float = 30.0) -> Service:
    """Poll the database until the service reaches one of `statuses`."""
    if isinstance(statuses, str):
        statuses = {statuses}
    deadline = time.monotonic() + timeout
    while True:
        service = Service.objects.filter(id=service_id).first()
        if service is None and None in statuses:
            return None
        if service is not None and service.status in statuses:
            return service
        if time.monotonic() > deadline:
            raise AssertionError(f"service is {service and service.status}, wanted {statuses} within {timeout}s")
        time.sleep(0.1)


@pytest.fixture
def celery_stack(transactional_db, engine):
    """A real Celery worker (both queues) and beat in subprocesses, on the test database."""
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="console.settings_test",
        DATABASE_NAME=settings.DATABASES["default"]["NAME"],
        SERVICE_TIMEOUT_SCALE=os.environ.get("STACK_TIMEOUT_SCALE", "0.05"),
        DATABASE_CONN_MAX_AGE="0",
    )
    celery = [sys.executable, "-m", "celery", "-A", "console"]
    log_dir = ROOT / "test-artifacts"
    log_dir.mkdir(exist_ok=True)
    processes = []
    for name, args in (
        ("worker", ["worker", "-Q", "lifecycle,reconcile", "-c", "4", "-n", "test@%h", "--loglevel", "INFO"]),
        ("beat", ["beat", "--loglevel", "INFO", "-s", str(log_dir / "beat-schedule")]),
    ):
        log = open(log_dir / f"celery-{name}.log", "ab")
        processes.append(subprocess.Popen(celery + args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    yield processes
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
