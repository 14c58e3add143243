"""`unaligned-channels`: widths that pruning left off multiples of 8.

Tensor Core kernels (and CPU SIMD) work on multiples of 8 channels; other widths fall
back to slower kernels or pad, so removed channels save less time than FLOPs suggest.
With `--profile`, each unaligned conv's measured time per MAC is compared with the
aligned ones'.
"""

from __future__ import annotations

from collections import Counter

import torch.nn as nn

from ..report.model import Finding, Severity
from .context import PassContext

KIND = "unaligned-channels"
ALIGNMENT = 8


def run(ctx: PassContext) -> list[Finding]:
    reference = ctx.matching_reference
    widths: dict[str, int] = {}
    consumers_in = _input_widths(ctx)
    # How many layers read each width: "another layer reads it" in O(1) per layer, not O(layers).
    readers_of = Counter(consumers_in.values())
    for layer in ctx.layers:
        if not (layer.is_conv or layer.is_linear) or layer.shape is None or layer.weight is None:
            continue
        width = layer.out_width()
        if width % ALIGNMENT == 0 or width < ALIGNMENT:
            continue  # below one vector width, per-kernel overhead dominates anyway
        if reference is not None:
            ref_shape = reference.shapes.get(layer.weight)
            changed = ref_shape is not None and layer.out_width(ref_shape) != width
        else:
            changed = readers_of[width] - (consumers_in.get(layer.name) == width) > 0
        if changed:
            widths[layer.name] = width
    if not widths:
        return []
    measured = _measured_slowdown(ctx, set(widths))
    basis = f"widths changed from {reference.source}" if reference else "hidden widths (read by another layer)"
    return [
        Finding(
            kind=KIND,
            severity=Severity.WARNING,
            modules=list(widths),
            message=(
                f"{len(widths)} layers have {basis} that are not multiples of {ALIGNMENT} "
                f"(e.g. {', '.join(f'{k}: {v}' for k, v in list(widths.items())[:4])}): fp16 Tensor Core kernels need "
                f"multiples of {ALIGNMENT} and fall back to slower ones or pad, and CPU SIMD pads too, so the "
                "removed channels save less time than FLOPs suggest."
            ),
            evidence={
                "widths": widths,
                "rounded_up": {k: -(-v // ALIGNMENT) * ALIGNMENT for k, v in widths.items()},
                "measured_time_per_mac_vs_aligned": measured,
            },
            fix=f"Prune with torch-pruning's round_to={ALIGNMENT} so every width stays a multiple of {ALIGNMENT}.",
            fix_code=(
                "pruner = tp.pruner.MetaPruner(\n    model, example_inputs, importance=tp.importance.MagnitudeImportance(p=2),\n"
                f"    pruning_ratio=ratio, ignored_layers=ignored_layers, round_to={ALIGNMENT},\n)\npruner.step()"
            ),
        )
    ]


def _measured_slowdown(ctx: PassContext, unaligned: set[str]) -> dict[str, float] | None:
    """With --profile: each unaligned conv's time per MAC over the median of the aligned convs'."""
    if ctx.profile is None:
        return None
    per_mac = {layer.name: layer.time_ms / layer.macs for layer in ctx.profile.layers if layer.macs and "Conv" in layer.type}
    aligned = sorted(v for name, v in per_mac.items() if name not in unaligned)
    if not aligned:
        return None
    baseline = aligned[len(aligned) // 2]
    return {name: round(per_mac[name] / baseline, 3) for name in unaligned if name in per_mac}


def _input_widths(ctx: PassContext) -> dict[str, int]:
    """Input channels each conv/linear layer reads (depthwise: its own width)."""
    widths = {}
    modules = dict(ctx.model.module.named_modules()) if ctx.model else {}
    for layer in ctx.layers:
        if not (layer.is_conv or layer.is_linear) or layer.shape is None or len(layer.shape) < 2:
            continue
        module = modules.get(layer.name)
        if isinstance(module, nn.modules.conv._ConvNd):
            widths[layer.name] = module.in_channels
        elif layer.is_conv and layer.in_width() == 1 and not layer.type.startswith("ConvTranspose"):
            widths[layer.name] = layer.shape[0]  # depthwise (groups unknown without a module)
        else:
            widths[layer.name] = layer.in_width()  # type: ignore[assignment]
    return widths
