"""Safe defaults: no debug pages, a secret key that is never a shared default,
`check --deploy` clean with the compose settings, and the console's own error pages."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

ROOT = Path(__file__).resolve().parents[2]


def compose_console_env() -> dict[str, str]:
    """The `x-console-env` block of compose.yaml, with each ${NAME:-default} at its default."""
    text = (ROOT / "compose.yaml").read_text()
    block = text[text.index("x-console-env:") : text.index("x-console:")]
    env = {}
    for line in block.splitlines()[1:]:
        match = re.match(r"^\s+([A-Z_]+):\s*(.+)$", line)
        if not match:
            continue
        name, value = match.groups()
        value = value.strip().strip('"')
        default = re.fullmatch(r"\$\{[A-Z_]+:-(.*)\}", value)
        env[name] = default.group(1) if default else value
    return env


def run_settings(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SECRET_KEY", "DEBUG"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "console.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_requires_a_secret_key_and_keeps_debug_off():
    env = compose_console_env()
    assert env["SECRET_KEY"].startswith("${SECRET_KEY:?")
    assert env["DEBUG"] == "false"


def test_check_deploy_passes_with_the_compose_settings():
    env = {**compose_console_env(), "SECRET_KEY": secrets.token_hex(32)}
    result = run_settings(env, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr


def test_without_a_secret_key_the_console_refuses_to_start_and_says_how(tmp_path):
    result = run_settings({"SECRET_KEY_FILE": str(tmp_path / "missing")}, "check")
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_debug_is_off_unless_set(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(secrets.token_urlsafe(50))
    result = run_settings(
        {"SECRET_KEY_FILE": str(key_file)}, "shell", "-c", "from django.conf import settings; print(settings.DEBUG)"
    )
    assert result.stdout.strip().splitlines()[-1] == "False", result.stderr


@pytest.mark.django_db
def test_a_missing_page_is_the_consoles_own_404_and_the_api_answers_json(owner_client):
    page = owner_client.get("/no/such/page/")
    assert page.status_code == 404
    assert "Not found" in page.content.decode() and "Real-Time Services" in page.content.decode()

    api = Client().get("/api/v1/no-such-endpoint")
    assert api.status_code == 404
    assert api.json()["error_code"] == "RTS.4040"


def test_a_crash_is_the_consoles_own_500_page_and_json_under_the_api(client, monkeypatch):
    from console import views

    class Broken:
        path = "/services/"

    page = views.server_error(Broken())  # type: ignore[arg-type]
    assert page.status_code == 500
    assert "Something went wrong" in page.content.decode()
    assert "Traceback" not in page.content.decode()

    Broken.path = "/api/v1/services"
    api = views.server_error(Broken())  # type: ignore[arg-type]
    assert api.status_code == 500
    assert b'"error_code": "RTS.5000"' in api.content


@pytest.mark.django_db
def test_a_form_posted_without_csrf_token_gets_the_consoles_403(owner):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    response = client.post("/access/keys/", {"name": "ci"})
    assert response.status_code == 403
    assert "The form had expired" in response.content.decode()


@pytest.mark.django_db
def test_a_database_outage_is_a_clear_503_not_a_traceback(owner_client, monkeypatch):
    from django.db import OperationalError

    from api import views as api_views
    from services import selectors

    def database_down(*args, **kwargs):
        raise OperationalError("connection to server at 127.0.0.1, port 5432 failed: Connection refused")

    monkeypatch.setattr(selectors, "service_list_for", database_down)
    owner_client.raise_request_exception = False
    page = owner_client.get("/")
    assert page.status_code == 503
    assert page["Retry-After"] == "5"
    assert "database is not answering" in page.content.decode()
    assert "Connection refused" not in page.content.decode()

    monkeypatch.setattr(api_views, "service_list_for", database_down, raising=False)
    monkeypatch.setattr(api_views, "json_body", database_down)
    client = Client(raise_request_exception=False)
    api = client.post("/api/v1/auth/tokens", "{}", content_type="application/json")
    assert api.status_code == 503
    assert api.json()["error_code"] == "RTS.5030"
