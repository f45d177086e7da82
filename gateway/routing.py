"""The in-memory routing table and the pure choices made from it."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from functools import cached_property

from services.contract import secret_hash


@dataclass
class VersionRoute:
    config_id: int
    weight: int
    predict_path: str
    upstreams: list[tuple[str, int]] = field(default_factory=list)
    next_index: int = 0

    def pick_upstream(self, exclude: set[tuple[str, int]]) -> tuple[str, int] | None:
        """Round robin over the healthy instances, skipping those in `exclude`."""
        count = len(self.upstreams)
        for _ in range(count):
            upstream = self.upstreams[self.next_index % count]
            self.next_index += 1
            if upstream not in exclude:
                return upstream
        return None


@dataclass
class ServiceRoute:
    service_id: str
    owner_id: int
    status: str
    versions: list[VersionRoute] = field(default_factory=list)

    @cached_property
    def serving_versions(self) -> list[VersionRoute]:
        """Versions that take traffic and have a healthy instance (a table is never changed once built)."""
        return [v for v in self.versions if v.weight > 0 and v.upstreams]

    def pick_version(self, rng: random.Random, exclude: set[tuple[str, int]] = frozenset()) -> VersionRoute | None:
        """A version chosen by traffic weight among those with an instance left to try."""
        if exclude:
            candidates = [v for v in self.serving_versions if any(u not in exclude for u in v.upstreams)]
        else:
            candidates = self.serving_versions
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        return rng.choices(candidates, weights=[v.weight for v in candidates])[0]


@dataclass
class RoutingTable:
    services: dict[str, ServiceRoute] = field(default_factory=dict)
    # sha256(token) -> (owner id, expiry as a UNIX time)
    tokens: dict[str, tuple[int, float]] = field(default_factory=dict)
    # sha256(app code) -> service id
    app_codes: dict[str, str] = field(default_factory=dict)
    loaded_at: float = 0.0


def build_table(service_rows, token_rows, app_code_rows, instance_host: str, previous: RoutingTable | None = None):
    """Build a table from the loader's rows.

    service_rows: (service_id, owner_id, status, config_id, weight, predict_path, host_port or None)
    token_rows: (token_hash, owner_id, expires_at as UNIX time)
    app_code_rows: (code_hash, service_id)
    Round-robin positions carry over from `previous`, so a reload does not send
    the next calls back to the first instance.
    """
    services: dict[str, ServiceRoute] = {}
    versions: dict[int, VersionRoute] = {}
    for service_id, owner_id, status, config_id, weight, predict_path, host_port in service_rows:
        service_id = str(service_id)
        service = services.get(service_id)
        if service is None:
            service = services[service_id] = ServiceRoute(service_id, owner_id, status)
        version = versions.get(config_id)
        if version is None:
            version = versions[config_id] = VersionRoute(config_id, weight, predict_path)
            service.versions.append(version)
        if host_port is not None:
            version.upstreams.append((instance_host, host_port))
    if previous is not None:
        for service in services.values():
            old = previous.services.get(service.service_id)
            if old is None:
                continue
            old_positions = {v.config_id: v.next_index for v in old.versions}
            for version in service.versions:
                version.next_index = old_positions.get(version.config_id, 0)
    for version in versions.values():
        version.upstreams.sort()
    return RoutingTable(
        services=services,
        tokens={token_hash: (owner_id, expires_at) for token_hash, owner_id, expires_at in token_rows},
        app_codes={code_hash: str(service_id) for code_hash, service_id in app_code_rows},
        loaded_at=time.time(),
    )


class AuthResult:
    UNAUTHENTICATED = "unauthenticated"
    NOT_FOUND = "not_found"
    OK = "ok"


def authorize(
    table: RoutingTable,
    service_id: str,
    token: str | None,
    app_code: str | None,
    now: float,
    token_hash: str | None = None,
):
    """Whether the credentials open this service: (result, service route or None).

    A credential that is missing, unknown, expired or revoked is 401; a good one
    that does not open this service (another user's, or unknown) is 404, so a
    caller cannot tell another user's service from a missing one. A caller
    that already hashed the token passes `token_hash` so it is hashed once.
    """
    service = table.services.get(service_id)
    authenticated = False
    if token:
        owner = table.tokens.get(token_hash or secret_hash(token))
        if owner is not None and owner[1] > now:
            authenticated = True
            if service is not None and service.owner_id == owner[0]:
                return AuthResult.OK, service
    if app_code:
        code_service = table.app_codes.get(secret_hash(app_code))
        if code_service is not None:
            authenticated = True
            if service is not None and code_service == service_id:
                return AuthResult.OK, service
    if not authenticated:
        return AuthResult.UNAUTHENTICATED, None
    return AuthResult.NOT_FOUND, None
