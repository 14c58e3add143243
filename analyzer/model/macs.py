"""Multiply-accumulates of conv and linear layers, from the shapes a traced run recorded."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .trace import Trace

__all__ = ["layer_macs", "model_macs"]


def layer_macs(module: nn.Module, output_shape: tuple[int, ...], input_shape: tuple[int, ...] | None = None) -> int:
    """MACs per sample of a conv or linear layer producing `output_shape` from `input_shape`
    (batch first); 0 for others.

    Read from the weight's shape — (out, in/groups, *kernel), (out, in), (in, out/groups,
    *kernel) for a transposed conv — rather than the module's attributes, which a pickle can
    leave out."""
    weight = module.__dict__.get("_parameters", {}).get("weight")
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        return 0
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        # Every input position scatters through every weight once: positions_in * weight.numel().
        if input_shape is None or len(input_shape) != weight.dim():
            return 0
        return math.prod(input_shape[2:]) * weight.numel()
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        per_sample = math.prod(output_shape[1:]) if len(output_shape) > 1 else 0
        return per_sample * math.prod(weight.shape[1:])
    return 0


def model_macs(model: nn.Module, trace: Trace) -> int:
    """MACs per sample of every conv and linear layer that ran in `trace`."""
    total = 0
    for name, module in model.named_modules():
        call = trace.calls.get(name)
        if call is not None and call.outputs:
            total += layer_macs(module, call.outputs[0], call.inputs[0] if call.inputs else None)
    return total
