"""The Usage page's rows as CSV: the same rows as the table, every one of them."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator

from metering.selectors import UsageRow

CSV_HEADER = [
    "day",
    "user_id",
    "user",
    "kind",
    "service_id",
    "service",
    "pool_id",
    "pool",
    "specification",
    "cpus",
    "memory_mib",
    "gpus",
    "instances",
    "instance_seconds",
    "vcpu_seconds",
    "nodes",
    "node_seconds",
]

# A spreadsheet would run a cell that starts with one of these as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _text(value: str) -> str:
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def usage_csv_record(row: UsageRow) -> list[str]:
    """One row of the table as CSV cells, in CSV_HEADER's order; a service's
    row leaves the node columns empty, a dedicated pool's the instance ones."""
    common = [row.day.isoformat(), str(row.owner_id), _text(row.owner_name), row.kind.value]
    if row.is_service:
        return [
            *common,
            row.subject_id,
            _text(row.name),
            row.pool_id,
            _text(row.pool_name),
            _text(row.flavor_code),
            str(row.cpus),
            str(row.memory_mib),
            str(row.gpus),
            str(row.units),
            _seconds(row.seconds),
            _seconds(row.vcpu_seconds),
            "",
            "",
        ]
    no_instance_cells = [""] * 7  # specification to vcpu_seconds
    return [
        *common,
        "",
        "",
        row.pool_id,
        _text(row.pool_name),
        *no_instance_cells,
        str(row.units),
        _seconds(row.seconds),
    ]


class _Line:
    """csv.writer writes into this and gets the line back, so lines can be streamed."""

    def write(self, value: str) -> str:
        return value


def usage_csv_lines(rows: Iterable[UsageRow]) -> Iterator[str]:
    writer = csv.writer(_Line())
    yield writer.writerow(CSV_HEADER)
    for row in rows:
        yield writer.writerow(usage_csv_record(row))
