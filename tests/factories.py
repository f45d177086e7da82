"""Plain builders for the rows tests need. Each writes straight to the database
(no actions, no tasks, no containers) unless its docstring says otherwise, so a
test states only what it cares about."""

from django.conf import settings
from django.contrib.auth import get_user_model

from pools.models import Flavor, Node, ResourcePool
from services.choices import InstanceState, ServiceStatus, VersionStatus
from services.models import (
    AIApplication,
    AIApplicationVersion,
    Instance,
    Service,
    ServiceEvent,
    ServiceVersionConfig,
)

DEMO_IMAGE_V1 = "rts-demo-model:1.0.0"
DEMO_IMAGE_V2 = "rts-demo-model:2.0.0"


def make_user(username: str, password: str | None = None):
    """A user whose password is `<username>-pass-123` unless given."""
    return get_user_model().objects.create_user(username=username, password=password or f"{username}-pass-123")


def add_node(
    pool: ResourcePool,
    name: str,
    *,
    cpus: int = 2,
    memory_mib: int = 8192,
    gpus: int = 0,
    docker_host: str | None = None,
    is_reachable: bool = True,
    is_enabled: bool = True,
) -> Node:
    """A node of `pool`; its engine address is made up unless given, so nothing
    may talk to it."""
    return Node.objects.create(
        pool=pool,
        name=name,
        docker_host=docker_host or f"tcp://{name}:2375",
        cpu_count=cpus,
        memory_mib=memory_mib,
        gpu_count=gpus,
        is_reachable=is_reachable,
        is_enabled=is_enabled,
    )


def make_pool(
    name: str = "public-cpu", *, owner=None, local_node: str | None = "local", overcommit: int = 1
) -> ResourcePool:
    """A pool, public unless it has an owner, with one node named `local_node`
    (2 CPUs, 8 GiB) on the test's Docker engine; `local_node=None` for none.
    CPU and memory are overcommitted `overcommit` times (none unless told)."""
    pool = ResourcePool.objects.create(
        name=name, is_public=owner is None, owner=owner, cpu_overcommit=overcommit, memory_overcommit=overcommit
    )
    if local_node:
        add_node(pool, local_node, docker_host=settings.DOCKER_HOST)
    return pool


def make_flavor(
    code: str, *, cpus=1, memory_mib: int = 1024, gpus: int = 0, display_name: str = "", **fields
) -> Flavor:
    return Flavor.objects.create(
        code=code, display_name=display_name or code, cpus=cpus, memory_mib=memory_mib, gpus=gpus, **fields
    )


def make_version(
    owner, version="1.0.0", image=DEMO_IMAGE_V1, status=VersionStatus.NORMAL, **fields
) -> AIApplicationVersion:
    """A version of the owner's application `application_name` (default
    "demo-model", created on first use)."""
    application, _ = AIApplication.objects.get_or_create(owner=owner, name=fields.pop("application_name", "demo-model"))
    return AIApplicationVersion.objects.create(
        application=application, version=version, image=image, status=status, **fields
    )


def make_service(
    owner,
    pool: ResourcePool,
    *,
    version: AIApplicationVersion | None = None,
    flavor: Flavor | None = None,
    name: str = "svc-one",
    status: str = ServiceStatus.RUNNING,
    envs: dict | None = None,
    instance_count: int = 1,
    **fields,
) -> Service:
    """A stored service in `status` with one version configuration (weight 100),
    as a deploy leaves it, but no instances; without a version, no configuration."""
    service = Service.objects.create(owner=owner, name=name, pool=pool, status=status, **fields)
    if version is not None:
        ServiceVersionConfig.objects.create(
            service=service,
            app_version=version,
            flavor=flavor or Flavor.objects.get(code="cpu.1u512m"),
            weight=100,
            instance_count=instance_count,
            envs=envs or {},
        )
    return service


def add_instance(service: Service, *, index: int = 0, host_port: int = 32768, is_healthy: bool = True) -> Instance:
    """A Running instance row of the service's only configuration (no container)."""
    config = service.configs.get()
    return Instance.objects.create(
        service=service,
        config=config,
        index=index,
        node=Node.objects.get(pool=service.pool),
        container_name=f"rts-{service.id}-0-{index}",
        host_port=host_port,
        state=InstanceState.RUNNING,
        is_healthy=is_healthy,
    )


def add_event(service: Service, message: str, **fields) -> ServiceEvent:
    return ServiceEvent.objects.create(service=service, message=message, **fields)


def deploy_data(version, **overrides) -> dict:
    """The body of a Deploy request (form or API) for one configuration of `version`."""
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


def create_service(owner, version, **overrides) -> Service:
    """service_create with deploy_data(version, **overrides), as the Deploy form
    would: a Deploying service, its deploy enqueued on commit."""
    from services.actions import service_create
    from services.validation import parse_deploy_request

    request = parse_deploy_request(owner=owner, data=deploy_data(version, **overrides))
    return service_create(owner=owner, request=request)


def make_staff(username: str = "operator"):
    """A staff user (an operator), password `<username>-pass-123`."""
    user = make_user(username)
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    return user


def place_instance(
    service: Service, node: Node, *, index: int = 0, state: str = InstanceState.RUNNING, config=None
) -> Instance:
    """An instance row of the service's configuration (its only one unless given)
    placed on `node`, whatever pool that node is in (no container)."""
    config = config or service.configs.get()
    return Instance.objects.create(
        service=service,
        config=config,
        index=index,
        node=node,
        container_name=f"rts-{service.id}-{config.position}-{index}",
        state=state,
    )
