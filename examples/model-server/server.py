#!/usr/bin/env python3
"""Demo model server for the Real-Time Services console.

Pure Python standard library, so it runs on the bare `rts-base:bookworm` image.
HTTP/1.1 with keep-alive; every response carries a correct Content-Length.

Endpoints
  GET  /                  small JSON description of the server
  GET  /health            200 {"status": "ok", "version": ...}; code from HEALTH_STATUS
  POST /predict           JSON in -> {"version", "prediction", "input"}; bad JSON -> 400
  GET|POST /sleep?seconds=N   sleeps N seconds (float) then answers 200
  ANY  /fail?status=N     answers status N (default 500) with a JSON body
  GET  /large?bytes=N     answers N bytes of application/octet-stream
  ANY  /echo              method, path, query, headers, body length and sha256
  WebSocket /predict      each text message is a JSON input; each answer is the
                          prediction as a text message (binary: its length and sha256)

Environment
  PORT (8080)             port to listen on (0.0.0.0)
  MODEL_VERSION (1.0.0)   version reported everywhere
  HEALTH_STATUS (200)     status code of /health (e.g. 500: never healthy)
  STARTUP_DELAY_SECONDS   sleep this long before listening
  EXIT_AFTER_SECONDS      exit with code 3 this long after it starts listening
  CRASH_ON_START=1        print an error line and exit 1 at once
  STOP_DELAY_SECONDS      on SIGTERM, stop accepting calls and exit only this long after
SIGTERM and SIGINT end the process with code 0 (SIGTERM after STOP_DELAY_SECONDS).
"""

import base64
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MODEL_NAME = "rts-demo-model"
MAX_BODY_BYTES = 64 * 1024 * 1024
CHUNK = 64 * 1024
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_MESSAGE_BYTES = 1024 * 1024


def log(message: str) -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        log(f"error: {name} must be a number, got {raw!r}")
        sys.exit(2)


VERSION = os.environ.get("MODEL_VERSION", "").strip() or "1.0.0"
PORT = int(env_number("PORT", 8080))
HEALTH_STATUS = int(env_number("HEALTH_STATUS", 200))


def collect_numbers(value, found: list) -> None:
    """Every int/float inside a JSON value (bools excluded), depth first."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        if math.isfinite(value):
            found.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            collect_numbers(item, found)
    elif isinstance(value, list):
        for item in value:
            collect_numbers(item, found)


def predict(payload) -> dict:
    """Deterministic "model": the sum of all numbers found in the input.

    With no number in the input the prediction is the length of the input's
    canonical JSON text, so every input gets a stable answer.
    """
    numbers: list = []
    collect_numbers(payload, numbers)
    if numbers:
        total = sum(numbers)
        prediction = total if isinstance(total, int) else round(total, 6)
    else:
        prediction = len(json.dumps(payload, sort_keys=True, separators=(",", ":")))
    return {"prediction": prediction, "numbers": len(numbers)}


class BodyError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm the body
    # waits for the client's delayed ACK of the headers: 40 ms per call.
    disable_nagle_algorithm = True
    server_version = f"{MODEL_NAME}/{VERSION}"
    sys_version = ""
    # Idle keep-alive connections are closed after this many seconds.
    timeout = 120

    # ---- plumbing ---------------------------------------------------------
    def log_message(self, format, *args):  # noqa: A002 - signature from stdlib
        # Only errors from the stdlib end up here; requests are logged in _dispatch.
        log(f"{self.client_address[0]} {format % args}")

    def log_request(self, code="-", size="-"):
        pass

    def version_string(self):
        return self.server_version

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw = self.headers.get("Content-Length")
        if raw is None or raw.strip() == "":
            return b""
        try:
            length = int(raw)
        except ValueError:
            self.close_connection = True
            raise BodyError(400, "invalid Content-Length") from None
        if length < 0:
            self.close_connection = True
            raise BodyError(400, "invalid Content-Length")
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise BodyError(413, f"body larger than {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        parts = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise BodyError(400, "invalid chunked body") from None
            if size == 0:
                # Trailers end with an empty line.
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                self.close_connection = True
                raise BodyError(413, f"body larger than {MAX_BODY_BYTES} bytes")
            parts.append(self.rfile.read(size))
            self.rfile.readline(8)

    def send_bytes(self, status: int, body: bytes, content_type: str, headers=None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("X-Model-Version", VERSION)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        no_body = status < 200 or status in (204, 304)
        if not no_body:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not no_body and self.command != "HEAD":
            self.wfile.write(body)
        self._status = status
        self._sent = 0 if no_body or self.command == "HEAD" else len(body)

    def send_json(self, status: int, payload, headers=None) -> None:
        body = (json.dumps(payload) + "\n").encode()
        self.send_bytes(status, body, "application/json", headers)

    def send_error_json(self, status: int, message: str, **extra) -> None:
        self.send_json(status, {"error": message, "status": status, "version": VERSION, **extra})

    def _dispatch(self) -> None:
        if self.headers.get("Upgrade", "").lower() == "websocket" and self.command == "GET":
            self._websocket()
            return
        started = time.monotonic()
        self._status = 0
        self._sent = 0
        url = urlsplit(self.path)
        self._query = parse_qs(url.query, keep_blank_values=True)
        route = ROUTES.get(url.path.rstrip("/") or "/")
        try:
            body = self.read_body()
            if route is None:
                self.send_error_json(404, f"no such endpoint: {url.path}")
            else:
                methods, func = route
                if self.command not in methods and not (self.command == "HEAD" and "GET" in methods):
                    self.send_json(
                        405,
                        {
                            "error": f"method {self.command} not allowed",
                            "status": 405,
                            "version": VERSION,
                            "allowed": sorted(methods),
                        },
                        headers={"Allow": ", ".join(sorted(methods))},
                    )
                else:
                    func(self, url, body)
        except BodyError as exc:
            self.send_error_json(exc.status, exc.message)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # pragma: no cover - last resort
            self.close_connection = True
            log(f"error handling {self.command} {self.path}: {exc!r}")
            try:
                self.send_error_json(500, "internal error")
            except OSError:
                pass
        elapsed_ms = (time.monotonic() - started) * 1000
        # Successful health checks come every few seconds from the console and
        # would bury the lines that matter; failing ones are still logged.
        if self.path.split("?", 1)[0] == "/health" and 200 <= self._status < 300:
            return
        log(
            f'{self.client_address[0]} "{self.command} {self.path} {self.request_version}" '
            f"{self._status} {self._sent} {elapsed_ms:.1f}ms"
        )

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    # ---- WebSocket (RFC 6455), on /predict ---------------------------------
    def _websocket(self) -> None:
        self.close_connection = True
        key = self.headers.get("Sec-WebSocket-Key", "")
        if urlsplit(self.path).path.rstrip("/") != "/predict" or not key:
            self.send_error_json(400, "WebSocket is served on /predict, with a Sec-WebSocket-Key")
            return
        accept = base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        log(f'{self.client_address[0]} "WebSocket {self.path}" opened')
        messages = 0
        try:
            while True:
                opcode, payload = self._ws_read()
                if opcode == 0x8:  # close: answer it, then end
                    self._ws_send(0x8, payload[:2])
                    break
                if opcode == 0x9:
                    self._ws_send(0xA, payload)
                elif opcode == 0x1:
                    messages += 1
                    try:
                        answer = {"version": VERSION, **predict(json.loads(payload.decode()))}
                    except (ValueError, UnicodeDecodeError) as exc:
                        answer = {"version": VERSION, "error": f"message must be JSON: {exc}"}
                    self._ws_send(0x1, json.dumps(answer).encode())
                elif opcode == 0x2:
                    messages += 1
                    summary = {"version": VERSION, "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
                    self._ws_send(0x1, json.dumps(summary).encode())
        except (ConnectionError, OSError, ValueError) as exc:
            log(f'{self.client_address[0]} "WebSocket {self.path}" broken: {exc}')
        log(f'{self.client_address[0]} "WebSocket {self.path}" closed after {messages} message(s)')

    def _ws_read_exactly(self, size: int) -> bytes:
        data = self.rfile.read(size)
        if len(data) != size:
            raise ConnectionError("the client went away")
        return data

    def _ws_read(self) -> tuple[int, bytes]:
        """One whole message (continuation frames joined): (opcode, payload)."""
        opcode, parts = None, []
        while True:
            first, second = self._ws_read_exactly(2)
            length = second & 0x7F
            if length == 126:
                length = int.from_bytes(self._ws_read_exactly(2), "big")
            elif length == 127:
                length = int.from_bytes(self._ws_read_exactly(8), "big")
            if length > MAX_MESSAGE_BYTES:
                raise ValueError(f"message larger than {MAX_MESSAGE_BYTES} bytes")
            mask = self._ws_read_exactly(4) if second & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self._ws_read_exactly(length)))
            frame_opcode = first & 0x0F
            if frame_opcode >= 0x8:  # control frames come whole, even between fragments
                return frame_opcode, data
            if frame_opcode != 0x0:
                opcode = frame_opcode
            parts.append(data)
            if first & 0x80:
                return opcode or 0x1, b"".join(parts)

    def _ws_send(self, opcode: int, payload: bytes) -> None:
        length = len(payload)
        if length < 126:
            header = bytes([0x80 | opcode, length])
        elif length < 65536:
            header = bytes([0x80 | opcode, 126]) + length.to_bytes(2, "big")
        else:
            header = bytes([0x80 | opcode, 127]) + length.to_bytes(8, "big")
        self.wfile.write(header + payload)
        self.wfile.flush()

    def query_number(self, name: str, default: float) -> float:
        values = self._query.get(name)
        if not values or values[0] == "":
            return default
        try:
            value = float(values[0])
        except ValueError:
            raise BodyError(400, f"query parameter {name} must be a number") from None
        if not math.isfinite(value) or value < 0:
            raise BodyError(400, f"query parameter {name} must be a finite number >= 0")
        return value

    # ---- endpoints -------------------------------------------------------
    def ep_index(self, url, body):
        self.send_json(
            200,
            {
                "model": MODEL_NAME,
                "version": VERSION,
                "endpoints": ["/health", "/predict", "/sleep", "/fail", "/large", "/echo"],
            },
        )

    def ep_health(self, url, body):
        ok = 200 <= HEALTH_STATUS < 300
        self.send_json(HEALTH_STATUS, {"status": "ok" if ok else "unhealthy", "version": VERSION})

    def ep_predict(self, url, body):
        if not body.strip():
            self.send_error_json(400, "request body must be JSON, got an empty body")
            return
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            self.send_error_json(400, f"invalid JSON: {exc}")
            return
        result = predict(payload)
        self.send_json(
            200,
            {
                "model": MODEL_NAME,
                "version": VERSION,
                "prediction": result["prediction"],
                "numbers": result["numbers"],
                "input": payload,
            },
        )

    def ep_sleep(self, url, body):
        seconds = self.query_number("seconds", 1.0)
        time.sleep(seconds)
        self.send_json(200, {"slept": seconds, "version": VERSION})

    def ep_fail(self, url, body):
        status = int(self.query_number("status", 500))
        if not 100 <= status <= 599:
            raise BodyError(400, "status must be between 100 and 599")
        if status < 200:
            # An interim response would confuse clients; answer plainly instead.
            raise BodyError(400, "status must be between 200 and 599")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Custom status"
        self.send_json(status, {"error": phrase, "status": status, "version": VERSION})

    def ep_large(self, url, body):
        size = int(self.query_number("bytes", 1024 * 1024))
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("X-Model-Version", VERSION)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self._status = 200
        if self.command != "HEAD":
            block = b"0123456789abcdef" * (CHUNK // 16)
            remaining = size
            while remaining > 0:
                piece = block[: min(CHUNK, remaining)]
                self.wfile.write(piece)
                remaining -= len(piece)
                self._sent += len(piece)

    def ep_echo(self, url, body):
        headers: dict = {}
        for key, value in self.headers.items():
            key = key.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self.send_json(
            200,
            {
                "version": VERSION,
                "method": self.command,
                "path": url.path,
                "query_string": url.query,
                "query": self._query,
                "headers": headers,
                "body_length": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
            },
        )


ALL = {"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
ROUTES = {
    "/": ({"GET"}, Handler.ep_index),
    "/health": ({"GET"}, Handler.ep_health),
    "/predict": ({"POST"}, Handler.ep_predict),
    "/sleep": ({"GET", "POST"}, Handler.ep_sleep),
    "/fail": (ALL, Handler.ep_fail),
    "/large": ({"GET"}, Handler.ep_large),
    "/echo": (ALL, Handler.ep_echo),
}


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def on_signal(signum, frame):
    log(f"model server {VERSION} received {signal.Signals(signum).name}, exiting")
    delay = env_number("STOP_DELAY_SECONDS", 0) if signum == signal.SIGTERM else 0
    if delay > 0:
        # A model that drains slowly: the accept loop (this thread) stops here,
        # calls already accepted finish on their own threads.
        time.sleep(delay)
    os._exit(0)


def main() -> None:
    # Python as PID 1 ignores SIGTERM unless a handler is installed.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if os.environ.get("CRASH_ON_START", "").strip().lower() in ("1", "true", "yes", "on"):
        log(f"error: model server {VERSION} failed to start (CRASH_ON_START is set)")
        sys.exit(1)

    delay = env_number("STARTUP_DELAY_SECONDS", 0)
    if delay > 0:
        log(f"model server {VERSION} loading model, starting in {delay:g}s")
        time.sleep(delay)

    server = Server(("0.0.0.0", PORT), Handler)
    log(f"model server {VERSION} listening on :{PORT}")

    exit_after = env_number("EXIT_AFTER_SECONDS", 0)
    if exit_after > 0:

        def die():
            log(f"model server {VERSION} exiting with code 3 after {exit_after:g}s (EXIT_AFTER_SECONDS)")
            os._exit(3)

        timer = threading.Timer(exit_after, die)
        timer.daemon = True
        timer.start()

    server.serve_forever(poll_interval=0.5)


if __name__ == "__main__":
    main()
