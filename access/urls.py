from django.urls import path

from access import views

app_name = "access"

urlpatterns = [
    path("keys/", views.access_keys, name="keys"),
    path("keys/<int:token_id>/revoke/", views.access_key_revoke, name="key_revoke"),
]
