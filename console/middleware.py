"""Input that can never be stored is refused at the door, with the field it came in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.shortcuts import render

from services.contract import ErrorCode


def unstorable_reason(value: str) -> str | None:
    """Why PostgreSQL cannot store this text (a NUL, or half of a UTF-16 surrogate pair), or None."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (it holds an unpaired surrogate)"
    return None


def first_unstorable_field(data: QueryDict) -> tuple[str, str] | None:
    """(field, reason) of the first key or value in `data` that cannot be stored."""
    for key, values in data.lists():
        for text in (key, *values):
            reason = unstorable_reason(text)
            if reason is not None:
                return key.replace("\x00", "\\x00"), reason
    return None


class RejectUnstorableInput:
    """A query string or form with a NUL byte gets a 400 naming the field, not a 500 from the database.

    Forms are checked for the console's views. CSRF-exempt views read their
    bodies themselves: the API checks its JSON (api.http.json_body), and the
    Prediction tab sets its own upload handlers, so its body is not touched here.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view_func: Callable[..., HttpResponse], view_args: Any, view_kwargs: Any
    ) -> HttpResponse | None:
        found = first_unstorable_field(request.GET)
        if found is None and request.method == "POST" and not getattr(view_func, "csrf_exempt", False):
            found = first_unstorable_field(request.POST)
        if found is not None:
            field, reason = found
            message = f"{field} {reason}."
            if request.path.startswith("/api/"):
                return JsonResponse(
                    {"error_code": ErrorCode.VALIDATION_FAILED, "error_msg": message, "errors": {field: [message]}},
                    status=400,
                )
            return render(request, "400.html", {"message": message}, status=400)
        return None
