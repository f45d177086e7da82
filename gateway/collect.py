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
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from common.env import env_int

# A record's own size beyond its bodies, roughly, for the queue's byte bound.
RECORD_OVERHEAD_BYTES = 300
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
            queue_max_records=env_int("DATA_COLLECTION_QUEUE_MAX_RECORDS", 20_000),
            queue_max_bytes=env_int("DATA_COLLECTION_QUEUE_MAX_BYTES", 32 * 1024 * 1024),
        )


def _text(value: str, limit: int) -> str:
    # PostgreSQL text holds no NUL, and a model's header may carry one: one bad
    # record must not make the whole batch fail.
    return value[:limit].replace("\x00", "")


class CollectedCall:
    """One sampled call while it is under way, then its record.

    Holds at most `cap` bytes of each body: the request's first bytes when the
    rule keeps requests, the response's first bytes as they pass when it keeps
    responses. Sizes count every byte, kept or not."""

    __slots__ = (
        "service_id",
        "created_at",
        "method",
        "request_id",
        "request_body",
        "request_size",
        "request_content_type",
        "cap",
        "keeps_response",
        "response_parts",
        "response_body",
        "response_kept",
        "response_size",
        "config_id",
        "version_label",
        "status",
        "latency_ms",
        "response_content_type",
    )

    def __init__(
        self,
        *,
        service_id: str,
        created_at: float,
        method: str,
        request_id: str,
        request_body: bytes,
        request_content_type: str,
        cap: int,
        keeps_request: bool,
        keeps_response: bool,
    ) -> None:
        self.service_id = service_id
        self.created_at = float(created_at)
        self.method = method[:METHOD_MAX_CHARS]
        self.request_id = request_id
        # Slicing a body no longer than the cap gives the same object: no copy.
        self.request_body: bytes | None = request_body[:cap] if keeps_request else None
        self.request_size = len(request_body)
        self.request_content_type = _text(request_content_type, CONTENT_TYPE_MAX_CHARS)
        self.cap = cap
        self.keeps_response = keeps_response
        self.response_parts: list[bytes] = []
        self.response_body: bytes | None = None
        self.response_kept = 0
        self.response_size = 0
        self.config_id = 0
        self.version_label = ""
        self.status = 0
        self.latency_ms = 0.0
        self.response_content_type = ""

    def response_part(self, chunk: bytes) -> None:
        """A piece of the answer as it passes; only what fits under the cap is kept."""
        self.response_size += len(chunk)
        room = self.cap - self.response_kept
        if self.keeps_response and room > 0:
            part = chunk if len(chunk) <= room else chunk[:room]
            self.response_parts.append(part)
            self.response_kept += len(part)

    def finish(
        self,
        *,
        config_id: int,
        version_label: str,
        status: int,
        latency_ms: float,
        response_headers: Iterable[tuple[str, str]],
    ) -> None:
        self.config_id = config_id
        self.version_label = version_label
        self.status = status
        # A float always: a column's values are sent as one typed array.
        self.latency_ms = float(latency_ms)
        if self.keeps_response:
            self.response_body = b"".join(self.response_parts)
        self.response_parts = []
        for name, value in response_headers:
            if name.lower() == "content-type":
                self.response_content_type = _text(value, CONTENT_TYPE_MAX_CHARS)
                break

    @property
    def nbytes(self) -> int:
        return RECORD_OVERHEAD_BYTES + len(self.request_body or b"") + self.response_kept

    def row(self) -> tuple[object, ...]:
        """The finished record as gateway/store.py insert_collected_records takes it
        (its COLLECTED_COLUMNS, in order)."""
        return (
            uuid.UUID(self.service_id),
            self.config_id,
            self.version_label,
            dt.datetime.fromtimestamp(self.created_at, dt.UTC),
            self.request_id,
            self.method,
            self.status,
            self.latency_ms,
            self.request_body,
            self.request_size,
            self.request_content_type,
            self.request_size > len(self.request_body) if self.request_body is not None else False,
            self.response_body,
            self.response_size,
            self.response_content_type,
            self.response_size > self.response_kept if self.keeps_response else False,
        )


class Collector:
    """The records of one gateway process waiting for the flush, within bounds."""

    def __init__(self, config: CollectionConfig) -> None:
        self.config = config
        self._records: list[CollectedCall] = []
        self._bytes = 0

    @staticmethod
    def is_sampled(percent: int, rng: random.Random) -> bool:
        """Whether to keep this call, for a rule keeping `percent` % of calls (0: off)."""
        return percent >= 100 or (percent > 0 and rng.random() * 100 < percent)

    def add(self, record: CollectedCall) -> bool:
        """Queue a finished record; False (dropped) when the queue is full."""
        size = record.nbytes
        config = self.config
        if len(self._records) >= config.queue_max_records or self._bytes + size > config.queue_max_bytes:
            return False
        self._records.append(record)
        self._bytes += size
        return True

    def take(self) -> list[CollectedCall]:
        records, self._records, self._bytes = self._records, [], 0
        return records

    def put_back(self, records: list[CollectedCall]) -> int:
        """Return records whose flush failed, oldest first, as far as the bounds
        allow; the number dropped."""
        kept, self._records, self._bytes = self._records, [], 0
        dropped = 0
        for record in [*records, *kept]:
            if not self.add(record):
                dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self._records)
