"""`non-finite-weights`: NaN or Inf in parameters — the model's outputs are garbage."""

from __future__ import annotations

from ..report.model import Finding, Severity
from .context import PassContext

KIND = "non-finite-weights"


def run(ctx: PassContext) -> list[Finding]:
    bad: dict[str, int] = {}
    for layer in ctx.layers:
        for tensor_name in (*layer.params.values(), *layer.buffers.values()):
            count = ctx.stats(tensor_name).nonfinite
            if count:
                bad[tensor_name] = count
    if not bad:
        return []
    modules = sorted({name.rpartition(".")[0] for name in bad})
    return [
        Finding(
            kind=KIND,
            severity=Severity.ERROR,
            modules=modules,
            message=f"{sum(bad.values())} NaN/Inf values in {len(bad)} tensors: every output that touches them is NaN.",
            evidence={"nonfinite_per_tensor": bad},
            fix=(
                "Go back to the last checkpoint before the values diverged (often fine-tuning after pruning with "
                "too high a learning rate, or fp16 overflow); check with torch.isfinite(t).all() when saving."
            ),
        )
    ]
