"""Keeps one gateway process's routing table current: pushed, not polled.

One LISTEN connection hears every change the database's triggers announce
(services.contract.RoutingNotice); the keeper applies them strictly in the order they were
committed, re-reading only what changed (a burst becomes one query per kind)
and patching the table in place. A full reload runs when the LISTEN
connection (re)connects, since a notification may have been missed while it
was down, and otherwise only as a slow safety net.

Because changes are applied in commit order, a sync notification (from
services.routing_sync) is answered once everything committed before it is in
the table: that is how a deploy knows every gateway routes its service.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg

from gateway import store
from gateway.config import GatewayConfig
from gateway.routing import InFlight, RoutingTable
from services.contract import RoutingNotice

log = logging.getLogger("gateway")

# Ids re-read per query, so one patch never holds the event loop for long.
PATCH_SLICE = 500
# Beyond this many changed rows in one burst, a chunked full reload is cheaper.
PATCH_LIMIT = 20_000
RECONNECT_SECONDS = 1.0
# A drain is answered as soon as the calls that could reach the drained
# versions are done; this is how often it looks.
DRAIN_POLL_SECONDS = 0.005
DRAIN_MAX_SECONDS = 600.0


class _SendProbe:
    """A queue item: /healthz asked for a fresh `loaded_at`."""


SEND_PROBE = _SendProbe()


class ListenerLost(Exception):
    """The LISTEN connection failed: notifications may have been missed."""


@dataclass
class TableHolder:
    """What the request handlers read: the current table, and whether one was loaded."""

    current: RoutingTable = field(default_factory=RoutingTable)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    rng: random.Random = field(default_factory=random.Random)
    inflight: InFlight = field(default_factory=InFlight)


@dataclass
class Changes:
    """One burst of notifications, coalesced."""

    services: set[str] = field(default_factory=set)
    app_versions: set[int] = field(default_factory=set)
    tokens: set[str] = field(default_factory=set)
    users: set[int] = field(default_factory=set)
    app_codes: set[str] = field(default_factory=set)
    reload_all: bool = False
    syncs: list[str] = field(default_factory=list)
    # (sync token, config ids): answered once no call in flight could reach them.
    drains: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    probes: list[float] = field(default_factory=list)
    send_probe: bool = False

    @property
    def size(self) -> int:
        return len(self.services) + len(self.app_versions) + len(self.tokens) + len(self.users) + len(self.app_codes)


def parse_batch(items: list[str | _SendProbe | BaseException], gateway_id: str) -> Changes:
    """Coalesce notification payloads; raises the error a listener queued."""
    changes = Changes()
    for item in items:
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, _SendProbe):
            changes.send_probe = True
            continue
        kind, _, value = item.partition(":")
        if kind == RoutingNotice.SERVICE:
            changes.services.add(value)
        elif kind == RoutingNotice.TOKEN:
            changes.tokens.add(value)
        elif kind == RoutingNotice.APP_CODE:
            changes.app_codes.add(value)
        elif kind == RoutingNotice.APP_VERSION and value.isdigit():
            changes.app_versions.add(int(value))
        elif kind == RoutingNotice.USER and value.isdigit():
            changes.users.add(int(value))
        elif kind == RoutingNotice.RELOAD_ALL:
            changes.reload_all = True
        elif kind == RoutingNotice.SYNC:
            changes.syncs.append(value)
        elif kind == RoutingNotice.DRAIN:
            changes.drains.append(RoutingNotice.parse_drain(value))
        elif kind == RoutingNotice.PROBE:
            probe_gateway, _, sent_at = value.partition(" ")
            if probe_gateway == gateway_id:
                try:
                    changes.probes.append(float(sent_at))
                except ValueError:
                    pass
        else:
            log.warning("unknown routing notification %r", item)
    return changes


def _slices(values: list[Any]) -> list[list[Any]]:
    return [values[at : at + PATCH_SLICE] for at in range(0, len(values), PATCH_SLICE)]


async def _release(table: RoutingTable) -> None:
    """Drop a replaced table a slice at a time: freeing it in one go would
    hold the event loop for as long as building it did."""
    mappings: list[dict[str, Any]] = [table.services, table.app_codes, *table.tokens.shards.values()]
    for mapping in mappings:
        await _clear(mapping)


async def _clear(mapping: dict[str, Any]) -> None:
    # Freeing a route frees its versions and their lists too: 1,000 at a time.
    keys = list(mapping)
    for at in range(0, len(keys), 1000):
        for key in keys[at : at + 1000]:
            del mapping[key]
        await asyncio.sleep(0)


class StallProbe:
    """The longest time the event loop went without running this task, while
    it runs (during full reloads): how long a call could have waited.

    `max_stall` is wall time (it includes the process being preempted on a
    busy machine, and the 1 ms timer's granularity); `max_busy` counts only
    this process's own CPU time in that gap: the work that held the loop.
    """

    INTERVAL = 0.001

    def __init__(self) -> None:
        self.max_stall = 0.0
        self.max_busy = 0.0
        self._task: asyncio.Task[None] | None = None

    def __enter__(self) -> StallProbe:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            started, cpu_started = time.perf_counter(), time.thread_time()
            await asyncio.sleep(self.INTERVAL)
            self.max_stall = max(self.max_stall, time.perf_counter() - started - self.INTERVAL)
            self.max_busy = max(self.max_busy, time.thread_time() - cpu_started)


class TableKeeper:
    def __init__(self, config: GatewayConfig, conninfo: str, holder: TableHolder) -> None:
        self.config = config
        self.conninfo = conninfo
        self.holder = holder
        self.gateway_id = uuid.uuid4().hex
        self.is_listening = False
        self._queue: asyncio.Queue[str | _SendProbe | BaseException] | None = None
        self._query: psycopg.AsyncConnection[Any] | None = None
        self._is_probe_pending = False
        # Syncs received but not answered when a connection failed: answered
        # after the next full reload, which covers everything before them.
        self._unanswered: list[str] = []
        # Drains waiting for calls in flight (held here so they are not garbage collected).
        self._drains: set[asyncio.Task[None]] = set()
        self.full_reloads = 0
        self.last_full_reload: dict[str, float] = {}
        self.patches = 0
        self.applied_at = 0.0
        self.last_apply_seconds = 0.0

    # --- What /healthz reads and asks for -------------------------------------------

    def request_probe(self) -> None:
        """Have `loaded_at` move up to now, through the notification queue (one probe at a time)."""
        if self._queue is not None and not self._is_probe_pending:
            self._is_probe_pending = True
            self._queue.put_nowait(SEND_PROBE)

    def health(self) -> dict[str, Any]:
        return {
            "gateway_id": self.gateway_id,
            "listening": self.is_listening,
            "applied_at": self.applied_at,
            "last_apply_seconds": self.last_apply_seconds,
            "patches": self.patches,
            "full_reloads": self.full_reloads,
            "last_full_reload": self.last_full_reload,
        }

    # --- The loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Forever: connect, listen, load, apply; after a failure, start over in a second."""
        while True:
            try:
                await self._run_connected()
            except (psycopg.Error, OSError, ListenerLost) as exc:
                log.warning("routing table updates interrupted, keeping the last table: %s", exc)
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _run_connected(self) -> None:
        listen = query = None
        listener: asyncio.Task[None] | None = None
        queue: asyncio.Queue[str | _SendProbe | BaseException] = asyncio.Queue()
        try:
            listen = await store.connect(self.conninfo)
            await listen.execute(f"LISTEN {RoutingNotice.CHANNEL}")
            # Named only once it listens: whoever finds it in pg_stat_activity
            # may count on it hearing the next notification.
            await listen.execute(
                "SELECT set_config('application_name', %s, false)", (RoutingNotice.application_name(self.gateway_id),)
            )
            query = self._query = await store.connect(self.conninfo)
            listener = asyncio.create_task(self._listen_into(listen, queue))
            await self._full_reload()
            self._queue = queue
            self.is_listening = True
            self.holder.ready.set()
            if self._unanswered:
                await self._answer_syncs(self._unanswered)
                self._unanswered = []
            next_full_reload = time.monotonic() + self.config.full_reload_seconds
            while True:
                try:
                    first = await asyncio.wait_for(queue.get(), max(0.0, next_full_reload - time.monotonic()))
                except TimeoutError:
                    await self._full_reload()
                    next_full_reload = time.monotonic() + self.config.full_reload_seconds
                    continue
                items = [first]
                while not queue.empty():
                    items.append(queue.get_nowait())
                if await self._apply(items):
                    next_full_reload = time.monotonic() + self.config.full_reload_seconds
        finally:
            self.is_listening = False
            self._queue = None
            self._query = None
            self._is_probe_pending = False
            # Syncs still queued are covered by the next full reload too.
            while not queue.empty():
                item = queue.get_nowait()
                if isinstance(item, str) and item.startswith(RoutingNotice.SYNC + ":"):
                    self._unanswered.append(item[2:])
                elif isinstance(item, str) and item.startswith(RoutingNotice.DRAIN + ":"):
                    # Answered after the reload; by then a call in flight had a second to finish.
                    self._unanswered.append(RoutingNotice.parse_drain(item[2:])[0])
            if listener is not None:
                listener.cancel()
            for conn in (listen, query):
                if conn is not None:
                    await conn.close()

    async def _listen_into(
        self, conn: psycopg.AsyncConnection[Any], queue: asyncio.Queue[str | _SendProbe | BaseException]
    ) -> None:
        try:
            async for notify in conn.notifies():
                queue.put_nowait(notify.payload)
        except (psycopg.Error, OSError) as exc:
            queue.put_nowait(ListenerLost(str(exc)))
        else:
            queue.put_nowait(ListenerLost("the notification stream ended"))

    async def _full_reload(self) -> None:
        assert self._query is not None
        # Every change committed after this moment reaches the queue (the
        # LISTEN came first) and is applied after the reload, again.
        started_at = time.time()
        started = time.perf_counter()
        # A table is a few hundred thousand objects: the cyclic collector
        # would walk all of them, in one go, several times per reload. It
        # stays off meanwhile, and the new table goes into the permanent
        # generation (gc.freeze), where no collection walks it; it holds no
        # cycles, so reference counting still frees it once replaced.
        gc.disable()
        try:
            with StallProbe() as probe:
                table = await store.load_table(self._query, self.config.instance_host, self.holder.current, started_at)
                table.loaded_at = max(started_at, self.holder.current.loaded_at)
                old, self.holder.current = self.holder.current, table
                await _release(old)
                gc.freeze()
        finally:
            gc.enable()
        self.full_reloads += 1
        self.last_full_reload = {
            "at": started_at,
            "seconds": round(time.perf_counter() - started, 4),
            "max_stall_ms": round(probe.max_stall * 1000, 3),
            "max_busy_ms": round(probe.max_busy * 1000, 3),
            "services": len(table.services),
            "tokens": len(table.tokens),
        }
        log.info(
            "routing table loaded: %d services, %d tokens in %.3f s (longest stall %.1f ms, %.1f ms of it busy)",
            len(table.services),
            len(table.tokens),
            self.last_full_reload["seconds"],
            probe.max_stall * 1000,
            probe.max_busy * 1000,
        )

    async def _apply(self, items: list[str | _SendProbe | BaseException]) -> bool:
        """Apply one burst; True when it took a full reload."""
        assert self._query is not None
        changes = parse_batch(items, self.gateway_id)
        received_at = time.time()
        started = time.perf_counter()
        did_reload = False
        if changes.reload_all or changes.size > PATCH_LIMIT:
            await self._full_reload()
            did_reload = True
        elif changes.size:
            await self._patch(changes)
        if changes.syncs:
            try:
                await self._answer_syncs(changes.syncs)
            except (psycopg.Error, OSError):
                self._unanswered.extend(changes.syncs)
                raise
        for sync_token, config_ids in changes.drains:
            task = asyncio.create_task(self._answer_when_drained(sync_token, config_ids))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)
        table = self.holder.current
        if changes.probes:
            self._is_probe_pending = False
            table.loaded_at = max(table.loaded_at, *changes.probes)
        if changes.send_probe:
            await self._query.execute(
                "SELECT pg_notify(%s, %s)",
                (RoutingNotice.CHANNEL, f"{RoutingNotice.PROBE}:{self.gateway_id} {time.time()!r}"),
            )
        if changes.size or changes.reload_all:
            self.applied_at = received_at
            self.last_apply_seconds = round(time.perf_counter() - started, 6)
        return did_reload

    async def _patch(self, changes: Changes) -> None:
        conn = self._query
        assert conn is not None
        host = self.config.instance_host
        service_ids = set(changes.services)
        if changes.app_versions:
            service_ids.update(await store.services_of_versions(conn, sorted(changes.app_versions)))
        # Each slice is read, then patched in one go: a table never holds half a service.
        for ids in _slices(sorted(service_ids)):
            rows = await store.service_rows(conn, ids)
            self.holder.current.patch_services(ids, rows, host)
        for hashes in _slices(sorted(changes.tokens)):
            rows = await store.token_rows(conn, token_hashes=hashes)
            self.holder.current.patch_tokens(hashes, rows)
        for owners in _slices(sorted(changes.users)):
            rows = await store.token_rows(conn, owner_ids=owners)
            self.holder.current.patch_tokens((), rows)
        for hashes in _slices(sorted(changes.app_codes)):
            rows = await store.app_code_rows(conn, hashes)
            self.holder.current.patch_app_codes(hashes, rows)
        self.patches += 1

    async def _answer_when_drained(self, sync_token: str, config_ids: tuple[int, ...]) -> None:
        """Answer a drain once no call in flight here could reach the configurations
        (the table already sends none there: the drain came after their weights went
        to 0), or after DRAIN_MAX_SECONDS, when the console has long stopped waiting."""
        inflight = self.holder.inflight
        give_up_at = time.monotonic() + DRAIN_MAX_SECONDS
        while not inflight.is_idle(config_ids) and time.monotonic() < give_up_at:
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        try:
            if self._query is not None:
                await self._answer_syncs([sync_token])
        except (psycopg.Error, OSError) as exc:
            log.info("could not answer a drain: %s (the console stops waiting at its timeout)", exc)

    async def _answer_syncs(self, sync_tokens: list[str]) -> None:
        assert self._query is not None
        await self._query.execute(
            "SELECT pg_notify(%s, t || ' ' || %s) FROM unnest(%s::text[]) AS t",
            (RoutingNotice.ACK_CHANNEL, self.gateway_id, sync_tokens),
        )
