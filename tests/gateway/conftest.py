"""A gateway whose timed full reload is effectively off: whatever it learns
during a test, it learned by push (LISTEN/NOTIFY)."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import start_gateway, stop_gateway


def gateway_health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/healthz/table", timeout=2) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def push_gateway(django_db_setup: None) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    # No waiting round for refused calls either: a 502 here is the push arriving.
    process, url = start_gateway(GATEWAY_FULL_RELOAD_SECONDS="3600", GATEWAY_CONNECT_RETRY_SECONDS="0")
    yield process, url
    stop_gateway(process)


@pytest.fixture
def push_url(push_gateway: tuple[subprocess.Popen[bytes], str], transactional_db: None) -> str:
    """Base URL of a gateway that reloads its whole table only on (re)connect
    or a TRUNCATE (each test's database flush), never on a timer."""
    process, url = push_gateway
    assert process.poll() is None, "the push gateway has exited (log: test-artifacts/gateway.log)"
    return url
