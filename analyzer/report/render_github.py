"""GitHub Actions annotations: one workflow command per finding.

`::error file=pruned.pth,title=residual-mismatch::message`, the format of
https://docs.github.com/actions/reference/workflow-commands-for-github-actions: error,
warning, notice for info. In the message, `%`, CR and LF are escaped; in the properties
also `:` and `,` (they delimit the properties).
"""

from __future__ import annotations

from .emit import EmitOptions
from .model import Finding, Report, ReportSet, Severity

__all__ = ["GithubRenderer", "escape_data", "escape_property"]

_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


class GithubRenderer:
    name = "github"
    extension = ".txt"

    def render(self, results: ReportSet, options: EmitOptions = EmitOptions()) -> str:
        return "".join(_command(report, finding) + "\n" for report in results.reports for finding in report.findings)


def _command(report: Report, finding: Finding) -> str:
    modules = ", ".join(finding.modules[:5]) + (f" (+{len(finding.modules) - 5})" if len(finding.modules) > 5 else "")
    title = f"{finding.kind}" + (f" in {modules}" if modules else "")
    body = finding.message + (f"\nFix: {finding.fix}" if finding.fix else "")
    properties = {"title": title}
    if not report.source.path.startswith("<"):
        properties = {"file": report.source.path, **properties}
    listed = ",".join(f"{key}={escape_property(value)}" for key, value in properties.items())
    return f"::{_LEVEL[finding.severity]} {listed}::{escape_data(body)}"
