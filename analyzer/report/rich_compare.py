"""One table for many checkpoints (a pruning sweep): size, MACs, latency, findings."""

from __future__ import annotations

from rich import box
from rich.table import Table

from ..profile.result import ProfileResult
from .model import Report

__all__ = ["comparison_table"]


def comparison_table(reports: list[Report]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title="checkpoints", title_justify="left", title_style="bold")
    for column in ("checkpoint", "params", "non-zero", "MACs", "latency ms", "errors", "warnings", "findings"):
        table.add_column(column, justify="left" if column in ("checkpoint", "findings") else "right")
    for report in reports:
        summary = report.summary
        table.add_row(
            report.source.path,
            f"{summary.params:,}",
            f"{summary.nonzero_params:,}",
            f"{summary.macs:,}" if summary.macs is not None else "-",
            _latency(report),
            str(summary.findings.get("error", 0)),
            str(summary.findings.get("warning", 0)),
            ", ".join(dict.fromkeys(f.kind for f in report.findings)) or "none",
        )
    return table


def _latency(report: Report) -> str:
    if not report.profile:
        return "-"
    profile = ProfileResult.from_dict(report.profile)
    batch = profile.batches()[0]
    median = profile.median("pruned", batch)
    return f"{median:.3f} @ {batch}" if median is not None else "-"
