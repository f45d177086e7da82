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
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class ChartFrame:
    """The canvas of a bar chart and its plot area inside the margins: the same
    for the Monitoring tab's chart and the Usage page's (metering.charts)."""

    width: int = WIDTH
    height: int = HEIGHT
    plot_left: int = LEFT
    plot_right: int = WIDTH - RIGHT
    plot_top: int = TOP
    plot_bottom: int = HEIGHT - BOTTOM

    @property
    def center_x(self) -> float:
        return (self.plot_left + self.plot_right) / 2

    @property
    def center_y(self) -> float:
        return (self.plot_top + self.plot_bottom) / 2


@dataclass(frozen=True)
class BarSlots:
    """`count` equal slots across the plot, each with a bar 70 % of its width,
    on a y axis from 0 to `top_value`."""

    count: int
    top_value: float
    frame: ChartFrame = ChartFrame()

    @property
    def slot(self) -> float:
        return (self.frame.plot_right - self.frame.plot_left) / max(self.count, 1)

    @property
    def bar_width(self) -> float:
        return round(max(self.slot * 0.7, 1.0), 2)

    def bar_x(self, index: int) -> float:
        return round(self.frame.plot_left + index * self.slot + (self.slot - max(self.slot * 0.7, 1.0)) / 2, 2)

    def middle_x(self, index: int) -> float:
        return round(self.frame.plot_left + index * self.slot + self.slot / 2, 2)

    def y_of(self, value: float) -> float:
        """Where `value` sits (unrounded: heights are differences of these)."""
        frame = self.frame
        return frame.plot_bottom - (frame.plot_bottom - frame.plot_top) * value / self.top_value


@dataclass(frozen=True)
class Bar:
    point: MinuteCalls
    x: float
    width: float
    calls_y: float
    calls_height: float
    failed_y: float
    failed_height: float


@dataclass(frozen=True, kw_only=True)
class BarChart(ChartFrame):
    bars: list[Bar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    has_calls: bool


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
    frame = ChartFrame()
    top_value = nice_ceiling(max((point.calls for point in series), default=0))
    slots = BarSlots(len(series), top_value, frame)
    bars = []
    for index, point in enumerate(series):
        if point.calls == 0 and point.failed == 0:
            continue
        calls_y = slots.y_of(point.calls)
        failed_y = slots.y_of(point.failed)
        bars.append(
            Bar(
                point=point,
                x=slots.bar_x(index),
                width=slots.bar_width,
                calls_y=round(calls_y, 2),
                calls_height=round(frame.plot_bottom - calls_y, 2),
                failed_y=round(failed_y, 2),
                failed_height=round(frame.plot_bottom - failed_y, 2),
            )
        )
    y_ticks = [Tick(position=round(slots.y_of(v), 2), label=str(v)) for v in sorted({0, top_value // 2, top_value})]
    last = len(series) - 1
    x_ticks = [
        Tick(position=slots.middle_x(index), label=time_label(point.start))
        for index, point in enumerate(series)
        if (last - index) % LABEL_EVERY_MINUTES == 0
    ]
    return BarChart(bars=bars, y_ticks=y_ticks, x_ticks=x_ticks, has_calls=bool(bars))
