"""Translate the console's HTML forms to and from the plain request structures
that services.validation checks; no rules live here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.http import QueryDict

from pools.selectors import flavor_options_for_pool, pool_list_for
from services.selectors import deployable_versions_for

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def deploy_data_from_post(post: QueryDict) -> dict[str, Any]:
    env_rows = [
        {"key": key.strip(), "value": value}
        for key, value in zip(post.getlist("env_key"), post.getlist("env_value"), strict=False)
        if key.strip() or value
    ]
    return {
        "name": post.get("name", ""),
        "description": post.get("description", ""),
        "pool": post.get("pool", ""),
        "timeout_minutes": post.get("timeout_minutes", ""),
        "websocket": post.get("websocket") == "on",
        "configs": [
            {
                "app_version": post.get("app_version", ""),
                "flavor": post.get("flavor", ""),
                "instance_count": post.get("instance_count", ""),
                "weight": 100,
                "envs": env_rows,
            }
        ],
    }


def _flatten_errors(errors: dict[str, list[str]]) -> dict[str, list[str]]:
    """`configs.0.flavor` → `flavor`: the wizard shows one version configuration.
    `__all__` → `general`, since templates cannot read names starting with `_`."""
    flat: dict[str, list[str]] = {}
    for key, messages in errors.items():
        short = key.split(".", 2)[2] if key.startswith("configs.0.") else key
        short = "general" if short == "__all__" else short
        flat.setdefault(short, []).extend(messages)
    return flat


def deploy_form_context(
    user: User, data: dict[str, Any] | None, errors: dict[str, list[str]], *, version_id: str = ""
) -> dict[str, Any]:
    """The Deploy form's context; a fresh form chooses no version, unless
    `version_id` names one of the user's Normal versions (the Deploy link of a version)."""
    pools = list(pool_list_for(user).prefetch_related("nodes"))
    versions = list(deployable_versions_for(user))
    chosen = version_id if any(str(version.id) == version_id for version in versions) else ""
    data = data or {
        "name": "",
        "description": "",
        "pool": str(pools[0].id) if pools else "",
        "timeout_minutes": settings.SERVICE_TIMEOUT_DEFAULT_MINUTES,
        "websocket": False,
        "configs": [{"app_version": chosen, "flavor": "", "instance_count": 1, "envs": []}],
    }
    config = data["configs"][0]
    selected_pool = next((pool for pool in pools if str(pool.id) == str(data["pool"])), None)
    flavor_options = flavor_options_for_pool(selected_pool)
    selected_flavor = config["flavor"] or next((o.flavor.code for o in flavor_options if o.is_available), "")
    env_rows = list(config["envs"]) or [{"key": "", "value": ""}]
    return {
        "data": data,
        "config": config,
        "errors": _flatten_errors(errors),
        "pools": pools,
        "has_public_pool": any(pool.is_public for pool in pools),
        "flavor_options": flavor_options,
        "selected_flavor": selected_flavor,
        "versions": versions,
        "env_rows": env_rows,
        "max_instances": settings.MAX_INSTANCES_PER_VERSION,
        "timeout_min": settings.SERVICE_TIMEOUT_MIN_MINUTES,
        "timeout_max": settings.SERVICE_TIMEOUT_MAX_MINUTES,
    }


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
