from django.contrib import admin

from pools.models import Flavor, Node, ResourcePool


class NodeInline(admin.TabularInline):
    model = Node
    extra = 0
    readonly_fields = ["cpu_count", "memory_mib", "is_reachable", "last_error", "checked_at"]


@admin.register(ResourcePool)
class ResourcePoolAdmin(admin.ModelAdmin):
    list_display = ["name", "is_public", "owner", "created_at"]
    inlines = [NodeInline]


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "pool", "docker_host", "is_enabled", "is_reachable", "cpu_count", "memory_mib", "gpu_count"]
    readonly_fields = ["cpu_count", "memory_mib", "is_reachable", "last_error", "checked_at"]


@admin.register(Flavor)
class FlavorAdmin(admin.ModelAdmin):
    list_display = ["code", "display_name", "cpus", "memory_mib", "gpus", "is_free", "sort_order"]
