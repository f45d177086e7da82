"""Amounts on the pool pages, as operators read them."""

from datetime import datetime
from decimal import Decimal
from typing import Any

from django import template
from django.utils import timezone
from django.utils.timesince import timesince

from pools.selectors import NodeDetail, Usage, cpus_text
from pools.validation import ratio_text

register = template.Library()


@register.filter
def vcpus(value: Decimal | int) -> str:
    """16, 2.5, 0.15: vCPUs with at most two decimals."""
    return cpus_text(Decimal(value))


@register.filter
def mib(value: int) -> str:
    """Memory in GiB with one decimal from 1 GiB on ("7.8 GiB", "16 GiB"), else in MiB."""
    if abs(value) < 1024:
        return f"{value} MiB"
    return f"{value / 1024:.1f}".removesuffix(".0") + " GiB"


@register.filter
def ratio(value: Decimal) -> str:
    """An overcommit ratio: 8×, 1.25×."""
    return ratio_text(value).removesuffix(".0") + "×"


@register.inclusion_tag("pools/_meter.html")
def usage_meter(usage: Usage, resource: str) -> dict[str, Any]:
    """A used/total bar of one resource ("cpu", "memory" or "gpu") of a node or pool."""
    if resource == "cpu":
        text = f"{vcpus(usage.used.cpus)} / {vcpus(usage.total.cpus)} vCPU"
        return {"label": "vCPU", "percent": usage.cpu_percent, "is_over": usage.is_cpu_over, "text": text}
    if resource == "memory":
        text = f"{mib(usage.used.memory_mib)} / {mib(usage.total.memory_mib)}"
        return {"label": "Memory", "percent": usage.memory_percent, "is_over": usage.is_memory_over, "text": text}
    if not usage.total.gpus and not usage.used.gpus:
        return {"label": "GPUs", "is_empty": True, "text": "none declared"}
    text = f"{usage.used.gpus} / {usage.total.gpus} GPU"
    return {"label": "GPUs", "percent": usage.gpu_percent, "is_over": usage.is_gpu_over, "text": text}


@register.inclusion_tag("pools/_segments.html")
def node_segments(row: NodeDetail, resource: str) -> dict[str, Any]:
    """A node's bar of one resource ("cpu" or "memory"), one segment per placed instance."""
    return {**usage_meter(row.capacity, resource), "row": row, "resource": resource}


@register.filter
def ago(moment: datetime | None) -> str:
    """ "just now", "3 minutes ago": when a node's engine was last read."""
    if moment is None:
        return "never"
    if (timezone.now() - moment).total_seconds() < 60:
        return "just now"
    return f"{timesince(moment, depth=1)} ago"
