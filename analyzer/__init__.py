"""analyzer: diagnose pruned PyTorch models.

    from analyzer import analyze
    report = analyze("pruned.pth")
    for finding in report.findings:
        print(finding.severity, finding.kind, finding.modules, finding.message)
"""

from .api import analyze
from .errors import AnalyzerError, BuildError, InputError, NotRunnableError, UsageError
from .load import Checkpoint, LoadOptions, load_checkpoint
from .loading import load_pruned
from .report.model import Finding, LayerRow, Report, Severity

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "analyze",
    "load_checkpoint",
    "load_pruned",
    "LoadOptions",
    "Checkpoint",
    "Report",
    "Finding",
    "LayerRow",
    "Severity",
    "AnalyzerError",
    "InputError",
    "UsageError",
    "BuildError",
    "NotRunnableError",
]
