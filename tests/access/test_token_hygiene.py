"""Tokens do not pile up or linger: the Prediction tab's console tokens are never
stored in plain text and die at logout; a user has a bounded number of live API
tokens; expired and revoked tokens are purged."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from access.actions import access_token_create, access_tokens_purge, console_token_issue
from access.models import AccessToken
from access.selectors import user_for_token
from services.contract import secret_hash
from services.prediction import console_token_for

pytestmark = pytest.mark.django_db


def test_the_session_keeps_no_console_token_secret(owner_client, owner):
    session = owner_client.session
    secret, _ = console_token_for(session, owner)
    session.save()

    token = AccessToken.objects.get(kind=AccessToken.Kind.CONSOLE)
    assert token.token_hash == secret_hash(secret)
    stored = Session.objects.get(session_key=session.session_key).get_decoded()
    assert secret not in json.dumps(stored)
    # The same secret comes back from the session (it derives from what is kept there).
    assert console_token_for(owner_client.session, owner)[0] == secret


def test_logout_revokes_the_sessions_console_tokens(owner_client, owner):
    session = owner_client.session
    secret, _ = console_token_for(session, owner)
    session.save()
    assert user_for_token(secret) == owner

    owner_client.post("/logout/")

    assert user_for_token(secret) is None
    assert AccessToken.objects.get(kind=AccessToken.Kind.CONSOLE).revoked_at is not None


def test_a_user_has_at_most_the_live_api_tokens_allowed_and_the_oldest_goes(owner, settings):
    settings.ACCESS_TOKEN_MAX_LIVE = 3
    first, second, third = (access_token_create(owner=owner, name=f"t{n}", days=30) for n in range(3))

    fourth = access_token_create(owner=owner, name="t3", days=30)

    assert [token.id for token in fourth.revoked_to_make_room] == [first.record.id]
    assert user_for_token(first.secret) is None
    assert all(user_for_token(issued.secret) == owner for issued in (second, third, fourth))


def test_the_access_keys_page_says_which_token_was_revoked_to_make_room(owner_client, owner, settings):
    settings.ACCESS_TOKEN_MAX_LIVE = 1
    access_token_create(owner=owner, name="old-one", days=30)

    response = owner_client.post("/access/keys/", {"name": "new-one", "days": "30"}, follow=True)

    assert response.status_code == 200
    assert "the oldest one was revoked: “old-one”" in response.content.decode()


def test_the_api_says_which_tokens_it_revoked(owner, settings):
    settings.ACCESS_TOKEN_MAX_LIVE = 1
    old = access_token_create(owner=owner, name="old-one", days=30)

    response = Client().post(
        "/api/v1/auth/tokens",
        json.dumps({"username": "owner", "password": "owner-pass-123", "name": "new-one"}),
        content_type="application/json",
    )

    assert response.status_code == 201, response.content
    assert response.json()["revoked"] == [old.record.prefix]


def test_purge_deletes_dead_console_tokens_and_long_dead_api_tokens(owner, settings):
    settings.ACCESS_TOKEN_KEEP_DAYS = 30
    now = timezone.now()
    live_api = access_token_create(owner=owner, name="live", days=30).record
    recently_expired = access_token_create(owner=owner, name="recent", days=1).record
    long_expired = access_token_create(owner=owner, name="long", days=1).record
    long_revoked = access_token_create(owner=owner, name="revoked", days=90).record
    live_console, _ = console_token_issue(owner=owner)
    dead_console, _ = console_token_issue(owner=owner)
    AccessToken.objects.filter(id=recently_expired.id).update(expires_at=now - timedelta(days=2))
    AccessToken.objects.filter(id=long_expired.id).update(expires_at=now - timedelta(days=31))
    AccessToken.objects.filter(id=long_revoked.id).update(revoked_at=now - timedelta(days=31))
    AccessToken.objects.filter(id=dead_console.id).update(expires_at=now - timedelta(seconds=1))

    assert access_tokens_purge(now=now) == 3

    assert set(AccessToken.objects.values_list("id", flat=True)) == {live_api.id, recently_expired.id, live_console.id}
    assert access_tokens_purge(now=now) == 0


def test_the_purge_runs_on_the_beat_schedule(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["purge-tokens"]
    assert entry["task"] == "access.tasks.access_tokens_purge_task"
    from access.tasks import access_tokens_purge_task

    assert access_tokens_purge_task.name == entry["task"]
