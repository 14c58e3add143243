"""One interface over every output format: `renderer(name).render(results, options) -> str`.

pyinstrument's renderers and ruff's emitters: each format is a class with a `name` and a
`render` that only reads the `ReportSet`; the CLI picks one by name (`--output-format`).
Each lives in its own module and is imported when it is asked for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import ClassVar, Protocol

from .model import Finding, ReportSet, Severity

__all__ = ["EmitOptions", "Renderer", "FORMATS", "renderer", "fails"]


@dataclass(frozen=True)
class EmitOptions:
    #: The severity that fails the run (CLI --fail-on): "error", "warning", "info" or "never".
    fail_on: str = "error"
    all_layers: bool = False
    #: Terminal width and colour for the rich report.
    width: int = 100
    color: bool = False


class Renderer(Protocol):
    name: ClassVar[str]
    #: The usual file extension of its output.
    extension: ClassVar[str]

    def render(self, results: ReportSet, options: EmitOptions) -> str: ...


#: --output-format name → "module:Class" under analyzer.report.
FORMATS: dict[str, str] = {
    "rich": "render_rich:RichRenderer",
    "json": "render_json:JsonRenderer",
    "github": "render_github:GithubRenderer",
    "sarif": "render_sarif:SarifRenderer",
    "markdown": "render_markdown:MarkdownRenderer",
    "junit": "render_junit:JunitRenderer",
    "html": "render_html:HtmlRenderer",
}


def renderer(name: str) -> Renderer:
    module, _, cls = FORMATS[name].partition(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), cls)()


def fails(finding: Finding, fail_on: str) -> bool:
    """Whether `finding` fails the run at this --fail-on."""
    return fail_on != "never" and finding.severity.at_least(Severity(fail_on))
