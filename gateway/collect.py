"""Data collection in the gateway: which calls to keep, their bodies up to a
cap, and a bounded queue of records for the once-a-second flush.

Collection must never fail or slow a call: a record only ever copies at most
`body_max_bytes` of each body (a streamed answer keeps its first bytes as they
pass), nothing here waits or touches the database, and when the flush falls
behind the queue drops records rather than grow (the caller counts the drops).
No Django here: the console's settings read the same CollectionConfig.
"""

from __future__ import annotations

import datetime as dt
import random
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from common.env import env_int

# What a queued record costs beyond its encoded bytes (the bytes object), for the queue's byte bound.
RECORD_OVERHEAD_BYTES = 40
CONTENT_TYPE_MAX_CHARS = 200
METHOD_MAX_CHARS = 16


@dataclass(frozen=True)
class CollectionConfig:
    # Of each body (request, response), at most this much is kept.
    body_max_bytes: int
    # Records waiting for the flush, per gateway process: beyond either bound
    # new records are dropped (and counted) until the flush catches up. (A
    # flush under way holds the records it took besides: twice the bounds at most.)
    queue_max_records: int
    queue_max_bytes: int

    @classmethod
    def from_env(cls) -> CollectionConfig:
        return cls(
            body_max_bytes=env_int("DATA_COLLECTION_BODY_MAX_BYTES", 64 * 1024),
            queue_max_records=env_int("DATA_COLLECTION_QUEUE_MAX_RECORDS", 100_000),
            queue_max_bytes=env_int("DATA_COLLECTION_QUEUE_MAX_BYTES", 32 * 1024 * 1024),
        )


# PostgreSQL's binary COPY format (gateway/store.py COLLECTED_COLUMNS, in
# order). A record is encoded once, when its call ends, into one bytes object:
# the queue then holds no Python objects per record beyond it (holding a
# second's records as objects cost the gateway more than encoding them), and
# the flush sends the queue as it is.
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_TRAILER = b"\xff\xff"
FIELD_COUNT = 16
NULL_FIELD = b"\xff\xff\xff\xff"
# Field count, service (uuid), configuration (int8).
_pack_start = struct.Struct("!hi16siq").pack
# created_at (timestamptz: µs since 2000-01-01 UTC).
_pack_int8 = struct.Struct("!iq").pack
# status_code (int2), latency_ms (float8).
_pack_status_latency = struct.Struct("!ihid").pack
_pack_bool = struct.Struct("!i?").pack
_pack_length = struct.Struct("!i").pack
POSTGRES_EPOCH = 946_684_800  # 2000-01-01 in UNIX time


def _text_field(value: str) -> bytes:
    # Valid UTF-8 whatever the caller or model sent (a lone surrogate from an
    # undecodable header byte becomes "?"), and no NUL: one bad record must
    # not make PostgreSQL refuse the whole flush.
    data = value.encode("utf-8", "replace")
    if b"\x00" in data:
        data = data.replace(b"\x00", b"")
    return _pack_length(len(data)) + data


# Labels, methods and content types repeat from call to call: encoded once each.
_REPEATED_FIELDS: dict[str, bytes] = {}
REPEATED_FIELDS_KEPT = 4096


def _repeated_text_field(value: str) -> bytes:
    field = _REPEATED_FIELDS.get(value)
    if field is None:
        if len(_REPEATED_FIELDS) >= REPEATED_FIELDS_KEPT:
            _REPEATED_FIELDS.clear()
        field = _REPEATED_FIELDS[value] = _text_field(value)
    return field


def _bytea_field(value: bytes | None) -> bytes:
    return NULL_FIELD if value is None else _pack_length(len(value)) + value


def encode_row(
    service_id: uuid.UUID,
    config_id: int,
    version_label: str,
    created_at: float,
    request_id: str,
    method: str,
    status: int,
    latency_ms: float,
    request_body: bytes | None,
    request_size: int,
    request_content_type: str,
    request_truncated: bool,
    response_body: bytes | None,
    response_size: int,
    response_content_type: str,
    response_truncated: bool,
) -> bytes:
    """One record as a row of PostgreSQL's binary COPY (created_at in UNIX time)."""
    return b"".join(
        (
            _pack_start(FIELD_COUNT, 16, service_id.bytes, 8, config_id),
            _repeated_text_field(version_label),
            _pack_int8(8, round((created_at - POSTGRES_EPOCH) * 1_000_000)),
            _text_field(request_id),
            _repeated_text_field(method),
            _pack_status_latency(2, status, 8, latency_ms),
            _bytea_field(request_body),
            _pack_int8(8, request_size),
            _repeated_text_field(request_content_type),
            _pack_bool(1, request_truncated),
            _bytea_field(response_body),
            _pack_int8(8, response_size),
            _repeated_text_field(response_content_type),
            _pack_bool(1, response_truncated),
        )
    )


def encode_row_values(row: Sequence[object]) -> bytes:
    """encode_row of a row in gateway/store.py COLLECTED_COLUMNS' order, with a uuid.UUID and a datetime."""
    values = list(row)
    created_at = values[3]
    assert isinstance(created_at, dt.datetime)
    values[3] = created_at.timestamp()
    return encode_row(*values)  # type: ignore[arg-type]


class ResponseSample:
    """A streamed answer's first bytes, up to the cap, as they pass, and its whole size."""

    __slots__ = ("cap", "parts", "kept", "size")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[bytes] = []
        self.kept = 0
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        room = self.cap - self.kept
        if room > 0:
            part = chunk if len(chunk) <= room else chunk[:room]
            self.parts.append(part)
            self.kept += len(part)

    def body(self) -> bytes:
        return b"".join(self.parts)


class Collector:
    """The records of one gateway process waiting for the flush, within
    bounds, each as its binary COPY row."""

    # Service ids parsed to UUIDs, kept until this many.
    SERVICE_IDS_KEPT = 10_000

    def __init__(self, config: CollectionConfig) -> None:
        self.config = config
        self._rows: list[bytes] = []
        self._bytes = 0
        self._service_uuids: dict[str, uuid.UUID] = {}

    @staticmethod
    def is_sampled(percent: int, rng: random.Random) -> bool:
        """Whether to keep this call, for a rule keeping `percent` % of calls (0: off)."""
        return percent >= 100 or (percent > 0 and rng.random() * 100 < percent)

    def add(
        self,
        *,
        service_id: str,
        config_id: int,
        version_label: str,
        created_at: float,
        request_id: str,
        method: str,
        request_body: bytes | None,
        request_size: int,
        request_content_type: str,
        status: int,
        latency_ms: float,
        response_body: bytes | None,
        response_size: int,
        response_content_type: str,
    ) -> bool:
        """Queue the record of a finished call; False (dropped) when the queue is full.

        A body not kept is None; a kept one is cut at the cap here, and the
        sizes are the whole bodies' (a kept body shorter than its size was cut)."""
        config = self.config
        if len(self._rows) >= config.queue_max_records:
            return False
        cap = config.body_max_bytes
        if request_body is not None and len(request_body) > cap:
            request_body = request_body[:cap]
        if response_body is not None and len(response_body) > cap:
            response_body = response_body[:cap]
        row = encode_row(
            self._service_uuid(service_id),
            config_id,
            version_label,
            created_at,
            request_id,
            method[:METHOD_MAX_CHARS],
            status,
            latency_ms,
            request_body,
            request_size,
            request_content_type[:CONTENT_TYPE_MAX_CHARS],
            request_body is not None and request_size > len(request_body),
            response_body,
            response_size,
            response_content_type[:CONTENT_TYPE_MAX_CHARS],
            response_body is not None and response_size > len(response_body),
        )
        if self._bytes + RECORD_OVERHEAD_BYTES + len(row) > config.queue_max_bytes:
            return False
        self._queue(row)
        return True

    def _service_uuid(self, service_id: str) -> uuid.UUID:
        known = self._service_uuids.get(service_id)
        if known is None:
            if len(self._service_uuids) >= self.SERVICE_IDS_KEPT:
                self._service_uuids.clear()
            known = self._service_uuids[service_id] = uuid.UUID(service_id)
        return known

    def _queue(self, row: bytes) -> None:
        self._rows.append(row)
        self._bytes += RECORD_OVERHEAD_BYTES + len(row)

    def take(self) -> list[bytes]:
        """The queued rows, oldest first; the queue starts again empty."""
        rows, self._rows, self._bytes = self._rows, [], 0
        return rows

    def put_back(self, rows: list[bytes]) -> int:
        """Return rows whose flush failed, oldest first, as far as the bounds
        allow; the number dropped."""
        kept, self._rows, self._bytes = self._rows, [], 0
        config = self.config
        dropped = 0
        for row in [*rows, *kept]:
            size = RECORD_OVERHEAD_BYTES + len(row)
            if len(self._rows) >= config.queue_max_records or self._bytes + size > config.queue_max_bytes:
                dropped += 1
            else:
                self._queue(row)
        return dropped

    def __len__(self) -> int:
        return len(self._rows)
