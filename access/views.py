from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core import signing
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from access import actions, selectors
from access.forms import TokenRequestInvalid, token_data_from_post, token_request_parse
from access.models import AccessToken
from console.http import ConsoleRequest
from services import prediction
from services.contract import infer_url

# The new token's secret goes from the POST to the page after the redirect in
# a short-lived signed cookie: to the user's own browser, never into a server-side store.
NEW_TOKEN_COOKIE = "rts_new_token"
NEW_TOKEN_SALT = "access.new-token"


@dataclass(frozen=True)
class ShownToken:
    record: AccessToken
    secret: str
    revoked_to_make_room: list[AccessToken]


@login_required
@require_http_methods(["GET", "POST"])
def access_keys(request: ConsoleRequest) -> HttpResponse:
    """The user's API tokens. POST creates one and redirects (so a reload never
    creates another); the page after it shows the secret, once: it is stored
    only as a hash, so it can never be shown again."""
    errors: dict[str, list[str]] = {}
    data = {"name": "", "days": str(settings.ACCESS_TOKEN_DEFAULT_DAYS)}
    if request.method == "POST":
        posted = token_data_from_post(request.POST)
        try:
            token_request = token_request_parse(posted)
        except TokenRequestInvalid as exc:
            errors = exc.errors
            data = posted
        else:
            created = actions.access_token_create(owner=request.user, name=token_request.name, days=token_request.days)
            created_response = redirect("access:keys")
            shown = {
                "id": created.record.id,
                "secret": created.secret,
                "revoked": [t.id for t in created.revoked_to_make_room],
            }
            created_response.set_cookie(
                NEW_TOKEN_COOKIE,
                signing.dumps(shown, salt=NEW_TOKEN_SALT),
                max_age=60,
                httponly=True,
                samesite="Strict",
                secure=request.is_secure(),
                path=request.path,
            )
            return created_response
    new_token = _new_token_shown(request)
    tokens = list(selectors.access_token_list_for(request.user))
    context = {
        "live_tokens": [token for token in tokens if token.status == "active"],
        "dead_tokens": [token for token in tokens if token.status != "active"],
        "keep_days": settings.ACCESS_TOKEN_KEEP_DAYS,
        "data": data,
        "errors": errors,
        "new_token": new_token,
        "max_days": settings.ACCESS_TOKEN_MAX_DAYS,
        "max_live": settings.ACCESS_TOKEN_MAX_LIVE,
        "infer_url_example": infer_url(settings.GATEWAY_URL, "<service_id>"),
    }
    response = render(request, "access/access_keys.html", context, status=400 if errors else 200)
    if NEW_TOKEN_COOKIE in request.COOKIES:
        response.delete_cookie(NEW_TOKEN_COOKIE, path=request.path)
    return response


def _new_token_shown(request: ConsoleRequest) -> ShownToken | None:
    """The token just created, from the cookie the POST set (once, and only the user's own)."""
    raw = request.COOKIES.get(NEW_TOKEN_COOKIE)
    if not raw:
        return None
    try:
        shown = signing.loads(raw, salt=NEW_TOKEN_SALT, max_age=60)
    except signing.BadSignature:
        return None
    record = AccessToken.objects.filter(id=shown["id"], owner=request.user).first()
    if record is None:
        return None
    revoked = list(AccessToken.objects.filter(id__in=shown["revoked"], owner=request.user).order_by("created_at"))
    return ShownToken(record, shown["secret"], revoked)


@login_required
@require_POST
def access_key_revoke(request: ConsoleRequest, token_id: int) -> HttpResponse:
    token = selectors.access_token_get_for(request.user, token_id)
    if actions.access_token_revoke(token=token):
        messages.success(request, f"Revoked {token.name} ({token.prefix}…); calls with it are refused within a second.")
    else:
        messages.info(request, f"{token.name} ({token.prefix}…) was already revoked.")
    return redirect("access:keys")


class ConsoleLogoutView(auth_views.LogoutView):
    """Log out, and revoke the console tokens the session's Prediction tab was given."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.user.is_authenticated:
            prediction.console_tokens_forget(request.session, request.user)
        return super().post(request, *args, **kwargs)
