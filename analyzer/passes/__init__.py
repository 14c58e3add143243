"""Passes: small functions `(PassContext) -> list[Finding]`, run in this order.

A pass never prints. One that cannot run on the input raises PassSkipped and the
report says what was not analysed.
"""

from __future__ import annotations

from collections.abc import Callable

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

__all__ = ["PASSES", "Pass", "PassContext", "PassSkipped", "AnalysisOptions", "run_passes"]

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
