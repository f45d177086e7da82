"""App codes on the service page (Usage Guide tab): create (shown once, stored
as a hash), revoke; as the owner, as another user (404), anonymously (login),
with the wrong method (405); with htmx (the card only) and without (the page)."""

import hashlib
import html
import re

import pytest
from django.urls import reverse

from access.actions import app_code_create
from access.models import AppCode
from services.models import Service

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
SECRET_RE = re.compile(r'id="new-app-code-secret">(app_[A-Za-z0-9_\-]+)</code>')


def create_url(service) -> str:
    return reverse("services:app_code_create", args=[service.id])


def revoke_url(code) -> str:
    return reverse("services:app_code_revoke", args=[code.service_id, code.id])


def test_create_shows_the_code_once_in_the_card_and_stores_only_its_hash(owner_client, service):
    response = owner_client.post(create_url(service), **HX)

    assert response.status_code == 200
    content = response.content.decode()
    assert content.lstrip().startswith('<section class="card" id="app-codes">')
    assert "<html" not in content
    secret = SECRET_RE.search(content).group(1)
    assert "It will not be shown again" in html.unescape(content)
    code = AppCode.objects.get()
    assert code.service == service
    assert code.code_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert code.prefix == secret[:10]
    assert secret not in {getattr(code, f.attname) for f in AppCode._meta.concrete_fields}
    assert f'<tr id="app-code-{code.id}" data-status="active">' in content
    # The page never shows it again.
    page = owner_client.get(reverse("services:detail", args=[service.id]) + "?tab=usage").content.decode()
    assert secret not in page
    assert f"<code>{code.prefix}…</code>" in html.unescape(page)


def test_create_without_htmx_renders_the_usage_guide_with_the_code(owner_client, service):
    response = owner_client.post(create_url(service))

    assert response.status_code == 200
    content = response.content.decode()
    assert "<html" in content and 'id="tab-usage" class="tab active"' in content
    secret = SECRET_RE.search(content).group(1)
    assert AppCode.objects.get().code_hash == hashlib.sha256(secret.encode()).hexdigest()


def test_the_card_lists_the_services_codes_with_their_status(owner_client, service, owner, pool, flavors, demo_version):
    active = app_code_create(service=service).record
    revoked = app_code_create(service=service).record
    AppCode.objects.filter(id=revoked.id).update(revoked_at=active.created_at)
    other_service = Service.objects.create(owner=owner, name="svc-else", pool=pool)
    elsewhere = app_code_create(service=other_service).record

    content = owner_client.get(reverse("services:detail", args=[service.id]) + "?tab=usage").content.decode()

    assert re.findall(r'<tr id="app-code-(\d+)" data-status="(\w+)">', content) == [
        (str(revoked.id), "revoked"),
        (str(active.id), "active"),
    ]
    assert f"app-code-{elsewhere.id}" not in content
    assert revoke_url(active) in content and revoke_url(revoked) not in content


def test_revoke_with_htmx_returns_the_card_with_the_code_revoked(owner_client, service):
    code = app_code_create(service=service).record

    response = owner_client.post(revoke_url(code), **HX)

    assert response.status_code == 200
    content = html.unescape(response.content.decode())
    assert f'<tr id="app-code-{code.id}" data-status="revoked">' in content
    assert f"Revoked app code {code.prefix}…" in content
    code.refresh_from_db()
    assert code.revoked_at is not None


def test_revoke_without_htmx_returns_to_the_usage_guide(owner_client, service):
    code = app_code_create(service=service).record

    response = owner_client.post(revoke_url(code), follow=True)

    assert response.redirect_chain == [(reverse("services:detail", args=[service.id]) + "?tab=usage", 302)]
    assert f"Revoked app code {code.prefix}…" in html.unescape(response.content.decode())


def test_second_revoke_changes_nothing_and_says_so(owner_client, service):
    code = app_code_create(service=service).record
    owner_client.post(revoke_url(code), **HX)
    code.refresh_from_db()
    first = code.revoked_at

    response = owner_client.post(revoke_url(code), **HX)

    assert f"App code {code.prefix}… was already revoked." in html.unescape(response.content.decode())
    code.refresh_from_db()
    assert code.revoked_at == first


def test_another_user_gets_404_and_changes_nothing(client, other_user, service):
    code = app_code_create(service=service).record
    client.force_login(other_user)

    created = client.post(create_url(service), **HX)
    revoked = client.post(revoke_url(code), **HX)

    assert (created.status_code, revoked.status_code) == (404, 404)
    assert AppCode.objects.count() == 1
    code.refresh_from_db()
    assert code.revoked_at is None


def test_a_code_of_another_service_cannot_be_revoked_through_this_one(owner_client, owner, service, pool):
    other_service = Service.objects.create(owner=owner, name="svc-else", pool=pool)
    code = app_code_create(service=other_service).record

    response = owner_client.post(reverse("services:app_code_revoke", args=[service.id, code.id]), **HX)

    assert response.status_code == 404
    code.refresh_from_db()
    assert code.revoked_at is None


def test_anonymous_user_is_sent_to_login(client, service):
    code = app_code_create(service=service).record

    for url in (create_url(service), revoke_url(code)):
        response = client.post(url)
        assert response.status_code == 302
        assert response.url == f"{reverse('login')}?next={url}"
    assert AppCode.objects.count() == 1
    code.refresh_from_db()
    assert code.revoked_at is None


def test_wrong_method_is_405(owner_client, service):
    code = app_code_create(service=service).record

    assert owner_client.get(create_url(service)).status_code == 405
    assert owner_client.get(revoke_url(code)).status_code == 405
    assert AppCode.objects.count() == 1
