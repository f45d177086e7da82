from django.contrib import admin

from access.models import AccessToken, AppCode


@admin.register(AccessToken)
class AccessTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "kind", "prefix", "created_at", "expires_at", "revoked_at"]
    list_filter = ["kind"]
    readonly_fields = ["token_hash", "prefix"]


@admin.register(AppCode)
class AppCodeAdmin(admin.ModelAdmin):
    list_display = ["prefix", "service", "created_at", "revoked_at"]
    readonly_fields = ["code_hash", "prefix"]
