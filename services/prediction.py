"""The Prediction tab: what the user sends, and the console's call to the gateway.

The console calls the gateway exactly as a user's program would, over HTTP
with a token, so the tab tests the real path (authentication, routing, the
model) and the call counts in the statistics like any other. The token is a
short-lived console token kept in the user's session.
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, SkipFile

from access.actions import console_token_issue, console_token_secret, console_tokens_revoke
from services.contract import ErrorCode, infer_url
from services.validation import RequestInvalid

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.base import SessionBase
    from django.http import HttpRequest

SAMPLE_BODY = '{"instances": [[1, 2, 3]]}'
SESSION_KEY = "console_token"
# The fragment shows at most this much of a response body.
DISPLAY_MAX_BYTES = 256 * 1024
FILE_FIELD_RE = re.compile(r"^[A-Za-z0-9_.\-\[\]]{1,64}$")
MAX_PATH_LENGTH = 200


@dataclass(frozen=True)
class PredictionInput:
    body: bytes
    content_type: str
    path: str
    summary: str


def _file_too_large_message() -> str:
    mib = settings.PREDICTION_UPLOAD_MAX_BYTES / (1024 * 1024)
    return f"The file is larger than {mib:g} MiB ({settings.PREDICTION_UPLOAD_MAX_BYTES} bytes); nothing was sent."


def _multipart(field: str, upload: UploadedFile, data: bytes) -> tuple[bytes, str]:
    """One file as multipart/form-data, escaped the way browsers escape names."""

    def escape(value: str) -> str:
        return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")

    boundary = "----rts-console-" + secrets.token_hex(12)
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{escape(field)}"; filename="{escape(upload.name or "file")}"\r\n'
        f"Content-Type: {upload.content_type or 'application/octet-stream'}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _path_parse(raw: str) -> str:
    """`/echo?x=1` → `echo?x=1`, percent-encoded; '' calls the version's predict path."""
    path = raw.strip().lstrip("/")
    if not path:
        return ""
    if len(path) > MAX_PATH_LENGTH:
        raise RequestInvalid({"path": [f"Ensure the path has at most {MAX_PATH_LENGTH} characters."]})
    if any(char.isspace() or not char.isprintable() for char in path) or "#" in path:
        raise RequestInvalid({"path": ["The path must not contain spaces, control characters or '#'."]})
    if ".." in path.split("?", 1)[0].split("/"):
        raise RequestInvalid({"path": ["The path must not contain '..' segments."]})
    return quote(path, safe="/?=&%:@!$'()*+,;-._~")


def prediction_input_parse(*, data: dict, upload: UploadedFile | None, is_upload_too_large: bool) -> PredictionInput:
    """What to send, from the tab's form; RequestInvalid names each bad field.

    `data`: `input` ("json" or "file"), `body` (the JSON text), `file_as`
    ("body" or "multipart"), `file_field` (the multipart field name), `path`.
    """
    errors: dict[str, list[str]] = {}
    try:
        path = _path_parse(data.get("path", ""))
    except RequestInvalid as exc:
        errors.update(exc.errors)
        path = ""

    if data.get("input") == "file":
        if is_upload_too_large:
            errors["file"] = [_file_too_large_message()]
        elif upload is None:
            errors["file"] = ["Choose a file to send."]
        file_as = data.get("file_as", "body")
        field = data.get("file_field", "").strip() or "file"
        if file_as == "multipart" and not FILE_FIELD_RE.fullmatch(field):
            errors["file_field"] = ["Use 1–64 letters, digits, '_', '-', '.', '[' or ']'."]
        if errors:
            raise RequestInvalid(errors)
        assert upload is not None  # without errors, a file was chosen
        content = upload.read()
        # Checked again here: the limit handler is not installed when this
        # function is called outside the view.
        if len(content) > settings.PREDICTION_UPLOAD_MAX_BYTES:
            raise RequestInvalid({"file": [_file_too_large_message()]})
        if file_as == "multipart":
            body, content_type = _multipart(field, upload, content)
            summary = f"{upload.name} ({len(content)} bytes) as multipart/form-data field “{field}”"
        else:
            body, content_type = content, upload.content_type or "application/octet-stream"
            summary = f"{upload.name} ({len(content)} bytes) as the request body, {content_type}"
        return PredictionInput(body=body, content_type=content_type, path=path, summary=summary)

    text = data.get("body", "")
    if not text.strip():
        errors["body"] = ["Enter a JSON body, e.g. " + SAMPLE_BODY]
    else:
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            errors["body"] = [
                f"The body is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}). Nothing was sent."
            ]
        except RecursionError:
            errors["body"] = ["The JSON is nested too deeply. Nothing was sent."]
    if errors:
        raise RequestInvalid(errors)
    body = text.encode()
    return PredictionInput(body=body, content_type="application/json", path=path, summary=f"JSON, {len(body)} bytes")


class UploadLimitHandler(FileUploadHandler):
    """Skips an uploaded file as soon as it passes `limit` bytes and notes its
    field, so an oversize file is never stored in full (the rest of the request
    is read and dropped, keeping the connection usable)."""

    def __init__(self, request: HttpRequest | None = None, *, limit: int) -> None:
        super().__init__(request)
        self.limit = limit
        self.too_large_fields: set[str] = set()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        if start + len(raw_data) > self.limit:
            self.too_large_fields.add(self.field_name)
            raise SkipFile
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


# --- The call -------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayReply:
    status: int
    reason: str
    elapsed_ms: float
    headers: list[tuple[str, str]]
    body: bytes
    is_truncated: bool

    @property
    def content_type(self) -> str:
        return next((value for key, value in self.headers if key.lower() == "content-type"), "")

    @property
    def error_code(self) -> str:
        """The gateway's own error code, when the body is one of its errors."""
        try:
            payload = json.loads(self.body)
        except ValueError:
            return ""
        return payload.get("error_code", "") if isinstance(payload, dict) else ""

    def display(self) -> tuple[str, str]:
        """(kind, text): kind is "json" (pretty-printed), "text" or "binary"."""
        if not self.is_truncated and ("json" in self.content_type or self.body[:1] in (b"{", b"[")):
            try:
                return "json", json.dumps(json.loads(self.body), indent=2, ensure_ascii=False)
            except (ValueError, RecursionError):
                pass
        try:
            text = self.body.decode()
        except UnicodeDecodeError:
            return (
                "binary",
                f"{len(self.body)}{'+' if self.is_truncated else ''} bytes of {self.content_type or 'binary data'}",
            )
        return "text", text


class GatewayUnreachable(Exception):
    pass


def gateway_url(service_id: uuid.UUID | str, path: str = "") -> str:
    url = infer_url(settings.GATEWAY_URL, service_id)
    return f"{url}/{path}" if path else url


def gateway_websocket_url(service_id: uuid.UUID | str) -> str:
    """The service's URL for WebSocket callers: ws:// (wss:// behind TLS) for http:// (https://)."""
    url = gateway_url(service_id)
    return "ws" + url.removeprefix("http") if url.startswith("http") else url


def gateway_call(*, url: str, token: str, body: bytes, content_type: str, timeout: float) -> GatewayReply:
    """POST to the gateway; reads at most DISPLAY_MAX_BYTES of the answer."""
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    assert parts.hostname is not None  # GATEWAY_URL always names a host
    connection = connection_class(parts.hostname, parts.port, timeout=timeout)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    headers = {"X-Auth-Token": token, "Content-Type": content_type, "Accept": "*/*", "User-Agent": "rts-console"}
    started = time.perf_counter()
    try:
        connection.request("POST", target, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read(DISPLAY_MAX_BYTES + 1)
        elapsed_ms = (time.perf_counter() - started) * 1000
        return GatewayReply(
            status=response.status,
            reason=response.reason,
            elapsed_ms=elapsed_ms,
            headers=list(response.getheaders()),
            body=data[:DISPLAY_MAX_BYTES],
            is_truncated=len(data) > DISPLAY_MAX_BYTES,
        )
    except TimeoutError:
        raise GatewayUnreachable(
            f"The gateway at {settings.GATEWAY_URL} did not answer within {timeout:g} s."
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        raise GatewayUnreachable(
            f"Could not reach the gateway at {settings.GATEWAY_URL}: {exc or type(exc).__name__}."
        ) from None
    finally:
        connection.close()


def console_token_for(session: SessionBase, user: User, *, renew: bool = False) -> tuple[str, float]:
    """The secret of the session's console token and when it was issued; a new
    token is issued when there is none, it is about to expire, or `renew`."""
    stored = session.get(SESSION_KEY)
    now = time.time()
    margin = min(60.0, settings.CONSOLE_TOKEN_SECONDS / 4)
    if (
        not renew
        and stored
        and stored.get("user_id") == user.pk
        and "nonce" in stored
        and stored["expires_at"] - margin > now
    ):
        return console_token_secret(stored["nonce"]), stored["issued_at"]
    record, nonce = console_token_issue(owner=user)
    # The session keeps the nonce, never the secret (it derives from SECRET_KEY too).
    session[SESSION_KEY] = {
        "nonce": nonce,
        "token_ids": [*(stored or {}).get("token_ids", []), record.id][-10:],
        "expires_at": record.expires_at.timestamp(),
        "issued_at": now,
        "user_id": user.pk,
    }
    return console_token_secret(nonce), now


def console_tokens_forget(session: SessionBase, user: User) -> None:
    """Revoke every console token this session was given (at logout)."""
    stored = session.get(SESSION_KEY) or {}
    if stored.get("token_ids"):
        console_tokens_revoke(owner=user, token_ids=stored["token_ids"])
    session.pop(SESSION_KEY, None)


def service_predict(
    *, session: SessionBase, user: User, service_id: uuid.UUID | str, request: PredictionInput
) -> GatewayReply:
    """Send the input to the service through the gateway with the session's
    console token (issuing one when needed: writes an AccessToken row).

    The gateway learns of a new token on its next reload of the routing table,
    so a rejected token is tried again until that reload is certainly done; a
    token still rejected then (revoked, expired, deleted) is replaced once.
    Retrying is safe: a rejected call never reaches the model.
    """
    token, issued_at = console_token_for(session, user)
    url = gateway_url(service_id, request.path)
    # A web worker waits for the answer: at most PREDICTION_TIMEOUT_SECONDS,
    # however long the gateway itself would wait for the model.
    timeout = min(settings.GATEWAY_CALL_TIMEOUT_SECONDS + 5, settings.PREDICTION_TIMEOUT_SECONDS)
    reload_window = max(2.0, 4 * settings.GATEWAY_REFRESH_SECONDS)

    def call(token: str) -> GatewayReply:
        return gateway_call(url=url, token=token, body=request.body, content_type=request.content_type, timeout=timeout)

    def call_until_known(token: str, issued_at: float) -> GatewayReply:
        reply = call(token)
        while _is_token_rejected(reply) and time.time() - issued_at < reload_window:
            time.sleep(0.1)
            reply = call(token)
        return reply

    reply = call_until_known(token, issued_at)
    if _is_token_rejected(reply):
        token, issued_at = console_token_for(session, user, renew=True)
        reply = call_until_known(token, issued_at)
    return reply


def _is_token_rejected(reply: GatewayReply) -> bool:
    return reply.status == 401 and reply.error_code == ErrorCode.BAD_CREDENTIALS
