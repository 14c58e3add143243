"""The terminal report, drawn with Rich. Reads the Report; computes nothing new.

Verdict first, then the findings grouped by severity (module names, evidence, the fix
as highlighted code), the module tree with channel retention, the profile, notes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.rule import Rule
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from ..profile.result import ProfileResult
from .model import Finding, Report, Severity
from .rich_compare import comparison_table
from .rich_profile import profile_renderables
from .rich_tree import module_tree

__all__ = ["RenderOptions", "render", "render_report", "render_many"]

_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
_TITLE = {Severity.ERROR: "errors", Severity.WARNING: "warnings", Severity.INFO: "info"}
_MAX_EVIDENCE_ITEMS = 8
_MAX_MODULES = 12


@dataclass(frozen=True)
class RenderOptions:
    all_layers: bool = False
    show_layers: bool = True


def render(report: Report, console: Console, options: RenderOptions = RenderOptions()) -> None:
    console.print(render_report(report, options))


def render_many(reports: list[Report], console: Console, options: RenderOptions = RenderOptions()) -> None:
    """A sweep: one comparison table, then each checkpoint's verdict and findings."""
    console.print(comparison_table(reports))
    for report in reports:
        console.print(Rule(report.source.path, style="dim"))
        console.print(render_report(report, RenderOptions(all_layers=options.all_layers, show_layers=False)))


def render_report(report: Report, options: RenderOptions = RenderOptions()) -> RenderableType:
    parts: list[RenderableType] = [_header(report), _verdict(report)]
    if report.failures:
        parts.append(_failures(report.failures))
    for severity in (Severity.ERROR, Severity.WARNING, Severity.INFO):
        group = [f for f in report.findings if f.severity is severity]
        if group:
            parts.append(Text(f"{_TITLE[severity]} ({len(group)})", style=_STYLE[severity]))
            parts += [_finding(f) for f in group]
    if report.layers and options.show_layers:
        named = {m for f in report.findings for m in f.modules}
        parts.append(module_tree(report.layers, options.all_layers, named))
    if report.profile:
        parts += profile_renderables(ProfileResult.from_dict(report.profile))
    if report.compaction:
        parts.append(_compaction(report.compaction))
    parts += [Text(f"note: {note}", style="dim") for note in report.notes]
    parts += [Text(f"not analysed: {line}", style="dim italic") for line in report.not_analysed]
    return Group(*parts)


def _header(report: Report) -> RenderableType:
    source, summary = report.source, report.summary
    counted = summary.params - summary.params_without_data
    zero = 1 - summary.nonzero_params / counted if counted else 0.0
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("file", f"{source.path} ({_bytes(source.file_size)})")
    read = f"{source.format}, {source.container}, read by {source.loader}"
    if source.weights_key:
        read += f", weights from '{source.weights_key}'"
    grid.add_row("read as", read)
    params = f"{summary.params:,} ({summary.nonzero_params:,} non-zero, {zero:.1%} zero) in {summary.layers} layers"
    if summary.params_without_data:
        params += f"; {summary.params_without_data:,} without data (meta tensors) not counted"
    grid.add_row("params", params)
    if summary.macs is not None:
        shape = "×".join(map(str, summary.macs_input_shape or []))
        grid.add_row("MACs", f"{summary.macs:,} per sample in conv and linear layers, on {shape}")
    if source.placeholders:
        grid.add_row("placeholders", ", ".join(source.placeholders))
    return Panel(grid, title="analyze", title_align="left", box=box.ROUNDED)


def _verdict(report: Report) -> RenderableType:
    worst = report.worst_severity()
    style = "bold green" if worst is None else _STYLE[worst]
    text = report.verdict or "No problems found."
    if worst is None:
        text = "✔ " + text
    return Panel(Text(text), title="verdict", title_align="left", border_style=style)


def _failures(failures: list[dict[str, str]]) -> RenderableType:
    lines = [Text(f"{f['pass']}: {f['exception']}: {f['message']}") for f in failures]
    lines.append(Text("These checks did not run to the end, so the analysis is incomplete; --debug shows the tracebacks.", style="dim"))
    return Panel(Group(*lines), title="[bold red]analyzer failure[/]", title_align="left", border_style="bold red")


def _finding(finding: Finding) -> RenderableType:
    body: list[RenderableType] = [Text(finding.message)]
    if finding.modules:
        shown = ", ".join(finding.modules[:_MAX_MODULES])
        if len(finding.modules) > _MAX_MODULES:
            shown += f" … (+{len(finding.modules) - _MAX_MODULES})"
        body.append(Text.assemble(("modules: ", "bold"), shown))
    evidence = _evidence_line(finding.evidence, finding.message)
    if evidence:
        body.append(Text.assemble(("evidence: ", "bold"), evidence))
    if finding.fix:
        body.append(Text.assemble(("fix: ", "bold green"), finding.fix))
    if finding.fix_code:
        body.append(Syntax(finding.fix_code, "python", theme="ansi_dark", background_color="default", word_wrap=True))
    style = _STYLE[finding.severity]
    return Panel(Group(*body), title=f"[{style}]{finding.severity.value}[/] {finding.kind}", title_align="left", border_style=style)


def _evidence_line(evidence: dict[str, Any], message: str) -> str:
    """Scalars and short lists in full; tables of per-layer numbers summarised (all in --json);
    nothing the message already says."""
    parts = []
    shown: list[Any] = []
    for key, value in evidence.items():
        if value in (None, [], {}, "") or value in shown:
            continue
        if isinstance(value, list) and all(isinstance(v, str) and v in message for v in value):
            continue
        shown.append(value)
        if isinstance(value, dict) and any(isinstance(v, (dict, list)) for v in value.values()):
            parts.append(f"{key}: {len(value)} entries (in --json)")
        else:
            parts.append(f"{key}={_short(value)}")
    return "; ".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        items = list(value.items())
        text = ", ".join(f"{k}: {_short(v)}" for k, v in items[:_MAX_EVIDENCE_ITEMS])
        more = f", … +{len(items) - _MAX_EVIDENCE_ITEMS}" if len(items) > _MAX_EVIDENCE_ITEMS else ""
        return "{" + text + more + "}"
    if isinstance(value, list):
        text = ", ".join(_short(v) for v in value[:_MAX_EVIDENCE_ITEMS])
        more = f", … +{len(value) - _MAX_EVIDENCE_ITEMS}" if len(value) > _MAX_EVIDENCE_ITEMS else ""
        return "[" + text + more + "]"
    return str(value)


def _compaction(data: dict[str, Any]) -> RenderableType:
    body: list[RenderableType] = []
    if data.get("refused"):
        body.append(Text(f"Not compacted: {data['refused']}.", style="yellow"))
    else:
        removed = sum(g["removed"] for g in data.get("groups", []))
        body.append(
            Text(
                f"Wrote {data['output']} ({data['saved_as']}): {removed} channels removed, "
                f"{data['masks_folded']} masks folded; params {data['params_before']:,} → {data['params_after']:,}, "
                f"MACs {data['macs_before']:,} → {data['macs_after']:,}; outputs equal within {data['tolerance']:.2g} "
                f"(max difference {data['max_abs_diff']:.2g})."
            )
        )
    for group in data.get("groups", []):
        if group["kept_for_alignment"] or group["left"]:
            line = f"{group['root']}: removed {group['removed']} of {group['channels']}"
            if group["kept_for_alignment"]:
                line += f", kept {group['kept_for_alignment']} zero channels for --round-to {data['round_to']}"
            if group["left"]:
                line += f", left {group['left']} ({group['left_because']})"
            body.append(Text(line, style="dim"))
    if data.get("load_code"):
        body.append(Syntax(data["load_code"], "python", theme="ansi_dark", background_color="default", word_wrap=True))
    return Panel(Group(*body), title="compact", title_align="left", border_style="green" if not data.get("refused") else "yellow")


def _bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
