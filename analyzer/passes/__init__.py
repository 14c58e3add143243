"""Passes: small functions `(PassContext) -> list[Finding]`, run in this order.

A pass never prints. One that cannot run on the input raises PassSkipped and the
report says what was not analysed.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import AnalyzerError
from ..report.model import Finding
from . import channels, fit, forward, heads, masks, pickle_safety, profiled, residual, sparsity, tensor_health
from .context import AnalysisOptions, PassContext, PassSkipped

__all__ = ["PASSES", "Pass", "PassContext", "PassSkipped", "AnalysisOptions", "run_passes"]

Pass = Callable[[PassContext], list[Finding]]

#: The registry: (name, pass). Names appear in "not analysed" lines.
PASSES: tuple[tuple[str, Pass], ...] = (
    ("pickle safety", pickle_safety.run),
    ("pruning masks", masks.run),
    ("state dict fit", fit.run),
    ("forward pass", forward.run),
    ("residual and concat checks", residual.run),
    ("detection heads", heads.run),
    ("tensor health", tensor_health.run),
    ("zero patterns", sparsity.run),
    ("zeroed channels", channels.run_zeroed),
    ("channel removal", channels.run_removal),
    ("unaligned channels", channels.run_unaligned),
    ("profile diagnosis", profiled.run),
)


def run_passes(ctx: PassContext, passes: tuple[tuple[str, Pass], ...] = PASSES) -> tuple[list[Finding], list[str]]:
    """Every pass's findings, and a line for each pass that could not run."""
    findings: list[Finding] = []
    skipped: list[str] = []
    for name, run in passes:
        try:
            findings.extend(run(ctx))
        except PassSkipped as reason:
            skipped.append(f"{name}: {reason}")
        except AnalyzerError:
            raise
        except Exception as e:  # a malformed model must cost one check, not the report
            skipped.append(f"{name}: could not run on this input ({type(e).__name__}: {' '.join(str(e).split())[:200]})")
    return findings, skipped
