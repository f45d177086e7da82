from django.contrib import admin

from services.models import AIApplication, AIApplicationVersion, Instance, Service, ServiceEvent, ServiceVersionConfig


class AIApplicationVersionInline(admin.TabularInline):
    model = AIApplicationVersion
    extra = 0
    readonly_fields = ["status", "status_reason", "created_at"]


@admin.register(AIApplication)
class AIApplicationAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "created_at"]
    search_fields = ["name", "owner__username"]
    inlines = [AIApplicationVersionInline]


@admin.register(AIApplicationVersion)
class AIApplicationVersionAdmin(admin.ModelAdmin):
    list_display = ["application", "version", "image", "status", "created_at"]
    list_filter = ["status"]
    search_fields = ["application__name", "image"]


class ServiceVersionConfigInline(admin.TabularInline):
    model = ServiceVersionConfig
    extra = 0


class InstanceInline(admin.TabularInline):
    model = Instance
    extra = 0
    readonly_fields = ["container_name", "node", "host_port", "state", "is_healthy", "restart_count"]


@admin.register(Service)
class ServiceAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "status", "pool", "created_at"]
    list_filter = ["status", "pool"]
    search_fields = ["name", "owner__username", "id"]
    readonly_fields = ["id", "status", "status_reason", "status_changed_at", "lease_token", "lease_expires_at"]
    inlines = [ServiceVersionConfigInline, InstanceInline]


@admin.register(ServiceEvent)
class ServiceEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "service", "level", "message"]
    list_filter = ["level"]
