"""The gateway's Prometheus metrics, served at /metrics.

A multi-process gateway sets PROMETHEUS_MULTIPROC_DIR before it starts its
processes (gateway/__main__.py); each writes its own files there and /metrics,
whichever process answers, adds them all up. A single process keeps them in
memory. Services are labelled only once authorized, so callers cannot make up
label values.
"""

from __future__ import annotations

import os
from bisect import bisect_left

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from services.contract import LATENCY_BUCKETS_MS

UNKNOWN_SERVICE = "-"

CALLS = Counter(
    "rts_gateway_calls_total",
    "Calls answered, by service (- when none was authorized) and status class",
    ["service", "status_class"],
)
CALL_SECONDS = Histogram(
    "rts_gateway_call_seconds",
    "Time from a call's arrival to its answer",
    buckets=[ms / 1000 for ms in LATENCY_BUCKETS_MS],
)
LIMITED_CALLS = Counter(
    "rts_gateway_limited_calls_total",
    "Calls refused with 429 because their service was over its traffic limit",
)
COLLECTION_DROPPED = Counter(
    "rts_gateway_collection_dropped_total",
    "Sampled calls whose data collection record was dropped (the queue was full: the database fell behind)",
)
UPSTREAM_ERRORS = Counter(
    "rts_gateway_upstream_errors_total",
    "Calls that failed between the gateway and an instance, by kind",
    ["kind"],
)
TABLE_SERVICES = Gauge("rts_gateway_table_services", "Services in the routing table", multiprocess_mode="max")
TABLE_TOKENS = Gauge("rts_gateway_table_tokens", "Tokens in the routing table", multiprocess_mode="max")
TABLE_LOADED_AT = Gauge(
    "rts_gateway_table_loaded_at_seconds",
    "Every change committed before this UNIX time is in the table (as a process last reported it)",
    multiprocess_mode="mostrecent",
)


class CallTally:
    """The calls of one gateway process counted in plain Python, added to CALLS
    and CALL_SECONDS by `flush` (once a second, and before this process answers
    /metrics). In a multi-process gateway every Prometheus update writes a
    shared file under a lock, about 5 µs: per call, two of them cost a tenth of
    the gateway's own time."""

    def __init__(self) -> None:
        self.calls: dict[tuple[str, int], int] = {}
        # CALL_SECONDS' upper bounds, +Inf last: the bucket of an amount is the first bound >= it.
        self.bounds: list[float] = list(CALL_SECONDS._upper_bounds)
        self.bucket_counts = [0] * len(self.bounds)
        self.seconds_sum = 0.0

    def count(self, service: str, status: int, seconds: float) -> None:
        key = (service, status // 100)
        self.calls[key] = self.calls.get(key, 0) + 1
        self.bucket_counts[bisect_left(self.bounds, seconds)] += 1
        self.seconds_sum += seconds

    def flush(self) -> None:
        calls, self.calls = self.calls, {}
        for (service, hundreds), n in calls.items():
            CALLS.labels(service, f"{hundreds}xx").inc(n)
        if any(self.bucket_counts):
            histogram_add(CALL_SECONDS, self.bucket_counts, self.seconds_sum)
            self.bucket_counts = [0] * len(self.bounds)
            self.seconds_sum = 0.0


def histogram_add(histogram: Histogram, bucket_counts: list[int], seconds_sum: float) -> None:
    """Observations added to an unlabelled histogram in bulk: bucket_counts[i]
    of them fell in the i-th bucket (not cumulative), adding up to seconds_sum.

    prometheus_client has no bulk observe; this writes the `_sum` and `_buckets`
    values that Histogram.observe writes (tests/gateway/test_metrics.py checks
    the result against observe, so a change of those internals shows there)."""
    histogram._sum.inc(seconds_sum)
    for bucket, n in zip(histogram._buckets, bucket_counts, strict=True):
        if n:
            bucket.inc(n)


def exposition() -> tuple[bytes, str]:
    """The metrics text and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
