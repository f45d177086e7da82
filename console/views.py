"""The console's own error pages: HTML for people, JSON under /api/ for programs."""

from __future__ import annotations

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
    if request.path.startswith(API_PREFIX):
        return _api_error(500, ErrorCode.INTERNAL, "The console could not answer this request; try again.")
    return HttpResponse(loader.get_template("500.html").render(), status=500)
