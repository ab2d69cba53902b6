"""The status page's charts: server-rendered SVG, with presentation attributes only, as CSP forbids style=""."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from service.domain.ops_status import HourlyActivity


@dataclass
class Series:
    key: str
    label: str
    color: str
    values: list[int]
    points: str = ""
    bars: list[tuple[float, float, float, int, str]] = field(default_factory=list)  # x, y, height, value, hour
    dots: list[tuple[float, float, int, str]] = field(default_factory=list)  # x, y, value, hour


@dataclass
class Chart:
    width: int
    height: int
    left: int
    top: int
    plot_height: int
    plot_width: int
    y_max: int
    y_ticks: list[tuple[float, int]]
    x_labels: list[tuple[float, str]]
    lines: list[Series]
    bars: list[Series]
    bar_width: float


def nice_step(value: float) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50... at least `value`."""
    bound = 1
    while True:
        for step in (1, 2, 5):
            if step * bound >= value:
                return step * bound
        bound *= 10


def _chart_frame(hours: list[datetime], peak: int, width: int = 760, height: int = 240) -> Chart:
    left, top, bottom, right = 48, 12, 28, 12
    plot_width, plot_height = width - left - right, height - top - bottom
    # Gridlines at round numbers, about four of them, the top one at or above the peak.
    step = nice_step(max(peak, 1) / 4)
    y_max = step * max(1, -(-peak // step))
    y_ticks = [(round(top + plot_height - plot_height * v / y_max, 1), v) for v in range(0, y_max + 1, step)]
    slot = plot_width / max(len(hours), 1)
    x_labels = [(left + (i + 0.5) * slot, h.strftime("%H:00")) for i, h in enumerate(hours) if i % 3 == 0]
    return Chart(width=width, height=height, left=left, top=top, plot_height=plot_height, plot_width=plot_width,
                 y_max=y_max, y_ticks=y_ticks, x_labels=x_labels, lines=[], bars=[], bar_width=slot * 0.6)


def _y(chart: Chart, value: int) -> float:
    return round(chart.top + chart.plot_height - chart.plot_height * value / chart.y_max, 1)


def _x(chart: Chart, index: int, count: int) -> float:
    return round(chart.left + (index + 0.5) * chart.plot_width / max(count, 1), 1)


def activity_chart(activity: HourlyActivity) -> Chart:
    """Sends, deliveries and replies as lines; failures as red bars underneath them."""
    hours = activity.hours
    peak = max([*activity.sends, *activity.deliveries, *activity.failures, *activity.replies, 0])
    chart = _chart_frame(hours, peak)
    labels = [h.strftime("%H:00") for h in hours]
    failures = Series("failures", "Failures", "#c0392b", activity.failures)
    for i, value in enumerate(activity.failures):
        y = _y(chart, value)
        failures.bars.append((round(_x(chart, i, len(hours)) - chart.bar_width / 2, 1), y,
                              round(chart.top + chart.plot_height - y, 1), value, labels[i]))
    chart.bars.append(failures)
    for key, label, color, values in (("sends", "Sends", "#2f6690", activity.sends),
                                      ("deliveries", "Deliveries", "#2e8b57", activity.deliveries),
                                      ("replies", "Replies", "#8e5ea2", activity.replies)):
        series = Series(key, label, color, values)
        coords = [(_x(chart, i, len(hours)), _y(chart, v)) for i, v in enumerate(values)]
        series.points = " ".join(f"{x},{y}" for x, y in coords)
        series.dots = [(x, y, values[i], labels[i]) for i, (x, y) in enumerate(coords)]
        chart.lines.append(series)
    return chart


def due_chart(hours: list[datetime], counts: list[int]) -> Chart:
    chart = _chart_frame(hours, max([*counts, 0]), height=180)
    due = Series("due", "Due", "#2f6690", counts)
    for i, value in enumerate(counts):
        y = _y(chart, value)
        due.bars.append((round(_x(chart, i, len(hours)) - chart.bar_width / 2, 1), y,
                         round(chart.top + chart.plot_height - y, 1), value, hours[i].strftime("%H:00")))
    chart.bars.append(due)
    return chart
