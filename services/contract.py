"""What the console and the gateway must agree on, in one place.

Both processes import this module: it has no Django and no aiohttp, so the
gateway loads it without the console's settings. A change here is a change to
the wire or to the rows both sides read and write.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left

from services.choices import CALLABLE_STATUSES, ServiceStatus

__all__ = [
    "CALLABLE_STATUSES",
    "INFER_PREFIX",
    "LATENCY_BUCKETS_MS",
    "LATENCY_BUCKET_COUNT",
    "ErrorCode",
    "infer_url",
    "latency_bucket",
    "percentile_ms",
    "secret_hash",
    "status_label",
]

# --- Calls ------------------------------------------------------------------------

INFER_PREFIX = "/v1/infers/"


def infer_url(gateway_url: str, service_id: object) -> str:
    """The one URL a service is called at."""
    return f"{gateway_url.rstrip('/')}{INFER_PREFIX}{service_id}"


def secret_hash(secret: str) -> str:
    """How tokens and app codes are stored and looked up: never the secret itself."""
    return hashlib.sha256(secret.encode()).hexdigest()


def status_label(status: str) -> str:
    """A service status as people read it ("Deploying"), for the gateway's 503s."""
    try:
        return ServiceStatus(status).label
    except ValueError:
        return status


class ErrorCode:
    """`error_code` of every JSON error the REST API and the gateway answer with."""

    VALIDATION_FAILED = "RTS.4000"
    BODY_MALFORMED = "RTS.4001"
    NO_CREDENTIALS = "RTS.4010"
    BAD_CREDENTIALS = "RTS.4011"
    LOGIN_FAILED = "RTS.4012"
    FORBIDDEN = "RTS.4030"
    NOT_FOUND = "RTS.4040"
    METHOD_NOT_ALLOWED = "RTS.4050"
    CONFLICT = "RTS.4090"
    BODY_TOO_LARGE = "RTS.4130"
    INTERNAL = "RTS.5000"
    CONNECT_FAILED = "RTS.5020"
    BAD_UPSTREAM_ANSWER = "RTS.5021"
    NOT_CALLABLE = "RTS.5031"
    NO_HEALTHY_INSTANCE = "RTS.5032"
    UPSTREAM_TIMEOUT = "RTS.5040"


# --- Call statistics --------------------------------------------------------------
# The gateway counts latencies into these buckets; the console stores the
# histograms (an array column of LATENCY_BUCKET_COUNT) and reads percentiles off them.

# Upper bounds, in milliseconds, of the latency histogram's buckets; one more
# bucket holds everything slower.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 1.5, 2, 3, 4, 5, 7, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 300, 400, 500,
    750, 1000, 1500, 2000, 3000, 5000, 10000, 30000, 60000,
)  # fmt: skip
LATENCY_BUCKET_COUNT = len(LATENCY_BUCKETS_MS) + 1


def latency_bucket(latency_ms: float) -> int:
    """The index of the histogram bucket a call of this latency falls into."""
    return bisect_left(LATENCY_BUCKETS_MS, latency_ms)


def percentile_ms(histogram: list[int], fraction: float) -> float | None:
    """The upper bound of the bucket holding the given fraction of calls."""
    total = sum(histogram)
    if total == 0:
        return None
    rank = fraction * total
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return LATENCY_BUCKETS_MS[index] if index < len(LATENCY_BUCKETS_MS) else float("inf")
    return float("inf")
