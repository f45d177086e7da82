"""REST API views: parse JSON, call one validation function and one action or
selector, shape the answer. Rules live in services.validation, writes in the
actions, JSON shapes in api.serializers."""

import uuid
from typing import Any

from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse

from access.actions import access_token_create
from api import serializers
from api.http import ApiError, api_view, error_response, json_body, not_found
from api.openapi import openapi_document
from api.parsing import (
    MODEL_FIELDS,
    SERVICE_FIELDS,
    UPDATE_FIELDS,
    deploy_data_from_api,
    token_request_from_api,
    update_data_from_api,
    validation_error,
    version_data_from_api,
)
from api.selectors import model_list_for, specification_pool_for
from pools.selectors import flavor_options_for_pool
from services import actions, selectors
from services.choices import ServiceStatus
from services.contract import ErrorCode
from services.models import AIApplicationVersion, Service
from services.validation import RequestInvalid, parse_deploy_request, parse_update_request, parse_version_request

# PUT {"status": ...} → the action that moves the service there.
_STATUS_ACTIONS = {
    ServiceStatus.STOPPED.value: actions.service_stop,
    ServiceStatus.RUNNING.value: actions.service_start,
}


def _refused(exc: actions.ActionRefused) -> ApiError:
    return ApiError(409, ErrorCode.CONFLICT, str(exc))


# --- Tokens ----------------------------------------------------------------------


@api_view(["POST"], authenticated=False)
def auth_tokens(request: HttpRequest) -> HttpResponse:
    client = request.headers.get("User-Agent", "")
    username, password, token_request = token_request_from_api(json_body(request), client=client)
    user = authenticate(request, username=username, password=password)
    if user is None:
        return error_response(401, ErrorCode.LOGIN_FAILED, "The username or password is incorrect.")
    issued = access_token_create(owner=user, name=token_request.name, days=token_request.days)
    response = JsonResponse(
        {
            "token": issued.secret,
            "name": issued.record.name,
            "expires_at": issued.record.expires_at.isoformat(),
            # Live tokens revoked to keep the user within ACCESS_TOKEN_MAX_LIVE.
            "revoked": [token.prefix for token in issued.revoked_to_make_room],
        },
        status=201,
    )
    response["X-Subject-Token"] = issued.secret
    response["Cache-Control"] = "no-store"
    return response


# --- Models (AI application versions) ---------------------------------------------


def _version_for(user: User, model_id: str) -> AIApplicationVersion:
    try:
        if not model_id.isdigit():
            raise Http404
        return selectors.ai_version_get_for(user, int(model_id))
    except Http404:
        raise not_found(f"Model {model_id} does not exist.") from None


@api_view(["GET", "POST"])
def models(request: HttpRequest, *, user: User) -> HttpResponse:
    if request.method == "GET":
        versions = list(model_list_for(user))
        return JsonResponse(
            {"total_count": len(versions), "models": [serializers.model_data(version) for version in versions]}
        )
    data = version_data_from_api(json_body(request))
    try:
        version = actions.ai_application_version_register(
            owner=user, request=parse_version_request(owner=user, data=data)
        )
    except RequestInvalid as exc:
        raise validation_error(exc.errors, MODEL_FIELDS) from None
    return JsonResponse({"model_id": version.id}, status=201)


@api_view(["GET", "DELETE"])
def model(request: HttpRequest, model_id: str, *, user: User) -> HttpResponse:
    version = _version_for(user, model_id)
    if request.method == "GET":
        return JsonResponse(serializers.model_data(version))
    try:
        actions.ai_application_version_delete(version=version)
    except actions.ActionRefused as exc:
        raise _refused(exc) from None
    return HttpResponse(status=204)


# --- Services ----------------------------------------------------------------------


def _service_id(service_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(service_id)
    except ValueError:
        raise not_found(f"Service {service_id} does not exist.") from None


def _service_for(user: User, service_id: str) -> Service:
    try:
        return selectors.service_get_for(user, _service_id(service_id))
    except Http404:
        raise not_found(f"Service {service_id} does not exist.") from None


def _service_detail(user: User, service_id: str) -> dict[str, Any]:
    try:
        return serializers.service_data(selectors.service_detail_for(user, _service_id(service_id)))
    except Http404:
        raise not_found(f"Service {service_id} does not exist.") from None


@api_view(["GET", "POST"])
def services(request: HttpRequest, *, user: User) -> HttpResponse:
    if request.method == "GET":
        rows = list(selectors.service_list_for(user))
        return JsonResponse(
            {"total_count": len(rows), "services": [serializers.service_summary(service) for service in rows]}
        )
    data = deploy_data_from_api(user, json_body(request))
    try:
        service = actions.service_create(owner=user, request=parse_deploy_request(owner=user, data=data))
    except RequestInvalid as exc:
        raise validation_error(exc.errors, SERVICE_FIELDS) from None
    return JsonResponse({"service_id": str(service.id), "service_name": service.name}, status=201)


@api_view(["GET", "PUT", "DELETE"])
def service(request: HttpRequest, service_id: str, *, user: User) -> HttpResponse:
    if request.method == "GET":
        return JsonResponse(_service_detail(user, service_id))
    if request.method == "DELETE":
        try:
            actions.service_delete(service=_service_for(user, service_id), actor=user)
        except actions.ActionRefused as exc:
            raise _refused(exc) from None
        return HttpResponse(status=204)

    target = _service_for(user, service_id)
    body = json_body(request)
    changes = [key for key in UPDATE_FIELDS if key in body]
    if "status" not in body and changes:
        try:
            update_request = parse_update_request(service=target, data=update_data_from_api(body))
            actions.service_update(service=target, request=update_request, actor=user)
        except RequestInvalid as exc:
            raise validation_error(exc.errors, SERVICE_FIELDS) from None
        except actions.ActionRefused as exc:
            raise _refused(exc) from None
        return JsonResponse(_service_detail(user, service_id))
    if changes:
        raise ApiError(
            400,
            ErrorCode.VALIDATION_FAILED,
            f"The request is invalid. status: cannot be changed together with {', '.join(changes)}; "
            "send them in two requests.",
            {"status": [f"Status cannot be changed together with {', '.join(changes)}; send two requests."]},
        )
    status = body.get("status")
    action = _STATUS_ACTIONS.get(status) if isinstance(status, str) else None
    if action is None:
        raise ApiError(
            400,
            ErrorCode.VALIDATION_FAILED,
            'The request is invalid. status: must be "stopped" or "running" (or send config and/or description '
            "to update the service).",
            {
                "status": [
                    'Status must be "stopped" (to stop the service) or "running" (to start it); to update the '
                    "service, send config and/or description instead."
                ]
            },
        )
    try:
        action(service=target, actor=user)
    except actions.ActionRefused as exc:
        raise _refused(exc) from None
    return JsonResponse(_service_detail(user, service_id))


@api_view(["GET"])
def specifications(request: HttpRequest, *, user: User) -> HttpResponse:
    pool_name = request.GET.get("pool_name", "").strip()
    pool = specification_pool_for(user, pool_name)
    if pool_name and pool is None:
        raise not_found(f"Resource pool {pool_name} does not exist or is not yours.")
    return JsonResponse(serializers.specifications_data(pool, flavor_options_for_pool(pool)))


# --- The rest ------------------------------------------------------------------------


@api_view(["GET"], authenticated=False)
def openapi(request: HttpRequest) -> HttpResponse:
    return JsonResponse(openapi_document())


@api_view(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"], authenticated=False)
def not_found_view(request: HttpRequest) -> HttpResponse:
    raise not_found(f"There is no API endpoint at {request.path}.")
