from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from console.http import ConsoleRequest
from metering import selectors
from metering.charts import usage_bar_chart
from metering.export import usage_csv_lines
from metering.forms import UsageQueryInvalid, usage_data_of, usage_query_parse

# The page lists at most this many rows; the CSV has them all.
TABLE_MAX_ROWS = 500


@login_required
@require_GET
def usage(request: ConsoleRequest) -> HttpResponse:
    """The user's usage per day (staff: every user's, or one user's) as a chart
    and a table, over the days the URL names (the last 30 by default)."""
    today = timezone.localdate()
    context: dict[str, Any] = {
        "users": selectors.usage_users() if request.user.is_staff else [],
        "max_rows": TABLE_MAX_ROWS,
        "time_zone": settings.TIME_ZONE,
    }
    try:
        query = usage_query_parse(request.GET, user=request.user, today=today)
    except UsageQueryInvalid as invalid:
        context.update(errors=invalid.errors, data=invalid.data)
        return render(request, "metering/usage.html", context, status=400)
    report = selectors.usage_report(query, now=timezone.now())
    data = usage_data_of(query, is_staff=request.user.is_staff)
    context.update(
        data=data,
        errors={},
        report=report,
        rows=report.rows[:TABLE_MAX_ROWS],
        chart=usage_bar_chart(report.days),
        csv_params=urlencode({name: value for name, value in data.items() if value}),
    )
    return render(request, "metering/usage.html", context)


@login_required
@require_GET
def usage_csv(request: ConsoleRequest) -> HttpResponseBase:
    """The Usage page's rows, every one, as CSV (the same filters); 400 with the messages on bad filters."""
    try:
        query = usage_query_parse(request.GET, user=request.user, today=timezone.localdate())
    except UsageQueryInvalid as invalid:
        text = "\n".join(message for messages in invalid.errors.values() for message in messages)
        return HttpResponse(text + "\n", status=400, content_type="text/plain; charset=utf-8")
    rows = selectors.usage_rows(query, now=timezone.now())
    response = StreamingHttpResponse(usage_csv_lines(rows), content_type="text/csv; charset=utf-8")
    who = "all-users" if query.is_all_users else f"user-{query.owner_id}"
    filename = f"usage-{who}-{query.date_from}-to-{query.date_to}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
