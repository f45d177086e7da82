"""The in-memory routing table and the pure choices made from it.

A table is built whole by a full reload (TableBuilder, fed in chunks) and then
patched in place as the database reports changes (RoutingTable.patch_*). A
patch never changes a ServiceRoute a call may hold: it puts a new one in its
place, sharing the round-robin cursor of each version that is still there.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from services.choices import ServiceStatus
from services.contract import CALLABLE_STATUSES, secret_hash

Upstream = tuple[str, int]
# (service_id, owner_id, status, config_id, weight, predict_path, host_port or None[, is_websocket, traffic_limit,
#  collect_percent, collect_request, collect_response])
ServiceRow = Sequence[Any]
# (token_hash, owner_id, expires_at as UNIX time[, is_valid])
TokenRow = Sequence[Any]
# (code_hash, service_id[, is_valid])
AppCodeRow = Sequence[Any]


class RoundRobin:
    """The next position of a version's round robin; shared by the routes of
    one configuration across reloads and patches, so no update resets it."""

    __slots__ = ("next",)

    def __init__(self, start: int = 0) -> None:
        self.next = start


@dataclass
class VersionRoute:
    config_id: int
    weight: int
    predict_path: str
    upstreams: list[Upstream] = field(default_factory=list)
    cursor: RoundRobin = field(default_factory=RoundRobin)
    # The AI application version's label ("1.0.0"), kept by collected calls' records.
    label: str = ""

    @property
    def next_index(self) -> int:
        return self.cursor.next

    def pick_upstream(self, exclude: set[Upstream] | frozenset[Upstream]) -> Upstream | None:
        """Round robin over the healthy instances, skipping those in `exclude`."""
        count = len(self.upstreams)
        cursor = self.cursor
        for _ in range(count):
            upstream = self.upstreams[cursor.next % count]
            cursor.next += 1
            if upstream not in exclude:
                return upstream
        return None


@dataclass
class ServiceRoute:
    service_id: str
    owner_id: int
    status: str
    versions: list[VersionRoute] = field(default_factory=list)
    # Called over WebSocket only (fixed when the service is deployed).
    is_websocket: bool = False
    # Calls per second over every gateway process together; None: no limit.
    traffic_limit: int | None = None
    # Data collection: the share of calls kept (0: off), and which bodies.
    collect_percent: int = 0
    collect_request: bool = False
    collect_response: bool = False

    @cached_property
    def counted_version(self) -> VersionRoute | None:
        """The version a call that reached no model is counted against (it is
        still a failed call of the service): the first that takes traffic."""
        return next((v for v in self.versions if v.weight > 0), None)

    @cached_property
    def serving_versions(self) -> list[VersionRoute]:
        """Versions that take traffic and have a healthy instance (a route is
        never changed once published: a patch replaces it)."""
        return [v for v in self.versions if v.weight > 0 and v.upstreams]

    def pick_version(
        self, rng: random.Random, exclude: set[Upstream] | frozenset[Upstream] = frozenset()
    ) -> VersionRoute | None:
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

    @property
    def is_routable(self) -> bool:
        """Whether calls go to the service now.

        A Deploying service is routed as soon as an instance is healthy: the
        deploy marks it Running only after every gateway process has seen its
        healthy instances, so calls may be routed a moment before the status
        says Running, never after.
        """
        if self.status in CALLABLE_STATUSES:
            return True
        return self.status == ServiceStatus.DEPLOYING and bool(self.serving_versions)


class InFlight:
    """Calls in flight in this process, counted against every version of the
    route each call holds (a call may go to any of them, retries included).

    A live update drains a version it removes: once its weight is 0 in the
    table, the gateway waits until no call counts against it any more, and only
    then does the console remove its containers."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def hold(self, service: ServiceRoute) -> tuple[int, ...]:
        """Count a call against the service's versions; pass the result to release()."""
        held = tuple(version.config_id for version in service.versions)
        counts = self.counts
        for config_id in held:
            counts[config_id] = counts.get(config_id, 0) + 1
        return held

    def release(self, held: tuple[int, ...]) -> None:
        counts = self.counts
        for config_id in held:
            left = counts.get(config_id, 0) - 1
            if left > 0:
                counts[config_id] = left
            else:
                counts.pop(config_id, None)

    def is_idle(self, config_ids: Iterable[int]) -> bool:
        """No call in flight could reach any of these configurations."""
        return not any(config_id in self.counts for config_id in config_ids)


class HashMap:
    """A dict keyed by hex digests, kept as 256 small dicts (by the first two
    hex digits). Growing one dict to 100,000 entries resizes it in one go, a
    pause of milliseconds on the event loop each time; a small dict's resize is
    a few microseconds, and a full reload stays smooth. Lookups cost one more
    dict access."""

    __slots__ = ("shards",)

    def __init__(self, items: Iterable[tuple[str, Any]] = ()) -> None:
        self.shards: dict[str, dict[str, Any]] = {}
        self.update(items)

    def get(self, key: str, default: Any = None) -> Any:
        shard = self.shards.get(key[:2])
        return default if shard is None else shard.get(key, default)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        shard = self.shards.get(key[:2])
        return shard is not None and key in shard

    def __setitem__(self, key: str, value: Any) -> None:
        shard = self.shards.get(key[:2])
        if shard is None:
            shard = self.shards[key[:2]] = {}
        shard[key] = value

    def pop(self, key: str, default: Any = None) -> Any:
        shard = self.shards.get(key[:2])
        return default if shard is None else shard.pop(key, default)

    def update(self, items: Iterable[tuple[str, Any]]) -> None:
        for key, value in items:
            self[key] = value

    def items(self) -> Iterable[tuple[str, Any]]:
        for shard in self.shards.values():
            yield from shard.items()

    def __len__(self) -> int:
        return sum(len(shard) for shard in self.shards.values())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HashMap):
            other = dict(other.items())
        return isinstance(other, dict) and dict(self.items()) == other

    def __repr__(self) -> str:
        return f"HashMap({dict(self.items())!r})"


@dataclass
class RoutingTable:
    services: dict[str, ServiceRoute] = field(default_factory=dict)
    # sha256(token) -> (owner id, expiry as a UNIX time)
    tokens: HashMap = field(default_factory=HashMap)
    # sha256(app code) -> service id
    app_codes: dict[str, str] = field(default_factory=dict)
    # Every change committed before this UNIX time is in the table (0: not loaded yet).
    loaded_at: float = 0.0

    def patch_services(self, service_ids: Iterable[str], rows: Iterable[ServiceRow], instance_host: str) -> None:
        """Replace the routes of these services by the ones their current rows
        describe; a service without rows is gone (deleted, or has no version)."""
        fresh = services_from_rows(rows, instance_host, self.services)
        for service_id in service_ids:
            if service_id not in fresh:
                self.services.pop(service_id, None)
        self.services.update(fresh)

    def patch_tokens(self, token_hashes: Iterable[str], rows: Iterable[TokenRow]) -> None:
        """Apply the current rows of some tokens: (hash, owner, expiry, is_valid).
        A token named in `token_hashes` without a row was deleted."""
        for token_hash in token_hashes:
            self.tokens.pop(token_hash, None)
        for token_hash, owner_id, expires_at, is_valid in rows:
            if is_valid:
                self.tokens[token_hash] = (owner_id, expires_at)
            else:
                self.tokens.pop(token_hash, None)

    def patch_app_codes(self, code_hashes: Iterable[str], rows: Iterable[AppCodeRow]) -> None:
        """Apply the current rows of some app codes: (hash, service id, is_valid)."""
        for code_hash in code_hashes:
            self.app_codes.pop(code_hash, None)
        for code_hash, service_id, is_valid in rows:
            if is_valid:
                self.app_codes[code_hash] = str(service_id)
            else:
                self.app_codes.pop(code_hash, None)


def _cursor_of(previous: ServiceRoute | None, config_id: int) -> RoundRobin:
    if previous is not None:
        for version in previous.versions:
            if version.config_id == config_id:
                return version.cursor
    return RoundRobin()


def services_from_rows(
    rows: Iterable[ServiceRow],
    instance_host: str,
    previous: dict[str, ServiceRoute] | None = None,
    into: dict[str, ServiceRoute] | None = None,
    versions: dict[int, VersionRoute] | None = None,
) -> dict[str, ServiceRoute]:
    """Routes built from service rows (instances in port order come out sorted).

    Each version keeps the round-robin cursor of its route in `previous`.
    `into` and `versions` let a full reload feed its rows in several chunks.
    """
    services: dict[str, ServiceRoute] = {} if into is None else into
    by_config: dict[int, VersionRoute] = {} if versions is None else versions
    for service_id, owner_id, status, config_id, weight, predict_path, host_port, *more in rows:
        service_id = str(service_id)
        service = services.get(service_id)
        if service is None:
            service = services[service_id] = ServiceRoute(
                service_id,
                owner_id,
                status,
                is_websocket=bool(more and more[0]),
                traffic_limit=more[1] if len(more) > 1 else None,
                collect_percent=(more[2] or 0) if len(more) > 2 else 0,
                collect_request=bool(len(more) > 3 and more[3]),
                collect_response=bool(len(more) > 4 and more[4]),
            )
        version = by_config.get(config_id)
        if version is None:
            old = previous.get(service_id) if previous is not None else None
            version = by_config[config_id] = VersionRoute(
                config_id,
                weight,
                predict_path,
                cursor=_cursor_of(old, config_id),
                label=(more[5] or "") if len(more) > 5 else "",
            )
            service.versions.append(version)
        if host_port is not None:
            address = more[6] if len(more) > 6 else None
            version.upstreams.append((address or instance_host, host_port))
    for version in by_config.values() if versions is None else ():
        version.upstreams.sort()
    return services


class TableBuilder:
    """A whole table, fed the loader's rows a chunk at a time (so a reload of a
    large table never holds the event loop for long)."""

    def __init__(self, instance_host: str, previous: RoutingTable | None = None) -> None:
        self.instance_host = instance_host
        self.previous = previous.services if previous is not None else None
        self.services: dict[str, ServiceRoute] = {}
        self.versions: dict[int, VersionRoute] = {}
        self.tokens = HashMap()
        self.app_codes: dict[str, str] = {}

    def add_service_rows(self, rows: Iterable[ServiceRow]) -> None:
        """Rows ordered by configuration and port, so each version's instances come in sorted."""
        services_from_rows(rows, self.instance_host, self.previous, self.services, self.versions)

    def add_token_rows(self, rows: Iterable[TokenRow]) -> None:
        self.tokens.update((token_hash, (owner_id, expires_at)) for token_hash, owner_id, expires_at in rows)

    def add_app_code_rows(self, rows: Iterable[AppCodeRow]) -> None:
        self.app_codes.update((code_hash, str(service_id)) for code_hash, service_id in rows)

    def table(self, loaded_at: float) -> RoutingTable:
        return RoutingTable(self.services, self.tokens, self.app_codes, loaded_at)


def build_table(
    service_rows: Iterable[ServiceRow],
    token_rows: Iterable[TokenRow],
    app_code_rows: Iterable[AppCodeRow],
    instance_host: str,
    previous: RoutingTable | None = None,
) -> RoutingTable:
    """Build a table from the loader's rows in one go.

    service_rows: (service_id, owner_id, status, config_id, weight, predict_path, host_port or None)
    token_rows: (token_hash, owner_id, expires_at as UNIX time)
    app_code_rows: (code_hash, service_id)
    Round-robin positions carry over from `previous`, so a reload does not send
    the next calls back to the first instance.
    """
    builder = TableBuilder(instance_host, previous)
    builder.add_service_rows(service_rows)
    for version in builder.versions.values():
        version.upstreams.sort()
    builder.add_token_rows(token_rows)
    builder.add_app_code_rows(app_code_rows)
    return builder.table(time.time())


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
) -> tuple[str, ServiceRoute | None]:
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
