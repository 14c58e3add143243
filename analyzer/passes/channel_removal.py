"""`channel-removal`: layers really are narrower than the dense reference.

Not a problem: removed channels are what makes a pruned model faster. The finding says
how much was kept, layer by layer, against `--baseline` or `--arch`.
"""

from __future__ import annotations

import math

from ..report.model import Finding, Severity
from .context import PassContext, PassSkipped

KIND = "channel-removal"


def run(ctx: PassContext) -> list[Finding]:
    reference = ctx.matching_reference
    if reference is None:
        raise PassSkipped(
            f"the reference ({ctx.reference.source}) is not this model's architecture ({ctx.reference.mismatch})"
            if ctx.reference
            else "no dense reference to compare widths with (give --baseline dense.pth or --arch pkg.module:factory)"
        )
    narrower: dict[str, list[int]] = {}
    for layer in ctx.layers:
        if not (layer.is_conv or layer.is_linear or layer.is_batchnorm) or layer.weight is None or layer.shape is None:
            continue
        ref_shape = reference.shapes.get(layer.weight)
        if ref_shape is None:
            continue
        kept, original = layer.out_width(), layer.out_width(ref_shape)
        if kept < original:
            narrower[layer.name] = [kept, original]
    names = {layer.weight for layer in ctx.layers if layer.weight}
    missing_layers = sorted({n.rpartition(".")[0] for n in reference.shapes if n.endswith(".weight") and n not in names})
    if not narrower:
        return []
    kept = sum(k for k, _ in narrower.values())
    original = sum(o for _, o in narrower.values())
    params_now = sum(math.prod(ctx.checkpoint.meta(l.params[p])[0]) for l in ctx.layers for p in l.params)
    params_ref = sum(math.prod(s) for n, s in reference.shapes.items() if not _is_buffer_name(n))
    return [
        Finding(
            kind=KIND,
            severity=Severity.INFO,
            modules=list(narrower),
            message=(
                f"{len(narrower)} layers are narrower than the reference ({reference.source}): {kept:,} of "
                f"{original:,} output channels kept ({kept / original:.0%}); parameters {params_ref:,} → "
                f"{params_now:,} ({params_now / params_ref - 1:+.0%}). The channels were really removed."
            ),
            evidence={
                "kept_of_original": narrower,
                "kept_fraction": round(kept / original, 4),
                "params": params_now,
                "reference_params": params_ref,
                "layers_missing": missing_layers,
                "reference": reference.source,
            },
            fix=_fix(ctx, narrower),
        )
    ]


def _fix(ctx: PassContext, narrower: dict[str, list[int]]) -> str:
    """Nothing to fix — unless some of the narrowed layers broke their attention heads."""
    from .attention_head_mismatch import broken_sites

    broken = [c.site.name for c in broken_sites(ctx) if any(p.name in narrower for p in c.site.projections())]
    if broken:
        return (
            f"The removal broke the attention heads of {', '.join(broken[:4])}"
            f"{f' and {len(broken) - 4} more' if len(broken) > 4 else ''}: see attention-head-mismatch. "
            "The other removed channels are what makes a pruned model faster."
        )
    return "Nothing to fix: removed channels are what makes a pruned model faster. Check widths with unaligned-channels."


def _is_buffer_name(name: str) -> bool:
    return name.rpartition(".")[2] in ("running_mean", "running_var", "num_batches_tracked")
