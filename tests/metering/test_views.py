"""The Usage page and its CSV: a user's own usage only, whatever the URL says;
every user's for staff; bad dates refused naming the field."""

import csv
import io
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.factories import make_user
from tests.metering.test_selectors import instance_usage, node_usage

pytestmark = pytest.mark.django_db

URL = "/usage/"
CSV_URL = "/usage/usage.csv"


@pytest.fixture
def usage_world(owner, other_user):
    """Yesterday: the owner's svc-mine ran 2 h; the other user's svc-theirs 3 h and their dedicated pool 4 h."""
    start = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    instance_usage(owner, start, start + timedelta(hours=2), instance_id=1, name="svc-mine")
    instance_usage(other_user, start, start + timedelta(hours=3), instance_id=2, name="svc-theirs")
    node_usage(other_user, start, start + timedelta(hours=4), pool_name="their-dedicated")
    return start.date()


@pytest.fixture
def staff_client(client):
    operator = make_user("operator")
    operator.is_staff = True
    operator.save()
    client.force_login(operator)
    return client


def csv_rows(response) -> list[dict]:
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_anonymous_is_sent_to_log_in(client):
    assert client.get(URL).status_code == 302
    assert client.get(CSV_URL)["Location"].startswith("/login/")


def test_post_is_not_allowed(owner_client):
    assert owner_client.post(URL).status_code == 405
    assert owner_client.post(CSV_URL).status_code == 405


def test_the_owner_sees_their_own_usage_of_the_last_30_days(owner_client, usage_world):
    response = owner_client.get(URL)

    assert response.status_code == 200
    page = response.content.decode()
    assert "svc-mine" in page and "svc-theirs" not in page and "their-dedicated" not in page
    report = response.context["report"]
    assert (report.query.date_to - report.query.date_from).days == 29
    assert report.query.date_to == timezone.localdate()
    assert [row.name for row in report.rows] == ["svc-mine"]
    assert report.total.instance_hours == 2.0
    assert 'id="usage-chart"' in page and 'id="usage-rows"' in page
    assert f'data-day="{usage_world.isoformat()}"' in page
    # The CSV link repeats the filters the page shows.
    assert f"/usage/usage.csv?from={report.query.date_from}&amp;to={report.query.date_to}" in page
    assert 'name="user"' not in page  # no user filter for an ordinary user


@pytest.mark.parametrize("params", ["?user={other}", "?user=", "?user=all", "?owner={other}&scope=all"])
def test_no_parameter_shows_a_user_another_users_usage(owner_client, usage_world, other_user, params):
    params = params.format(other=other_user.id)

    page = owner_client.get(URL + params)
    export = owner_client.get(CSV_URL + params)

    assert page.status_code == 200
    assert [row.name for row in page.context["report"].rows] == ["svc-mine"]
    assert [row["service"] for row in csv_rows(export)] == ["svc-mine"]


def test_the_csv_has_the_rows_with_their_units(owner_client, usage_world, owner):
    response = owner_client.get(CSV_URL, {"from": usage_world.isoformat(), "to": usage_world.isoformat()})

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == (
        f'attachment; filename="usage-user-{owner.id}-{usage_world}-to-{usage_world}.csv"'
    )
    (row,) = csv_rows(response)
    assert row == {
        "day": usage_world.isoformat(),
        "user_id": str(owner.id),
        "user": "owner",
        "kind": "service",
        "service_id": "00000000-0000-0000-0000-00000000a001",
        "service": "svc-mine",
        "pool_id": "1",
        "pool": "public-cpu",
        "specification": "cpu.2u4g",
        "cpus": "2.00",
        "memory_mib": "4096",
        "gpus": "0",
        "instances": "1",
        "instance_seconds": "7200.000",
        "vcpu_seconds": "14400.000",
        "nodes": "",
        "node_seconds": "",
    }


def test_staff_see_every_users_usage_and_can_pick_one(staff_client, usage_world, other_user):
    everyone = staff_client.get(URL)
    one = staff_client.get(URL, {"user": other_user.id})
    export = staff_client.get(CSV_URL, {"user": other_user.id})

    assert sorted(row.name for row in everyone.context["report"].rows) == ["svc-mine", "svc-theirs", "their-dedicated"]
    assert "<th>User</th>" in everyone.content.decode()
    assert [row.name for row in one.context["report"].rows] == ["svc-theirs", "their-dedicated"]
    assert f'<option value="{other_user.id}" selected>other</option>' in one.content.decode()
    assert [(row["kind"], row["user"], row["node_seconds"]) for row in csv_rows(export)] == [
        ("service", "other", ""),
        ("dedicated_pool", "other", "14400.000"),
    ]
    assert "usage-user-" in export["Content-Disposition"]
    assert "usage-all-users-" in staff_client.get(CSV_URL)["Content-Disposition"]


def test_staff_asking_for_a_user_who_does_not_exist_get_the_reason(staff_client):
    response = staff_client.get(URL, {"user": "999999"})

    assert response.status_code == 400
    assert response.context["errors"] == {"user": ["User: there is no user with id “999999”."]}
    assert "User: there is no user with id" in response.content.decode()


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"from": "yesterday"}, "from", "From: “yesterday” is not a date; write it as YYYY-MM-DD, e.g. 2026-12-01."),
        ({"to": "2026-02-30"}, "to", "To: 2026-02-30 is not a day of the calendar."),
        ({"to": "12/01/2026"}, "to", "To: “12/01/2026” is not a date; write it as YYYY-MM-DD, e.g. 2026-12-01."),
        ({"from": "1999-12-31"}, "from", "From: 1999-12-31 is outside the years 2000 to 2999."),
        (
            {"from": "2026-12-05", "to": "2026-12-01"},
            "to",
            "To (2026-12-01) is before From (2026-12-05); pick a later day.",
        ),
        (
            {"from": "2025-01-01", "to": "2026-12-31"},
            "from",
            "From: the range may cover at most 366 days; 2025-01-01 to 2026-12-31 covers 730.",
        ),
    ],
)
def test_bad_dates_are_refused_naming_the_field(owner_client, params, field, message):
    page = owner_client.get(URL, params)
    export = owner_client.get(CSV_URL, params)

    assert page.status_code == 400
    assert page.context["errors"] == {field: [message]}
    assert "report" not in page.context
    html = page.content.decode()
    assert 'class="field invalid"' in html or "field invalid" in html
    assert 'id="usage-csv"' not in html
    assert export.status_code == 400
    assert export["Content-Type"] == "text/plain; charset=utf-8"
    assert export.content.decode() == message + "\n"


def test_both_bad_dates_are_reported_at_once(owner_client):
    response = owner_client.get(URL, {"from": "x", "to": "y"})

    assert sorted(response.context["errors"]) == ["from", "to"]


def test_a_range_of_one_day_and_empty_days_show_no_rows(owner_client):
    response = owner_client.get(URL, {"from": "2026-01-01", "to": "2026-01-01"})

    assert response.status_code == 200
    assert [day.day.isoformat() for day in response.context["report"].days] == ["2026-01-01"]
    assert 'id="usage-empty"' in response.content.decode()
    assert "No usage in these days" in response.content.decode()


def test_the_page_takes_the_same_queries_however_much_usage(owner_client, owner, django_assert_num_queries):
    start = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=3)
    for n in range(40):
        span = (start + timedelta(hours=n), start + timedelta(hours=n + 1))
        instance_usage(owner, *span, instance_id=n, service_id=uuid.uuid4(), name=f"svc-{n}")
    # Session, user, then the instance and node usage.
    with django_assert_num_queries(4):
        response = owner_client.get(URL)
    assert len(response.context["report"].rows) == 40


def test_the_usage_link_is_in_the_navigation_and_marked_on_its_page(owner_client):
    page = owner_client.get(URL).content.decode()
    assert '<a href="/usage/" class="active">Usage</a>' in page
    assert '<a href="/usage/" class="">Usage</a>' in owner_client.get("/access/keys/").content.decode()
