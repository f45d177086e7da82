from django import template

from services.contract import LATENCY_BUCKETS_MS

register = template.Library()


@register.filter
def latency(value: float | None) -> str:
    """A percentile from the histogram: the upper bound of its bucket."""
    if value is None:
        return "—"
    if value == float("inf"):
        return f"> {LATENCY_BUCKETS_MS[-1] / 1000:g} s"
    if value >= 1000:
        return f"≤ {value / 1000:g} s"
    return f"≤ {value:g} ms"


@register.filter
def percent(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1f} %" if value < 10 else f"{value:.0f} %"
