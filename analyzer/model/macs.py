"""Multiply-accumulates of conv and linear layers, from the shapes a traced run recorded."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .trace import Trace

__all__ = ["layer_macs", "model_macs"]


def layer_macs(module: nn.Module, output_shape: tuple[int, ...]) -> int:
    """MACs per sample of a conv or linear layer producing `output_shape` (batch first); 0 for others.

    Read from the weight's shape — (out, in/groups, *kernel), (out, in) — rather than the
    module's attributes, which a pickle can leave out."""
    per_sample = math.prod(output_shape[1:]) if len(output_shape) > 1 else 0
    weight = module.__dict__.get("_parameters", {}).get("weight")
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        return 0
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        # (in, out/groups, *k): each output element gathers in/groups * k/stride products.
        groups = getattr(module, "groups", 1) or 1
        stride = math.prod(getattr(module, "stride", (1,)) or (1,))
        return per_sample * (weight.shape[0] // groups) * math.prod(weight.shape[2:]) // max(stride, 1)
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        return per_sample * math.prod(weight.shape[1:])
    return 0


def model_macs(model: nn.Module, trace: Trace) -> int:
    """MACs per sample of every conv and linear layer that ran in `trace`."""
    total = 0
    for name, module in model.named_modules():
        call = trace.calls.get(name)
        if call is not None and call.outputs:
            total += layer_macs(module, call.outputs[0])
    return total
