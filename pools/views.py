"""The operators' pool pages: staff only, beside the Django admin.

Anyone else gets 404 on every URL here, as for any object they may not see.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from console.http import ConsoleRequest
from pools import actions, selectors
from pools.models import OVERCOMMIT_MAX, OVERCOMMIT_MIN, Flavor, ResourcePool
from pools.quotas import quota_page_for
from pools.validation import (
    GPU_MAX,
    node_change_parse,
    node_data_from_post,
    node_request_parse,
    pool_data_from_post,
    pool_data_of,
    pool_request_parse,
)
from services.validation import RequestInvalid

View = Callable[..., HttpResponse]


def staff_required(view: View) -> View:
    """Signed-in staff only; a signed-in user who is not staff gets 404, so the
    pages do not even tell that they exist."""

    @wraps(view)
    def checked(request: ConsoleRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_staff:
            raise Http404("No such page.")
        return view(request, *args, **kwargs)

    return login_required(checked)


@login_required
@require_GET
def quotas(request: ConsoleRequest) -> HttpResponse:
    """Every user's own page: their limits, what they use, and what uses it."""
    return render(request, "pools/quotas.html", quota_page_for(request.user))


@staff_required
@require_GET
def pool_list(request: ConsoleRequest) -> HttpResponse:
    return render(request, "pools/pool_list.html", {"summaries": selectors.pool_summary_list()})


@staff_required
@require_GET
def pool_detail(request: ConsoleRequest, pool_id: int) -> HttpResponse:
    pool = selectors.pool_get(pool_id)
    context = {"detail": selectors.pool_detail(pool), "overhead": selectors.instance_overhead()}
    return render(request, "pools/pool_detail.html", context)


def _pool_form(
    request: ConsoleRequest, pool: ResourcePool | None, data: dict[str, Any], errors: dict[str, list[str]]
) -> HttpResponse:
    context = {
        "pool": pool,
        "data": data,
        "errors": errors,
        "flavors": Flavor.objects.all(),
        "usernames": selectors.pool_user_choices(),
        "overcommit_min": OVERCOMMIT_MIN,
        "overcommit_max": OVERCOMMIT_MAX,
    }
    return render(request, "pools/pool_form.html", context, status=400 if errors else 200)


@staff_required
@require_http_methods(["GET", "POST"])
def pool_create(request: ConsoleRequest) -> HttpResponse:
    if request.method != "POST":
        return _pool_form(request, None, pool_data_of(None), {})
    data = pool_data_from_post(request.POST)
    try:
        pool = actions.pool_create(request=pool_request_parse(data))
    except RequestInvalid as exc:
        return _pool_form(request, None, data, exc.errors)
    if pool.is_swarm:
        count = pool.nodes.count()
        messages.success(request, f"Created Swarm pool {pool.name} with its {count} node{'s' if count != 1 else ''}.")
    else:
        messages.success(request, f"Created pool {pool.name}. Add its nodes (Docker engines) next.")
    return redirect("pools:detail", pool_id=pool.id)


@staff_required
@require_http_methods(["GET", "POST"])
def pool_edit(request: ConsoleRequest, pool_id: int) -> HttpResponse:
    pool = selectors.pool_get(pool_id)
    if request.method != "POST":
        return _pool_form(request, pool, pool_data_of(pool), {})
    data = pool_data_from_post(request.POST)
    try:
        pool = actions.pool_update(pool=pool, request=pool_request_parse(data, pool=pool))
    except RequestInvalid as exc:
        return _pool_form(request, pool, data, exc.errors)
    messages.success(request, f"Saved pool {pool.name}.")
    return redirect("pools:detail", pool_id=pool.id)


@staff_required
@require_POST
def pool_delete(request: ConsoleRequest, pool_id: int) -> HttpResponse:
    pool = selectors.pool_get(pool_id)
    try:
        actions.pool_delete(pool=pool)
    except actions.ActionRefused as exc:
        messages.error(request, str(exc))
        return redirect("pools:detail", pool_id=pool.id)
    messages.success(request, f"Deleted pool {pool.name} and its nodes.")
    return redirect("pools:list")


@staff_required
@require_http_methods(["GET", "POST"])
def node_add(request: ConsoleRequest, pool_id: int) -> HttpResponse:
    pool = selectors.pool_get(pool_id)
    if pool.is_swarm:
        messages.error(request, f"Pool {pool.name} is a Swarm pool: its nodes are the swarm's, read from its manager.")
        return redirect("pools:detail", pool_id=pool.id)
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        data = node_data_from_post(request.POST)
        try:
            node = actions.node_add(pool=pool, request=node_request_parse(data))
        except RequestInvalid as exc:
            errors = exc.errors
        else:
            messages.success(
                request,
                f"Added node {node.name}: its engine has {node.cpu_count} vCPUs and "
                f"{selectors.memory_text(node.memory_mib)} of memory.",
            )
            return redirect("pools:detail", pool_id=pool.id)
    else:
        data = {"name": "", "docker_host": "", "gpu_count": "0"}
    context = {"pool": pool, "data": data, "errors": errors, "gpu_max": GPU_MAX}
    return render(request, "pools/node_add.html", context, status=400 if errors else 200)


@staff_required
@require_http_methods(["GET", "POST"])
def node_edit(request: ConsoleRequest, node_id: int) -> HttpResponse:
    node = selectors.node_get(node_id)
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        data = node_data_from_post(request.POST)
        try:
            node = actions.node_update(node=node, change=node_change_parse(data))
        except RequestInvalid as exc:
            errors = exc.errors
        else:
            messages.success(request, f"Saved node {node.name}.")
            return redirect("pools:detail", pool_id=node.pool_id)
    else:
        data = {"is_enabled": node.is_enabled, "gpu_count": str(node.gpu_count)}
    context = {
        "node": node,
        "capacity": selectors.node_capacity_list([node])[0],
        "data": data,
        "errors": errors,
        "gpu_max": GPU_MAX,
    }
    return render(request, "pools/node_edit.html", context, status=400 if errors else 200)


@staff_required
@require_POST
def node_remove(request: ConsoleRequest, node_id: int) -> HttpResponse:
    node = selectors.node_get(node_id)
    try:
        actions.node_remove(node=node)
    except actions.ActionRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Removed node {node.name}.")
    return redirect("pools:detail", pool_id=node.pool_id)
