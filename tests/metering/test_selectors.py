"""Usage cut into days: at the console's midnights, clipped to the range, an
open interval counted up to now; per user, or every user's."""

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from metering.models import InstanceUsage, NodeUsage
from metering.selectors import UsageKind, UsageQuery, usage_report, usage_rows
from tests.factories import make_user

pytestmark = pytest.mark.django_db

SERVICE_ID = uuid.UUID("00000000-0000-0000-0000-00000000a001")


def at(text: str, zone: str = "UTC") -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone))


def instance_usage(owner, started_at, ended_at, *, instance_id=1, service_id=SERVICE_ID, name="svc-a", **fields):
    values = dict(
        instance_id=instance_id,
        service_id=service_id,
        service_name=name,
        owner_id=owner.id,
        pool_id=1,
        pool_name="public-cpu",
        flavor_code="cpu.2u4g",
        cpus=Decimal("2.00"),
        memory_mib=4096,
        gpus=0,
        started_at=started_at,
        ended_at=ended_at,
    )
    values.update(fields)
    return InstanceUsage.objects.create(**values)


def node_usage(owner, started_at, ended_at, *, node_id=1, pool_id=7, pool_name="dedicated-a"):
    return NodeUsage.objects.create(
        node_id=node_id,
        node_name=f"node-{node_id}",
        pool_id=pool_id,
        pool_name=pool_name,
        owner_id=owner.id,
        started_at=started_at,
        ended_at=ended_at,
    )


def query(owner, first: str, last: str) -> UsageQuery:
    return UsageQuery(date_from=date.fromisoformat(first), date_to=date.fromisoformat(last), owner_id=owner.id)


NOW = at("2026-12-10T12:00:00")


def seconds_by_day(rows) -> dict[str, float]:
    return {row.day.isoformat(): row.seconds for row in rows}


def test_an_interval_is_cut_at_each_midnight(owner):
    instance_usage(owner, at("2026-12-01T22:00:00"), at("2026-12-03T02:30:00"))

    rows = usage_rows(query(owner, "2026-12-01", "2026-12-05"), now=NOW)

    assert seconds_by_day(rows) == {"2026-12-01": 7200.0, "2026-12-02": 86400.0, "2026-12-03": 9000.0}
    row = rows[0]
    assert (row.kind, row.name, row.pool_name, row.flavor_code, row.cpus, row.memory_mib, row.units) == (
        UsageKind.SERVICE,
        "svc-a",
        "public-cpu",
        "cpu.2u4g",
        Decimal("2.00"),
        4096,
        1,
    )
    assert row.vcpu_seconds == 14400.0
    assert row.subject_id == str(SERVICE_ID)


def test_days_are_the_consoles_days_daylight_saving_ones_too(owner, settings):
    settings.TIME_ZONE = "Europe/Berlin"
    # Berlin moved its clocks forward on 2026-03-29: that day has 23 hours.
    instance_usage(owner, at("2026-03-28T23:00:00", "Europe/Berlin"), at("2026-03-30T01:00:00", "Europe/Berlin"))

    rows = usage_rows(query(owner, "2026-03-01", "2026-03-31"), now=NOW)

    assert seconds_by_day(rows) == {"2026-03-28": 3600.0, "2026-03-29": 23 * 3600.0, "2026-03-30": 3600.0}


def test_a_utc_midnight_is_not_a_local_one(owner, settings):
    settings.TIME_ZONE = "Asia/Tokyo"  # UTC+9
    instance_usage(owner, at("2026-12-01T14:00:00"), at("2026-12-01T16:00:00"))  # 23:00-01:00 in Tokyo

    rows = usage_rows(query(owner, "2026-12-01", "2026-12-03"), now=NOW)

    assert seconds_by_day(rows) == {"2026-12-01": 3600.0, "2026-12-02": 3600.0}


def test_the_range_clips_intervals_and_an_open_one_counts_up_to_now(owner):
    instance_usage(owner, at("2026-11-25T00:00:00"), at("2026-12-02T06:00:00"), instance_id=1)
    instance_usage(owner, at("2026-12-10T09:00:00"), None, instance_id=2)
    instance_usage(owner, at("2026-12-11T09:00:00"), None, instance_id=3)  # after now: nothing yet

    rows = usage_rows(query(owner, "2026-12-01", "2026-12-31"), now=NOW)

    assert seconds_by_day(rows) == {"2026-12-01": 86400.0, "2026-12-02": 21600.0, "2026-12-10": 3 * 3600.0}


def test_instances_of_one_service_and_specification_add_up_and_are_counted(owner):
    day = "2026-12-01T{}:00:00"
    instance_usage(owner, at(day.format("01")), at(day.format("02")), instance_id=1)
    instance_usage(owner, at(day.format("03")), at(day.format("05")), instance_id=1)
    instance_usage(owner, at(day.format("01")), at(day.format("04")), instance_id=2)
    instance_usage(owner, at(day.format("01")), at(day.format("02")), instance_id=3, flavor_code="cpu.1u1g", cpus=1)

    rows = usage_rows(query(owner, "2026-12-01", "2026-12-01"), now=NOW)

    assert [(row.flavor_code, row.units, row.seconds, row.vcpu_seconds) for row in rows] == [
        ("cpu.1u1g", 1, 3600.0, 3600.0),
        ("cpu.2u4g", 2, 6 * 3600.0, 12 * 3600.0),
    ]


def test_dedicated_pools_count_node_seconds_per_pool(owner):
    node_usage(owner, at("2026-12-01T00:00:00"), None, node_id=1)
    node_usage(owner, at("2026-12-01T12:00:00"), at("2026-12-02T12:00:00"), node_id=2)

    rows = usage_rows(query(owner, "2026-12-01", "2026-12-02"), now=at("2026-12-02T18:00:00"))

    assert [(row.day.isoformat(), row.kind, row.name, row.units, row.seconds) for row in rows] == [
        ("2026-12-01", UsageKind.DEDICATED_POOL, "dedicated-a", 2, 86400.0 + 43200.0),
        ("2026-12-02", UsageKind.DEDICATED_POOL, "dedicated-a", 2, 18 * 3600.0 + 43200.0),
    ]
    assert rows[0].vcpu_seconds is None and rows[0].flavor_code == ""


def test_a_renamed_pool_shows_its_latest_name(owner):
    node_usage(owner, at("2026-12-01T00:00:00"), at("2026-12-01T06:00:00"), pool_name="old-name")
    node_usage(owner, at("2026-12-01T06:00:00"), at("2026-12-01T07:00:00"), pool_name="new-name")

    (row,) = usage_rows(query(owner, "2026-12-01", "2026-12-01"), now=NOW)

    assert (row.name, row.seconds) == ("new-name", 7 * 3600.0)


def test_one_users_query_never_has_another_users_rows_and_staff_may_see_all(owner, other_user):
    instance_usage(owner, at("2026-12-01T00:00:00"), at("2026-12-01T01:00:00"), name="mine")
    instance_usage(other_user, at("2026-12-01T00:00:00"), at("2026-12-01T02:00:00"), instance_id=9, name="theirs")
    node_usage(other_user, at("2026-12-01T00:00:00"), at("2026-12-01T03:00:00"))

    mine = usage_rows(query(owner, "2026-12-01", "2026-12-01"), now=NOW)
    everyone = usage_rows(UsageQuery(date(2026, 12, 1), date(2026, 12, 1), owner_id=None), now=NOW)

    assert [(row.owner_name, row.name) for row in mine] == [("owner", "mine")]
    assert [(row.owner_name, row.name, row.seconds) for row in everyone] == [
        ("other", "theirs", 7200.0),
        ("other", "dedicated-a", 10800.0),
        ("owner", "mine", 3600.0),
    ]


def test_usage_of_a_deleted_user_and_service_stays(owner):
    gone = make_user("gone")
    instance_usage(gone, at("2026-12-01T00:00:00"), at("2026-12-01T01:00:00"))
    gone_id = gone.id
    gone.delete()

    (row,) = usage_rows(UsageQuery(date(2026, 12, 1), date(2026, 12, 1), owner_id=None), now=NOW)

    assert (row.owner_id, row.owner_name, row.name) == (gone_id, "", "svc-a")


def test_the_report_has_every_day_of_the_range_with_totals(owner):
    instance_usage(owner, at("2026-12-02T00:00:00"), at("2026-12-02T01:30:00"))
    node_usage(owner, at("2026-12-02T00:00:00"), at("2026-12-02T02:00:00"))

    report = usage_report(query(owner, "2026-12-01", "2026-12-03"), now=NOW)

    assert [(d.day.isoformat(), d.instance_seconds, d.vcpu_seconds, d.node_seconds) for d in report.days] == [
        ("2026-12-01", 0.0, 0.0, 0.0),
        ("2026-12-02", 5400.0, 10800.0, 7200.0),
        ("2026-12-03", 0.0, 0.0, 0.0),
    ]
    assert (report.total.instance_hours, report.total.vcpu_hours, report.total.node_hours) == (1.5, 3.0, 2.0)


def test_the_rows_take_two_queries_however_many_there_are(owner, django_assert_num_queries):
    start = datetime(2026, 12, 1, tzinfo=UTC)
    for n in range(30):
        instance_usage(owner, start + timedelta(hours=n), start + timedelta(hours=n + 1), instance_id=n)
        node_usage(owner, start + timedelta(hours=n), start + timedelta(hours=n + 2), node_id=n)

    with django_assert_num_queries(2):
        rows = usage_rows(query(owner, "2026-12-01", "2026-12-02"), now=NOW)

    assert len(rows) == 4
