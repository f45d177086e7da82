"""Translate the console's HTML forms to and from the plain request structures
that services.validation checks; no rules live here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.http import QueryDict

from pools.models import Flavor, ResourcePool
from pools.quotas import allowance_of, holding_of
from pools.selectors import (
    FlavorOption,
    Resources,
    flavor_options_for_pool,
    instance_need,
    node_capacity_list,
    pool_list_for,
    pool_usable_nodes,
    usage_sum,
)
from services.choices import ConfigPhase
from services.selectors import deployable_versions_for
from services.validation import AUTO_STOP_HOURS

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from services.models import Service


# The Deploy form posts one block of fields per version row. The first row's
# fields carry the bare names the one-version form always posted (`app_version`,
# `flavor`, …), so links, scripts and the bench that post one version still
# work; each added row prefixes them (`r2-app_version`). `rows` lists the
# prefixes in the order the rows stand on the page, which is the order of
# `configs`, so `configs.<n>` errors land on the n-th row.
ROW_PREFIX_RE = re.compile(r"^(?:r[0-9]{1,3}-)?$")
ROW_FIELD_LABELS = {
    "app_version": "AI application and version",
    "weight": "Traffic ratio",
    "flavor": "Specification",
    "instance_count": "Compute nodes",
    "envs": "Environment variables",
}
_CONFIG_ERROR_KEY = re.compile(r"^configs\.(\d+)\.(\w+)$")


def _row_prefixes(params: QueryDict) -> list[str]:
    """The posted row prefixes that are well formed, each once, in page order;
    a post without any is the one-version form."""
    prefixes = [prefix for prefix in params.getlist("rows") if ROW_PREFIX_RE.match(prefix)]
    return list(dict.fromkeys(prefixes)) or [""]


def _row_prefix(position: int) -> str:
    return "" if position == 0 else f"r{position + 1}-"


def _configs_from_post(post: QueryDict) -> list[dict[str, Any]]:
    configs = []
    for prefix in _row_prefixes(post):
        env_keys = post.getlist(prefix + "env_key")
        env_values = post.getlist(prefix + "env_value")
        configs.append(
            {
                "app_version": post.get(prefix + "app_version", ""),
                "flavor": post.get(prefix + "flavor", ""),
                "instance_count": post.get(prefix + "instance_count", ""),
                # Missing only from posts of the one-version form: all the traffic.
                "weight": post.get(prefix + "weight", ""),
                "envs": [
                    {"key": key.strip(), "value": value}
                    for key, value in zip(env_keys, env_values, strict=False)
                    if key.strip() or value
                ],
            }
        )
    return configs


def deploy_data_from_post(post: QueryDict) -> dict[str, Any]:
    configs = _configs_from_post(post)
    return {
        "name": post.get("name", ""),
        "description": post.get("description", ""),
        "pool": post.get("pool", ""),
        "timeout_minutes": post.get("timeout_minutes", ""),
        "websocket": post.get("websocket") == "on",
        "traffic_limit": post.get("traffic_limit", "").strip(),
        "auto_stop_hours": post.get("auto_stop_hours", ""),
        "configs": configs,
        "multi_pool": post.get("multi_pool") == "on",
        "second_pool": post.get("second_pool", ""),
    }


def _split_errors(
    errors: dict[str, list[str]], row_count: int
) -> tuple[dict[str, list[str]], list[dict[str, list[str]]]]:
    """The form's own errors by field (`__all__` → `general`, since templates
    cannot read names starting with `_`), and each row's by its field
    (`configs.1.weight` → the second row's `weight`)."""
    flat: dict[str, list[str]] = {}
    by_row: list[dict[str, list[str]]] = [{} for _ in range(row_count)]
    for key, messages in errors.items():
        match = _CONFIG_ERROR_KEY.match(key)
        if match and int(match.group(1)) < row_count:
            by_row[int(match.group(1))].setdefault(match.group(2), []).extend(messages)
        else:
            flat.setdefault("general" if key == "__all__" else key, []).extend(messages)
    return flat, by_row


def _first_available(flavor_options: list[FlavorOption], *, is_added_row: bool) -> str:
    # An added row makes a gray launch, which free specifications cannot serve,
    # so it starts on the first paid one.
    for option in flavor_options:
        if option.is_available and not (is_added_row and option.flavor.is_free):
            return option.flavor.code
    return ""


def _version_row(
    position: int,
    prefix: str,
    config: dict[str, Any],
    errors: dict[str, list[str]],
    flavor_options: list[FlavorOption],
    *,
    is_added_row: bool = False,
) -> dict[str, Any]:
    return {
        "prefix": prefix,
        "number": position + 1,
        "config": config,
        "errors": errors,
        "selected_flavor": config["flavor"] or _first_available(flavor_options, is_added_row=is_added_row),
        "env_rows": list(config["envs"]) or [{"key": "", "value": ""}],
    }


def deploy_form_context(
    user: User, data: dict[str, Any] | None, errors: dict[str, list[str]], *, version_id: str = ""
) -> dict[str, Any]:
    """The Deploy form's context; a fresh form has one version row that chooses
    no version, unless `version_id` names one of the user's Normal versions (the
    Deploy link of a version). A form sent back keeps every row as it was posted."""
    pools = list(pool_list_for(user).prefetch_related("nodes"))
    versions = list(deployable_versions_for(user))
    chosen = version_id if any(str(version.id) == version_id for version in versions) else ""
    data = data or {
        "name": "",
        "description": "",
        "pool": str(pools[0].id) if pools else "",
        "timeout_minutes": settings.SERVICE_TIMEOUT_DEFAULT_MINUTES,
        "websocket": False,
        "traffic_limit": "",
        "auto_stop_hours": "",
        "configs": [{"app_version": chosen, "flavor": "", "instance_count": 1, "weight": 100, "envs": []}],
    }
    data.setdefault("traffic_limit", "")
    data.setdefault("auto_stop_hours", "")
    data.setdefault("multi_pool", False)
    data.setdefault("second_pool", "")
    selected_pool = next((pool for pool in pools if str(pool.id) == str(data["pool"])), None)
    flavor_options = flavor_options_for_pool(selected_pool)
    form_errors, rows = _version_rows(data["configs"], errors, flavor_options)
    return {
        "data": data,
        "errors": form_errors,
        "rows": rows,
        "is_several": len(rows) > 1,
        "row_error_summary": _row_error_summary(rows),
        "pools": pools,
        "has_public_pool": any(pool.is_public for pool in pools),
        # Multi-pool load balancing is offered to a user with two dedicated pools.
        "dedicated_pools": [pool for pool in pools if not pool.is_public],
        "flavor_options": flavor_options,
        "versions": versions,
        "max_instances": settings.MAX_INSTANCES_PER_VERSION,
        "max_rows": settings.MAX_CONFIGS_PER_SERVICE,
        "auto_stop_choices": AUTO_STOP_HOURS,
        "timeout_min": settings.SERVICE_TIMEOUT_MIN_MINUTES,
        "timeout_max": settings.SERVICE_TIMEOUT_MAX_MINUTES,
    }


def deploy_added_row_context(user: User, params: QueryDict) -> dict[str, Any]:
    """The context of one version row added to the Deploy form: its prefix is
    one no row on the page uses, its specifications are those of the pool chosen now."""
    taken = _row_prefixes(params)
    number = 1 + max(int(prefix[1:-1]) if prefix else 1 for prefix in taken)
    pool_id = params.get("pool", "")
    pool = pool_list_for(user).filter(id=pool_id).prefetch_related("nodes").first() if pool_id.isdigit() else None
    flavor_options = flavor_options_for_pool(pool)
    config = {"app_version": "", "flavor": "", "instance_count": 1, "weight": 0, "envs": []}
    versions = deployable_versions_for(user)
    application = params.get("application", "")
    if application.isdigit():
        # The Configuration Updates tab: a service's versions are all of one AI application.
        versions = versions.filter(application_id=int(application))
    return {
        "row": _version_row(len(taken), f"r{number}-", config, {}, flavor_options, is_added_row=True),
        "is_several": True,
        "flavor_options": flavor_options,
        "versions": list(versions),
        "max_instances": settings.MAX_INSTANCES_PER_VERSION,
    }


def deploy_flavors_context(user: User, params: QueryDict) -> dict[str, Any]:
    """Each row's specifications for the pool chosen now, keeping the one each row had checked."""
    pool_id = params.get("pool", "")
    pool = pool_list_for(user).filter(id=pool_id).prefetch_related("nodes").first() if pool_id.isdigit() else None
    flavor_options = flavor_options_for_pool(pool)
    rows = [
        {"prefix": prefix, "selected_flavor": params.get(prefix + "flavor", "")} for prefix in _row_prefixes(params)
    ]
    return {"flavor_options": flavor_options, "rows": rows}


def update_data_from_post(post: QueryDict) -> dict[str, Any]:
    """The Configuration Updates tab's post, as parse_update_request takes it."""
    return {"description": post.get("description", ""), "configs": _configs_from_post(post)}


def update_form_context(service: Service, data: dict[str, Any] | None, errors: dict[str, list[str]]) -> dict[str, Any]:
    """The Configuration Updates tab's form: the service's description and
    version rows as they are now (or as posted), with the versions of its AI
    application and the specifications of its pool."""
    configs = list(
        service.configs.filter(phase=ConfigPhase.SERVING).select_related("flavor", "app_version").order_by("position")
    )
    application_id = configs[0].app_version.application_id if configs else None
    data = data or {
        "description": service.description,
        "configs": [
            {
                "app_version": config.app_version_id,
                "flavor": config.flavor.code,
                "instance_count": config.instance_count,
                "weight": config.weight,
                "envs": [{"key": key, "value": value} for key, value in (config.envs or {}).items()],
            }
            for config in configs
        ],
    }
    flavor_options = flavor_options_for_pool(service.pool)
    form_errors, rows = _version_rows(data["configs"], errors, flavor_options)
    return {
        "update_data": data,
        "update_errors": form_errors,
        "rows": rows,
        "is_several": len(rows) > 1,
        "row_error_summary": _row_error_summary(rows),
        "flavor_options": flavor_options,
        "versions": list(deployable_versions_for(service.owner).filter(application_id=application_id)),
        "application_id": application_id,
        "max_instances": settings.MAX_INSTANCES_PER_VERSION,
        "max_rows": settings.MAX_CONFIGS_PER_SERVICE,
    }


def _version_rows(
    configs: list[dict[str, Any]], errors: dict[str, list[str]], flavor_options: list[FlavorOption]
) -> tuple[dict[str, list[str]], list[dict[str, Any]]]:
    """The form's own errors, and one row per version configuration with its errors."""
    form_errors, row_errors = _split_errors(errors, len(configs))
    rows = [_version_row(n, _row_prefix(n), config, row_errors[n], flavor_options) for n, config in enumerate(configs)]
    return form_errors, rows


def _row_error_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row's errors, shown atop a form of several rows, so a long form says at once which row to fix."""
    if len(rows) < 2:
        return []
    return [
        {"row": row, "field": field, "label": ROW_FIELD_LABELS.get(field, field), "message": message}
        for row in rows
        for field, messages in row["errors"].items()
        for message in messages
    ]


@dataclass(frozen=True)
class DeployEstimate:
    """What a deploy would take, as the wizard shows it before submit."""

    pool: ResourcePool
    need: Resources
    instances: int
    pool_free: Resources
    pool_total: Resources
    quota_vcpus_used: Decimal
    quota_vcpus_added: Decimal
    quota_vcpus: int
    takes_quota: bool

    @property
    def fits_pool(self) -> bool:
        return self.pool_free.covers(self.need)

    @property
    def fits_quota(self) -> bool:
        return self.quota_vcpus_used + self.quota_vcpus_added <= self.quota_vcpus


def deploy_estimate_context(user: User, params: QueryDict) -> dict[str, Any]:
    """The wizard's "this deploy takes" line, from the rows as they stand (a
    row with no specification or a bad count is left out; the server checks
    everything again on submit)."""
    pool_id = params.get("pool", "")
    pool = pool_list_for(user).filter(id=pool_id).first() if pool_id.isdigit() else None
    if pool is None:
        return {"estimate": None}
    flavors = {flavor.code: flavor for flavor in Flavor.objects.all()}
    need, instances, vcpus = Resources(), 0, Decimal(0)
    for prefix in _row_prefixes(params):
        flavor = flavors.get(params.get(prefix + "flavor", ""))
        count = params.get(prefix + "instance_count", "1").strip() or "1"
        if flavor is None or not count.isdigit() or not 1 <= int(count) <= settings.MAX_INSTANCES_PER_VERSION:
            continue
        need = need + instance_need(flavor) * int(count)
        instances += int(count)
        vcpus += flavor.cpus * int(count)
    usage = usage_sum(node_capacity_list(pool_usable_nodes(pool), pool))
    allowance, held = allowance_of(user), holding_of(user)
    estimate = DeployEstimate(
        pool=pool,
        need=need,
        instances=instances,
        pool_free=usage.free,
        pool_total=usage.total,
        quota_vcpus_used=held.vcpus,
        quota_vcpus_added=vcpus if pool.is_public else Decimal(0),
        quota_vcpus=allowance.vcpus,
        takes_quota=pool.is_public,
    )
    return {"estimate": estimate if instances else None}


def version_data_from_post(post: QueryDict) -> dict[str, Any]:
    return {
        "application_name": post.get("application_name", ""),
        "description": post.get("description", ""),
        "version": post.get("version", ""),
        "image": post.get("image", ""),
        "container_port": post.get("container_port", ""),
        "health_path": post.get("health_path", ""),
        "predict_path": post.get("predict_path", ""),
        "websocket": post.get("websocket") == "on",
    }
