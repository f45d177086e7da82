from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from pools.selectors import flavor_options_for_pool, pool_list_for
from services import actions, selectors
from services.forms import deploy_data_from_post, deploy_form_context, version_data_from_post
from services.validation import RequestInvalid, parse_deploy_request, parse_version_request


@login_required
@require_GET
def service_list(request: HttpRequest) -> HttpResponse:
    services = list(selectors.service_list_for(request.user))
    context = {
        "services": services,
        "is_polling": selectors.service_list_has_transitional(services),
    }
    template = "services/service_list.html#rows" if request.htmx else "services/service_list.html"
    return render(request, template, context)


@login_required
@require_http_methods(["GET", "POST"])
def service_deploy(request: HttpRequest) -> HttpResponse:
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        data = deploy_data_from_post(request.POST)
        try:
            deploy_request = parse_deploy_request(owner=request.user, data=data)
            service = actions.service_create(owner=request.user, request=deploy_request)
        except RequestInvalid as exc:
            errors = exc.errors
        else:
            messages.success(request, f"Service {service.name} is deploying.")
            return redirect("services:list")
    else:
        data = None
    context = deploy_form_context(request.user, data, errors)
    return render(request, "services/service_deploy.html", context, status=400 if errors else 200)


@login_required
@require_GET
def service_deploy_flavors(request: HttpRequest) -> HttpResponse:
    pool_id = request.GET.get("pool", "")
    pool = pool_list_for(request.user).filter(id=pool_id).first() if pool_id.isdigit() else None
    context = {"flavor_options": flavor_options_for_pool(pool), "selected_flavor": request.GET.get("flavor", "")}
    return render(request, "services/service_deploy.html#flavors", context)


@login_required
@require_GET
def service_detail(request: HttpRequest, service_id) -> HttpResponse:
    service = selectors.service_detail_for(request.user, service_id)
    context = {"service": service, "is_polling": service.is_transitional}
    if request.htmx:
        return render(request, "services/service_detail.html#live", context)
    context["instance_logs"] = selectors.instance_logs_for(service.instance_rows)
    return render(request, "services/service_detail.html", context)


def _lifecycle(request: HttpRequest, service_id, action, done: str) -> HttpResponse:
    service = selectors.service_get_for(request.user, service_id)
    try:
        action(service=service)
    except actions.ActionRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, done.format(name=service.name))
    next_url = request.POST.get("next", "")
    if next_url == "detail" and action is not actions.service_delete:
        return redirect("services:detail", service_id=service.id)
    return redirect("services:list")


@login_required
@require_POST
def service_start(request: HttpRequest, service_id) -> HttpResponse:
    return _lifecycle(request, service_id, actions.service_start, "Starting {name}.")


@login_required
@require_POST
def service_stop(request: HttpRequest, service_id) -> HttpResponse:
    return _lifecycle(request, service_id, actions.service_stop, "Stopping {name}.")


@login_required
@require_POST
def service_delete(request: HttpRequest, service_id) -> HttpResponse:
    return _lifecycle(request, service_id, actions.service_delete, "Deleting {name}.")


@login_required
@require_GET
def application_list(request: HttpRequest) -> HttpResponse:
    applications = list(selectors.ai_application_list_for(request.user))
    is_polling = any(v.status == "checking" for a in applications for v in a.versions.all())
    context = {"applications": applications, "is_polling": is_polling}
    template = "services/application_list.html#table" if request.htmx else "services/application_list.html"
    return render(request, template, context)


@login_required
@require_http_methods(["GET", "POST"])
def application_register(request: HttpRequest) -> HttpResponse:
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        data = version_data_from_post(request.POST)
        try:
            version = actions.ai_application_version_register(
                owner=request.user, request=parse_version_request(owner=request.user, data=data)
            )
        except RequestInvalid as exc:
            errors = exc.errors
        else:
            messages.success(request, f"Registered {version}; checking its image on the engines.")
            return redirect("services:applications")
    else:
        data = {"application_name": request.GET.get("application", ""), "container_port": 8080,
                "health_path": "/health", "predict_path": "/predict"}
    context = {"data": data, "errors": errors}
    return render(request, "services/application_register.html", context, status=400 if errors else 200)


@login_required
@require_POST
def application_version_recheck(request: HttpRequest, version_id: int) -> HttpResponse:
    version = selectors.ai_version_get_for(request.user, version_id)
    actions.ai_application_version_recheck(version=version)
    messages.success(request, f"Checking the image of {version} again.")
    return redirect("services:applications")


@login_required
@require_POST
def application_delete(request: HttpRequest, application_id: int) -> HttpResponse:
    application = selectors.ai_application_get_for(request.user, application_id)
    try:
        actions.ai_application_delete(application=application)
    except actions.ActionRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Deleted {application.name}.")
    return redirect("services:applications")
