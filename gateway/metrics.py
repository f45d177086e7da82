"""The gateway's Prometheus metrics, served at /metrics.

A multi-process gateway sets PROMETHEUS_MULTIPROC_DIR before it starts its
processes (gateway/__main__.py); each writes its own files there and /metrics,
whichever process answers, adds them all up. A single process keeps them in
memory. Services are labelled only once authorized, so callers cannot make up
label values.
"""

from __future__ import annotations

import os

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


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def exposition() -> tuple[bytes, str]:
    """The metrics text and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
