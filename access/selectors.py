from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.utils import timezone

from access.models import AccessToken, AppCode
from services.contract import secret_hash


def user_for_token(secret: str):
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


def access_token_list_for(user) -> QuerySet[AccessToken]:
    return AccessToken.objects.filter(owner=user, kind=AccessToken.Kind.API).order_by("-created_at")


def access_token_get_for(user, token_id) -> AccessToken:
    return get_object_or_404(AccessToken, owner=user, kind=AccessToken.Kind.API, id=token_id)


def app_code_list_for(service) -> QuerySet[AppCode]:
    return AppCode.objects.filter(service=service).order_by("-created_at")


def app_code_get_for(user, service_id, code_id) -> AppCode:
    return get_object_or_404(AppCode, service__owner=user, service_id=service_id, id=code_id)
