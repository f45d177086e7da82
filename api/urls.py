from django.urls import path, re_path

from api import views

app_name = "api"

# Ids are matched as plain strings and checked in the view, so a malformed id
# gets the same JSON 404 as an unknown one instead of Django's HTML page.
urlpatterns = [
    path("auth/tokens", views.auth_tokens, name="auth_tokens"),
    path("models", views.models, name="models"),
    path("models/<str:model_id>", views.model, name="model"),
    path("services", views.services, name="services"),
    # Before services/<id>, which would otherwise take "specifications" as an id.
    path("services/specifications", views.specifications, name="specifications"),
    path("services/<str:service_id>", views.service, name="service"),
    path("openapi.json", views.openapi, name="openapi"),
    re_path(r"^", views.not_found_view, name="not_found"),
]
