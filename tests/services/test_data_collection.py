"""The Data Collection tab: the owner turns collection on and off and sets its
rules (one validation function: an error per field, nothing stored), sees the
newest records and downloads them all as JSON Lines; another user and a staff
operator get 404; the periodic purge keeps each rule's retention. The gateway
side is in tests/gateway/test_data_collection.py."""

from __future__ import annotations

import asyncio
import base64
import html
import json
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from gateway import store
from gateway.app import conninfo
from gateway.collect import encode_row_values
from gateway.config import DatabaseConfig
from services.collection import collected_records_purge
from services.models import DataCollectionRecord, DataCollectionRule, Service, ServiceEvent, ServiceVersionConfig
from services.selectors import body_for_json, body_preview
from services.validation import RequestInvalid, parse_collection_rule
from tests.factories import make_service, make_user

pytestmark = pytest.mark.django_db

VALID = {"is_enabled": "on", "sample_percent": "50", "content": "both", "keep_days": "7", "keep_records": "1000"}


def tab_url(service: Service) -> str:
    return reverse("services:detail", args=[service.id]) + "?tab=collection"


def update_url(service: Service) -> str:
    return reverse("services:collection_update", args=[service.id])


def export_url(service: Service) -> str:
    return reverse("services:collection_export", args=[service.id])


def text(response) -> str:
    return html.unescape(response.content.decode())


def add_record(service: Service, **fields) -> DataCollectionRecord:
    config = service.configs.first()
    values = {
        "service": service,
        "config": config,
        "version": config.app_version.version if config else "",
        "created_at": timezone.now(),
        "method": "POST",
        "status_code": 200,
        "latency_ms": 3.24,
        "request_body": b'{"x": 1}',
        "request_size": 8,
        "request_content_type": "application/json",
        "response_body": b'{"prediction": 1}',
        "response_size": 17,
        "response_content_type": "application/json",
        **fields,
    }
    return DataCollectionRecord.objects.create(**values)


@pytest.fixture
def operator_client(client):
    operator = make_user("operator")
    operator.is_staff = True
    operator.save()
    client.force_login(operator)
    return client


# --- The tab, as the owner -----------------------------------------------------------


def test_the_tab_is_listed_and_opens_with_collection_off(owner_client, service):
    response = owner_client.get(tab_url(service))

    assert response.status_code == 200
    content = text(response)
    assert 'id="tab-collection" class="tab active" aria-current="page">Data Collection</a>' in content
    assert 'name="is_enabled" value="on" id="id_is_enabled">' in content  # not checked
    assert 'id="collected-empty"' in content
    assert 'id="collection-export"' not in content  # nothing to download yet
    assert not DataCollectionRule.objects.exists()  # opening the tab stores nothing


def test_the_owner_turns_collection_on_with_its_rules(owner_client, owner, service):
    response = owner_client.post(update_url(service), VALID)

    assert response.status_code == 302
    assert response["Location"] == tab_url(service)
    rule = DataCollectionRule.objects.get(service=service)
    assert (rule.is_enabled, rule.sample_percent, rule.content, rule.keep_days, rule.keep_records) == (
        True,
        50,
        "both",
        7,
        1000,
    )
    assert ServiceEvent.objects.filter(
        service=service,
        message="Data collection on by owner: 50% of calls, request and response, kept 7 days, at most 1,000 records",
    ).exists()
    page = text(owner_client.get(tab_url(service)))
    assert "Data collection is on: 50% of calls from the next one on." in page
    assert 'id="id_is_enabled" checked>' in page
    assert (
        '<p id="collection-state"><strong>On:</strong> 50% of calls (request and response), '
        "kept 7 days, at most 1,000 records.</p>" in page
    )
    assert 'name="content" value="both" checked>' in page


def test_an_htmx_save_answers_with_the_rule_card_and_turns_collection_off(owner_client, service):
    owner_client.post(update_url(service), VALID)

    response = owner_client.post(
        update_url(service), {**VALID, "is_enabled": "", "keep_records": ""}, HTTP_HX_REQUEST="true"
    )

    assert response.status_code == 200
    content = text(response)
    assert content.lstrip().startswith('<section class="card" id="collection-rule"')
    assert "Data collection is off; the records collected so far stay until their retention ends." in content
    assert '<p id="collection-state"><strong>Off.</strong> Records collected so far are kept 7 days.</p>' in content
    rule = DataCollectionRule.objects.get(service=service)
    assert (rule.is_enabled, rule.keep_days, rule.keep_records) == (False, 7, None)
    assert ServiceEvent.objects.filter(service=service, message="Data collection off by owner").exists()


def test_the_newest_records_are_listed_with_their_first_bytes(owner_client, service):
    older = add_record(service, created_at=timezone.now() - timedelta(minutes=5), status_code=500)
    newer = add_record(
        service,
        request_body=b"\x89PNG\r\n\x1a\n" + bytes(range(40)),
        request_size=70_000,
        request_truncated=True,
        request_content_type="image/png",
        response_body=None,
    )

    content = text(owner_client.get(tab_url(service)))

    rows = content.split('id="collected-rows"', 1)[1]
    assert rows.index(f'id="collected-{newer.id}"') < rows.index(f'id="collected-{older.id}"')
    newer_row = rows.split(f'id="collected-{newer.id}"', 1)[1].split("</tr>", 1)[0]
    assert "<code>0x 89 50 4e 47 0d 0a 1a 0a 00 01" in newer_row  # binary: hex
    assert "←" not in newer_row  # the response was not kept
    assert "68.4\xa0KB" in newer_row and "(cut)" in newer_row
    older_row = rows.split(f'id="collected-{older.id}"', 1)[1].split("</tr>", 1)[0]
    assert '<code>{"x": 1}</code>' in older_row and '<code>{"prediction": 1}</code>' in older_row
    assert '<td class="status-code">500</td>' in older_row
    assert "1.0.0" in older_row and "3.2 ms" in older_row
    assert 'id="collected-total">2 in all<' in content
    assert f'href="{export_url(service)}"' in content


def test_the_tab_reads_a_fixed_number_of_queries_however_many_records(owner_client, service, django_assert_num_queries):
    DataCollectionRule.objects.create(service=service, is_enabled=True)
    for _ in range(60):
        add_record(service, request_body=b"y" * 5000, response_body=b"z" * 5000)

    # Session, user, service, its configurations, the rule, the newest records (bodies' first bytes only), their count.
    with django_assert_num_queries(7):
        response = owner_client.get(tab_url(service))

    assert response.status_code == 200
    assert text(response).count('id="collected-') >= 50
    assert "the newest 50 shown" in text(response)


# --- Validation: one function, an error per field, nothing stored ----------------------


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"sample_percent": "0"}, "sample_percent", "Sampling rate (%) must be between 1 and 100."),
        ({"sample_percent": "101"}, "sample_percent", "Sampling rate (%) must be between 1 and 100."),
        ({"sample_percent": "half"}, "sample_percent", "Sampling rate (%) must be a whole number."),
        ({"sample_percent": ""}, "sample_percent", "Sampling rate (%) is required."),
        ({"content": "headers"}, "content", "Choose what to keep: the request, the response, or both."),
        ({"content": ""}, "content", "Choose what to keep: the request, the response, or both."),
        ({"keep_days": "31"}, "keep_days", "Days to keep must be between 1 and 30."),
        ({"keep_days": "0"}, "keep_days", "Days to keep must be between 1 and 30."),
        ({"keep_records": "100001"}, "keep_records", "Records to keep must be between 1 and 100000."),
        ({"keep_records": "-5"}, "keep_records", "Records to keep must be between 1 and 100000."),
        (
            {"keep_days": "", "keep_records": ""},
            "keep_days",
            "Set how long records are kept: a number of days, a number of records, or both.",
        ),
    ],
)
def test_a_bad_rule_is_refused_under_its_field_and_nothing_is_stored(owner_client, service, changes, field, message):
    response = owner_client.post(update_url(service), {**VALID, **changes})

    assert response.status_code == 400
    content = text(response)
    assert "Nothing was saved: correct the fields below." in content
    assert '<div class="field invalid">' in content
    assert f'<p class="field-error" role="alert">{message}</p>' in content
    # The form shows what was sent, to correct it.
    assert (
        f'name="sample_percent" type="number" min="1" max="100" value="{changes.get("sample_percent", "50")}"'
        in content
    )
    assert not DataCollectionRule.objects.exists()
    assert not ServiceEvent.objects.filter(message__startswith="Data collection").exists()


def test_every_bad_field_is_named_in_one_answer_and_an_existing_rule_stays(owner_client, service):
    DataCollectionRule.objects.create(service=service, is_enabled=True, sample_percent=20, content="request")

    response = owner_client.post(
        update_url(service),
        {"is_enabled": "on", "sample_percent": "0", "content": "x", "keep_days": "99", "keep_records": "0"},
        HTTP_HX_REQUEST="true",
    )

    assert response.status_code == 400
    content = text(response)
    assert content.count('class="field-error"') == 4
    rule = DataCollectionRule.objects.get(service=service)
    assert (rule.sample_percent, rule.content, rule.keep_days, rule.keep_records) == (20, "request", 7, 10_000)


def test_a_websocket_service_cannot_collect(owner_client, owner, pool, flavors, demo_version):
    websocket = make_service(owner, pool, version=demo_version, name="ws-svc", is_websocket=True)

    response = owner_client.post(update_url(websocket), VALID)

    assert response.status_code == 400
    assert "A WebSocket service cannot collect data: its calls are connections, not requests with answers." in text(
        response
    )
    assert not DataCollectionRule.objects.exists()
    # Saving its rules with collection off is allowed, and the page offers no switch to turn it on.
    assert owner_client.post(update_url(websocket), {**VALID, "is_enabled": ""}).status_code == 302
    assert 'id="id_is_enabled" disabled>' in text(owner_client.get(tab_url(websocket)))


def test_the_validation_function_parses_a_good_rule(service):
    request = parse_collection_rule(
        service=service, data={"is_enabled": True, "sample_percent": 100, "content": "response", "keep_records": 5}
    )

    assert (request.is_enabled, request.sample_percent, request.content, request.keep_days, request.keep_records) == (
        True,
        100,
        "response",
        None,
        5,
    )
    with pytest.raises(RequestInvalid) as refused:
        parse_collection_rule(service=service, data={"sample_percent": True, "content": "both", "keep_days": 1})
    assert refused.value.errors == {"sample_percent": ["Sampling rate (%) must be a whole number."]}


@pytest.mark.parametrize(
    "fields",
    [
        {"sample_percent": 0},
        {"sample_percent": 101},
        {"content": "all"},
        {"keep_days": 31},
        {"keep_records": 100_001},
        {"keep_days": None, "keep_records": None},
    ],
)
def test_the_database_refuses_a_rule_out_of_range(service, fields):
    with pytest.raises(IntegrityError), transaction.atomic():
        DataCollectionRule.objects.create(service=service, **fields)


def test_the_gateway_sql_names_the_models_content_values():
    for value in DataCollectionRule.Content.values:
        assert f"'{value}'" in store.SERVICE_COLUMNS
    assert "request" in DataCollectionRule.Content.values and "response" in DataCollectionRule.Content.values


# --- Who may see it ------------------------------------------------------------------


def test_another_user_gets_404_on_the_tab_the_save_and_the_export(client, other_user, service):
    add_record(service)
    client.force_login(other_user)

    assert client.get(tab_url(service)).status_code == 404
    assert client.post(update_url(service), VALID).status_code == 404
    assert client.get(export_url(service)).status_code == 404
    assert not DataCollectionRule.objects.exists()


def test_a_staff_operator_gets_404_on_this_tab_and_does_not_see_it(operator_client, service):
    add_record(service)

    assert operator_client.get(tab_url(service)).status_code == 404
    assert operator_client.post(update_url(service), VALID).status_code == 404
    assert operator_client.get(export_url(service)).status_code == 404
    overview = text(operator_client.get(reverse("services:detail", args=[service.id])))
    assert 'id="tab-monitoring"' in overview  # the operator's own tabs are there
    assert 'id="tab-collection"' not in overview
    assert not DataCollectionRule.objects.exists()


def test_the_wrong_methods_are_refused(owner_client, service):
    assert owner_client.get(update_url(service)).status_code == 405
    assert owner_client.post(export_url(service)).status_code == 405


def test_anonymous_visitors_are_sent_to_log_in(client, service):
    assert client.get(export_url(service)).status_code == 302
    assert client.post(update_url(service), VALID).status_code == 302


# --- JSON Lines ----------------------------------------------------------------------


def test_the_export_streams_every_record_as_one_json_object_per_line(owner_client, service):
    text_record = add_record(service, request_body="héllo ✓".encode(), request_size=9)
    binary_record = add_record(
        service,
        status_code=503,
        latency_ms=12.5,
        request_body=None,
        response_body=b"\xff\xfe\x00binary",
        response_size=200_000,
        response_truncated=True,
        response_content_type="application/octet-stream",
    )
    # A body cut by the cap in the middle of a character: base64, so no byte is lost.
    cut_record = add_record(service, response_body="ab✓".encode()[:-1], response_truncated=True)

    response = owner_client.get(export_url(service))

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "application/x-ndjson"
    assert response["Content-Disposition"].startswith(f'attachment; filename="{service.name}-collected-')
    body = b"".join(response.streaming_content)
    assert body.endswith(b"\n")
    lines = [json.loads(line) for line in body.decode("utf-8").splitlines()]
    assert [line["id"] for line in lines] == [text_record.id, binary_record.id, cut_record.id]
    first, second, third = lines
    assert first["service_id"] == str(service.id)
    assert first["version"] == "1.0.0" and first["method"] == "POST" and first["status"] == 200
    assert first["created_at"].endswith("Z")
    assert first["request"] == {
        "content_type": "application/json",
        "size": 9,
        "truncated": False,
        "body": "héllo ✓",
        "body_encoding": "utf-8",
    }
    assert second["status"] == 503 and second["latency_ms"] == 12.5
    assert second["request"]["body"] is None and second["request"]["body_encoding"] is None
    assert second["response"]["body_encoding"] == "base64"
    assert base64.b64decode(second["response"]["body"]) == b"\xff\xfe\x00binary"
    assert (second["response"]["size"], second["response"]["truncated"]) == (200_000, True)
    assert third["response"]["body_encoding"] == "base64"
    assert base64.b64decode(third["response"]["body"]) == "ab✓".encode()[:-1]


def test_the_export_of_a_service_without_records_is_empty(owner_client, service):
    response = owner_client.get(export_url(service))

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b""


def test_body_previews_and_export_encodings():
    assert body_preview(None) is None
    assert body_preview(b'{"a":\n1}') == '{"a": 1}'
    assert body_preview("ab✓".encode()[:-1]) == "ab"  # a character cut by the cap is left out
    assert body_preview(b"\x00\xff") == "0x 00 ff"
    assert body_for_json(None) == (None, None)
    assert body_for_json(memoryview(b"ok")) == ("ok", "utf-8")
    assert body_for_json(b"\xff") == ("/w==", "base64")


# --- Retention ----------------------------------------------------------------------


def test_the_purge_keeps_each_rules_days_and_records(owner, pool, flavors, demo_version, service):
    now = timezone.now()
    by_days = service
    DataCollectionRule.objects.create(service=by_days, is_enabled=True, keep_days=2, keep_records=None)
    old = [add_record(by_days, created_at=now - timedelta(days=2, minutes=1)) for _ in range(3)]
    recent = [add_record(by_days, created_at=now - timedelta(days=1, hours=23)) for _ in range(2)]

    by_count = make_service(owner, pool, version=demo_version, name="by-count")
    DataCollectionRule.objects.create(service=by_count, is_enabled=False, keep_days=30, keep_records=4)
    counted = [add_record(by_count, created_at=now - timedelta(minutes=10 - n)) for n in range(7)]
    ancient = add_record(by_count, created_at=now - timedelta(days=31))

    assert collected_records_purge(now=now) == 3 + 4  # 3 by age; by count: the ancient one and the 3 oldest others
    assert set(DataCollectionRecord.objects.filter(service=by_days)) == set(recent)
    assert list(DataCollectionRecord.objects.filter(service=by_count).order_by("id")) == counted[3:]
    assert not DataCollectionRecord.objects.filter(id__in=[r.id for r in [*old, ancient]]).exists()
    # Safe to repeat: nothing more goes.
    assert collected_records_purge(now=now) == 0


@pytest.mark.django_db(transaction=True)
def test_the_gateways_copy_stores_records_and_the_purge_takes_those_of_a_deleted_service(
    owner, pool, flavors, demo_version
):
    """The gateway stores records by COPY with no foreign key check: one flushed
    just after its service was deleted stays until the purge removes it."""
    kept, deleted = (make_service(owner, pool, version=demo_version, name=name) for name in ("kept", "deleted"))
    config = kept.configs.get()
    deleted_id = deleted.id
    Service.objects.filter(id=deleted_id).delete()

    def row(service_id, body: bytes) -> tuple:
        return (service_id, config.id, "1.0.0", timezone.now(), "rid-12345678", "POST", 200, 2.5,
                body, len(body), "application/json", False, None, 7, "text/plain", False)  # fmt: skip

    async def copy_in() -> None:
        conn = await store.connect(_test_database_conninfo())
        try:
            await store.insert_collected_records(
                conn, [encode_row_values(row(kept.id, b'{"a": 1}')), encode_row_values(row(deleted_id, b"{}"))]
            )
        finally:
            await conn.close()

    asyncio.run(copy_in())

    stored = DataCollectionRecord.objects.get(service=kept)
    assert (stored.config_id, stored.version, bytes(stored.request_body), stored.response_body) == (
        config.id, "1.0.0", b'{"a": 1}', None
    )  # fmt: skip
    assert DataCollectionRecord.objects.filter(service_id=deleted_id).count() == 1

    assert collected_records_purge() == 1
    assert not DataCollectionRecord.objects.filter(service_id=deleted_id).exists()
    assert DataCollectionRecord.objects.filter(service=kept).count() == 1


def _test_database_conninfo() -> str:
    """The test database, as the gateway would connect to it."""
    from django.db import connection

    db = connection.settings_dict
    return conninfo(
        DatabaseConfig(name=db["NAME"], user=db["USER"], password=db["PASSWORD"], host=db["HOST"], port=int(db["PORT"]))
    )


def test_the_purge_runs_every_minute_on_the_reconcile_queue():
    from services.tasks import collected_records_purge_task

    entry = next(e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == collected_records_purge_task.name)
    assert entry["schedule"] == 60.0
    assert settings.CELERY_TASK_ROUTES[collected_records_purge_task.name] == {"queue": "reconcile"}
    assert collected_records_purge_task.run() == 0


def test_deleting_a_service_deletes_its_records_and_rule(service):
    DataCollectionRule.objects.create(service=service, is_enabled=True)
    add_record(service)

    Service.objects.filter(id=service.id).delete()

    assert not DataCollectionRecord.objects.exists() and not DataCollectionRule.objects.exists()


def test_a_record_keeps_its_version_label_when_the_version_leaves_the_service(service):
    record = add_record(service)
    config_id = record.config_id

    service.configs.all().delete()

    # The record is left as it was (no update of every record of the version):
    # its configuration's id names one that is gone, and its label stays.
    record.refresh_from_db()
    assert (record.config_id, record.version) == (config_id, "1.0.0")
    assert not ServiceVersionConfig.objects.filter(id=config_id).exists()
