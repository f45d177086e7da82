from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html
from django.utils.timesince import timesince

from pools.forms import FlavorForm, NodeInlineForm, ResourcePoolForm
from pools.models import Flavor, Node, ResourcePool, UserQuota
from pools.selectors import memory_text


def node_capacity(node: Node) -> str:
    if node.checked_at is None:
        return "not read yet"
    return f"{node.cpu_count} vCPUs · {memory_text(node.memory_mib)}"


def node_engine_state(node: Node) -> str:
    if node.checked_at is None:
        return "Not checked yet"
    age = timezone.now() - node.checked_at
    checked = "checked just now" if age.total_seconds() < 60 else f"checked {timesince(node.checked_at, depth=1)} ago"
    if node.is_reachable:
        return format_html('Answering<div class="engine-checked">{}</div>', checked)
    return format_html(
        'Not answering<div class="engine-checked">{}</div><div class="engine-error">{}</div>', checked, node.last_error
    )


class NodeInline(admin.TabularInline):
    model = Node
    form = NodeInlineForm
    extra = 0
    fields = ["name", "docker_host", "is_enabled", "gpu_count", "capacity", "engine_state"]
    readonly_fields = ["capacity", "engine_state"]

    @admin.display(description="Capacity")
    def capacity(self, node: Node) -> str:
        return node_capacity(node) if node.pk else ""

    @admin.display(description="Engine")
    def engine_state(self, node: Node) -> str:
        return node_engine_state(node) if node.pk else ""


@admin.register(ResourcePool)
class ResourcePoolAdmin(admin.ModelAdmin):
    form = ResourcePoolForm
    list_display = ["name", "access", "created_at"]
    list_select_related = ["owner"]
    inlines = [NodeInline]

    @admin.display(description="Offered to", ordering="-is_public")
    def access(self, pool: ResourcePool) -> str:
        return "every user (public)" if pool.is_public else f"{pool.owner} (dedicated)"


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "pool", "docker_host", "is_enabled", "gpu_count", "capacity", "engine_state"]
    list_select_related = ["pool"]
    readonly_fields = ["capacity", "engine_state"]

    @admin.display(description="Capacity")
    def capacity(self, node: Node) -> str:
        return node_capacity(node)

    @admin.display(description="Engine")
    def engine_state(self, node: Node) -> str:
        return node_engine_state(node)


@admin.register(Flavor)
class FlavorAdmin(admin.ModelAdmin):
    form = FlavorForm
    list_display = ["code", "display_name", "cpus", "memory_mib", "gpus", "is_free", "sort_order"]


@admin.register(UserQuota)
class UserQuotaAdmin(admin.ModelAdmin):
    """Staff raise (or lower) one user's limits; an empty field keeps the default."""

    list_display = ("user", "vcpus", "gpus", "max_services", "max_instances", "updated_at")
    search_fields = ("user__username",)
    autocomplete_fields = ("user",)
