from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from access.views import ConsoleLogoutView
from console import metrics as console_metrics
from pools import views as pool_views

urlpatterns = [
    path("", include("services.urls")),
    path("api/v1/", include("api.urls")),
    path("access/", include("access.urls")),
    path("usage/", include("metering.urls")),
    path("pools/", include("pools.urls")),
    path("quotas/", pool_views.quotas, name="quotas"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", ConsoleLogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("metrics", console_metrics.metrics, name="metrics"),
]

handler403 = "console.views.forbidden"
handler404 = "console.views.not_found"
handler500 = "console.views.server_error"
