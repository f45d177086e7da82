"""The console's own error pages: HTML for people, JSON under /api/ for programs."""

from __future__ import annotations

import sys

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template import loader

from services.contract import ErrorCode

API_PREFIX = "/api/"


def _api_error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error_code": code, "error_msg": message}, status=status)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith(API_PREFIX):
        return _api_error(404, ErrorCode.NOT_FOUND, f"There is no API endpoint at {request.path}.")
    return render(request, "404.html", {"request_path": request.path}, status=404)


def forbidden(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith(API_PREFIX):
        return _api_error(403, ErrorCode.FORBIDDEN, "This is not allowed.")
    return render(request, "403.html", status=403)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A form posted without a valid CSRF token (often: a page left open across a login)."""
    context = {"reason": "The form had expired. Reload the page and send it again."}
    return render(request, "403.html", context, status=403)


def server_error(request: HttpRequest) -> HttpResponse:
    # No request context and no database here: whatever broke may be either.
    # Django calls this inside its `except`, so the exception is at hand.
    if isinstance(sys.exc_info()[1], OperationalError | InterfaceError):
        return database_unavailable(request)
    if request.path.startswith(API_PREFIX):
        return _api_error(500, ErrorCode.INTERNAL, "The console could not answer this request; try again.")
    return HttpResponse(loader.get_template("500.html").render(), status=500)


def database_unavailable(request: HttpRequest) -> HttpResponse:
    """PostgreSQL does not answer (restarting, say): a clear 503, and try again soon."""
    message = "The console's database is not answering right now; try again in a few seconds."
    if request.path.startswith(API_PREFIX):
        response: HttpResponse = _api_error(503, ErrorCode.UNAVAILABLE, message)
    else:
        response = HttpResponse(loader.get_template("503.html").render({"message": message}), status=503)
    response["Retry-After"] = "5"
    return response


def login_locked_out(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict | None = None
) -> HttpResponse:
    """django-axes' answer once an account or a client address has failed too often."""
    seconds = int(settings.AXES_COOLOFF_TIME.total_seconds())
    message = f"Too many failed logins. Try again in {max(1, round(seconds / 60))} minute(s)."
    if request.path.startswith(API_PREFIX):
        response: HttpResponse = JsonResponse(
            {"error_code": ErrorCode.TOO_MANY_ATTEMPTS, "error_msg": message}, status=429
        )
    else:
        response = render(request, "429.html", {"message": message}, status=429)
    response["Retry-After"] = str(seconds)
    return response
