"""Reads the API needs beyond services.selectors, scoped to the user who asks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db.models import QuerySet

from pools.models import ResourcePool
from pools.selectors import pool_list_for
from services.models import AIApplicationVersion

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def model_list_for(user: User) -> QuerySet[AIApplicationVersion]:
    """The user's AI application versions ("models" in ModelArts' terms), newest first."""
    return (
        AIApplicationVersion.objects.filter(application__owner=user)
        .select_related("application")
        .order_by("-created_at", "-id")
    )


def specification_pool_for(user: User, pool_name: str) -> ResourcePool | None:
    """The pool named, if the user may deploy to it; with no name, the first
    public pool (the one a deploy without `pool_name` goes to)."""
    pools = pool_list_for(user).prefetch_related("nodes")
    if pool_name:
        return pools.filter(name=pool_name).first()
    return pools.filter(is_public=True).first()
