"""The plumbing every endpoint shares: JSON errors, token authentication,
method checks and body parsing. Error codes are the gateway's too
(services.contract.ErrorCode), so a client handles both the same way."""

import functools
import json
from collections.abc import Callable, Iterable
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from access.selectors import user_for_token
from console.middleware import unstorable_reason
from services.contract import ErrorCode

# Deeper JSON than this is refused before any field is read.
MAX_JSON_DEPTH = 32


class ApiError(Exception):
    """Raised anywhere below a view to answer with one JSON error."""

    def __init__(self, status: int, code: str, message: str, errors: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors


def error_response(status: int, code: str, message: str, errors: dict[str, list[str]] | None = None) -> JsonResponse:
    body: dict[str, Any] = {"error_code": code, "error_msg": message}
    if errors is not None:
        body["errors"] = errors
    return JsonResponse(body, status=status)


def not_found(message: str) -> ApiError:
    return ApiError(404, ErrorCode.NOT_FOUND, message)


def token_from(request: HttpRequest) -> str:
    token = request.headers.get("X-Auth-Token", "").strip()
    if token:
        return token
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    return ""


def json_body(request: HttpRequest) -> dict[str, Any]:
    """The request body as a JSON object, or ApiError 400/413."""
    try:
        raw = request.body
    except RequestDataTooBig:
        raise ApiError(413, ErrorCode.BODY_TOO_LARGE, "The request body is too large.") from None
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, ErrorCode.BODY_MALFORMED, f"The request body is not valid JSON: {exc}.") from None
    except RecursionError:
        raise ApiError(400, ErrorCode.BODY_MALFORMED, "The request body is nested too deeply.") from None
    if not isinstance(body, dict):
        raise ApiError(400, ErrorCode.BODY_MALFORMED, "The request body must be a JSON object.")
    found = _first_unstorable(body, "")
    if found is not None:
        field, reason = found
        message = f"{field} {reason}."
        raise ApiError(400, ErrorCode.VALIDATION_FAILED, message, {field: [message]})
    return body


def _first_unstorable(value: Any, path: str, depth: int = 0) -> tuple[str, str] | None:
    """(field path, reason) of the first string in a parsed JSON body that PostgreSQL cannot store."""
    if depth > MAX_JSON_DEPTH:
        return path or "body", f"is nested more than {MAX_JSON_DEPTH} levels deep"
    if isinstance(value, str):
        reason = unstorable_reason(value)
        return (path or "body", reason) if reason else None
    if isinstance(value, dict):
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(value, list):
            child = f"{path}[{key}]"
        else:
            child = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and unstorable_reason(key):
            return path or "body", f"has a key that {unstorable_reason(key)}"
        found = _first_unstorable(item, child, depth + 1)
        if found is not None:
            return found
    return None


def api_view(methods: Iterable[str], *, authenticated: bool = True) -> Callable:
    """Wrap a function view of the API: 405 for other methods, 401 without a
    valid token (the view then receives the token's owner as `user`), and JSON
    for every ApiError. CSRF does not apply: the API never reads the session
    cookie, so a browser cannot be tricked into making an authenticated call."""
    allowed = tuple(methods)

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in allowed:
                response = error_response(
                    405,
                    ErrorCode.METHOD_NOT_ALLOWED,
                    f"{request.method} is not allowed here; use {', '.join(allowed)}.",
                )
                response["Allow"] = ", ".join(allowed)
                return response
            if authenticated:
                token = token_from(request)
                if not token:
                    response = error_response(
                        401, ErrorCode.NO_CREDENTIALS, "No credentials: send X-Auth-Token or Authorization: Bearer."
                    )
                    response["WWW-Authenticate"] = "Bearer"
                    return response
                user = user_for_token(token)
                if user is None:
                    response = error_response(
                        401, ErrorCode.BAD_CREDENTIALS, "The token is invalid, expired or revoked."
                    )
                    response["WWW-Authenticate"] = 'Bearer error="invalid_token"'
                    return response
                kwargs["user"] = user
            try:
                return view(request, *args, **kwargs)
            except ApiError as exc:
                return error_response(exc.status, exc.code, exc.message, exc.errors)

        wrapper.allowed_methods = allowed  # type: ignore[attr-defined]  # read by the OpenAPI test
        return csrf_exempt(wrapper)

    return decorate
