"""The Access keys page: list, create (shown once, stored as a hash), revoke;
as the owner, as another user (404), anonymously (login), with bad input (400)
and with the wrong method (405)."""

import hashlib
import html
import re
from datetime import timedelta

import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from access.actions import access_token_create, console_token_issue
from access.models import AccessToken
from access.selectors import user_for_token

pytestmark = pytest.mark.django_db

KEYS_URL = "/access/keys/"
SECRET_RE = re.compile(r'<code class="secret" id="new-token-secret">(rts_[A-Za-z0-9_\-]+)</code>')


def page_text(response) -> str:
    return html.unescape(response.content.decode())


def revoke_url(token) -> str:
    return reverse("access:key_revoke", args=[token.id])


def test_the_page_lives_at_access_keys_and_is_in_the_navigation(owner_client):
    response = owner_client.get(KEYS_URL)

    assert reverse("access:keys") == KEYS_URL
    assert response.status_code == 200
    assert f'<a href="{KEYS_URL}" class="active">Access keys</a>' in response.content.decode()


@pytest.mark.parametrize(("method", "url_name"), [("get", "keys"), ("post", "keys"), ("post", "key_revoke")])
def test_anonymous_user_is_sent_to_login(client, owner, method, url_name):
    token = access_token_create(owner=owner, name="ci", days=30).record
    url = reverse(f"access:{url_name}", args=[token.id] if url_name == "key_revoke" else [])

    response = getattr(client, method)(url, {"name": "sneaky", "days": "30"} if method == "post" else None)

    assert response.status_code == 302
    assert response.url == f"{reverse('login')}?next={url}"
    assert AccessToken.objects.count() == 1
    token.refresh_from_db()
    assert token.revoked_at is None


def test_create_shows_the_token_once_and_stores_only_its_hash(owner_client, owner):
    response = owner_client.post(KEYS_URL, {"name": "batch job", "days": "30"}, follow=True)

    # Post/redirect/get: reloading the page that shows the secret creates nothing.
    assert response.redirect_chain == [(KEYS_URL, 302)]
    assert response.status_code == 200
    secret = SECRET_RE.search(response.content.decode()).group(1)
    text = page_text(response)
    assert "It will not be shown again" in text
    assert 'data-copy="#new-token-secret"' in text
    token = AccessToken.objects.get()
    assert (token.owner, token.name, token.kind) == (owner, "batch job", AccessToken.Kind.API)
    assert token.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in {getattr(token, f.attname) for f in AccessToken._meta.concrete_fields}
    assert token.prefix == secret[:10]
    assert abs(token.expires_at - (timezone.now() + timedelta(days=30))) < timedelta(minutes=1)
    assert user_for_token(secret) == owner
    # The list shows the new token by its prefix; the next page view never shows the secret again.
    again = owner_client.get(KEYS_URL)
    assert secret not in again.content.decode()
    assert f"<code>{token.prefix}…</code>" in page_text(again)
    assert "new-token-secret" not in again.content.decode()


def test_create_defaults_to_the_default_expiry(owner_client):
    page = owner_client.get(KEYS_URL)
    assert (
        f'name="days" type="number" min="1" max="{settings.ACCESS_TOKEN_MAX_DAYS}" value="90"' in page.content.decode()
    )

    owner_client.post(KEYS_URL, {"name": "defaults", "days": str(settings.ACCESS_TOKEN_DEFAULT_DAYS)})

    token = AccessToken.objects.get()
    expected = timezone.now() + timedelta(days=settings.ACCESS_TOKEN_DEFAULT_DAYS)
    assert abs(token.expires_at - expected) < timedelta(minutes=1)


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"name": "", "days": "30"}, "name", "Enter a name, e.g. the program that will use the token."),
        ({"name": "   ", "days": "30"}, "name", "Enter a name, e.g. the program that will use the token."),
        ({"name": "x" * 65, "days": "30"}, "name", "Ensure the name has at most 64 characters (it has 65)."),
        ({"name": "ok", "days": "0"}, "days", "The expiry must be from 1 to 365 days."),
        ({"name": "ok", "days": "366"}, "days", "The expiry must be from 1 to 365 days."),
        ({"name": "ok", "days": "ten"}, "days", "Enter a whole number of days from 1 to 365."),
        ({"name": "ok", "days": ""}, "days", "Enter a whole number of days from 1 to 365."),
    ],
)
def test_create_with_bad_input_answers_400_naming_the_field_and_stores_nothing(owner_client, data, field, message):
    response = owner_client.post(KEYS_URL, data)

    assert response.status_code == 400
    text = page_text(response)
    field_html = text.split('<div class="field invalid">', 1)[1].split("</div>", 1)[0]
    assert f'name="{field}"' in field_html
    assert f'<p class="field-error" role="alert">{message}</p>' in field_html
    assert text.count('class="field invalid"') == 1
    assert "new-token-secret" not in text
    assert not AccessToken.objects.exists()
    # What the user typed is kept.
    assert f'value="{data[field]}"' in text


def test_names_of_64_characters_and_365_days_are_accepted(owner_client):
    response = owner_client.post(KEYS_URL, {"name": "n" * 64, "days": "365"}, follow=True)

    assert response.status_code == 200
    assert AccessToken.objects.get().name == "n" * 64


def test_list_shows_only_the_users_api_tokens_with_their_status(owner_client, owner, other_user):
    active = access_token_create(owner=owner, name="active-one", days=30).record
    expired = access_token_create(owner=owner, name="expired-one", days=30).record
    AccessToken.objects.filter(id=expired.id).update(expires_at=timezone.now() - timedelta(seconds=1))
    revoked = access_token_create(owner=owner, name="revoked-one", days=30).record
    AccessToken.objects.filter(id=revoked.id).update(revoked_at=timezone.now())
    used_at = timezone.now() - timedelta(hours=2)
    AccessToken.objects.filter(id=active.id).update(last_used_at=used_at)
    console_token_issue(owner=owner)
    access_token_create(owner=other_user, name="theirs", days=30)

    response = owner_client.get(KEYS_URL)

    text = page_text(response)
    rows = re.findall(r'<tr id="token-(\d+)" data-status="(\w+)">', text)
    # Live tokens first; the revoked and expired ones folded away below them.
    assert rows == [(str(active.id), "active"), (str(revoked.id), "revoked"), (str(expired.id), "expired")]
    dead = text.split('<details class="dead-tokens" id="dead-tokens">', 1)[1]
    assert "Revoked and expired (2)" in dead and f'id="token-{active.id}"' not in dead
    assert "theirs" not in text and "console" not in text.split('id="token-rows"', 1)[1]
    assert timezone.localtime(used_at).strftime("%Y-%m-%d %H:%M") in text
    # Only an active token can be revoked.
    assert revoke_url(active) in text
    assert revoke_url(expired) not in text and revoke_url(revoked) not in text


def test_revoke_marks_the_token_revoked_and_the_gateway_credential_stops_working(owner_client, owner):
    issued = access_token_create(owner=owner, name="ci", days=30)

    response = owner_client.post(revoke_url(issued.record), follow=True)

    assert response.redirect_chain == [(KEYS_URL, 302)]
    assert "Revoked ci (" in page_text(response)
    issued.record.refresh_from_db()
    assert issued.record.revoked_at is not None
    assert user_for_token(issued.secret) is None
    assert f'<tr id="token-{issued.record.id}" data-status="revoked">' in page_text(response)


def test_second_revoke_changes_nothing_and_says_so(owner_client, owner):
    token = access_token_create(owner=owner, name="ci", days=30).record
    owner_client.post(revoke_url(token))
    token.refresh_from_db()
    first_revoked_at = token.revoked_at

    response = owner_client.post(revoke_url(token), follow=True)

    assert "ci (" in page_text(response) and "was already revoked." in page_text(response)
    token.refresh_from_db()
    assert token.revoked_at == first_revoked_at


def test_another_users_token_is_404_and_stays_active(client, owner, other_user):
    token = access_token_create(owner=owner, name="mine", days=30).record
    client.force_login(other_user)

    response = client.post(revoke_url(token))

    assert response.status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None


def test_console_tokens_cannot_be_revoked_from_the_page(owner_client, owner):
    token, _ = console_token_issue(owner=owner)

    response = owner_client.post(revoke_url(token))

    assert response.status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None


def test_unknown_token_is_404(owner_client):
    assert owner_client.post(reverse("access:key_revoke", args=[987654])).status_code == 404


@pytest.mark.parametrize(("method", "url_name"), [("put", "keys"), ("delete", "keys"), ("get", "key_revoke")])
def test_wrong_method_is_405(owner_client, owner, method, url_name):
    token = access_token_create(owner=owner, name="ci", days=30).record
    url = reverse(f"access:{url_name}", args=[token.id] if url_name == "key_revoke" else [])

    response = getattr(owner_client, method)(url)

    assert response.status_code == 405
    token.refresh_from_db()
    assert token.revoked_at is None


def test_reloading_the_page_after_a_create_neither_creates_another_nor_shows_the_secret(owner_client):
    shown = owner_client.post(KEYS_URL, {"name": "once", "days": "30"}, follow=True)
    secret = SECRET_RE.search(shown.content.decode()).group(1)

    reloaded = owner_client.get(KEYS_URL)

    assert AccessToken.objects.count() == 1
    assert secret not in reloaded.content.decode()
    assert "new-token-secret" not in reloaded.content.decode()


def test_a_new_tokens_cookie_shows_nothing_to_another_user(owner_client, other_user):
    from django.test import Client

    owner_client.post(KEYS_URL, {"name": "mine", "days": "30"})
    cookie = owner_client.cookies["rts_new_token"].value
    other = Client()
    other.force_login(other_user)
    other.cookies["rts_new_token"] = cookie

    page = other.get(KEYS_URL).content.decode()

    assert "new-token-secret" not in page
