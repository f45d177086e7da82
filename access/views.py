from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from access import actions, selectors
from access.forms import TokenRequestInvalid, token_data_from_post, token_request_parse
from console.http import ConsoleRequest
from services import prediction
from services.contract import infer_url


@login_required
@require_http_methods(["GET", "POST"])
def access_keys(request: ConsoleRequest) -> HttpResponse:
    """The user's API tokens; POST creates one and shows its secret in this
    response only (it is stored as a hash, so it can never be shown again)."""
    errors: dict[str, list[str]] = {}
    new_token = None
    data = {"name": "", "days": str(settings.ACCESS_TOKEN_DEFAULT_DAYS)}
    if request.method == "POST":
        posted = token_data_from_post(request.POST)
        try:
            token_request = token_request_parse(posted)
        except TokenRequestInvalid as exc:
            errors = exc.errors
            data = posted
        else:
            new_token = actions.access_token_create(
                owner=request.user, name=token_request.name, days=token_request.days
            )
    tokens = list(selectors.access_token_list_for(request.user))
    context = {
        "tokens": tokens,
        "data": data,
        "errors": errors,
        "new_token": new_token,
        "max_days": settings.ACCESS_TOKEN_MAX_DAYS,
        "max_live": settings.ACCESS_TOKEN_MAX_LIVE,
        "infer_url_example": infer_url(settings.GATEWAY_URL, "<service_id>"),
    }
    return render(request, "access/access_keys.html", context, status=400 if errors else 200)


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
