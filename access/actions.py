"""Writes for credentials: API tokens and per-service app codes.

Secrets are generated here, returned once to the caller, and stored only as
SHA-256 hashes. Revoking is a conditional update, so a second revoke is a no-op.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Generic, TypeVar

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.crypto import salted_hmac

from access.models import AccessToken, AppCode
from services.contract import secret_hash

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from services.models import Service

TOKEN_PREFIX = "rts_"
APP_CODE_PREFIX = "app_"


RecordT = TypeVar("RecordT", AccessToken, AppCode)


@dataclass(frozen=True)
class IssuedSecret(Generic[RecordT]):
    record: RecordT
    secret: str


def _token_issue(
    *, owner: User, name: str, kind: str, lifetime: timedelta, secret: str | None = None
) -> IssuedSecret[AccessToken]:
    secret = secret or TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = AccessToken.objects.create(
        owner=owner,
        name=name,
        kind=kind,
        token_hash=secret_hash(secret),
        prefix=secret[:10],
        expires_at=timezone.now() + lifetime,
    )
    return IssuedSecret(token, secret)


@dataclass(frozen=True)
class CreatedToken(IssuedSecret[AccessToken]):
    # Live tokens revoked to keep the user within ACCESS_TOKEN_MAX_LIVE, oldest first.
    revoked_to_make_room: list[AccessToken]


def access_token_create(*, owner: User, name: str, days: int) -> CreatedToken:
    """A new API token. When the user already has ACCESS_TOKEN_MAX_LIVE live ones,
    the oldest are revoked to make room (the caller tells the user which)."""
    with transaction.atomic():
        # One creation at a time per user, so two at once cannot both skip the cap.
        get_user_model().objects.select_for_update().filter(pk=owner.pk).first()
        live = list(
            AccessToken.objects.filter(
                owner=owner, kind=AccessToken.Kind.API, revoked_at__isnull=True, expires_at__gt=timezone.now()
            ).order_by("created_at", "id")
        )
        excess = live[: max(0, len(live) - settings.ACCESS_TOKEN_MAX_LIVE + 1)]
        if excess:
            AccessToken.objects.filter(id__in=[t.id for t in excess]).update(revoked_at=timezone.now())
        issued = _token_issue(owner=owner, name=name, kind=AccessToken.Kind.API, lifetime=timedelta(days=days))
    return CreatedToken(issued.record, issued.secret, excess)


def access_token_revoke(*, token: AccessToken) -> bool:
    return bool(AccessToken.objects.filter(id=token.id, revoked_at__isnull=True).update(revoked_at=timezone.now()))


def console_token_secret(nonce: str) -> str:
    """The secret of a console token, derived from its nonce and SECRET_KEY: the
    session keeps only the nonce, so the secret is never stored anywhere."""
    return TOKEN_PREFIX + salted_hmac("rts.console-token", nonce, algorithm="sha256").hexdigest()


def console_token_issue(*, owner: User) -> tuple[AccessToken, str]:
    """A short-lived token the console itself uses to call the gateway for the
    user: (its row, the nonce its secret derives from)."""
    nonce = secrets.token_urlsafe(24)
    issued = _token_issue(
        owner=owner,
        name="console",
        kind=AccessToken.Kind.CONSOLE,
        lifetime=timedelta(seconds=settings.CONSOLE_TOKEN_SECONDS),
        secret=console_token_secret(nonce),
    )
    return issued.record, nonce


def console_tokens_revoke(*, owner: User, token_ids: list[int]) -> int:
    """Revoke the user's console tokens with these ids (at logout); safe to repeat."""
    return AccessToken.objects.filter(
        owner=owner, kind=AccessToken.Kind.CONSOLE, id__in=token_ids, revoked_at__isnull=True
    ).update(revoked_at=timezone.now())


def access_tokens_purge(*, now: datetime | None = None) -> int:
    """Delete console tokens once expired or revoked, and API tokens that expired
    or were revoked more than ACCESS_TOKEN_KEEP_DAYS ago (the Access keys page
    shows them until then). Safe to repeat; run by the beat schedule."""
    now = now or timezone.now()
    kept_until = now - timedelta(days=settings.ACCESS_TOKEN_KEEP_DAYS)
    console = Q(kind=AccessToken.Kind.CONSOLE) & (Q(expires_at__lte=now) | Q(revoked_at__isnull=False))
    api = Q(kind=AccessToken.Kind.API) & (Q(expires_at__lte=kept_until) | Q(revoked_at__lte=kept_until))
    deleted, _ = AccessToken.objects.filter(console | api).delete()
    return deleted


def app_code_create(*, service: Service) -> IssuedSecret[AppCode]:
    secret = APP_CODE_PREFIX + secrets.token_urlsafe(32)
    code = AppCode.objects.create(service=service, code_hash=secret_hash(secret), prefix=secret[:10])
    return IssuedSecret(code, secret)


def app_code_revoke(*, code: AppCode) -> bool:
    return bool(AppCode.objects.filter(id=code.id, revoked_at__isnull=True).update(revoked_at=timezone.now()))
