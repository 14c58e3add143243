"""Tensors whose values cannot be computed with.

`non-finite-weights`: NaN or Inf in parameters or buffers — every output that touches
them is NaN. `invalid-sparse-tensor`: a sparse tensor whose indices break its
invariants (out of bounds) — using it reads out of bounds or crashes.
"""

from __future__ import annotations

from ..report.model import Finding, Severity
from .context import PassContext

KIND_NONFINITE = "non-finite-weights"
KIND_INVALID_SPARSE = "invalid-sparse-tensor"


def run(ctx: PassContext) -> list[Finding]:
    nonfinite: dict[str, int] = {}
    invalid: dict[str, str] = {}
    for layer in ctx.layers:
        for tensor_name in (*layer.params.values(), *layer.buffers.values()):
            stats = ctx.stats(tensor_name)
            if stats.nonfinite:
                nonfinite[tensor_name] = stats.nonfinite
            if stats.invalid:
                invalid[tensor_name] = stats.invalid
    findings = []
    if nonfinite:
        findings.append(
            Finding(
                kind=KIND_NONFINITE,
                severity=Severity.ERROR,
                modules=_modules(nonfinite),
                message=f"{sum(nonfinite.values())} NaN/Inf values in {len(nonfinite)} tensors: every output that touches them is NaN.",
                evidence={"nonfinite_per_tensor": nonfinite},
                fix=(
                    "Go back to the last checkpoint before the values diverged (often fine-tuning after pruning with "
                    "too high a learning rate, or fp16 overflow); check with torch.isfinite(t).all() when saving."
                ),
            )
        )
    if invalid:
        findings.append(
            Finding(
                kind=KIND_INVALID_SPARSE,
                severity=Severity.ERROR,
                modules=_modules(invalid),
                message=f"{len(invalid)} sparse tensor{'s' if len(invalid) != 1 else ''} break their invariants (indices out of bounds): using them reads out of bounds or crashes.",
                evidence={"invalid_tensors": invalid},
                fix="Re-create the tensor from a dense one (t.to_sparse()) and re-save; check with torch.sparse.check_sparse_tensor_invariants().",
            )
        )
    return findings


def _modules(per_tensor: dict[str, object]) -> list[str]:
    return sorted({name.rpartition(".")[0] or "<root>" for name in per_tensor})
