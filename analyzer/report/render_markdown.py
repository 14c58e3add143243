"""Markdown for a pull-request comment (or $GITHUB_STEP_SUMMARY).

A heading that says whether the run fails `--fail-on`, the comparison table for several
checkpoints, then per checkpoint its verdict as a quote, a table of findings, and each
fix in a collapsed <details> block with its code fenced as Python. Table cells are
escaped so that a `|` or a newline in a message cannot break a row.
"""

from __future__ import annotations

import html
import re
from pathlib import PurePath

from .emit import EmitOptions, fails
from .model import Finding, Report, ReportSet, Severity
from .render_rich import more_findings
from .rich_compare import short_number

__all__ = ["MarkdownRenderer", "cell", "fence"]

_ICON = {Severity.ERROR: "🔴", Severity.WARNING: "🟡", Severity.INFO: "🔵"}
_MAX_MODULES = 6


def cell(text: str) -> str:
    """Text for one table cell: Markdown and HTML specials escaped, newlines as <br>."""
    text = html.escape(text, quote=False)
    text = re.sub(r"([\\`*_\[\]|#~])", r"\\\1", text)
    return "<br>".join(part.strip() for part in text.splitlines()) or " "


def code_span(text: str) -> str:
    ticks = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}".replace("|", "\\|")


def fence(code: str, language: str = "python") -> str:
    """A fenced block longer than any run of backticks inside it."""
    ticks = "`" * max(3, max((len(m) for m in re.findall(r"`+", code)), default=0) + 1)
    return f"{ticks}{language}\n{code.rstrip()}\n{ticks}"


class MarkdownRenderer:
    name = "markdown"
    extension = ".md"

    def render(self, results: ReportSet, options: EmitOptions = EmitOptions()) -> str:
        reports = results.reports
        out = [_heading(reports, options.fail_on), ""]
        if len(reports) > 1:
            out += _comparison(reports) + [""]
        for report in reports:
            out += _report(report, options.fail_on, several=len(reports) > 1)
        tool = results.run
        if tool.version:
            out.append(f"<sub>{html.escape(tool.distribution or tool.tool)} {html.escape(tool.version)}</sub>")
        return "\n".join(out).rstrip() + "\n"


def _heading(reports: list[Report], fail_on: str) -> str:
    findings = [f for r in reports for f in r.findings]
    failing = sum(1 for f in findings if fails(f, fail_on))
    counts = ", ".join(
        f"{n} {s.value}{'s' if n != 1 and s is not Severity.INFO else ''}"
        for s in Severity
        if (n := sum(1 for f in findings if f.severity is s))
    )
    subject = code_span(PurePath(reports[0].source.path).name) if len(reports) == 1 else f"{len(reports)} checkpoints"
    outcome = f"❌ fails `--fail-on {fail_on}`" if failing else f"✅ passes `--fail-on {fail_on}`"
    return f"### analyze: {subject} — {outcome}" + (f" ({counts})" if counts else " (no findings)")


def _comparison(reports: list[Report]) -> list[str]:
    lines = ["| checkpoint | params | zero | MACs | findings |", "| --- | ---: | ---: | ---: | --- |"]
    for report in reports:
        s = report.summary
        counted = s.params - s.params_without_data
        zero = f"{1 - s.nonzero_params / counted:.1%}" if counted else "-"
        kinds = ", ".join(f"{_ICON[f.severity]} {code_span(f.kind)}" for f in _distinct(report.findings)) or "none"
        macs = short_number(s.macs) if s.macs is not None else "-"
        lines.append(f"| {code_span(PurePath(report.source.path).name)} | {short_number(s.params)} | {zero} | {macs} | {kinds} |")
    return lines


def _report(report: Report, fail_on: str, several: bool) -> list[str]:
    out: list[str] = []
    if several:
        out += [f"#### {code_span(report.source.path)}", ""]
    more = more_findings(report).strip()
    out += [f"> {cell(report.verdict or 'No problems found.')}" + (f" {cell(more)}" if more else ""), ""]
    if report.findings:
        out += ["| | kind | modules | finding |", "| --- | --- | --- | --- |"]
        for f in report.findings:
            modules = ", ".join(code_span(m) for m in f.modules[:_MAX_MODULES])
            if len(f.modules) > _MAX_MODULES:
                modules += f" (+{len(f.modules) - _MAX_MODULES})"
            mark = _ICON[f.severity] + (" **fails**" if fails(f, fail_on) else "")
            out.append(f"| {mark} | {code_span(f.kind)} | {modules or ' '} | {cell(f.message)} |")
        out.append("")
        for f in report.findings:
            if not (f.fix or f.fix_code):
                continue
            out += [f"<details><summary>Fix for <code>{html.escape(f.kind)}</code></summary>", ""]
            if f.fix:
                out += [html.escape(f.fix, quote=False), ""]
            if f.fix_code:
                out += [fence(f.fix_code), ""]
            out += ["</details>", ""]
    for line in report.not_analysed:
        out.append(f"- not analysed: {cell(line)}")
    if report.not_analysed:
        out.append("")
    return out


def _distinct(findings: list[Finding]) -> list[Finding]:
    seen: set[str] = set()
    return [f for f in findings if not (f.kind in seen or seen.add(f.kind))]  # type: ignore[func-returns-value]
