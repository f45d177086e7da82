"""The rules of the operators' pool and node forms, and their messages.

The parse functions read what a form posted and either return a request the
actions in pools.actions take, or raise RequestInvalid with a message per
field. Rules that need other rows (a name in use, an owner who is not the
owner of the services in a pool, an engine that does not answer) are the
actions' to check; they raise the same exception.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.contrib.auth import get_user_model
from django.http import QueryDict

from pools.models import OVERCOMMIT_MAX, OVERCOMMIT_MIN, Flavor, PoolKind, ResourcePool, overcommit_rule
from services.validation import RequestInvalid

if TYPE_CHECKING:
    from django.contrib.auth.models import User

# The models' SlugField rule, so a name made in the Django admin can be kept.
NAME_PATTERN = re.compile(r"[-a-zA-Z0-9_]+")
# ASCII digits only: str.isdigit() also takes "²", which int() refuses.
ID_PATTERN = re.compile(r"[0-9]{1,18}")
NAME_MAX_LENGTH = 64
DESCRIPTION_MAX_LENGTH = 200
DOCKER_HOST_MAX_LENGTH = 200
DOCKER_SCHEMES = ("unix", "tcp", "ssh")
GPU_MAX = 64


@dataclass(frozen=True)
class PoolRequest:
    name: str
    description: str
    owner: User | None  # None: a public pool
    cpu_overcommit: Decimal
    memory_overcommit: Decimal
    offers_every_flavor: bool
    flavors: list[Flavor]
    # Chosen when the pool is created; an edit keeps what the pool is.
    kind: str = PoolKind.ENGINES
    manager_url: str = ""


@dataclass(frozen=True)
class NodeRequest:
    name: str
    docker_host: str
    gpu_count: int


@dataclass(frozen=True)
class NodeChange:
    is_enabled: bool
    gpu_count: int


# --- Pools -----------------------------------------------------------------------------


def pool_data_from_post(post: QueryDict) -> dict[str, Any]:
    return {
        "name": post.get("name", "").strip(),
        "description": post.get("description", "").strip(),
        "access": post.get("access", ""),
        "owner": post.get("owner", "").strip(),
        "cpu_overcommit": post.get("cpu_overcommit", "").strip(),
        "memory_overcommit": post.get("memory_overcommit", "").strip(),
        "flavor_choice": post.get("flavor_choice", ""),
        "flavors": post.getlist("flavors"),
        "kind": post.get("kind", ""),
        "manager_url": post.get("manager_url", "").strip(),
    }


def pool_data_of(pool: ResourcePool | None) -> dict[str, Any]:
    """The form's values for an existing pool, or a new one's defaults."""
    if pool is None:
        return {
            "name": "",
            "description": "",
            "access": "public",
            "owner": "",
            "cpu_overcommit": f"{OVERCOMMIT_MIN}",
            "memory_overcommit": f"{OVERCOMMIT_MIN}",
            "flavor_choice": "every",
            "flavors": [],
            "kind": PoolKind.ENGINES,
            "manager_url": "",
        }
    return {
        "name": pool.name,
        "description": pool.description,
        "access": "public" if pool.is_public else "dedicated",
        "owner": pool.owner.get_username() if pool.owner else "",
        "cpu_overcommit": ratio_text(pool.cpu_overcommit),
        "memory_overcommit": ratio_text(pool.memory_overcommit),
        "flavor_choice": "every" if pool.offers_every_flavor else "chosen",
        "flavors": [str(flavor_id) for flavor_id in pool.flavors.values_list("id", flat=True)],
        "kind": pool.kind,
        "manager_url": pool.manager_url,
    }


def ratio_text(ratio: Decimal) -> str:
    """8.00 as "8.0", 1.25 as "1.25": as an operator typed it."""
    text = f"{ratio.normalize():f}"
    return text if "." in text else f"{text}.0"


def _name_errors(name: str, what: str) -> list[str]:
    if not name:
        return [f"Enter a name for the {what}."]
    if len(name) > NAME_MAX_LENGTH:
        return [f"The {what} name may have at most {NAME_MAX_LENGTH} characters (it has {len(name)})."]
    if not NAME_PATTERN.fullmatch(name):
        return [f"The {what} name may contain only letters, digits, hyphens and underscores, e.g. gpu-a100."]
    return []


def _overcommit(raw: str, label: str, errors: dict[str, list[str]], field: str) -> Decimal:
    rule = overcommit_rule(label)
    try:
        ratio = Decimal(raw)
    except InvalidOperation:
        errors[field] = [f"{rule} Enter a number such as 1.0, 1.5 or 8."]
        return OVERCOMMIT_MIN
    if not ratio.is_finite() or not OVERCOMMIT_MIN <= ratio <= OVERCOMMIT_MAX:
        errors[field] = [f"{rule} {raw} is out of that range."]
    elif ratio != ratio.quantize(Decimal("0.01")):
        errors[field] = [f"{label} overcommit may have at most two decimals, e.g. 1.25."]
    return ratio


def pool_request_parse(data: Mapping[str, Any], *, pool: ResourcePool | None = None) -> PoolRequest:
    """A PoolRequest from the form's values, or RequestInvalid with a message per
    field. A new pool's kind and manager URL are read too; an existing `pool`
    keeps its own."""
    errors: dict[str, list[str]] = {}
    if pool is not None:
        kind, manager_url = pool.kind, pool.manager_url
    else:
        kind, manager_url = str(data.get("kind", "")), str(data.get("manager_url", ""))
        if kind not in PoolKind.values:
            errors["kind"] = ["Choose Docker engines (nodes added one by one) or Docker Swarm (a swarm's manager)."]
        elif kind == PoolKind.SWARM:
            if url_errors := docker_host_errors(manager_url, what="Swarm manager"):
                errors["manager_url"] = url_errors
        elif manager_url:
            errors["manager_url"] = ["Only a Swarm pool has a manager URL: clear it, or choose Docker Swarm."]
    name = str(data.get("name", ""))
    if name_errors := _name_errors(name, "pool"):
        errors["name"] = name_errors
    description = str(data.get("description", ""))
    if len(description) > DESCRIPTION_MAX_LENGTH:
        errors["description"] = [
            f"The description may have at most {DESCRIPTION_MAX_LENGTH} characters (it has {len(description)})."
        ]
    elif not description.isprintable():
        errors["description"] = ["The description must not contain control characters."]

    access = data.get("access", "")
    username = str(data.get("owner", ""))
    owner = None
    if access == "public":
        if username:
            errors["owner"] = ["A public pool is offered to every user and has no owner: clear the owner."]
    elif access == "dedicated":
        if not username:
            errors["owner"] = ["A dedicated pool needs an owner: enter the username of the user it is for."]
        else:
            owner = get_user_model().objects.filter(username=username, is_active=True).first()
            if owner is None:
                errors["owner"] = [f"There is no active user named “{username}”."]
    else:
        errors["access"] = ["Choose Public (every user) or Dedicated (one user)."]

    cpu_overcommit = _overcommit(str(data.get("cpu_overcommit", "")), "CPU", errors, "cpu_overcommit")
    memory_overcommit = _overcommit(str(data.get("memory_overcommit", "")), "Memory", errors, "memory_overcommit")

    flavor_choice = data.get("flavor_choice", "")
    flavors: list[Flavor] = []
    if flavor_choice not in ("every", "chosen"):
        errors["flavors"] = ["Choose whether the pool offers every flavor or only the ones chosen."]
    elif flavor_choice == "chosen":
        raw_ids = [str(value) for value in data.get("flavors", [])]
        ids = {int(value) for value in raw_ids if ID_PATTERN.fullmatch(value)}
        flavors = list(Flavor.objects.filter(id__in=ids))
        if len(flavors) != len(raw_ids) or len(ids) != len(raw_ids):
            errors["flavors"] = ["A chosen flavor does not exist (any more); choose again."]
        elif not flavors:
            errors["flavors"] = ["Choose at least one flavor to offer, or offer every flavor."]
    if errors:
        raise RequestInvalid(errors)
    return PoolRequest(
        name=name,
        description=description,
        owner=owner,
        cpu_overcommit=cpu_overcommit,
        memory_overcommit=memory_overcommit,
        offers_every_flavor=flavor_choice == "every",
        flavors=flavors,
        kind=kind,
        manager_url=manager_url,
    )


# --- Nodes -----------------------------------------------------------------------------


def node_data_from_post(post: QueryDict) -> dict[str, Any]:
    return {
        "name": post.get("name", "").strip(),
        "docker_host": post.get("docker_host", "").strip(),
        "gpu_count": post.get("gpu_count", "").strip(),
        "is_enabled": post.get("is_enabled", "") == "on",
    }


def docker_host_errors(docker_host: str, *, what: str = "Docker engine") -> list[str]:
    """What is wrong with a Docker engine URL, if anything (unix://, tcp:// or ssh:// only)."""
    examples = "e.g. unix:///var/run/docker.sock, tcp://10.0.0.5:2376 or ssh://deploy@gpu-1"
    if not docker_host:
        return [f"Enter the {what}'s URL, {examples}."]
    if len(docker_host) > DOCKER_HOST_MAX_LENGTH:
        return [f"The Docker URL may have at most {DOCKER_HOST_MAX_LENGTH} characters (it has {len(docker_host)})."]
    if any(char.isspace() for char in docker_host) or not docker_host.isprintable():
        return ["The Docker URL must not contain spaces or control characters."]
    scheme, separator, _ = docker_host.partition("://")
    if scheme not in DOCKER_SCHEMES or not separator:
        return [f"The Docker URL must start with unix://, tcp:// or ssh://, {examples}."]
    try:
        parts = urlsplit(docker_host)
        port = parts.port
    except ValueError:
        return [f"The Docker URL has a port that is not a number from 1 to 65535, {examples}."]
    if scheme == "unix":
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            return ["A unix:// Docker URL names the socket's absolute path, e.g. unix:///var/run/docker.sock."]
        return []
    if not parts.hostname:
        return [f"A {scheme}:// Docker URL names the engine's host, {examples}."]
    if port == 0:
        return [f"The Docker URL has a port that is not a number from 1 to 65535, {examples}."]
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return [f"A {scheme}:// Docker URL has a host and an optional port only, {examples}."]
    return []


def _gpu_count(raw: str, errors: dict[str, list[str]]) -> int:
    if raw == "":
        return 0
    if not re.fullmatch(r"[0-9]{1,3}", raw) or int(raw) > GPU_MAX:
        errors["gpu_count"] = [f"GPUs must be a whole number from 0 to {GPU_MAX}."]
        return 0
    return int(raw)


def node_request_parse(data: Mapping[str, Any]) -> NodeRequest:
    errors: dict[str, list[str]] = {}
    name = str(data.get("name", ""))
    if name_errors := _name_errors(name, "node"):
        errors["name"] = name_errors
    docker_host = str(data.get("docker_host", ""))
    if host_errors := docker_host_errors(docker_host):
        errors["docker_host"] = host_errors
    gpu_count = _gpu_count(str(data.get("gpu_count", "")), errors)
    if errors:
        raise RequestInvalid(errors)
    return NodeRequest(name=name, docker_host=docker_host, gpu_count=gpu_count)


def node_change_parse(data: Mapping[str, Any]) -> NodeChange:
    errors: dict[str, list[str]] = {}
    gpu_count = _gpu_count(str(data.get("gpu_count", "")), errors)
    if errors:
        raise RequestInvalid(errors)
    return NodeChange(is_enabled=bool(data.get("is_enabled")), gpu_count=gpu_count)
