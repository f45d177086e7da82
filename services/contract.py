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
    "RoutingNotice",
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
    BAD_REQUEST = "RTS.4002"
    NO_CREDENTIALS = "RTS.4010"
    BAD_CREDENTIALS = "RTS.4011"
    LOGIN_FAILED = "RTS.4012"
    FORBIDDEN = "RTS.4030"
    NOT_FOUND = "RTS.4040"
    METHOD_NOT_ALLOWED = "RTS.4050"
    CONFLICT = "RTS.4090"
    BODY_TOO_LARGE = "RTS.4130"
    TOO_MANY_ATTEMPTS = "RTS.4290"
    TRAFFIC_LIMITED = "RTS.4291"
    HEADERS_TOO_LARGE = "RTS.4310"
    NOT_WEBSOCKET = "RTS.4003"
    WEBSOCKET_REQUIRED = "RTS.4260"
    INTERNAL = "RTS.5000"
    UNAVAILABLE = "RTS.5030"
    CONNECT_FAILED = "RTS.5020"
    BAD_UPSTREAM_ANSWER = "RTS.5021"
    NOT_CALLABLE = "RTS.5031"
    NO_HEALTHY_INSTANCE = "RTS.5032"
    UPSTREAM_TIMEOUT = "RTS.5040"
    VERSION_NOT_SUPPORTED = "RTS.5050"


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


# --- Routing notifications ------------------------------------------------------------


class RoutingNotice:
    """How the database tells every gateway process what changed, and how the
    console waits until each has applied it (services.routing_sync).

    The triggers of services/migrations/0005_routing_notify.py write the same
    payloads (frozen SQL: a change here needs a new migration too). Every
    payload on CHANNEL is `<kind>:<value>`:
      s:<service id>      a service, its versions' weights or its instances changed
      v:<app version id>  a version's predict path changed (every service using it)
      t:<token hash>      an access token was created, revoked, re-dated or deleted
      u:<user id>         a user was (de)activated: all of their tokens
      c:<code hash>       an app code was created, revoked or deleted
      *                   a table was truncated: reload everything
      y:<sync token>      a sync: answer on ACK_CHANNEL once everything before it is applied
      d:<sync token> <config ids, comma-separated>
                          a drain: a sync answered once, besides, no call in flight
                          could still reach those configurations (a live update's old versions)
      h:<gateway id> <t>  a gateway's own probe: everything committed before t is applied
    """

    CHANNEL = "rts_routing"
    ACK_CHANNEL = "rts_routing_ack"
    # The LISTEN connection of every gateway process carries this application
    # name once it listens, so pg_stat_activity lists the live gateways.
    APPLICATION_PREFIX = "rts-gateway "

    SERVICE = "s"
    APP_VERSION = "v"
    TOKEN = "t"
    USER = "u"
    APP_CODE = "c"
    SYNC = "y"
    DRAIN = "d"
    PROBE = "h"
    RELOAD_ALL = "*"

    @classmethod
    def application_name(cls, gateway_id: str) -> str:
        return cls.APPLICATION_PREFIX + gateway_id

    @staticmethod
    def ack_payload(sync_token: str, gateway_id: str) -> str:
        return f"{sync_token} {gateway_id}"

    @classmethod
    def drain_payload(cls, sync_token: str, config_ids: list[int]) -> str:
        return f"{cls.DRAIN}:{sync_token} {','.join(str(config_id) for config_id in config_ids)}"

    @staticmethod
    def parse_drain(value: str) -> tuple[str, tuple[int, ...]]:
        """(sync token, config ids) of a drain's value; ids that are not numbers are left out."""
        sync_token, _, ids = value.partition(" ")
        return sync_token, tuple(int(part) for part in ids.split(",") if part.isdigit())

    @staticmethod
    def parse_ack(payload: str) -> tuple[str, str]:
        """(sync token, gateway id) of an acknowledgement."""
        sync_token, _, gateway_id = payload.partition(" ")
        return sync_token, gateway_id
