from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from access import actions as access_actions
from access import selectors as access_selectors
from console.http import ConsoleRequest
from services import actions, logs, prediction, selectors
from services.charts import calls_bar_chart
from services.choices import ServiceStatus
from services.forms import (
    deploy_added_row_context,
    deploy_data_from_post,
    deploy_estimate_context,
    deploy_flavors_context,
    deploy_form_context,
    update_data_from_post,
    update_form_context,
    version_data_from_post,
)
from services.models import DataCollectionRule, Service
from services.validation import (
    AUTO_STOP_HOURS,
    RequestInvalid,
    hours_text,
    parse_auto_stop_change,
    parse_collection_rule,
    parse_deploy_request,
    parse_update_request,
    parse_version_request,
)


@login_required
@require_GET
def service_list(request: ConsoleRequest) -> HttpResponse:
    query = selectors.ServiceListQuery.from_params(request.GET, is_staff=request.user.is_staff)
    if request.htmx:
        return _service_list_poll(request, query)
    page = selectors.service_page_for(request.user, query)
    context: dict[str, Any] = {
        "services": page.services,
        "page": page,
        "query": query,
        "is_polling": page.has_transitional,
        "statuses": ServiceStatus,
        "page_sizes": selectors.SERVICE_PAGE_SIZES,
    }
    if query.is_all_users:
        context["overview"] = selectors.operator_overview(query)
        context["owners"] = selectors.service_owners()
    else:
        context["applications"] = selectors.ai_application_names_for(request.user)
    return render(request, "services/service_list.html", context)


def _service_list_poll(request: ConsoleRequest, query: selectors.ServiceListQuery) -> HttpResponse:
    """The rows the list watches, out of band, and the counts; the poller goes
    on while any of them is still transitional."""
    watched = selectors.watched_ids(request.GET.getlist("watch"))
    page = selectors.service_rows_watched_for(request.user, query, watched)
    found = {service.id for service in page.services}
    context: dict[str, Any] = {
        "services": page.services,
        "page": page,
        "query": query,
        "is_polling": page.has_transitional,
        # Rows that went away (deleted, or no longer this user's to see).
        "gone_ids": [service_id for service_id in watched if service_id not in found],
    }
    if query.is_all_users:
        context["overview"] = selectors.operator_overview(query)
    return render(request, "services/service_list.html#poll", context)


@login_required
@require_http_methods(["GET", "POST"])
def service_deploy(request: ConsoleRequest) -> HttpResponse:
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        data = deploy_data_from_post(request.POST)
        try:
            deploy_request = parse_deploy_request(owner=request.user, data=data)
            service = actions.service_create(owner=request.user, request=deploy_request)
        except RequestInvalid as exc:
            errors = exc.errors
        else:
            messages.success(request, f"Service {service.name} is deploying.", extra_tags=TRANSIENT)
            return redirect("services:list")
    elif request.htmx and "add_row" in request.GET:
        # "Add AI application version and configuration": one more row, in place.
        context = deploy_added_row_context(request.user, request.GET)
        return render(request, "services/_version_rows.html#version_row", context)
    else:
        data = None
    context = deploy_form_context(request.user, data, errors, version_id=request.GET.get("version", ""))
    return render(request, "services/service_deploy.html", context, status=400 if errors else 200)


# A banner announcing a state that passes ("is deploying"): static/console.js
# removes it once the page's polling stops, i.e. once nothing is in transition.
TRANSIENT = "transient"


@login_required
@require_GET
def service_deploy_estimate(request: ConsoleRequest) -> HttpResponse:
    """What the Deploy form's rows would take from the pool and from the user's quota, as they stand."""
    context = deploy_estimate_context(request.user, request.GET)
    return render(request, "services/service_deploy.html#estimate", context)


@login_required
@require_GET
def service_deploy_flavors(request: ConsoleRequest) -> HttpResponse:
    """Every version row's specifications for the chosen pool, each row's block
    swapped out of band and keeping the one it had checked."""
    context = deploy_flavors_context(request.user, request.GET)
    return render(request, "services/_version_rows.html#flavors_for_rows", context)


DETAIL_TABS = {
    "overview": "Overview",
    "prediction": "Prediction",
    "usage": "Usage Guide",
    "monitoring": "Monitoring",
    "collection": "Data Collection",
    "update": "Configuration Updates",
}
# What an operator sees of another user's service: calling it and its app
# codes stay with its owner (and so does the data its calls carried).
OPERATOR_TABS = ("overview", "monitoring")
MONITORING_MINUTES = 60


@login_required
@require_GET
def service_detail(request: ConsoleRequest, service_id: uuid.UUID) -> HttpResponse:
    if request.htmx:
        # The Overview's live parts polling while the service is in transition.
        service = selectors.service_detail_for(request.user, service_id, as_operator=True)
        context: dict[str, Any] = {"service": service, "is_polling": service.is_transitional}
        if request.GET.get("part") == "logs":
            context["instance_logs"] = logs.instance_logs_read(service.instance_rows)
            return render(request, "services/service_detail.html#logs", context)
        return render(request, "services/service_detail.html#live", context)
    tab = request.GET.get("tab", "overview")
    if tab not in DETAIL_TABS:
        tab = "overview"
    return _detail_page(request, service_id, tab)


def _detail_page(
    request: ConsoleRequest, service_id: uuid.UUID, tab: str, *, status: int = 200, **extra: Any
) -> HttpResponse:
    """The service page with one tab open; each tab reads only what it shows.
    Staff may open another user's service, on the tabs an operator has."""
    as_operator = tab in OPERATOR_TABS
    if tab == "overview":
        service = selectors.service_detail_for(request.user, service_id, as_operator=as_operator)
    else:
        service = selectors.service_get_for(request.user, service_id, as_operator=as_operator)
    is_owner = service.owner_id == request.user.id
    context = {
        "service": service,
        "tab": tab,
        "tabs": DETAIL_TABS if is_owner else {key: DETAIL_TABS[key] for key in OPERATOR_TABS},
        "is_owner": is_owner,
        "is_polling": tab == "overview" and service.is_transitional,
        "auto_stop_choices": AUTO_STOP_HOURS,
        "api_url": prediction.gateway_url(service.id),
        "ws_url": prediction.gateway_websocket_url(service.id),
    }
    if tab == "overview":
        context["instance_logs"] = logs.instance_logs_read(service.instance_rows)
    elif tab == "prediction":
        context.update(_prediction_context(extra.pop("data", None)))
    elif tab == "usage":
        context.update(_usage_context(service))
    elif tab == "collection":
        context.update(_collection_context(service, extra.pop("collection_data", None)))
    elif tab == "monitoring":
        context.update(_monitoring_context(service))
    elif tab == "update":
        context.update(_update_context(service, extra.pop("update_data", None), extra.pop("update_errors", {})))
    context.update(extra)
    return render(request, "services/service_detail.html", context, status=status)


def _prediction_context(data: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "prediction_data": data
        or {"input": "json", "body": prediction.SAMPLE_BODY, "file_as": "body", "file_field": "file", "path": ""},
        "upload_max_mib": f"{settings.PREDICTION_UPLOAD_MAX_BYTES / (1024 * 1024):g}",
    }


def _usage_context(service: Service) -> dict[str, Any]:
    return {
        "app_codes": list(access_selectors.app_code_list_for(service)),
        "sample_body": prediction.SAMPLE_BODY,
    }


def _monitoring_context(service: Service) -> dict[str, Any]:
    series = selectors.service_call_series(service, minutes=MONITORING_MINUTES)
    return {
        "call_summary": selectors.service_call_summary(service),
        "chart": calls_bar_chart(series, lambda start: timezone.localtime(start).strftime("%H:%M")),
        "chart_minutes": MONITORING_MINUTES,
    }


def _collection_context(service: Service, data: dict[str, Any] | None = None) -> dict[str, Any]:
    rule = selectors.collection_rule_for(service)
    return {
        "rule": rule,
        "collection_data": data or _collection_data_of(rule),
        "collection_contents": rule.Content.choices,
        "collected_rows": selectors.collected_records_newest(service),
        "collected_total": selectors.collected_records_count(service),
        "body_max_kib": f"{settings.DATA_COLLECTION_BODY_MAX_BYTES / 1024:g}",
    }


def _update_context(service: Service, data: dict[str, Any] | None, errors: dict[str, list[str]]) -> dict[str, Any]:
    return {
        **update_form_context(service, data, errors),
        "update_history": selectors.service_update_history(service),
    }


# --- Configuration updates --------------------------------------------------------


@login_required
@require_POST
def service_update(request: ConsoleRequest, service_id: uuid.UUID) -> HttpResponse:
    """Change the service's description and version rows (the owner only): new
    ratios at once, anything else as a live update (Upgrading)."""
    service = selectors.service_get_for(request.user, service_id)
    data = update_data_from_post(request.POST)
    try:
        update = actions.service_update(
            service=service, request=parse_update_request(service=service, data=data), actor=request.user
        )
    except RequestInvalid as exc:
        return _detail_page(request, service.id, "update", status=400, update_data=data, update_errors=exc.errors)
    except actions.ActionRefused as exc:
        messages.error(request, str(exc))
    else:
        if update is None:
            messages.info(request, "Nothing changed: the configuration is as it was.")
        elif update.is_live:
            messages.success(
                request,
                f"{service.name} is Upgrading: new instances start first and take traffic once they answer "
                "their health checks; the service keeps serving meanwhile.",
            )
        else:
            messages.success(request, "Saved: every gateway routes by the new configuration now.")
    return redirect(reverse("services:detail", args=[service.id]) + "?tab=update")


# --- Prediction -----------------------------------------------------------------

PREDICTION_FIELDS = ("input", "body", "file_as", "file_field", "path")


@csrf_exempt
@login_required
@require_POST
def service_predict(request: ConsoleRequest, service_id: uuid.UUID) -> HttpResponse:
    """Send the tab's input to the service through the gateway and show the answer.

    Exempt from the middleware's CSRF check only so that the upload limit can be
    installed before anything reads the body; the check runs just after, in
    _service_predict.
    """
    limit = prediction.UploadLimitHandler(request, limit=settings.PREDICTION_UPLOAD_MAX_BYTES)
    request.upload_handlers.insert(0, limit)
    try:
        return _service_predict(request, service_id, limit)
    except RequestDataTooBig:
        mib = settings.DATA_UPLOAD_MAX_MEMORY_SIZE / (1024 * 1024)
        message = (
            f"The JSON body is larger than {mib:.1f} MiB; upload it as a file (up to "
            f"{settings.PREDICTION_UPLOAD_MAX_BYTES // (1024 * 1024)} MiB) instead. Nothing was sent."
        )
        return render(
            request, "services/service_detail_prediction.html#result", {"errors": {"body": [message]}}, status=413
        )


@csrf_protect
def _service_predict(
    request: ConsoleRequest, service_id: uuid.UUID, limit: prediction.UploadLimitHandler
) -> HttpResponse:
    service = selectors.service_get_for(request.user, service_id)
    data = {name: request.POST.get(name, "") for name in PREDICTION_FIELDS}
    try:
        prediction_input = prediction.prediction_input_parse(
            data=data, upload=request.FILES.get("file"), is_upload_too_large="file" in limit.too_large_fields
        )
    except RequestInvalid as exc:
        is_too_large = "file" in limit.too_large_fields and data["input"] == "file"
        return _prediction_response(request, service, data, {"errors": exc.errors}, status=413 if is_too_large else 400)
    try:
        reply = prediction.service_predict(
            session=request.session, user=request.user, service_id=service.id, request=prediction_input
        )
    except prediction.GatewayUnreachable as exc:
        return _prediction_response(request, service, data, {"unreachable": str(exc)}, status=502)
    kind, text = reply.display()
    result = {"reply": reply, "reply_kind": kind, "reply_text": text, "sent": prediction_input.summary}
    return _prediction_response(request, service, data, result)


def _prediction_response(
    request: ConsoleRequest, service: Service, data: dict[str, str], result: dict[str, Any], *, status: int = 200
) -> HttpResponse:
    if request.htmx:
        return render(request, "services/service_detail_prediction.html#result", result, status=status)
    # Without JavaScript the form posts normally: show the whole tab again.
    return _detail_page(request, service.id, "prediction", status=status, data=data, **result)


# --- Data collection --------------------------------------------------------------

COLLECTION_FIELDS = ("sample_percent", "content", "keep_days", "keep_records")


def _collection_data_of(rule: DataCollectionRule) -> dict[str, Any]:
    """The rule as the tab's form shows it."""
    return {
        "is_enabled": rule.is_enabled,
        "sample_percent": rule.sample_percent,
        "content": rule.content,
        "keep_days": rule.keep_days or "",
        "keep_records": rule.keep_records or "",
    }


@login_required
@require_POST
def service_collection_update(request: ConsoleRequest, service_id: uuid.UUID) -> HttpResponse:
    """Turn data collection on or off and set its rules (the owner only)."""
    service = selectors.service_get_for(request.user, service_id)
    data: dict[str, Any] = {name: request.POST.get(name, "").strip() for name in COLLECTION_FIELDS}
    data["is_enabled"] = request.POST.get("is_enabled", "") == "on"
    try:
        rule_request = parse_collection_rule(service=service, data=data)
    except RequestInvalid as exc:
        return _collection_response(request, service, status=400, collection_data=data, collection_errors=exc.errors)
    rule = actions.collection_rule_set(service=service, request=rule_request, actor=request.user)
    note = (
        f"Data collection is on: {rule.sample_percent}% of calls from the next one on."
        if rule.is_enabled
        else "Data collection is off; the records collected so far stay until their retention ends."
    )
    if request.htmx:
        return _collection_response(request, service, collection_note=note)
    messages.success(request, note)
    return redirect(reverse("services:detail", args=[service.id]) + "?tab=collection")


def _collection_response(request: ConsoleRequest, service: Service, *, status: int = 200, **extra: Any) -> HttpResponse:
    if request.htmx:
        context = {"service": service, **_collection_context(service, extra.pop("collection_data", None)), **extra}
        return render(request, "services/service_detail_collection.html#rule", context, status=status)
    return _detail_page(request, service.id, "collection", status=status, **extra)


@login_required
@require_GET
def service_collection_export(request: ConsoleRequest, service_id: uuid.UUID) -> StreamingHttpResponse:
    """Every collected record of the service as JSON Lines, streamed (the owner only)."""
    service = selectors.service_get_for(request.user, service_id)
    response = StreamingHttpResponse(selectors.collected_records_jsonl(service), content_type="application/x-ndjson")
    filename = f"{service.name}-collected-{timezone.now():%Y%m%d-%H%M%S}.jsonl"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


# --- App codes ------------------------------------------------------------------


@login_required
@require_POST
def service_app_code_create(request: ConsoleRequest, service_id: uuid.UUID) -> HttpResponse:
    service = selectors.service_get_for(request.user, service_id)
    issued = access_actions.app_code_create(service=service)
    # Shown in this response only: the code is stored as a hash.
    return _app_codes_response(request, service, new_app_code=issued.secret)


@login_required
@require_POST
def service_app_code_revoke(request: ConsoleRequest, service_id: uuid.UUID, code_id: int) -> HttpResponse:
    code = access_selectors.app_code_get_for(request.user, service_id, code_id)
    service = selectors.service_get_for(request.user, service_id)
    if access_actions.app_code_revoke(code=code):
        note = f"Revoked app code {code.prefix}…; calls with it are refused within a second."
    else:
        note = f"App code {code.prefix}… was already revoked."
    if request.htmx:
        return _app_codes_response(request, service, app_code_note=note)
    messages.success(request, note)
    return redirect(reverse("services:detail", args=[service.id]) + "?tab=usage")


def _app_codes_response(request: ConsoleRequest, service: Service, **extra: Any) -> HttpResponse:
    if request.htmx:
        context = {"service": service, **_usage_context(service), **extra}
        return render(request, "services/service_detail_usage.html#app_codes", context)
    return _detail_page(request, service.id, "usage", **extra)


def _lifecycle(
    request: ConsoleRequest,
    service_id: uuid.UUID,
    action: Callable[..., None],
    done: str,
    *,
    as_operator: bool = False,
) -> HttpResponse:
    service = selectors.service_get_for(request.user, service_id, as_operator=as_operator)
    try:
        action(service=service, actor=request.user)
    except actions.ActionRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, done.format(name=service.name), extra_tags=TRANSIENT)
    next_url = request.POST.get("next", "")
    if next_url == "detail" and action is not actions.service_delete:
        return redirect("services:detail", service_id=service.id)
    if service.owner_id != request.user.id:
        return redirect(reverse("services:list") + "?scope=all")
    return redirect("services:list")


@login_required
@require_POST
def service_start(request: ConsoleRequest, service_id: uuid.UUID) -> HttpResponse:
    return _lifecycle(request, service_id, actions.service_start, "Starting {name}.", as_operator=True)


@login_required
@require_POST
def service_stop(request: ConsoleRequest, service_id: uuid.UUID) -> HttpResponse:
    return _lifecycle(request, service_id, actions.service_stop, "Stopping {name}.", as_operator=True)


@login_required
@require_POST
def service_auto_stop(request: ConsoleRequest, service_id: uuid.UUID) -> HttpResponse:
    """Set, extend or turn off the auto-stop timer (the owner only)."""
    service = selectors.service_get_for(request.user, service_id)
    try:
        hours = parse_auto_stop_change(request.POST.get("auto_stop_hours", ""))
    except RequestInvalid as exc:
        messages.error(request, exc.errors["auto_stop_hours"][0])
    else:
        actions.service_auto_stop_set(service=service, hours=hours, actor=request.user)
        if hours:
            messages.success(request, f"{service.name} stops by itself {hours_text(hours)} from now.")
        else:
            messages.success(request, f"Auto stop of {service.name} is off.")
    return redirect("services:detail", service_id=service.id)


@login_required
@require_POST
def service_delete(request: ConsoleRequest, service_id: uuid.UUID) -> HttpResponse:
    # Only the owner deletes: an operator stops.
    return _lifecycle(request, service_id, actions.service_delete, "Deleting {name}.")


@login_required
@require_GET
def application_list(request: ConsoleRequest) -> HttpResponse:
    applications = list(selectors.ai_application_list_for(request.user))
    is_polling = any(v.status == "checking" for a in applications for v in a.versions.all())
    context = {"applications": applications, "is_polling": is_polling}
    template = "services/application_list.html#table" if request.htmx else "services/application_list.html"
    return render(request, template, context)


@login_required
@require_http_methods(["GET", "POST"])
def application_register(request: ConsoleRequest) -> HttpResponse:
    # "Add version" links here with ?application=<name>, on GET and in the
    # form's action, so the page shows that application as it is.
    application_name = request.GET.get("application", "")
    application = (
        selectors.ai_application_list_for(request.user).filter(name=application_name).first()
        if application_name
        else None
    )
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        data = version_data_from_post(request.POST)
        if application is not None:
            # A new version keeps its application's name and description.
            data.update(application_name=application.name, description=application.description)
        try:
            version = actions.ai_application_version_register(
                owner=request.user, request=parse_version_request(owner=request.user, data=data)
            )
        except RequestInvalid as exc:
            errors = exc.errors
        else:
            messages.success(request, f"Registered {version}; checking its image on the engines.", extra_tags=TRANSIENT)
            return redirect("services:applications")
    else:
        data = {
            "application_name": application_name,
            "container_port": 8080,
            "health_path": "/health",
            "predict_path": "/predict",
        }
    context = {"application": application, "data": data, "errors": errors}
    return render(request, "services/application_register.html", context, status=400 if errors else 200)


@login_required
@require_POST
def application_version_recheck(request: ConsoleRequest, version_id: int) -> HttpResponse:
    version = selectors.ai_version_get_for(request.user, version_id)
    actions.ai_application_version_recheck(version=version)
    messages.success(request, f"Checking the image of {version} again.", extra_tags=TRANSIENT)
    return redirect("services:applications")


@login_required
@require_POST
def application_delete(request: ConsoleRequest, application_id: int) -> HttpResponse:
    application = selectors.ai_application_get_for(request.user, application_id)
    try:
        actions.ai_application_delete(application=application)
    except actions.ActionRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Deleted {application.name}.")
    return redirect("services:applications")
