"""The one set of rules for a service request.

The Deploy form and the REST API both turn their input into the plain
structure `parse_deploy_request` takes, so a rule reads the same everywhere.
Error keys are field names; a version configuration's fields are keyed
`configs.<n>.<field>`, and a rule across configurations is named on the row
and field to change (the Deploy form shows it there).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings

from pools.models import Flavor, ResourcePool
from pools.quotas import allowance_of, service_limit_message
from pools.selectors import FlavorOption, flavor_options_for_pool, pool_list_for
from services.choices import VersionStatus
from services.models import AIApplication, AIApplicationVersion, DataCollectionRule, Service

if TYPE_CHECKING:
    from django.contrib.auth.models import User

SERVICE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_ENV_VARS = 100
MAX_ENV_VALUE_LENGTH = 4096


class RequestInvalid(Exception):
    def __init__(self, errors: dict[str, list[str]]):
        super().__init__("; ".join(f"{key}: {' '.join(msgs)}" for key, msgs in errors.items()))
        self.errors = errors


@dataclass
class VersionConfigRequest:
    app_version: AIApplicationVersion
    flavor: Flavor
    instance_count: int
    weight: int
    envs: dict[str, str]


@dataclass
class DeployRequest:
    name: str
    description: str
    pool: ResourcePool
    timeout_minutes: int
    is_websocket: bool
    configs: list[VersionConfigRequest] = field(default_factory=list)
    # Calls per second over all gateway processes; None: no limit.
    traffic_limit: int | None = None
    # Hours after it turns Running that the service stops by itself; None: never.
    auto_stop_hours: int | None = None
    # Multi-pool load balancing: the second dedicated pool; None: one pool.
    second_pool: ResourcePool | None = None


class _Errors(dict[str, list[str]]):
    """Messages by field; a field keeps its first few, so a huge bad request gets a short answer."""

    MAX_PER_FIELD = 5

    def add(self, key: str, message: str) -> None:
        messages = self.setdefault(key, [])
        if len(messages) < self.MAX_PER_FIELD:
            messages.append(message)
        elif len(messages) == self.MAX_PER_FIELD:
            messages.append("(more problems of this field are not listed)")


def _as_int(
    value: Any, errors: _Errors, key: str, label: str, low: int, high: int, default: int | None = None
) -> int | None:
    if value is None or value == "":
        if default is not None:
            return default
        errors.add(key, f"{label} is required.")
        return None
    if isinstance(value, bool):
        errors.add(key, f"{label} must be a whole number.")
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        errors.add(key, f"{label} must be a whole number.")
        return None
    if not low <= number <= high:
        errors.add(key, f"{label} must be between {low} and {high}.")
        return None
    return number


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "on", "yes")


def validate_service_name(name: str, errors: _Errors, *, owner: User, exclude_id: uuid.UUID | None = None) -> None:
    if not name:
        errors.add("name", "Name is required.")
    elif len(name) > 64:
        errors.add("name", "Name must be at most 64 characters.")
    elif not SERVICE_NAME_RE.match(name):
        errors.add("name", "Name must start with a letter and contain only letters, digits, '-' and '_'.")
    else:
        taken = Service.objects.filter(owner=owner, name=name)
        if exclude_id is not None:
            taken = taken.exclude(id=exclude_id)
        if taken.exists():
            errors.add("name", f"You already have a service named {name}.")


def parse_description(raw: Any, errors: _Errors) -> str:
    """A one-line description of at most 100 printable characters."""
    description = str(raw or "").strip()
    if len(description) > 100:
        errors.add("description", "Description must be at most 100 characters.")
    elif not description.isprintable():
        errors.add("description", "Description must be printable text (no control characters).")
    return description


def _is_printable(text: str) -> bool:
    return text.replace("\t", " ").isprintable()


def parse_envs(raw: Any, errors: _Errors, key: str) -> dict[str, str]:
    """Environment variables as a dict, from a dict or a list of {key, value} rows."""
    if raw in (None, ""):
        return {}
    if isinstance(raw, Mapping):
        rows = [(k, v) for k, v in raw.items()]
    elif isinstance(raw, list):
        rows = []
        for row in raw:
            if not isinstance(row, Mapping):
                errors.add(key, "Environment variables must be key/value pairs.")
                return {}
            rows.append((row.get("key", ""), row.get("value", "")))
    else:
        errors.add(key, "Environment variables must be key/value pairs.")
        return {}
    envs: dict[str, str] = {}
    if len(rows) > MAX_ENV_VARS:
        errors.add(key, f"At most {MAX_ENV_VARS} environment variables are allowed.")
        return {}
    for env_key, env_value in rows:
        if not isinstance(env_key, str):
            errors.add(key, "Environment variable names must be strings.")
            continue
        env_key = env_key.strip()
        if env_value is None:
            env_value = ""
        if not isinstance(env_value, str):
            errors.add(key, f"The value of {env_key or 'a variable'} must be a string.")
            continue
        if not env_key:
            errors.add(key, "Environment variable names cannot be empty.")
        elif len(env_key) > 128 or not ENV_NAME_RE.match(env_key):
            errors.add(
                key,
                f"Environment variable name {env_key!r} is not valid: use letters, digits and '_', "
                "not starting with a digit (at most 128 characters).",
            )
        elif env_key in envs:
            errors.add(key, f"Environment variable {env_key} is set twice.")
        elif len(env_value) > MAX_ENV_VALUE_LENGTH or not _is_printable(env_value):
            errors.add(
                key,
                f"The value of {env_key} must be at most {MAX_ENV_VALUE_LENGTH} printable characters "
                "(no control characters but tab).",
            )
        else:
            envs[env_key] = env_value
    return envs


def parse_deploy_request(*, owner: User, data: Mapping[str, Any]) -> DeployRequest:
    """Check a service request against every rule; raise RequestInvalid naming each bad field.

    `data` holds name, description, pool (id or name), timeout_minutes,
    websocket, and configs: a list of {app_version (id), flavor (code),
    instance_count, weight, envs}.
    """
    errors = _Errors()

    name = str(data.get("name") or "").strip()
    validate_service_name(name, errors, owner=owner)

    description = parse_description(data.get("description"), errors)

    # A quick answer for the form; service_create counts again under a lock.
    max_services = allowance_of(owner).max_services
    if Service.objects.filter(owner=owner).count() >= max_services:
        errors.add("__all__", service_limit_message(owner, max_services))

    pool = _parse_pool(data.get("pool"), errors, owner=owner)
    timeout_minutes = _as_int(
        data.get("timeout_minutes"),
        errors,
        "timeout_minutes",
        "Timeout (minutes)",
        settings.SERVICE_TIMEOUT_MIN_MINUTES,
        settings.SERVICE_TIMEOUT_MAX_MINUTES,
        default=settings.SERVICE_TIMEOUT_DEFAULT_MINUTES,
    )
    is_websocket = _as_bool(data.get("websocket", False))
    traffic_limit = parse_traffic_limit(data.get("traffic_limit"), errors, is_websocket=is_websocket)
    auto_stop_hours = parse_auto_stop_hours(data.get("auto_stop_hours"), errors)

    second_pool = None
    if _as_bool(data.get("multi_pool", False)):
        second_pool = _parse_second_pool(data.get("second_pool"), errors, owner=owner, pool=pool)
    configs = parse_config_rows(
        data.get("configs"), errors, owner=owner, pool=pool, is_websocket=is_websocket, second_pool=second_pool
    )

    if errors:
        raise RequestInvalid(dict(errors))
    # Without errors, each of these was parsed.
    assert pool is not None and timeout_minutes is not None
    return DeployRequest(
        name=name,
        description=description,
        pool=pool,
        timeout_minutes=timeout_minutes,
        is_websocket=is_websocket,
        configs=configs,
        traffic_limit=traffic_limit,
        auto_stop_hours=auto_stop_hours,
        second_pool=second_pool,
    )


def _node_specs(pool: ResourcePool) -> list[tuple[int, int, int]]:
    return sorted((n.cpu_count, n.memory_mib, n.gpu_count) for n in pool.nodes.all() if n.is_enabled)


def _specs_text(pool: ResourcePool) -> str:
    specs = _node_specs(pool)
    if not specs:
        return "no node"
    return ", ".join(f"{cpus} vCPUs, {memory // 1024} GiB, {gpus} GPUs" for cpus, memory, gpus in specs)


def _parse_second_pool(
    pool_ref: Any, errors: _Errors, *, owner: User, pool: ResourcePool | None
) -> ResourcePool | None:
    """The second dedicated pool of a multi-pool service, or None with an error:
    both pools dedicated and the owner's, different, with the same node specification."""
    if pool is not None and pool.is_public:
        errors.add(
            "multi_pool",
            f"Multi-pool load balancing runs a service in two dedicated resource pools; {pool.name} is public.",
        )
        return None
    if pool is not None and pool.is_swarm:
        errors.add(
            "multi_pool",
            f"Multi-pool load balancing runs a service in two pools of Docker engines; {pool.name} is a Swarm "
            "pool, whose swarm spreads the instances over its nodes itself.",
        )
        return None
    if pool_ref in (None, ""):
        errors.add("second_pool", "Choose the second dedicated resource pool.")
        return None
    lookup = {"id": pool_ref} if str(pool_ref).isdigit() else {"name": pool_ref}
    second = pool_list_for(owner).filter(is_public=False, **lookup).prefetch_related("nodes").first()
    if second is None:
        errors.add("second_pool", f"Resource pool {pool_ref} is not one of your dedicated pools.")
        return None
    if pool is not None and second.id == pool.id:
        errors.add("second_pool", "Choose a second pool other than the first.")
        return None
    if second.is_swarm:
        errors.add("second_pool", f"{second.name} is a Swarm pool; the second pool must be a pool of Docker engines.")
        return None
    if pool is not None and _node_specs(pool) != _node_specs(second):
        errors.add(
            "second_pool",
            f"The two pools need the same node specification: {pool.name} has {_specs_text(pool)}; "
            f"{second.name} has {_specs_text(second)}.",
        )
        return None
    return second


def _options_in_both(
    first: list[FlavorOption], second: list[FlavorOption], second_pool: ResourcePool
) -> dict[str, FlavorOption]:
    """Each flavor available only where both pools can run it, with the first reason against it."""
    other = {option.flavor.code: option for option in second}
    merged = {}
    for option in first:
        partner = other.get(option.flavor.code)
        if option.is_available and partner is not None and not partner.is_available:
            option = FlavorOption(option.flavor, False, f"in the second pool {second_pool.name}: {partner.reason}")
        merged[option.flavor.code] = option
    return merged


def parse_config_rows(
    raw_configs: Any,
    errors: _Errors,
    *,
    owner: User,
    pool: ResourcePool | None,
    is_websocket: bool,
    application_id: int | None = None,
    running: frozenset[tuple[int, str]] = frozenset(),
    second_pool: ResourcePool | None = None,
) -> list[VersionConfigRequest]:
    """The version rows of a deploy or an update, each checked alone (named
    `configs.<n>.<field>`) and together: whole ratios summing to 100, each
    version once, all of one AI application (`application_id` when the service
    has one already), no free specification in a gray launch, WebSocket-compliant
    versions for a WebSocket service. The Deploy wizard, the Configuration
    Updates tab and the REST API all come through here."""
    if not isinstance(raw_configs, list) or not raw_configs:
        errors.add("configs", "Choose at least one AI application version.")
        return []
    if len(raw_configs) > settings.MAX_CONFIGS_PER_SERVICE:
        # Refused before any row is read: each row costs queries.
        errors.add(
            "configs",
            f"At most {settings.MAX_CONFIGS_PER_SERVICE} AI application versions per service; "
            f"the request has {len(raw_configs)}.",
        )
        return []

    flavor_options = {option.flavor.code: option for option in flavor_options_for_pool(pool)} if pool else {}
    if pool is not None and second_pool is not None:
        flavor_options = _options_in_both(
            flavor_options_for_pool(pool), flavor_options_for_pool(second_pool), second_pool
        )
    configs: list[VersionConfigRequest] = []
    row_versions: list[AIApplicationVersion | None] = []
    for n, raw in enumerate(raw_configs):
        app_version, config = _parse_config_row(
            raw, errors, f"configs.{n}.", owner=owner, pool=pool, flavor_options=flavor_options, running=running
        )
        row_versions.append(app_version)
        if config is not None and second_pool is not None and (config.instance_count % 2 or config.instance_count < 2):
            errors.add(
                f"configs.{n}.instance_count",
                "With multi-pool load balancing, compute nodes must be a multiple of 2 and at least 2 "
                "(half of them in each pool).",
            )
            config = None
        if config is not None:
            configs.append(config)
    # Which versions the rows name is checked even when another field of a row
    # is bad, so a user learns of a repeated version in the same answer.
    _check_versions_together(row_versions, errors, application_id=application_id)
    if len(configs) == len(raw_configs):
        _check_configs_together(configs, errors, is_websocket=is_websocket)
    return configs


@dataclass
class UpdateRequest:
    """What a user asked to change on a service; None: leave it as it is."""

    description: str | None = None
    configs: list[VersionConfigRequest] | None = None


def parse_update_request(*, service: Service, data: Mapping[str, Any]) -> UpdateRequest:
    """Check a change of a deployed service; raise RequestInvalid naming each bad field.

    `data` may hold description and configs (rows as parse_deploy_request
    takes them); what it leaves out stays. The versions stay of the service's AI
    application, and WebSocket, fixed at deployment, cannot be changed.
    """
    errors = _Errors()
    if not any(key in data for key in ("description", "configs", "websocket")):
        errors.add("__all__", "Nothing to change: send a new description, new version configurations, or both.")
    description = parse_description(data.get("description"), errors) if "description" in data else None
    if "websocket" in data and _as_bool(data.get("websocket")) != service.is_websocket:
        errors.add(
            "websocket",
            "WebSocket is fixed when a service is deployed; deploy a new service to "
            + ("call it over HTTP." if service.is_websocket else "call it over WebSocket."),
        )
    configs = None
    if "configs" in data:
        application_id = (
            service.configs.order_by("position").values_list("app_version__application_id", flat=True).first()
        )
        running = frozenset(service.configs.values_list("app_version_id", "flavor__code"))
        configs = parse_config_rows(
            data.get("configs"),
            errors,
            owner=service.owner,
            pool=service.pool,
            is_websocket=service.is_websocket,
            application_id=application_id,
            running=running,
            second_pool=service.second_pool,
        )
    if errors:
        raise RequestInvalid(dict(errors))
    return UpdateRequest(description=description, configs=configs)


TRAFFIC_LIMIT_MAX = 100_000
AUTO_STOP_HOURS = (1, 2, 4, 8, 24)


def parse_traffic_limit(value: Any, errors: _Errors, *, is_websocket: bool) -> int | None:
    """Optional calls per second (1–100,000); empty or absent: no limit. Not for WebSocket services."""
    if value is None or value == "":
        return None
    limit = _as_int(value, errors, "traffic_limit", "Traffic limit (calls per second)", 1, TRAFFIC_LIMIT_MAX)
    if limit is not None and is_websocket:
        errors.add("traffic_limit", "A WebSocket service cannot have a traffic limit: its calls are connections.")
        return None
    return limit


def hours_text(hours: int) -> str:
    return f"{hours} hour{'s' if hours != 1 else ''}"


def parse_auto_stop_change(value: Any) -> int | None:
    """The auto-stop hours a running service is given (None: off); RequestInvalid if not a choice."""
    errors = _Errors()
    hours = parse_auto_stop_hours(value, errors)
    if errors:
        raise RequestInvalid(dict(errors))
    return hours


def parse_auto_stop_hours(value: Any, errors: _Errors) -> int | None:
    """Optional hours (1, 2, 4, 8 or 24) after which a Running service stops by itself."""
    if value is None or value == "" or value is False:
        return None
    if isinstance(value, bool) or str(value).strip() not in {str(hours) for hours in AUTO_STOP_HOURS}:
        errors.add("auto_stop_hours", "Auto stop must be off or one of 1, 2, 4, 8 or 24 hours.")
        return None
    return int(str(value).strip())


def _parse_pool(pool_ref: Any, errors: _Errors, *, owner: User) -> ResourcePool | None:
    """The pool named by id or name among those the owner may use, or None with an error."""
    visible_pools = pool_list_for(owner)
    if pool_ref in (None, ""):
        if not visible_pools.exists():
            errors.add(
                "pool",
                "No public resource pool is available. Use a dedicated resource pool or ask an administrator "
                "to create a public one.",
            )
        else:
            errors.add("pool", "Resource pool is required.")
        return None
    lookup = {"id": pool_ref} if str(pool_ref).isdigit() else {"name": pool_ref}
    pool = visible_pools.filter(**lookup).prefetch_related("nodes").first()
    if pool is None:
        errors.add("pool", f"Resource pool {pool_ref} does not exist or is not yours.")
    return pool


def _parse_config_row(
    raw: Any,
    errors: _Errors,
    prefix: str,
    *,
    owner: User,
    pool: ResourcePool | None,
    flavor_options: dict[str, FlavorOption],
    running: frozenset[tuple[int, str]] = frozenset(),
) -> tuple[AIApplicationVersion | None, VersionConfigRequest | None]:
    """One row of `configs` (a version with its traffic ratio, specification,
    compute nodes and environment): its version, or None when that is bad, and
    the whole row, or None when any of its fields is bad."""
    if not isinstance(raw, Mapping):
        errors.add(prefix + "app_version", "Each version configuration must be an object.")
        return None, None
    app_version = _parse_app_version(raw.get("app_version"), errors, prefix + "app_version", owner=owner)

    flavor = None
    flavor_ref = raw.get("flavor")
    if flavor_ref in (None, ""):
        errors.add(prefix + "flavor", "Specification is required.")
    elif pool is not None:
        option = flavor_options.get(str(flavor_ref))
        if option is None:
            errors.add(prefix + "flavor", f"Specification {flavor_ref} does not exist.")
        elif not option.is_available and (app_version and app_version.id, str(flavor_ref)) not in running:
            errors.add(prefix + "flavor", f"Specification {flavor_ref} cannot be used now: {option.reason}.")
        else:
            flavor = option.flavor

    instance_count = _as_int(
        raw.get("instance_count"),
        errors,
        prefix + "instance_count",
        "Compute nodes",
        1,
        settings.MAX_INSTANCES_PER_VERSION,
        default=1,
    )
    weight = _as_int(raw.get("weight"), errors, prefix + "weight", "Traffic ratio (%)", 0, 100, default=100)
    envs = parse_envs(raw.get("envs"), errors, prefix + "envs")
    if app_version and flavor and instance_count is not None and weight is not None:
        return app_version, VersionConfigRequest(app_version, flavor, instance_count, weight, envs)
    return app_version, None


def _parse_app_version(version_ref: Any, errors: _Errors, key: str, *, owner: User) -> AIApplicationVersion | None:
    """The owner's Normal version with this id, or None with an error under `key`."""
    if version_ref in (None, ""):
        errors.add(key, "AI application and version is required.")
        return None
    if not str(version_ref).isdigit():
        errors.add(key, f"AI application version {version_ref} does not exist.")
        return None
    app_version = (
        AIApplicationVersion.objects.select_related("application")
        .filter(id=int(version_ref), application__owner=owner)
        .first()
    )
    if app_version is None:
        errors.add(key, f"AI application version {version_ref} does not exist.")
        return None
    if app_version.status != VersionStatus.NORMAL:
        errors.add(key, f"{app_version} is {app_version.get_status_display()}; only Normal versions can be deployed.")
        return None
    return app_version


def _check_versions_together(
    versions: list[AIApplicationVersion | None], errors: _Errors, *, application_id: int | None = None
) -> None:
    """Each version once, all of one AI application (the service's, else the
    first row's): a service splits its traffic between versions of one model.
    Named on the later row."""
    first = next((version for version in versions if version is not None), None)
    if application_id is not None:
        application = AIApplication.objects.filter(id=application_id).first()
    else:
        application = first.application if first is not None else None
    seen: set[int] = set()
    for n, version in enumerate(versions):
        if version is None or application is None:
            continue
        if version.id in seen:
            errors.add(f"configs.{n}.app_version", f"{version} is chosen twice; choose each version once.")
        elif version.application_id != application.id:
            errors.add(
                f"configs.{n}.app_version",
                f"All versions of a service must be of one AI application ({application.name}); {version} is not.",
            )
        seen.add(version.id)


def _check_configs_together(configs: list[VersionConfigRequest], errors: _Errors, *, is_websocket: bool) -> None:
    """The rules that hold across rows, each named on a row: ratios sum to 100
    (named on the last row's ratio, the one a user sets last), no free
    specification in a gray launch (named on each free row), WebSocket-compliant versions."""
    total = sum(config.weight for config in configs)
    if total != 100:
        errors.add(
            f"configs.{len(configs) - 1}.weight", f"Traffic ratios must add up to 100%; they add up to {total}%."
        )
    if len(configs) > 1:
        for n, config in enumerate(configs):
            if config.flavor.is_free:
                errors.add(
                    f"configs.{n}.flavor", "Free specifications do not support a gray launch of several versions."
                )
    if is_websocket:
        for config in configs:
            version = config.app_version
            if not version.is_websocket or version.source != version.Source.CONTAINER_IMAGE:
                errors.add(
                    "websocket",
                    f"WebSocket needs a WebSocket-compliant container-image application; {version} is not.",
                )


APP_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
VERSION_RE = re.compile(r"^\d{1,3}\.\d{1,3}\.\d{1,3}$")
# repository[:tag][@digest], lower-case repository path components as Docker requires
IMAGE_RE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
PATH_RE = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")


@dataclass
class VersionRequest:
    application_name: str
    description: str
    version: str
    image: str
    container_port: int
    health_path: str
    predict_path: str
    is_websocket: bool


def parse_version_request(*, owner: User, data: Mapping[str, Any]) -> VersionRequest:
    """Check an AI application version registration; raise RequestInvalid naming each bad field."""
    errors = _Errors()
    application_name = str(data.get("application_name") or "").strip()
    if not application_name:
        errors.add("application_name", "AI application name is required.")
    elif len(application_name) > 64 or not APP_NAME_RE.match(application_name):
        errors.add(
            "application_name",
            "AI application name must start with a letter, contain only letters, digits, '-' and '_', "
            "and be at most 64 characters.",
        )
    description = parse_description(data.get("description"), errors)

    version = str(data.get("version") or "").strip()
    if not version:
        errors.add("version", "Version is required.")
    elif not VERSION_RE.match(version):
        errors.add("version", "Version must look like 1.0.0 (three numbers separated by dots).")
    elif AIApplicationVersion.objects.filter(
        application__owner=owner, application__name=application_name, version=version
    ).exists():
        errors.add("version", f"{application_name} already has a version {version}.")

    image = str(data.get("image") or "").strip()
    if not image:
        errors.add("image", "Container image is required.")
    elif len(image) > 255 or not IMAGE_RE.match(image):
        errors.add("image", "Container image must be an image reference such as my-model:1.0.0.")

    container_port = _as_int(data.get("container_port"), errors, "container_port", "Container port", 1, 65535, 8080)
    health_path = str(data.get("health_path") or "/health").strip()
    predict_path = str(data.get("predict_path") or "/predict").strip()
    for key, label, value in (
        ("health_path", "Health-check path", health_path),
        ("predict_path", "Predict path", predict_path),
    ):
        if len(value) > 200 or not PATH_RE.match(value):
            errors.add(key, f"{label} must start with '/' and be a URL path of at most 200 characters.")

    if errors:
        raise RequestInvalid(dict(errors))
    assert container_port is not None  # without errors, it was parsed
    return VersionRequest(
        application_name=application_name,
        description=description,
        version=version,
        image=image,
        container_port=container_port,
        health_path=health_path,
        predict_path=predict_path,
        is_websocket=_as_bool(data.get("websocket", False)),
    )


# --- Data collection -------------------------------------------------------------

COLLECTION_KEEP_DAYS_MAX = 30
COLLECTION_KEEP_RECORDS_MAX = 100_000


@dataclass
class CollectionRuleRequest:
    is_enabled: bool
    sample_percent: int
    # A DataCollectionRule.Content value.
    content: str
    keep_days: int | None
    keep_records: int | None


def parse_collection_rule(*, service: Service, data: Mapping[str, Any]) -> CollectionRuleRequest:
    """Check a service's data collection rule; raise RequestInvalid naming each bad field.

    `data` holds is_enabled, sample_percent (1–100), content ("request",
    "response" or "both"), keep_days (1–30, empty: no limit by age) and
    keep_records (1–100,000, empty: no limit by count); one of the two limits
    is needed. Every field is checked whether collection is on or off, so a
    rule saved while off is ready to turn on.
    """
    errors = _Errors()
    is_enabled = _as_bool(data.get("is_enabled", False))
    if is_enabled and service.is_websocket:
        errors.add(
            "is_enabled",
            "A WebSocket service cannot collect data: its calls are connections, not requests with answers.",
        )
    sample_percent = _as_int(data.get("sample_percent"), errors, "sample_percent", "Sampling rate (%)", 1, 100)
    content = str(data.get("content") or "").strip()
    if content not in DataCollectionRule.Content.values:
        errors.add("content", "Choose what to keep: the request, the response, or both.")
    keep_days = keep_records = None
    if data.get("keep_days") not in (None, ""):
        keep_days = _as_int(data.get("keep_days"), errors, "keep_days", "Days to keep", 1, COLLECTION_KEEP_DAYS_MAX)
    if data.get("keep_records") not in (None, ""):
        keep_records = _as_int(
            data.get("keep_records"), errors, "keep_records", "Records to keep", 1, COLLECTION_KEEP_RECORDS_MAX
        )
    has_limit = any(data.get(key) not in (None, "") for key in ("keep_days", "keep_records"))
    if not has_limit:
        errors.add("keep_days", "Set how long records are kept: a number of days, a number of records, or both.")

    if errors:
        raise RequestInvalid(dict(errors))
    assert sample_percent is not None  # without errors, it was parsed
    return CollectionRuleRequest(
        is_enabled=is_enabled,
        sample_percent=sample_percent,
        content=content,
        keep_days=keep_days,
        keep_records=keep_records,
    )
