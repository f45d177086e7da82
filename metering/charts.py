"""Geometry of the Usage page's per-day chart, drawn by the template as inline SVG.

The Monitoring tab's canvas, slots and rounding of the y axis
(services.charts.ChartFrame, BarSlots); the bars here are days, each a stack of
the public pools' instance-hours under the dedicated pools' node-hours.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from metering.selectors import DayTotal
from services.charts import BarSlots, ChartFrame, Tick, nice_ceiling

# At most about this many day labels under the bars (always the last day's).
MAX_X_LABELS = 10


@dataclass(frozen=True)
class DayBar:
    total: DayTotal
    x: float
    width: float
    instance_y: float
    instance_height: float
    node_y: float
    node_height: float


@dataclass(frozen=True, kw_only=True)
class UsageChart(ChartFrame):
    bars: list[DayBar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    has_usage: bool


def hours_label(hours: float) -> str:
    """An axis label: "0 h", "0.5 h", "20 h", "1,000 h"."""
    return f"{hours:,.1f}".removesuffix(".0") + " h"


def usage_bar_chart(days: list[DayTotal]) -> UsageChart:
    """One bar per day, oldest on the left: instance-hours from the baseline,
    node-hours stacked on them. The y axis ends at a round number of hours."""
    frame = ChartFrame()
    highest = max((day.hours for day in days), default=0.0)
    # nice_ceiling rounds whole numbers; below an hour the axis ends at 1 h.
    top_value = float(nice_ceiling(ceil(highest)))
    slots = BarSlots(len(days), top_value, frame)
    bars = []
    for index, day in enumerate(days):
        if day.hours <= 0:
            continue
        instance_y = slots.y_of(day.instance_hours)
        node_y = slots.y_of(day.hours)
        bars.append(
            DayBar(
                total=day,
                x=slots.bar_x(index),
                width=slots.bar_width,
                instance_y=round(instance_y, 2),
                instance_height=round(frame.plot_bottom - instance_y, 2),
                node_y=round(node_y, 2),
                node_height=round(instance_y - node_y, 2),
            )
        )
    y_ticks = [Tick(position=round(slots.y_of(v), 2), label=hours_label(v)) for v in (0.0, top_value / 2, top_value)]
    step = max(1, ceil(len(days) / MAX_X_LABELS))
    last = len(days) - 1
    x_ticks = [
        Tick(position=slots.middle_x(index), label=f"{day.day:%b} {day.day.day}")
        for index, day in enumerate(days)
        if (last - index) % step == 0
    ]
    return UsageChart(bars=bars, y_ticks=y_ticks, x_ticks=x_ticks, has_usage=bool(bars))
