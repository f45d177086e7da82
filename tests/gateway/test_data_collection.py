"""Data collection through a real gateway in front of a real demo container:
the share of calls kept matches the rule (all of them at 100 %, about half at
50 %), the request, the response or both are kept as configured, each body at
most the cap (a streamed answer too, and the caller still gets all of it), and
the JSON Lines export carries them. Then the pure parts: the routing row, the
cap while streaming, the bounded queue and its drops."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import urllib.request
import uuid

import aiohttp
import psycopg
import pytest
from aiohttp import web
from django.db import connection
from django.db.models import Sum
from django.urls import reverse

from access.actions import access_token_create
from gateway import app as gateway_app
from gateway import metrics, store
from gateway.collect import (
    COPY_SIGNATURE,
    COPY_TRAILER,
    RECORD_OVERHEAD_BYTES,
    CollectionConfig,
    Collector,
    ResponseSample,
)
from gateway.routing import services_from_rows
from gateway.store import SERVICES_BY_ID_SQL
from services.actions import collection_rule_set
from services.lifecycle import service_deploy_run
from services.models import DataCollectionRecord, DataCollectionRule, Service, ServiceCallStat
from services.validation import parse_collection_rule
from tests.conftest import start_gateway, stop_gateway, wait_for_gateway_reload
from tests.factories import create_service, make_service
from tests.waiting import eventually

CAP = 4096


@pytest.fixture(scope="module")
def collecting_gateway(django_db_setup):
    """A gateway keeping at most CAP bytes of each body."""
    process, url = start_gateway(DATA_COLLECTION_BODY_MAX_BYTES=str(CAP))
    yield url
    stop_gateway(process)


@pytest.fixture
def deployed(collecting_gateway, engine, transactional_db, owner, pool, flavors, demo_version, enqueued):
    """A Running demo service (one real container) the gateway routes to:
    (service, its gateway URL, the headers that open it)."""
    service = create_service(owner, demo_version, name="collected")
    assert service_deploy_run(service_id=service.id) == "running"
    token = access_token_create(owner=owner, name="collect", days=1).secret
    return service, f"{collecting_gateway}/v1/infers/{service.id}", {"X-Auth-Token": token}


def rule_set(service: Service, gateway_url: str, **data) -> None:
    """Set the rule as the tab does, and return once the gateway has it."""
    data = {"is_enabled": True, "sample_percent": 100, "content": "both", "keep_days": 7, **data}
    collection_rule_set(service=service, request=parse_collection_rule(service=service, data=data))
    wait_for_gateway_reload(gateway_url)


async def call_all(
    url: str, headers: dict, bodies: list[bytes], *, path: str = "", method: str = "POST", workers: int = 8
) -> list[tuple[str, int, bytes]]:
    """Each body in one call (8 at a time), each with its own X-Request-Id:
    (request id, status, answer) in the order given."""
    results: list[tuple[str, int, bytes]] = [("", 0, b"")] * len(bodies)
    queue = list(enumerate(bodies))

    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            while queue:
                n, body = queue.pop()
                request_id = f"collect-{uuid.uuid4().hex}"
                call_headers = {**headers, "X-Request-Id": request_id, "Content-Type": "application/json"}
                async with session.request(method, url + path, data=body, headers=call_headers) as response:
                    results[n] = (request_id, response.status, await response.read())

        await asyncio.gather(*(worker() for _ in range(workers)))
    return results


def calls(bodies: list[bytes], url: str, headers: dict, **kwargs) -> list[tuple[str, int, bytes]]:
    results = asyncio.run(call_all(url, headers, bodies, **kwargs))
    assert [status for _, status, _ in results] == [200] * len(bodies), "collection failed a call"
    return results


def flushed(service: Service, total_calls: int) -> None:
    """Return once the gateway's flush that carries the last of these calls
    has stored its records (they go in the same flush as the counts, after them)."""
    eventually(
        lambda: (ServiceCallStat.objects.filter(service=service).aggregate(n=Sum("calls"))["n"] or 0) >= total_calls,
        timeout=10,
        message="the gateway never counted the calls",
    )
    counts = [-1]

    def settled() -> bool:
        # Two polls 0.3 s apart with the same count: the flush after the counts is done.
        counts.append(DataCollectionRecord.objects.filter(service=service).count())
        return counts[-1] == counts[-2]

    eventually(settled, timeout=10, interval=0.3, message="the records kept coming")


def records_of(results: list[tuple[str, int, bytes]]) -> dict[str, DataCollectionRecord]:
    ids = [request_id for request_id, _, _ in results]
    return {record.request_id: record for record in DataCollectionRecord.objects.filter(request_id__in=ids)}


def dropped_total(gateway_url: str) -> float:
    with urllib.request.urlopen(gateway_url + "/metrics", timeout=2) as response:
        text = response.read().decode()
    return sum(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith("rts_gateway_collection_dropped_total")
    )


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_collection_keeps_no_call_when_off_every_call_at_100_and_about_half_at_50(deployed, collecting_gateway):
    service, url, headers = deployed
    body = b'{"data": [[5.1, 3.5, 1.4, 0.2]]}'

    # Off by default.
    calls([body] * 20, url, headers)
    flushed(service, 20)
    assert DataCollectionRecord.objects.filter(service=service).count() == 0

    rule_set(service, collecting_gateway, sample_percent=100)
    all_kept = calls([body] * 200, url, headers)
    flushed(service, 220)
    kept = records_of(all_kept)
    assert len(kept) == 200
    assert DataCollectionRecord.objects.filter(service=service).count() == 200
    record = next(iter(kept.values()))
    assert (record.version, record.status_code, record.method, record.config_id) == (
        "1.0.0",
        200,
        "POST",
        service.configs.get().id,
    )
    assert record.latency_ms > 0

    rule_set(service, collecting_gateway, sample_percent=50)
    half = calls([body] * 400, url, headers)
    flushed(service, 620)
    # Binomial(400, 0.5): mean 200, standard deviation 10; ±4.5 sd fails once in ~150,000 runs.
    assert 155 <= len(records_of(half)) <= 245
    assert DataCollectionRecord.objects.filter(service=service).count() == 200 + len(records_of(half))
    assert dropped_total(collecting_gateway) == 0


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_request_response_or_both_are_kept_as_configured_each_within_the_cap(
    deployed, collecting_gateway, owner_client
):
    service, url, headers = deployed
    small = [json.dumps({"n": n, "tag": "small"}).encode() for n in range(3)]
    large = json.dumps({"values": list(range(3000))}).encode()  # ~15 KB: over the cap
    assert len(large) > 3 * CAP

    rule_set(service, collecting_gateway, content="request")
    requests_only = calls(small, url, headers)
    rule_set(service, collecting_gateway, content="response")
    responses_only = calls(small, url, headers)
    rule_set(service, collecting_gateway, content="both")
    both = calls([*small, large], url, headers)
    # Streamed (over 256 KiB): only the first CAP bytes are kept as they pass.
    streamed = calls([b""], url, headers, path="/large?bytes=600000", method="GET")
    flushed(service, 3 + 3 + 4 + 1)

    for request_id, _, answer in requests_only:
        record = records_of(requests_only)[request_id]
        sent = small[[r for r, _, _ in requests_only].index(request_id)]
        assert bytes(record.request_body) == sent and record.request_size == len(sent)
        assert record.request_content_type == "application/json" and not record.request_truncated
        assert record.response_body is None and record.response_size == len(answer)
        assert record.response_content_type == "application/json"
    for request_id, _, answer in responses_only:
        record = records_of(responses_only)[request_id]
        assert record.request_body is None and record.request_size > 0
        assert bytes(record.response_body) == answer and not record.response_truncated
    for (request_id, _, answer), sent in zip(both, [*small, large], strict=True):
        record = records_of(both)[request_id]
        assert bytes(record.request_body) == sent[:CAP] and record.request_size == len(sent)
        assert bytes(record.response_body) == answer[:CAP] and record.response_size == len(answer)
        assert record.request_truncated == record.response_truncated == (sent is large)
    [(request_id, _, answer)] = streamed
    assert len(answer) == 600_000  # the caller got all of it
    record = records_of(streamed)[request_id]
    assert record.method == "GET" and record.request_size == 0
    assert bytes(record.response_body) == answer[:CAP]
    assert (record.response_size, record.response_truncated) == (600_000, True)
    assert record.response_content_type == "application/octet-stream"

    # The JSON Lines export carries every record, bodies as text (UTF-8 here).
    response = owner_client.get(reverse("services:collection_export", args=[service.id]))
    lines = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]
    assert len(lines) == 11
    by_id = {line["request_id"]: line for line in lines}
    large_line = by_id[both[-1][0]]
    assert large_line["request"]["body"] == large[:CAP].decode()
    assert (large_line["request"]["size"], large_line["request"]["truncated"]) == (len(large), True)
    assert large_line["response"]["body"].encode() == both[-1][2][:CAP]
    assert by_id[requests_only[0][0]]["response"]["body"] is None
    assert by_id[streamed[0][0]]["response"]["body_encoding"] == "utf-8"


# --- Never for a WebSocket service -------------------------------------------------------


@pytest.mark.django_db
def test_the_gateway_row_of_a_websocket_service_never_collects(owner, pool, flavors, demo_version):
    """Even a rule stored past the validation (which refuses it) does not reach the gateway."""
    websocket = make_service(owner, pool, version=demo_version, name="ws-svc", is_websocket=True)
    plain = make_service(owner, pool, version=demo_version, name="plain-svc")
    DataCollectionRule.objects.create(service=websocket, is_enabled=True, sample_percent=100, content="both")
    DataCollectionRule.objects.create(service=plain, is_enabled=True, sample_percent=30, content="response")

    with connection.cursor() as cursor:
        cursor.execute(SERVICES_BY_ID_SQL, [[str(websocket.id), str(plain.id)]])
        routes = services_from_rows(cursor.fetchall(), "127.0.0.1")

    ws, http = routes[str(websocket.id)], routes[str(plain.id)]
    assert (ws.is_websocket, ws.collect_percent) == (True, 0)
    assert (http.collect_percent, http.collect_request, http.collect_response) == (30, False, True)


# --- Pure parts: the routing row, the cap, the queue ---------------------------------------

SVC = "0d6f3c1e-0000-4000-8000-00000000000a"


def test_routing_rows_carry_the_rule_and_older_shorter_rows_still_parse():
    base = (SVC, 1, "running", 10, 100, "/predict", 30001)
    [(with_rule)] = services_from_rows([(*base, False, None, 25, True, False)], "h").values()
    [(without_rule)] = services_from_rows([(*base, False, None, 0, None, None)], "h").values()
    [(old_row)] = services_from_rows([base], "h").values()

    assert (with_rule.collect_percent, with_rule.collect_request, with_rule.collect_response) == (25, True, False)
    assert (without_rule.collect_percent, without_rule.collect_request, without_rule.collect_response) == (
        0,
        False,
        False,
    )
    assert old_row.collect_percent == 0


def record(collector: Collector, *, body: bytes = b"", answer: bytes | None = b"", keeps_request: bool = True) -> bool:
    return collector.add(
        service_id=SVC,
        config_id=7,
        version_label="2.0.1",
        created_at=1_700_000_000.25,
        request_id="rid-12345678",
        method="POST",
        request_body=body if keeps_request else None,
        request_size=len(body),
        request_content_type="application/json\x00",
        status=200,
        latency_ms=1.5,
        response_body=answer,
        response_size=len(answer or b"") if answer is not None else 6,
        response_content_type="text/plain",
    )


def copy_rows_read(rows: list[bytes]) -> list[tuple]:
    """The rows as PostgreSQL reads them: COPY them into a temporary table like
    the records' and select them back."""
    columns = ", ".join(name for name, _ in store.COLLECTED_COLUMNS)

    async def round_trip() -> list[tuple]:
        conn = await store.connect(_test_database_conninfo())
        try:
            await conn.execute(
                "CREATE TEMP TABLE services_datacollectionrecord_copy AS "
                "SELECT * FROM services_datacollectionrecord WITH NO DATA"
            )
            sql = store.COLLECTED_COPY_SQL.replace(
                "services_datacollectionrecord", "services_datacollectionrecord_copy"
            )
            async with conn.cursor().copy(sql) as copy:
                await copy.write(COPY_SIGNATURE + b"".join(rows) + COPY_TRAILER)
            cursor = await conn.execute(f"SELECT {columns} FROM services_datacollectionrecord_copy")
            return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in await cursor.fetchall()]
        finally:
            await conn.close()

    return asyncio.run(round_trip())


def _test_database_conninfo() -> str:
    settings_dict = connection.settings_dict
    return psycopg.conninfo.make_conninfo(
        dbname=settings_dict["NAME"],
        user=settings_dict["USER"],
        password=settings_dict["PASSWORD"] or None,
        host=settings_dict["HOST"],
        port=settings_dict["PORT"],
    )


@pytest.mark.django_db
def test_a_record_is_encoded_as_postgresql_reads_it_with_each_body_cut_at_the_cap():
    collector = Collector(CollectionConfig(body_max_bytes=10, queue_max_records=10, queue_max_bytes=10**9))
    assert record(collector, body=b"0123456789abcdef", answer=b"abcdefghij" + b"q" * 1006)
    assert record(collector, body=b"short", answer=None, keeps_request=False)
    (first, second) = copy_rows_read(collector.take())
    (service_id, config_id, label, created_at, request_id, method, status, latency, request_body, request_size,
     request_type, request_cut, response_body, response_size, response_type, response_cut) = first  # fmt: skip
    assert (service_id, config_id, label) == (uuid.UUID(SVC), 7, "2.0.1")
    assert created_at == dt.datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=dt.UTC)
    assert (request_id, method, status, latency) == ("rid-12345678", "POST", 200, 1.5)
    assert (request_body, request_size, request_cut) == (b"0123456789", 16, True)
    assert request_type == "application/json"  # no NUL reaches PostgreSQL
    assert (response_body, response_size, response_cut, response_type) == (b"abcdefghij", 1016, True, "text/plain")
    # What a rule does not keep is NULL, and not "cut".
    assert (second[8], second[9], second[11]) == (None, 5, False)
    assert (second[12], second[13], second[15]) == (None, 6, False)


@pytest.mark.django_db
def test_text_postgresql_would_refuse_is_made_valid_rather_than_fail_the_flush():
    collector = Collector(CollectionConfig(body_max_bytes=10, queue_max_records=10, queue_max_bytes=10**9))
    collector.add(
        service_id=SVC, config_id=1, version_label="1.0.0", created_at=1_700_000_000.0, request_id="rid-12345678",
        method="POST", request_body=b"", request_size=0,
        # A header byte aiohttp could not decode arrives as a lone surrogate.
        request_content_type="text/\udcff\x00plain" + "x" * 300,
        status=200, latency_ms=1.0, response_body=b"", response_size=0, response_content_type="",
    )  # fmt: skip
    (row,) = copy_rows_read(collector.take())
    assert row[10] == ("text/?plain" + "x" * 300)[:199]


def test_a_streamed_answer_keeps_only_its_first_bytes_up_to_the_cap():
    sample = ResponseSample(10)
    for chunk in (b"abcd", b"efghij", b"klmnop", b"q" * 1000):
        sample.add(chunk)
    # Never more than the cap held, as the answer passes.
    assert sum(map(len, sample.parts)) == 10
    assert (sample.body(), sample.size) == (b"abcdefghij", 1016)


def test_sampling_keeps_the_rules_share():
    rng = random.Random(1)
    assert not Collector.is_sampled(0, rng)
    assert all(Collector.is_sampled(100, rng) for _ in range(1000))
    assert 2300 <= sum(Collector.is_sampled(25, rng) for _ in range(10_000)) <= 2700


def queued(collector: Collector, count: int) -> list[bool]:
    return [record(collector, body=b"r" * 100) for _ in range(count)]


def test_the_queue_drops_records_beyond_its_bounds_rather_than_grow():
    by_count = Collector(CollectionConfig(body_max_bytes=100, queue_max_records=3, queue_max_bytes=10**9))
    assert queued(by_count, 5) == [True, True, True, False, False]
    one = Collector(CollectionConfig(body_max_bytes=100, queue_max_records=10, queue_max_bytes=10**9))
    record(one, body=b"r" * 100)
    size = len(one.take()[0]) + RECORD_OVERHEAD_BYTES
    by_bytes = Collector(CollectionConfig(body_max_bytes=100, queue_max_records=1000, queue_max_bytes=2 * size + 1))
    assert queued(by_bytes, 3) == [True, True, False]
    assert len(by_bytes.take()) == 2 and len(by_bytes) == 0


def test_a_failed_flush_puts_records_back_within_the_bounds_and_counts_the_rest(monkeypatch):
    collector = Collector(CollectionConfig(body_max_bytes=100, queue_max_records=3, queue_max_bytes=10**9))
    app = web.Application()
    app[gateway_app.COLLECTOR] = collector
    queued(collector, 2)
    taken = collector.take()
    queued(collector, 2)
    before = metrics.COLLECTION_DROPPED._value.get()

    async def database_down(conn, rows):
        raise psycopg.OperationalError("the database went away")

    async def bad_rows(conn, rows):
        raise psycopg.DataError("bad value")

    holder = {"conn": None}
    monkeypatch.setattr(store, "insert_collected_records", database_down)
    asyncio.run(gateway_app._flush_collected(app, None, taken, holder))
    # The two taken go back first; of the two queued since, one fits.
    assert len(collector) == 3
    assert metrics.COLLECTION_DROPPED._value.get() == before + 1
    assert collector.take()[:2] == taken

    queued(collector, 3)
    rows = collector.take()
    monkeypatch.setattr(store, "insert_collected_records", bad_rows)
    asyncio.run(gateway_app._flush_collected(app, None, rows, holder))
    # Rows the database refuses are not tried again.
    assert len(collector) == 0
    assert metrics.COLLECTION_DROPPED._value.get() == before + 4


def test_the_console_reads_the_same_cap_as_the_gateway(settings):
    assert settings.DATA_COLLECTION_BODY_MAX_BYTES == CollectionConfig.from_env().body_max_bytes


def test_the_dropped_records_counter_is_exposed():
    body, _ = metrics.exposition()
    assert b"rts_gateway_collection_dropped_total" in body
