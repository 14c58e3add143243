"""One table for many checkpoints (a pruning sweep): size, MACs, latency, findings."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.table import Table
from rich.text import Text

from ..profile.result import ProfileResult
from .model import Report, Severity

__all__ = ["comparison_table"]

_MARK = {Severity.ERROR: ("E", "bold red"), Severity.WARNING: ("W", "yellow"), Severity.INFO: ("i", "cyan")}


def comparison_table(reports: list[Report]) -> Table:
    names = _short_names([r.source.path for r in reports])
    table = Table(
        box=box.SIMPLE_HEAD, title="checkpoints", title_justify="left", title_style="bold",
        caption="E error, W warning, i info", caption_justify="left",
    )
    table.add_column("checkpoint", overflow="fold", min_width=min(24, max(map(len, names))))
    for column in ("params", "non-zero", "MACs", "latency ms"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("findings", no_wrap=True)
    for report, name in zip(reports, names):
        summary = report.summary
        table.add_row(
            name,
            f"{summary.params:,}",
            f"{summary.nonzero_params:,}",
            f"{summary.macs:,}" if summary.macs is not None else "-",
            _latency(report),
            _findings(report),
        )
    return table


def _findings(report: Report) -> Text:
    if not report.findings:
        return Text("none", style="green")
    lines = Text()
    seen: set[str] = set()
    for finding in report.findings:
        if finding.kind in seen:
            continue
        seen.add(finding.kind)
        mark, style = _MARK[finding.severity]
        if lines:
            lines.append("\n")
        lines.append(f"{mark} ", style=style)
        lines.append(finding.kind)
    return lines


def _short_names(paths: list[str]) -> list[str]:
    """File names, or whole paths where two files share a name."""
    names = [Path(p).name for p in paths]
    return [name if names.count(name) == 1 else path for name, path in zip(names, paths)]


def _latency(report: Report) -> str:
    if not report.profile:
        return "-"
    profile = ProfileResult.from_dict(report.profile)
    batch = profile.batches()[0]
    median = profile.median("pruned", batch)
    return f"{median:.3f} @ {batch}" if median is not None else "-"
