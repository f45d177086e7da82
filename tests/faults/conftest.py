"""The stack the fault suite breaks, the client that calls through it, and the
table it prints.

Every process runs as `make run` runs it, on the test database: the web under
gunicorn, a lifecycle worker, a reconcile worker and beat, each under
scripts/supervise, and a gateway with two processes (whose parent restarts a
dead one). A test crashes a process; its supervisor brings it back, and the
moment it says it is ready again is when "after a worker is back" starts.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import ROOT, free_port, start_gateway, stop_gateway
from tests.waiting import eventually

ARTIFACTS = ROOT / "test-artifacts"

# --- The stack --------------------------------------------------------------------------


CELERY = [sys.executable, "-m", "celery", "-A", "console"]


@dataclass
class Stack:
    """The console's processes, each under scripts/supervise as in the Procfile:
    a process that dies is started again a second later, by the supervisor, not
    by the test."""

    beat_schedule: Path
    web_url: str = ""
    gateway_url: str = ""
    supervisors: dict[str, subprocess.Popen] = field(default_factory=dict)
    gateway: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            DJANGO_SETTINGS_MODULE="console.settings_test",
            DATABASE_NAME=settings.DATABASES["default"]["NAME"],
            # The production defaults, not the test suite's shorter ones: the
            # figures are what a user of `make run` would see.
            DEPLOY_FAST_WAIT_SECONDS="1",
            RECONCILE_INTERVAL_SECONDS="2",
            # A never-healthy deploy fails after 20 min x 0.05 = 60 s, not 20 min.
            SERVICE_TIMEOUT_SCALE="0.05",
            GATEWAY_URL=self.gateway_url,
        )

    def commands(self) -> dict[str, list[str]]:
        port = self.web_url.rsplit(":", 1)[1]
        return {
            "web": [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "console/gunicorn.conf.py",
                "--bind",
                f"127.0.0.1:{port}",
                "console.wsgi",
            ],
            "worker": CELERY + ["worker", "-Q", "lifecycle", "-c", "4", "-n", "faults-lifecycle@%h", "-l", "INFO"],
            "reconciler": CELERY + ["worker", "-Q", "reconcile", "-c", "2", "-n", "faults-reconcile@%h", "-l", "INFO"],
            "beat": CELERY + ["beat", "-l", "INFO", "-s", str(self.beat_schedule)],
        }

    def log_path(self, name: str) -> Path:
        return ARTIFACTS / f"faults-{name}.log"

    def log_size(self, name: str) -> int:
        path = self.log_path(name)
        return path.stat().st_size if path.exists() else 0

    def wait_ready(self, name: str, log_offset: int, timeout: float = 60) -> float:
        """Wait until the process has said it is ready since `log_offset` of its
        log (the web: until it answers); return the monotonic time it was seen."""
        supervisor = self.supervisors[name]
        marker = {"beat": b"beat: Starting"}.get(name, b" ready.")

        def ready() -> bool:
            if supervisor.poll() is not None:
                raise AssertionError(f"the supervisor of {name} exited: see {self.log_path(name)}")
            if name == "web":
                try:
                    with urllib.request.urlopen(self.web_url + "/login/", timeout=1) as response:
                        return response.status == 200
                except OSError:
                    return False
            with open(self.log_path(name), "rb") as log:
                log.seek(log_offset)
                return marker in log.read()

        eventually(ready, timeout=timeout, interval=0.02, message=f"{name} did not become ready")
        return time.monotonic()

    def start(self, name: str) -> float:
        """Start one process under its supervisor; return when it is ready."""
        offset = self.log_size(name)
        with open(self.log_path(name), "ab") as log:
            self.supervisors[name] = subprocess.Popen(
                [str(ROOT / "scripts/supervise"), *self.commands()[name]],
                cwd=ROOT,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.wait_ready(name, offset)

    def crash(self, name: str) -> int:
        """SIGKILL the process and every process it started (a Celery worker's
        pool), as a crash of the whole process would; its supervisor stays.
        Returns the log offset to wait_ready() from."""
        offset = self.log_size(name)
        main = children_of(self.supervisors[name].pid)
        assert main, f"{name} is not running"
        victims = main + [child for pid in main for child in children_of(pid)]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return offset

    def stop(self, name: str) -> None:
        supervisor = self.supervisors.pop(name)
        try:
            supervisor.send_signal(signal.SIGTERM)
            supervisor.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait()

    def gateway_children(self) -> list[int]:
        """The gateway's serving processes (not multiprocessing's resource tracker)."""
        assert self.gateway is not None
        serving = []
        for pid in children_of(self.gateway.pid):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue  # reaped since it was listed (the one a test just killed)
            if b"resource_tracker" not in command:
                serving.append(pid)
        return serving

    def assert_alive(self) -> None:
        for name, supervisor in self.supervisors.items():
            assert supervisor.poll() is None, f"the supervisor of {name} has exited: see {self.log_path(name)}"
            assert children_of(supervisor.pid), f"{name} is not running: see {self.log_path(name)}"
        assert self.gateway is not None and self.gateway.poll() is None, "the gateway has exited"


def children_of(pid: int) -> list[int]:
    output = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(child) for child in output.split()]


@pytest.fixture(scope="module")
def stack(django_db_setup, tmp_path_factory) -> Iterator[Stack]:
    ARTIFACTS.mkdir(exist_ok=True)
    the_stack = Stack(beat_schedule=tmp_path_factory.mktemp("beat") / "schedule")
    the_stack.gateway, the_stack.gateway_url = start_gateway(processes=2)
    the_stack.web_url = f"http://127.0.0.1:{free_port()}"
    try:
        for name in ("web", "worker", "reconciler", "beat"):
            the_stack.start(name)
        yield the_stack
    finally:
        for name in list(the_stack.supervisors):
            the_stack.stop(name)
        stop_gateway(the_stack.gateway)


@pytest.fixture
def live_stack(stack: Stack, engine, transactional_db) -> Iterator[Stack]:
    """The module's stack, every process up, on a database flushed after the test.
    (The flush comes before the engine's clean-up: with the services gone, the
    running reconcile loop recreates none of the containers being removed.)"""
    stack.assert_alive()
    yield stack


# --- A client calling in a loop -----------------------------------------------------------


@dataclass
class Call:
    at: float
    status: int  # 0: no HTTP answer (refused, reset, timed out)
    detail: str = ""


class CallLoop:
    """Calls `path` through the gateway every `interval` seconds on a fresh
    connection each time, as a client retrying nothing would, and records each
    outcome."""

    def __init__(self, base_url: str, path: str, token: str, interval: float = 0.05) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.path, self.token, self.interval = path, token, interval
        self.calls: list[Call] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _call(self) -> Call:
        started = time.monotonic()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request(
                "POST",
                self.path,
                body=b'{"numbers": [1, 2, 3]}',
                headers={"X-Auth-Token": self.token, "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            body = response.read()
            return Call(started, response.status, "" if response.status == 200 else body[:200].decode(errors="replace"))
        except OSError as exc:
            return Call(started, 0, f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.calls.append(self._call())
            self._stopping.wait(self.interval)

    def __enter__(self) -> CallLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._thread.join(timeout=15)

    def wait_for_success(self, timeout: float = 30) -> None:
        """Return once a call made from now on has succeeded."""
        since = time.monotonic()
        eventually(
            lambda: any(call.at >= since and call.status == 200 for call in self.calls),
            timeout=timeout,
            interval=0.02,
            message=lambda: f"no successful call; last: {self.calls[-1:] if self.calls else 'none'}",
        )

    @property
    def sent(self) -> int:
        return len(self.calls)

    @property
    def failed(self) -> list[Call]:
        return [call for call in self.calls if call.status != 200]

    def last_failure_after(self, moment: float) -> float:
        """Seconds from `moment` to the end of the last failed call made after it (0: none failed)."""
        failures = [call.at for call in self.failed if call.at >= moment]
        return max(failures) - moment if failures else 0.0


# --- The table --------------------------------------------------------------------------


@dataclass
class FaultRow:
    fault: str
    goal: str
    recovered: str
    calls_sent: int | None
    calls_failed: int | None
    requests_lost: int | None
    passed: bool = False


ROWS: list[FaultRow] = []


@pytest.fixture
def fault_table() -> Iterator[list[FaultRow]]:
    """Append one FaultRow per fault; set `passed` after the assertions hold."""
    rows: list[FaultRow] = []
    yield rows
    ROWS.extend(rows)


def render_table(rows: list[FaultRow]) -> str:
    def cell(value: int | None) -> str:
        return "—" if value is None else str(value)

    lines = [
        "| fault | recovered | calls sent | calls failed | requests lost | goal | pass |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.fault} | {row.recovered} | {cell(row.calls_sent)} | {cell(row.calls_failed)} "
            f"| {cell(row.requests_lost)} | {row.goal} | {'pass' if row.passed else 'FAIL'} |"
        )
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not ROWS:
        return
    table = render_table(ROWS)
    terminalreporter.section("fault suite")
    terminalreporter.write_line(table)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "faults.md").write_text(table + "\n")
    terminalreporter.write_line(f"(also in {ARTIFACTS.relative_to(ROOT)}/faults.md)")
