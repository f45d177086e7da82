"""Translate the API's ModelArts field names to and from the plain request
structures that services.validation checks; no service rules live here, so an
API error carries the very message the console's forms show."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django.conf import settings

from access.forms import TokenRequest, TokenRequestInvalid, token_request_parse
from api.http import ApiError
from pools.selectors import pool_list_for
from services.contract import ErrorCode

if TYPE_CHECKING:
    from django.contrib.auth.models import User

# validation key → API field name
SERVICE_FIELDS = {
    "name": "service_name",
    "description": "description",
    "pool": "pool_name",
    "timeout_minutes": "timeout_minutes",
    "websocket": "websocket",
    "traffic_limit": "traffic_limit",
    "auto_stop_hours": "auto_stop_hours",
    "configs": "config",
    "multi_pool": "multi_pool_lb",
    "second_pool": "second_pool_name",
}
SERVICE_CONFIG_FIELDS = {
    "app_version": "model_id",
    "flavor": "specification",
    "instance_count": "instance_count",
    "weight": "weight",
    "envs": "envs",
}
MODEL_FIELDS = {
    "application_name": "model_name",
    "version": "model_version",
    "description": "description",
    "image": "image",
    "container_port": "port",
    "health_path": "health_path",
    "predict_path": "predict_path",
    "websocket": "websocket",
}
_CONFIG_KEY = re.compile(r"^configs\.(\d+)\.(\w+)$")


def api_errors(errors: dict[str, list[str]], fields: Mapping[str, str]) -> dict[str, list[str]]:
    """Rename the keys of validation errors to the API's field names:
    `name` → `service_name`, `configs.0.flavor` → `config[0].specification`.
    `__all__` (a rule about the request as a whole) keeps its name."""
    renamed: dict[str, list[str]] = {}
    for key, messages in errors.items():
        match = _CONFIG_KEY.match(key)
        if match:
            n, field = match.groups()
            api_key = f"config[{n}].{SERVICE_CONFIG_FIELDS.get(field, field)}"
        else:
            api_key = fields.get(key, key)
        renamed.setdefault(api_key, []).extend(messages)
    return renamed


def validation_error(errors: dict[str, list[str]], fields: Mapping[str, str]) -> ApiError:
    renamed = api_errors(errors, fields)
    summary = "; ".join(f"{key}: {' '.join(messages)}" for key, messages in renamed.items())
    return ApiError(400, ErrorCode.VALIDATION_FAILED, f"The request is invalid. {summary}", renamed)


def _default_pool_ref(user: User, body: Mapping[str, Any]) -> Any:
    """The pool the request names, or the first public pool when it names none
    (ModelArts deploys to the public pool by default). A name made of digits is
    turned into its id, since validation reads a digit string as an id."""
    pool_name = body.get("pool_name")
    if pool_name in (None, ""):
        first_public = pool_list_for(user).filter(is_public=True).first()
        return first_public.id if first_public else ""
    if str(pool_name).isdigit():
        named = pool_list_for(user).filter(name=str(pool_name)).first()
        if named is not None:
            return named.id
    return pool_name


def _configs_from_api(raw_configs: Any) -> Any:
    """`config` rows with the API's field names, as services.validation reads them."""
    if not isinstance(raw_configs, list):
        return raw_configs
    return [
        {
            "app_version": raw.get("model_id"),
            "flavor": raw.get("specification"),
            "instance_count": raw.get("instance_count"),
            "weight": raw.get("weight"),
            "envs": raw.get("envs"),
        }
        if isinstance(raw, Mapping)
        else raw  # validation names the item that is not an object
        for raw in raw_configs
    ]


def deploy_data_from_api(user: User, body: Mapping[str, Any]) -> dict[str, Any]:
    """The `data` parse_deploy_request takes, from a ModelArts-style body."""
    return {
        "name": body.get("service_name"),
        "description": body.get("description"),
        "pool": _default_pool_ref(user, body),
        "timeout_minutes": body.get("timeout_minutes"),
        "websocket": body.get("websocket", False),
        "traffic_limit": body.get("traffic_limit"),
        "auto_stop_hours": body.get("auto_stop_hours"),
        "configs": _configs_from_api(body.get("config")),
        "multi_pool": body.get("multi_pool_lb", False),
        "second_pool": body.get("second_pool_name"),
    }


# The fields of a PUT that change a service (the others, status aside, are fixed at deployment).
UPDATE_FIELDS = ("config", "description", "websocket")


def update_data_from_api(body: Mapping[str, Any]) -> dict[str, Any]:
    """The `data` parse_update_request takes: only the fields the body has."""
    data: dict[str, Any] = {}
    if "description" in body:
        data["description"] = body["description"]
    if "websocket" in body:
        data["websocket"] = body["websocket"]
    if "config" in body:
        data["configs"] = _configs_from_api(body["config"])
    return data


def version_data_from_api(body: Mapping[str, Any]) -> dict[str, Any]:
    """The `data` parse_version_request takes, from a ModelArts-style body."""
    return {
        "application_name": body.get("model_name"),
        "description": body.get("description"),
        "version": body.get("model_version"),
        "image": body.get("image"),
        "container_port": body.get("port"),
        "health_path": body.get("health_path"),
        "predict_path": body.get("predict_path"),
        "websocket": body.get("websocket", False),
    }


TOKEN_FIELDS = {"name": "name", "days": "expires_in_days"}


def token_request_from_api(body: Mapping[str, Any], *, client: str = "") -> tuple[str, str, TokenRequest]:
    """(username, password, the token's name and lifetime) of a token request,
    or ApiError 400. Name and lifetime follow the Access keys page's rules; a
    request without a name gets one after its client (its User-Agent)."""
    errors: dict[str, list[str]] = {}
    username = body.get("username")
    password = body.get("password")
    if not isinstance(username, str) or not username:
        errors["username"] = ["Username is required."]
    if not isinstance(password, str) or not password:
        errors["password"] = ["Password is required."]
    name = body.get("name")
    days = body.get("expires_in_days")
    data = {
        "name": default_token_name(client) if name in (None, "") else str(name),
        "days": settings.ACCESS_TOKEN_DEFAULT_DAYS if days in (None, "") else days,
    }
    token_request = None
    try:
        token_request = token_request_parse(data)
    except TokenRequestInvalid as exc:
        errors.update(exc.errors)
    if errors:
        raise validation_error(errors, TOKEN_FIELDS)
    # Without errors, all three are set.
    assert isinstance(username, str) and isinstance(password, str) and token_request is not None
    return username, password, token_request


def default_token_name(user_agent: str) -> str:
    """ "API: curl/8.5.0" from a User-Agent's first product, or "API" without one."""
    product = re.sub(r"[^A-Za-z0-9._/+-]", "", (user_agent or "").split(" ", 1)[0])[:40]
    return f"API: {product}" if product else "API"
