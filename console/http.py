"""The request the console's pages receive, as the type checker should see it, and who sent it."""

from django.conf import settings
from django.contrib.auth.models import User
from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails


class ConsoleRequest(HttpRequest):
    """A request to a @login_required page: HtmxMiddleware sets `htmx` on every
    request, and login_required lets only a signed-in `user` through."""

    user: User
    htmx: HtmxDetails


def client_address(request: HttpRequest) -> str:
    """The client's address: REMOTE_ADDR, or behind TRUSTED_PROXY_COUNT proxies the
    X-Forwarded-For entry they vouch for (REMOTE_ADDR being the nearest proxy)."""
    remote = str(request.META.get("REMOTE_ADDR", ""))
    hops = settings.TRUSTED_PROXY_COUNT
    if hops <= 0:
        return remote
    forwarded = [entry.strip() for entry in str(request.META.get("HTTP_X_FORWARDED_FOR", "")).split(",")]
    forwarded = [entry for entry in forwarded if entry]
    return forwarded[-hops] if len(forwarded) >= hops else remote
