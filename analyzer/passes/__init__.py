"""Passes: small functions `(PassContext) -> list[Finding]`, run in this order.

A pass never prints. One that cannot run on the input raises PassSkipped and the
report says what was not analysed. Any other exception inside a pass is an analyzer
failure: the report names the pass and the exception (with its traceback for --debug),
the CLI exits 2 because the analysis is incomplete, and the test suite fails on it.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import AnalyzerError
from ..report.model import Finding
from ..profile.diagnose import diagnose
from . import (
    attention_head_mismatch,
    channel_removal,
    forward_failure,
    head_shape_mismatch,
    pruning_masks,
    residual_mismatch,
    sparsity,
    state_dict_mismatch,
    tensor_health,
    unaligned_channels,
    unsafe_pickle,
    zeroed_channels,
)
from .context import AnalysisOptions, PassContext, PassSkipped

__all__ = ["PASSES", "Pass", "PassContext", "PassSkipped", "PassFailure", "PassResults", "AnalysisOptions", "run_passes"]

Pass = Callable[[PassContext], list[Finding]]

#: The registry: (name, pass). Names appear in "not analysed" lines.
def _profile_diagnosis(ctx: PassContext) -> list[Finding]:
    """no-speedup, overhead-bound, memory-bound: the rules of analyzer/profile/diagnose.py."""
    if ctx.profile is None:
        if ctx.profile_skipped:
            raise PassSkipped(ctx.profile_skipped)
        return []
    return diagnose(ctx.profile)


PASSES: tuple[tuple[str, Pass], ...] = (
    ("pickle safety", unsafe_pickle.run),
    ("pruning masks", pruning_masks.run),
    ("state dict fit", state_dict_mismatch.run),
    ("forward pass", forward_failure.run),
    ("residual and concat checks", residual_mismatch.run),
    ("detection heads", head_shape_mismatch.run),
    ("attention heads", attention_head_mismatch.run),
    ("tensor health", tensor_health.run),
    ("zero patterns", sparsity.run),
    ("zeroed channels", zeroed_channels.run),
    ("channel removal", channel_removal.run),
    ("unaligned channels", unaligned_channels.run),
    ("profile diagnosis", _profile_diagnosis),
)


@dataclass(frozen=True)
class PassFailure:
    """A pass that raised: a bug in the analyzer (or a model it does not handle), not a finding."""

    #: The pass's name in the registry ("zeroed channels").
    name: str
    exception: str
    message: str
    traceback: str

    def to_dict(self) -> dict[str, str]:
        return {"pass": self.name, "exception": self.exception, "message": self.message, "traceback": self.traceback}


@dataclass
class PassResults:
    findings: list[Finding] = field(default_factory=list)
    #: A line for each pass that could not run on this input (PassSkipped), saying why.
    not_analysed: list[str] = field(default_factory=list)
    failures: list[PassFailure] = field(default_factory=list)


def run_passes(ctx: PassContext) -> PassResults:
    """Every pass's findings, a line for each pass that could not run, and each pass that failed."""
    results = PassResults()
    for name, run in PASSES:
        try:
            results.findings.extend(run(ctx))
        except PassSkipped as reason:
            results.not_analysed.append(f"{name}: {reason}")
        except AnalyzerError:
            raise
        except Exception as e:  # one broken check must not cost the others; the report says it failed
            message = " ".join(str(e).split())[:300]
            results.failures.append(PassFailure(name, type(e).__name__, message, traceback.format_exc()))
    return results
