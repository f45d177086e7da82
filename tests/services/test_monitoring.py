"""Call statistics: the Monitoring tab (totals, per-version percentiles from the
merged histograms, one SVG bar per minute with calls), the series selector's
window, and the list's "Calls (failed/total)" column."""

import html
import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from services import selectors
from services.charts import BOTTOM, HEIGHT, TOP, calls_bar_chart, nice_ceiling
from services.choices import ServiceStatus
from services.contract import LATENCY_BUCKET_COUNT, LATENCY_BUCKETS_MS
from services.models import Service, ServiceCallStat, ServiceVersionConfig
from tests.factories import make_version

pytestmark = pytest.mark.django_db

PLOT_HEIGHT = HEIGHT - TOP - BOTTOM


def bucket(ms: float) -> int:
    return LATENCY_BUCKETS_MS.index(ms)


def histogram(**counts_by_ms) -> list[int]:
    """histogram(**{"3": 5, "10": 4}) → 5 calls in the ≤3 ms bucket, 4 in ≤10 ms."""
    hist = [0] * LATENCY_BUCKET_COUNT
    for ms, count in counts_by_ms.items():
        index = LATENCY_BUCKET_COUNT - 1 if ms == "slowest" else bucket(float(ms))
        hist[index] += count
    return hist


def stat(service, config, minutes_ago: int, calls: int, failed: int, hist: list[int], now=None) -> ServiceCallStat:
    now = (now or timezone.now()).replace(second=0, microsecond=0)
    assert sum(hist) == calls
    return ServiceCallStat.objects.create(
        service=service,
        config=config,
        bucket_start=now - timedelta(minutes=minutes_ago),
        calls=calls,
        failed=failed,
        latency_hist=hist,
    )


@pytest.fixture
def two_version_service(owner, pool, flavors, demo_version) -> Service:
    service = Service.objects.create(owner=owner, name="svc-mon", pool=pool, status=ServiceStatus.RUNNING)
    v2 = make_version(owner, version="2.0.0", image="rts-demo-model:2.0.0")
    ServiceVersionConfig.objects.create(
        service=service, position=0, app_version=demo_version, flavor=flavors["small"], weight=70
    )
    ServiceVersionConfig.objects.create(service=service, position=1, app_version=v2, flavor=flavors["small"], weight=30)
    return service


def monitoring_url(service) -> str:
    return reverse("services:detail", args=[service.id]) + "?tab=monitoring"


def cell(text: str, config, name: str) -> str:
    row = text.split(f'<tr id="version-stats-{config.id}">', 1)[1].split("</tr>", 1)[0]
    return re.search(rf'<td class="num {name}">([^<]*)</td>', row).group(1)


def test_monitoring_shows_totals_and_per_version_percentiles(owner_client, two_version_service):
    service = two_version_service
    v1, v2 = service.configs.all()
    # v1: 20 calls over two minutes (one of them two hours ago: outside the
    # chart, inside the totals); merged: 15 at ≤3 ms, 4 at ≤10 ms, 1 at ≤500 ms.
    stat(service, v1, 120, 10, 1, histogram(**{"3": 5, "10": 4, "500": 1}))
    stat(service, v1, 2, 10, 0, histogram(**{"3": 10}))
    # v2: 4 calls, 3 failed, one slower than the last bound.
    stat(service, v2, 2, 4, 3, histogram(**{"1": 1, "1500": 2, "slowest": 1}))
    Service.objects.filter(id=service.id).update(invocation_times=24, failed_times=4)

    response = owner_client.get(monitoring_url(service))

    assert response.status_code == 200
    text = html.unescape(response.content.decode())
    assert 'id="stat-calls">24</span>' in text
    assert 'id="stat-failed">4</span>' in text
    assert 'id="stat-failed-percent">17 %</span>' in text
    assert (cell(text, v1, "calls"), cell(text, v1, "failed-calls")) == ("20", "1")
    # p50: the 10th of 20 calls is in ≤3 ms; p90: the 18th in ≤10 ms; p99: the 19.8th in ≤500 ms.
    assert (cell(text, v1, "p50"), cell(text, v1, "p90"), cell(text, v1, "p99")) == ("≤ 3 ms", "≤ 10 ms", "≤ 500 ms")
    assert (cell(text, v2, "calls"), cell(text, v2, "failed-calls")) == ("4", "3")
    assert (cell(text, v2, "p50"), cell(text, v2, "p90"), cell(text, v2, "p99")) == ("≤ 1.5 s", "> 60 s", "> 60 s")
    assert "<td>70%</td>" in text and "<td>2.0.0</td>" in text


def test_a_version_without_calls_shows_zeros_and_no_percentiles(owner_client, two_version_service):
    service = two_version_service
    v1, v2 = service.configs.all()
    stat(service, v1, 1, 1, 0, histogram(**{"0.5": 1}))

    text = html.unescape(owner_client.get(monitoring_url(service)).content.decode())

    assert cell(text, v1, "p50") == "≤ 0.5 ms"
    assert (cell(text, v2, "calls"), cell(text, v2, "p50"), cell(text, v2, "p99")) == ("0", "—", "—")
    assert 'id="stat-failed-percent">—</span>' in text  # the service's counters are still 0


def test_the_chart_has_one_bar_per_minute_with_calls(owner_client, two_version_service):
    service = two_version_service
    v1, v2 = service.configs.all()
    now = timezone.now()
    stat(service, v1, 3, 20, 0, histogram(**{"3": 20}), now)
    stat(service, v1, 2, 6, 1, histogram(**{"3": 6}), now)
    stat(service, v2, 2, 4, 4, histogram(**{"3": 4}), now)  # the same minute, the other version
    stat(service, v1, 30, 10, 0, histogram(**{"3": 10}), now)
    stat(service, v1, 90, 50, 0, histogram(**{"3": 50}), now)  # outside the window

    text = owner_client.get(monitoring_url(service)).content.decode()

    svg = text.split('<svg class="chart" id="calls-chart"', 1)[1].split("</svg>", 1)[0]
    bars = re.findall(r'<g class="bar" data-minute="([^"]+)" data-calls="(\d+)" data-failed="(\d+)">', svg)
    assert [(int(calls), int(failed)) for _, calls, failed in bars] == [(10, 0), (20, 0), (10, 5)]
    assert svg.count('<rect class="bar-calls"') == 3
    assert svg.count('<rect class="bar-failed"') == 1
    heights = [float(h) for h in re.findall(r'<rect class="bar-calls" [^>]*height="([\d.]+)"', svg)]
    # The scale's top is 20 calls: a 20-call minute fills the plot, 10 calls half of it.
    assert heights == [PLOT_HEIGHT / 2, PLOT_HEIGHT, PLOT_HEIGHT / 2]
    (failed_height,) = re.findall(r'<rect class="bar-failed" [^>]*height="([\d.]+)"', svg)
    assert float(failed_height) == PLOT_HEIGHT / 4
    xs = [float(x) for x in re.findall(r'<rect class="bar-calls" x="([\d.]+)"', svg)]
    assert xs == sorted(xs)
    assert "No calls in the last 60 minutes" not in svg


def test_the_chart_says_so_when_there_were_no_calls(owner_client, two_version_service):
    text = owner_client.get(monitoring_url(two_version_service)).content.decode()

    svg = text.split('<svg class="chart" id="calls-chart"', 1)[1].split("</svg>", 1)[0]
    assert '<g class="bar"' not in svg
    assert "No calls in the last 60 minutes" in svg


def test_series_covers_exactly_the_last_60_minutes_up_to_the_current_one(two_version_service):
    service = two_version_service
    v1, _ = service.configs.all()
    now = timezone.now().replace(second=42)
    for minutes_ago in (0, 59, 60):
        stat(service, v1, minutes_ago, minutes_ago + 1, 0, histogram(**{"3": minutes_ago + 1}), now)

    series = selectors.service_call_series(service, minutes=60, now=now)

    minute = now.replace(second=0, microsecond=0)
    assert len(series) == 60
    assert series[0].start == minute - timedelta(minutes=59)
    assert series[-1].start == minute
    assert [point.calls for point in series if point.calls] == [60, 1]


def test_another_users_monitoring_tab_is_404(client, other_user, two_version_service):
    client.force_login(other_user)

    assert client.get(monitoring_url(two_version_service)).status_code == 404


# session, user, the service (annotated), its configurations; the summary's
# configurations, counts and histograms; the chart's minutes.
MONITORING_QUERIES = 8


@pytest.mark.parametrize("minutes_with_calls", [1, 30])
def test_monitoring_query_count_does_not_grow_with_minutes(
    owner_client, two_version_service, django_assert_num_queries, minutes_with_calls
):
    service = two_version_service
    for config in service.configs.all():
        for minutes_ago in range(minutes_with_calls):
            stat(service, config, minutes_ago, 1, 0, histogram(**{"3": 1}))

    with django_assert_num_queries(MONITORING_QUERIES):
        response = owner_client.get(monitoring_url(service))

    assert response.content.decode().count('<g class="bar"') == minutes_with_calls


# --- The chart's arithmetic -----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ceiling"), [(0, 1), (1, 1), (2, 2), (3, 5), (7, 10), (11, 20), (21, 50), (51, 100), (999, 1000)]
)
def test_nice_ceiling(value, ceiling):
    assert nice_ceiling(value) == ceiling


def test_x_ticks_label_every_15_minutes_ending_with_the_current_one():
    now = timezone.now().replace(second=0, microsecond=0)
    series = [selectors.MinuteCalls(start=now - timedelta(minutes=59 - i), calls=0, failed=0) for i in range(60)]

    chart = calls_bar_chart(series, lambda start: start.strftime("%H:%M"))

    labels = [tick.label for tick in chart.x_ticks]
    assert labels == [(now - timedelta(minutes=m)).strftime("%H:%M") for m in (45, 30, 15, 0)]
    assert not chart.has_calls and chart.bars == []


# --- The list's column ----------------------------------------------------------------


def test_list_shows_failed_and_total_calls_per_service(owner_client, two_version_service):
    Service.objects.filter(id=two_version_service.id).update(invocation_times=1234, failed_times=56)

    response = owner_client.get(reverse("services:list"))

    text = response.content.decode()
    assert "<th" in text and "Calls (failed/total)</th>" in text
    row = text.split(f'id="service-{two_version_service.id}"', 1)[1].split("</tr>", 1)[0]
    assert '<span class="calls-failed">56</span>/1234</a>' in row
    assert f'href="{monitoring_url(two_version_service)}"' in row


def test_list_shows_zero_failed_calls_quietly(owner_client, two_version_service):
    Service.objects.filter(id=two_version_service.id).update(invocation_times=7, failed_times=0)

    text = owner_client.get(reverse("services:list")).content.decode()

    assert '<span class="muted">0</span>/7</a>' in text
