"""Writes for credentials: API tokens and per-service app codes.

Secrets are generated here, returned once to the caller, and stored only as
SHA-256 hashes. Revoking is a conditional update, so a second revoke is a no-op.
"""

import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from access.models import AccessToken, AppCode
from services.contract import secret_hash

TOKEN_PREFIX = "rts_"
APP_CODE_PREFIX = "app_"


@dataclass(frozen=True)
class IssuedSecret:
    record: AccessToken | AppCode
    secret: str


def _token_issue(*, owner, name: str, kind: str, lifetime: timedelta) -> IssuedSecret:
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = AccessToken.objects.create(
        owner=owner,
        name=name,
        kind=kind,
        token_hash=secret_hash(secret),
        prefix=secret[:10],
        expires_at=timezone.now() + lifetime,
    )
    return IssuedSecret(token, secret)


def access_token_create(*, owner, name: str, days: int) -> IssuedSecret:
    return _token_issue(owner=owner, name=name, kind=AccessToken.Kind.API, lifetime=timedelta(days=days))


def access_token_revoke(*, token: AccessToken) -> bool:
    return bool(AccessToken.objects.filter(id=token.id, revoked_at__isnull=True).update(revoked_at=timezone.now()))


def console_token_issue(*, owner) -> IssuedSecret:
    """A short-lived token the console itself uses to call the gateway for the user."""
    return _token_issue(
        owner=owner,
        name="console",
        kind=AccessToken.Kind.CONSOLE,
        lifetime=timedelta(seconds=settings.CONSOLE_TOKEN_SECONDS),
    )


def app_code_create(*, service) -> IssuedSecret:
    secret = APP_CODE_PREFIX + secrets.token_urlsafe(32)
    code = AppCode.objects.create(service=service, code_hash=secret_hash(secret), prefix=secret[:10])
    return IssuedSecret(code, secret)


def app_code_revoke(*, code: AppCode) -> bool:
    return bool(AppCode.objects.filter(id=code.id, revoked_at__isnull=True).update(revoked_at=timezone.now()))
