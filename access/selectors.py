from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.utils import timezone

from access.models import AccessToken, AppCode
from services.contract import secret_hash

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from services.models import Service


def user_for_token(secret: str) -> User | None:
    """The owner of a valid (known, unexpired, unrevoked) token, or None."""
    if not secret:
        return None
    token = (
        AccessToken.objects.select_related("owner")
        .filter(token_hash=secret_hash(secret), revoked_at__isnull=True, expires_at__gt=timezone.now())
        .first()
    )
    if token is None or not token.owner.is_active:
        return None
    return token.owner


def access_token_list_for(user: User) -> QuerySet[AccessToken]:
    return AccessToken.objects.filter(owner=user, kind=AccessToken.Kind.API).order_by("-created_at")


def access_token_get_for(user: User, token_id: int) -> AccessToken:
    return get_object_or_404(AccessToken, owner=user, kind=AccessToken.Kind.API, id=token_id)


def app_code_list_for(service: Service) -> QuerySet[AppCode]:
    return AppCode.objects.filter(service=service).order_by("-created_at")


def app_code_get_for(user: User, service_id: uuid.UUID | str, code_id: int) -> AppCode:
    return get_object_or_404(AppCode, service__owner=user, service_id=service_id, id=code_id)
