"""Geometry of the Usage page's per-day chart, drawn by the template as inline SVG.

The same canvas, margins, ticks and rounding of the y axis as the Monitoring
tab's chart (services.charts); the bars here are days, each a stack of the
public pools' instance-hours under the dedicated pools' node-hours.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from metering.selectors import DayTotal
from services.charts import BOTTOM, HEIGHT, LEFT, RIGHT, TOP, WIDTH, Tick, nice_ceiling

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


@dataclass(frozen=True)
class UsageChart:
    width: int
    height: int
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int
    bars: list[DayBar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    has_usage: bool

    @property
    def center_x(self) -> float:
        return (self.plot_left + self.plot_right) / 2

    @property
    def center_y(self) -> float:
        return (self.plot_top + self.plot_bottom) / 2


def hours_label(hours: float) -> str:
    """An axis label: "0 h", "0.5 h", "20 h", "1,000 h"."""
    return f"{hours:,.1f}".removesuffix(".0") + " h"


def usage_bar_chart(days: list[DayTotal]) -> UsageChart:
    """One bar per day, oldest on the left: instance-hours from the baseline,
    node-hours stacked on them. The y axis ends at a round number of hours."""
    plot_right = WIDTH - RIGHT
    plot_bottom = HEIGHT - BOTTOM
    plot_width = plot_right - LEFT
    plot_height = plot_bottom - TOP
    highest = max((day.hours for day in days), default=0.0)
    # nice_ceiling rounds whole numbers; below an hour the axis ends at 1 h.
    top_value = float(nice_ceiling(ceil(highest)))
    slot = plot_width / max(len(days), 1)
    bar_width = max(slot * 0.7, 1.0)

    def y_of(hours: float) -> float:
        return plot_bottom - plot_height * hours / top_value

    bars = []
    for index, day in enumerate(days):
        if day.hours <= 0:
            continue
        instance_y = y_of(day.instance_hours)
        node_y = y_of(day.hours)
        bars.append(
            DayBar(
                total=day,
                x=round(LEFT + index * slot + (slot - bar_width) / 2, 2),
                width=round(bar_width, 2),
                instance_y=round(instance_y, 2),
                instance_height=round(plot_bottom - instance_y, 2),
                node_y=round(node_y, 2),
                node_height=round(instance_y - node_y, 2),
            )
        )
    y_ticks = [Tick(position=round(y_of(v), 2), label=hours_label(v)) for v in (0.0, top_value / 2, top_value)]
    step = max(1, ceil(len(days) / MAX_X_LABELS))
    last = len(days) - 1
    x_ticks = [
        Tick(position=round(LEFT + index * slot + slot / 2, 2), label=f"{day.day:%b} {day.day.day}")
        for index, day in enumerate(days)
        if (last - index) % step == 0
    ]
    return UsageChart(
        width=WIDTH,
        height=HEIGHT,
        plot_left=LEFT,
        plot_right=plot_right,
        plot_top=TOP,
        plot_bottom=plot_bottom,
        bars=bars,
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        has_usage=bool(bars),
    )
