"""One table for many checkpoints (a pruning sweep): size, MACs, latency, findings.

The checkpoint names are the key column: at any width they are shown whole (folded onto
several lines if they must), with the numbers shortened or the rows stacked instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import RenderableType
from rich.text import Text

from .model import Report, Severity
from .rich_fit import Column, Fitted, TableSpec
from .sections import profile_from_dict

__all__ = ["comparison_table", "short_number", "common_affixes"]

_MARK = {Severity.ERROR: ("E", "bold red"), Severity.WARNING: ("W", "yellow"), Severity.INFO: ("i", "cyan")}
_CAPTION = "E error, W warning, i info"


def comparison_table(reports: list[Report]) -> RenderableType:
    names = _short_names([r.source.path for r in reports])
    prefix, suffix = common_affixes(names)
    short = [name[len(prefix) : len(name) - len(suffix)] for name in names]
    narrow_title = f"checkpoints {prefix}*{suffix}" if prefix or suffix else "checkpoints"
    wide = TableSpec(
        columns=[Column("checkpoint", key=True), *(Column(h, "right") for h in ("params", "non-zero", "MACs", "latency ms")), Column("findings")],
        rows=[],
        title="checkpoints",
        caption=_CAPTION,
    )
    narrow = TableSpec(
        columns=[Column("*" if prefix or suffix else "checkpoint", key=True), *(Column(h, "right") for h in ("params", "zero", "MACs", "ms")), Column("findings")],
        rows=[],
        title=narrow_title,
        caption=_CAPTION,
    )
    for report, name, key in zip(reports, names, short):
        s = report.summary
        counted = s.params - s.params_without_data
        zero = f"{1 - s.nonzero_params / counted:.0%}" if counted else "-"
        macs = s.macs
        wide.rows.append([name, f"{s.params:,}", f"{s.nonzero_params:,}", f"{macs:,}" if macs is not None else "-", _latency(report), _findings(report)])
        narrow.rows.append([key, short_number(s.params), zero, short_number(macs) if macs is not None else "-", _latency(report), _findings(report)])
    return Fitted(wide, narrow)


def short_number(value: int) -> str:
    """5,820,556 → 5.82M: three significant digits."""
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            scaled = value / scale
            return f"{scaled:.3g}{unit}" if scaled < 1000 else f"{scaled:.0f}{unit}"
    return str(value)


def common_affixes(names: list[str], at_least: int = 4) -> tuple[str, str]:
    """The prefix and suffix every name shares (cut at a _ - . boundary), when at least
    `at_least` long: a sweep's `resnet18_sweep_` and `_seed0.pth`. Each name keeps a part."""
    if len(names) < 2:
        return "", ""
    prefix = os.path.commonprefix(names)
    prefix = prefix[: max(prefix.rfind(c) for c in "_-.") + 1] if prefix else ""
    tails = [n[len(prefix) :] for n in names]
    suffix = os.path.commonprefix([t[::-1] for t in tails])[::-1]
    cut = min((i for i, ch in enumerate(suffix) if ch in "_-."), default=len(suffix))
    suffix = suffix[cut:]
    if any(not t[: len(t) - len(suffix)] for t in tails):
        suffix = ""
    return (prefix if len(prefix) >= at_least else ""), (suffix if len(suffix) >= at_least else "")


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
    profile = profile_from_dict(report.profile)
    batches = profile.batches()
    if not batches:
        return "-"
    median = profile.median("pruned", batches[0])
    return f"{median:.3f} @ {batches[0]}" if median is not None else "-"
