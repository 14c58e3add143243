"""`pruning-masks`: `weight_orig`/`weight_mask` pairs that were never folded in.

The model then stores every weight twice and multiplies by the mask on every forward
pass; the zeros it creates are unstructured unless the mask removed whole channels.
"""

from __future__ import annotations

import torch

from ..report.model import Finding, Severity
from ..tensors.stats import nbytes
from .context import PassContext

KIND = "pruning-masks"

_FOLD_STATE_DICT = """\
import torch

sd = torch.load({path!r}, weights_only=True)
for name in [k[: -len("_orig")] for k in sd if k.endswith("_orig") and k[: -len("_orig")] + "_mask" in sd]:
    sd[name] = sd.pop(name + "_orig") * sd.pop(name + "_mask")
torch.save(sd, "folded.pth")"""

_FOLD_MODULE = """\
import torch
import torch.nn.utils.prune as prune

# model: the model with its prune reparametrisation (weight_orig, weight_mask)

for name, module in model.named_modules():
    for param in ("weight", "bias"):
        if prune.is_pruned(module) and hasattr(module, param + "_orig"):
            prune.remove(module, param)  # weight = weight_orig * weight_mask, mask dropped
torch.save(model.state_dict(), "folded.pth")"""


def run(ctx: PassContext) -> list[Finding]:
    masks = ctx.checkpoint.masks
    if not masks:
        return []
    per_tensor = {}
    zeros = total = 0
    for name, pair in masks.items():
        mask = ctx.checkpoint.tensors[pair.mask]
        masked_out = int(mask.numel() - torch.count_nonzero(mask))
        per_tensor[name] = round(masked_out / max(mask.numel(), 1), 4)
        zeros += masked_out
        total += mask.numel()
    modules = sorted({name.rpartition(".")[0] for name in masks})
    sparsity = zeros / max(total, 1)
    return [
        Finding(
            kind=KIND,
            severity=Severity.WARNING,
            modules=modules,
            message=(
                f"{len(masks)} tensor{'s' if len(masks) != 1 else ''} in {len(modules)} module"
                f"{'s' if len(modules) != 1 else ''} still {'carry' if len(masks) != 1 else 'carries'} torch.nn.utils.prune masks "
                f"({sparsity:.1%} of their weights masked out): the file stores each weight twice and "
                "the model multiplies by the mask on every forward pass."
            ),
            evidence={
                "masked_tensors": len(masks),
                "masked_fraction": round(sparsity, 4),
                "masked_fraction_per_tensor": per_tensor,
                "extra_bytes": sum(_nbytes(ctx, pair.mask) for pair in masks.values()),
            },
            fix=(
                "Fold the masks in with prune.remove before saving (weight = weight_orig * weight_mask); "
                "with only the file, fold them into the state dict as below."
            ),
            fix_code=_FOLD_MODULE if ctx.checkpoint.module is not None else _FOLD_STATE_DICT.format(path=str(ctx.checkpoint.path)),
        )
    ]


def _nbytes(ctx: PassContext, name: str) -> int:
    return nbytes(*ctx.checkpoint.tensors.meta(name))
