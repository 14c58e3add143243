"""analyzer: diagnose pruned PyTorch models (distribution `prune-analyzer`, command `analyze`).

    from analyzer import analyze
    report = analyze("pruned.pth")          # or analyze(model, example_input=torch.randn(1, 3, 224, 224))
    for finding in report.findings:
        print(finding.severity, finding.kind, finding.modules, finding.message)

Names are imported on first use, so that the pytest plugin (loaded by every pytest run
where analyzer is installed) does not pull in torch until a test needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"
#: The name on the package index (`pip install prune-analyzer`); `analyzer` there is another project.
DISTRIBUTION = "prune-analyzer"

_EXPORTS = {
    "analyze": "analyzer.api",
    "load_checkpoint": "analyzer.load",
    "LoadOptions": "analyzer.load",
    "Checkpoint": "analyzer.load",
    "load_pruned": "analyzer.api",
    "assert_clean": "analyzer.pytest_plugin",
    "Report": "analyzer.report.model",
    "ReportSet": "analyzer.report.model",
    "Finding": "analyzer.report.model",
    "LayerRow": "analyzer.report.model",
    "Severity": "analyzer.report.model",
    "AnalyzerError": "analyzer.errors",
    "InputError": "analyzer.errors",
    "UsageError": "analyzer.errors",
    "BuildError": "analyzer.errors",
    "NotRunnableError": "analyzer.errors",
}

__all__ = ["__version__", "DISTRIBUTION", *_EXPORTS]

if TYPE_CHECKING:
    from .api import analyze, load_pruned
    from .errors import AnalyzerError, BuildError, InputError, NotRunnableError, UsageError
    from .load import Checkpoint, LoadOptions, load_checkpoint
    from .pytest_plugin import assert_clean
    from .report.model import Finding, LayerRow, Report, ReportSet, Severity


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'analyzer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
