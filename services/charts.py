"""Geometry of the Monitoring tab's bar chart, drawn by the template as inline SVG.

Pure arithmetic on the series the selector returns; no query, no markup.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from math import floor, log10

from services.selectors import MinuteCalls

WIDTH = 1080
HEIGHT = 220
LEFT = 44
RIGHT = 24
TOP = 10
BOTTOM = 24
# One x label every this many minutes (and always the current minute).
LABEL_EVERY_MINUTES = 15


@dataclass(frozen=True)
class Bar:
    point: MinuteCalls
    x: float
    width: float
    calls_y: float
    calls_height: float
    failed_y: float
    failed_height: float


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class BarChart:
    width: int
    height: int
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int
    bars: list[Bar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    has_calls: bool

    @property
    def center_x(self) -> float:
        return (self.plot_left + self.plot_right) / 2

    @property
    def center_y(self) -> float:
        return (self.plot_top + self.plot_bottom) / 2


def nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, … that is at least `value` (at least 1)."""
    if value <= 1:
        return 1
    magnitude = 10 ** floor(log10(value))
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def calls_bar_chart(series: list[MinuteCalls], time_label: Callable[[datetime], str]) -> BarChart:
    """Bars for the minutes that had calls; the failed part of a minute is a
    second bar drawn over the first from the baseline. `time_label` turns a
    minute's start into the text of an x tick (the caller knows the time zone)."""
    plot_right = WIDTH - RIGHT
    plot_bottom = HEIGHT - BOTTOM
    plot_width = plot_right - LEFT
    plot_height = plot_bottom - TOP
    top_value = nice_ceiling(max((point.calls for point in series), default=0))
    slot = plot_width / max(len(series), 1)
    bar_width = max(slot * 0.7, 1.0)

    def y_of(value: int) -> float:
        return plot_bottom - plot_height * value / top_value

    bars = []
    for index, point in enumerate(series):
        if point.calls == 0 and point.failed == 0:
            continue
        x = LEFT + index * slot + (slot - bar_width) / 2
        calls_y = y_of(point.calls)
        failed_y = y_of(point.failed)
        bars.append(
            Bar(
                point=point,
                x=round(x, 2),
                width=round(bar_width, 2),
                calls_y=round(calls_y, 2),
                calls_height=round(plot_bottom - calls_y, 2),
                failed_y=round(failed_y, 2),
                failed_height=round(plot_bottom - failed_y, 2),
            )
        )
    y_ticks = [Tick(position=round(y_of(v), 2), label=str(v)) for v in sorted({0, top_value // 2, top_value})]
    last = len(series) - 1
    x_ticks = [
        Tick(position=round(LEFT + index * slot + slot / 2, 2), label=time_label(point.start))
        for index, point in enumerate(series)
        if (last - index) % LABEL_EVERY_MINUTES == 0
    ]
    return BarChart(
        width=WIDTH,
        height=HEIGHT,
        plot_left=LEFT,
        plot_right=plot_right,
        plot_top=TOP,
        plot_bottom=plot_bottom,
        bars=bars,
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        has_calls=bool(bars),
    )
