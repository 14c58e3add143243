"""The terminal report, drawn with Rich. Reads the Report; computes nothing new.

Verdict first, then the findings grouped by severity (module names, evidence, the fix),
each fix's code right below its panel at the left margin so that it pastes as it is, the
module tree with channel retention, the profile, notes. Every table keeps its key column
at any width (rich_fit.py); code is cropped, never wrapped.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from .emit import EmitOptions
from .model import Finding, Report, ReportSet, Severity
from .rich_compare import comparison_table
from .rich_fit import CodeBlock
from .rich_profile import profile_renderables
from .rich_tree import module_tree
from .sections import profile_from_dict
from .verdict import first_sentence

__all__ = ["RenderOptions", "RichRenderer", "render", "render_report", "render_many", "more_findings", "summary_line"]

_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
_TITLE = {Severity.ERROR: "errors", Severity.WARNING: "warnings", Severity.INFO: "info"}
_MAX_EVIDENCE_ITEMS = 8
_MAX_MODULES = 12
#: A finding that names more modules than this speaks of the whole model: the tree does
#: not draw all of them for it.
_TREE_NAMED_MAX = 12
#: The brief layout (the demo) says each finding in about two lines.
_BRIEF_CHARS = 150


@dataclass(frozen=True)
class RenderOptions:
    all_layers: bool = False
    show_layers: bool = True
    #: One line per finding and the leading finding's fix only (the demo's layout).
    brief: bool = False


def render(report: Report, console: Console, options: RenderOptions = RenderOptions()) -> None:
    console.print(render_report(report, options))


def render_many(reports: list[Report], console: Console, options: RenderOptions = RenderOptions()) -> None:
    """A sweep: one comparison table, then each checkpoint's verdict and findings."""
    console.print(comparison_table(reports))
    for report in reports:
        console.print(Rule(Text(report.source.path), style="dim"))
        console.print(render_report(report, RenderOptions(all_layers=options.all_layers, show_layers=False, brief=options.brief)))


def render_report(report: Report, options: RenderOptions = RenderOptions()) -> RenderableType:
    if options.brief:
        return _brief(report)
    parts: list[RenderableType] = [_header(report), _verdict(report)]
    if report.failures:
        parts.append(_failures(report.failures))
    for severity in (Severity.ERROR, Severity.WARNING, Severity.INFO):
        group = [f for f in report.findings if f.severity is severity]
        if group:
            parts.append(Text(f"{_TITLE[severity]} ({len(group)})", style=_STYLE[severity]))
            for finding in group:
                parts.append(_finding(finding))
                if finding.fix_code:
                    parts.append(CodeBlock(finding.fix_code))
    if report.layers and options.show_layers:
        parts.append(module_tree(report.layers, options.all_layers, _tree_named(report.findings)))
    if report.profile:
        parts += profile_renderables(profile_from_dict(report.profile))
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
    if source.shards:
        read += f", {len(source.shards)} shards"
    if source.weights_key:
        read += f", weights from '{source.weights_key}'"
    grid.add_row("read as", read)
    params = f"{summary.params:,} ({summary.nonzero_params:,} non-zero, {zero:.1%} zero) in {summary.layers} layers"
    if summary.params_without_data:
        params += f"; {summary.params_without_data:,} without data (meta tensors) not counted"
    grid.add_row("params", params)
    if summary.macs is not None:
        shape = "×".join(map(str, summary.macs_input_shape or []))
        threads = f", run on {summary.run_threads} thread{'s' if summary.run_threads != 1 else ''}" if summary.run_threads else ""
        grid.add_row("MACs", f"{summary.macs:,} per sample on {shape}{threads}")
    if source.placeholders:
        grid.add_row("placeholders", ", ".join(source.placeholders))
    return Panel(grid, title="analyze", title_align="left", box=box.ROUNDED)


def more_findings(report: Report) -> str:
    """" (2 more findings below.)" after the verdict; the verdict itself is data and does not count."""
    others = len(report.findings) - 1
    return f" ({others} more finding{'s' if others != 1 else ''} below.)" if others > 0 else ""


def _tree_named(findings: list[Finding]) -> set[str]:
    return {m for f in findings if f.severity is not Severity.INFO and len(f.modules) <= _TREE_NAMED_MAX for m in f.modules}


def _verdict(report: Report) -> RenderableType:
    worst = report.worst_severity()
    style = "bold green" if worst is None else _STYLE[worst]
    text = (report.verdict or "No problems found.") + more_findings(report)
    if worst is None:
        text = "✔ " + text
    return Panel(Text(text), title="verdict", title_align="left", border_style=style)


def _brief(report: Report) -> RenderableType:
    """The verdict, one line per finding, and the fix code of the finding the verdict leads with."""
    source, summary = report.source, report.summary
    counted = summary.params - summary.params_without_data
    zero = 1 - summary.nonzero_params / counted if counted else 0.0
    parts: list[RenderableType] = [
        Text.assemble(
            ("read as ", "bold"), f"{source.format}, {source.container}, by {source.loader}; ",
            ("params ", "bold"), f"{summary.params:,} ({zero:.1%} zero) in {summary.layers} layers", style="dim",
        ),
        _verdict(report),
    ]
    if report.failures:
        parts.append(_failures(report.failures))
    for finding in report.findings:
        style = _STYLE[finding.severity]
        line = Text.assemble((f"{finding.severity.value} {finding.kind}", style), ": ", _clipped(first_sentence(finding.message)))
        if finding.modules:
            shown = ", ".join(finding.modules[:4]) + (f" … (+{len(finding.modules) - 4})" if len(finding.modules) > 4 else "")
            line.append(f" [{shown}]", style="dim")
        parts.append(line)
    lead = next((f for f in report.findings if f.fix_code), None)
    compacted = bool(report.compaction and not report.compaction.get("refused"))
    if lead is not None:
        parts.append(Text.assemble(("fix ", "bold green"), (lead.kind, "bold"), ": ", first_sentence(lead.fix)))
        if compacted:  # --compact did it: its result below; the code stays in the JSON
            parts.append(Text("(--compact did this below; the torch-pruning code is in the JSON report)", style="dim"))
        else:
            parts.append(CodeBlock(lead.fix_code or ""))
    if report.profile:
        parts += profile_renderables(profile_from_dict(report.profile))[1:3]
    if report.compaction:
        parts.append(_compaction(report.compaction))
    return Group(*parts)


def _clipped(text: str, limit: int = _BRIEF_CHARS) -> str:
    """At most `limit` characters, cut at a word: the brief layout's one line per finding."""
    if len(text) <= limit:
        return text
    return text[: text.rfind(" ", 0, limit - 2)].rstrip(",;:") + " …"
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
                f"MACs {_count(data['macs_before'])} → {_count(data['macs_after'])}; outputs equal within {data['tolerance']:.2g} "
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
    body += [Text(f"note: {note}", style="dim") for note in data.get("notes", [])]
    panel = Panel(Group(*body), title="compact", title_align="left", border_style="green" if not data.get("refused") else "yellow")
    if data.get("load_code"):
        return Group(panel, CodeBlock(data["load_code"]))
    return panel


def _count(value: int | None) -> str:
    return f"{value:,}" if value is not None else "not counted"


def _bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


class RichRenderer:
    """The terminal report as text (with ANSI styles when `options.color`)."""

    name = "rich"
    extension = ".txt"

    def render(self, results: ReportSet, options: EmitOptions = EmitOptions()) -> str:
        console = self.console(options)
        self.print(results, console, options)
        return console.file.getvalue()  # type: ignore[attr-defined]

    def svg(self, results: ReportSet, options: EmitOptions = EmitOptions(), title: str = "analyze") -> str:
        console = self.console(options, record=True)
        self.print(results, console, options)
        return console.export_svg(title=title)

    @staticmethod
    def console(options: EmitOptions, record: bool = False) -> Console:
        return Console(
            file=io.StringIO(), width=options.width, record=record, force_terminal=options.color,
            color_system="auto" if options.color else None, legacy_windows=False, highlight=False,
        )

    @staticmethod
    def print(results: ReportSet, console: Console, options: EmitOptions) -> None:
        render_options = RenderOptions(all_layers=options.all_layers)
        if len(results.reports) == 1:
            render(results.reports[0], console, render_options)
        else:
            render_many(results.reports, console, render_options)


def summary_line(reports: list[Report], fail_on: str) -> str:
    """`-q`: one line for the whole run — what was found, and whether it fails --fail-on."""
    from .emit import fails

    findings = [f for r in reports for f in r.findings]
    counts = {s: sum(1 for f in findings if f.severity is s) for s in Severity}
    words = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "info"}
    counted = ", ".join(f"{n} {words[s]}{'s' if n != 1 and s is not Severity.INFO else ''}" for s, n in counts.items())
    kinds = list(dict.fromkeys(f.kind for f in findings))
    if kinds:
        counted += f" ({', '.join(kinds[:4])}{', …' if len(kinds) > 4 else ''})"
    subject = reports[0].source.path if len(reports) == 1 else f"{len(reports)} checkpoints"
    failing = sum(1 for f in findings if fails(f, fail_on))
    outcome = f"fails --fail-on {fail_on} ({failing} at or above it)" if failing else f"passes --fail-on {fail_on}"
    return f"{subject}: {counted}; {outcome}"
