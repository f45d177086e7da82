"""The request the console's pages receive, as the type checker should see it."""

from django.contrib.auth.models import User
from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails


class ConsoleRequest(HttpRequest):
    """A request to a @login_required page: HtmxMiddleware sets `htmx` on every
    request, and login_required lets only a signed-in `user` through."""

    user: User
    htmx: HtmxDetails
