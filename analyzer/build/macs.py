"""Multiply-accumulates of conv and linear layers, from the shapes a traced run recorded."""

from __future__ import annotations

import math

import torch.nn as nn

from .trace import Trace

__all__ = ["layer_macs", "model_macs"]


def layer_macs(module: nn.Module, output_shape: tuple[int, ...]) -> int:
    """MACs per sample of a conv or linear layer producing `output_shape` (batch first); 0 for others."""
    per_sample = math.prod(output_shape[1:]) if len(output_shape) > 1 else 0
    if isinstance(module, nn.modules.conv._ConvNd):
        return per_sample * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return per_sample * module.in_features
    return 0


def model_macs(model: nn.Module, trace: Trace) -> int:
    """MACs per sample of every conv and linear layer that ran in `trace`."""
    total = 0
    for name, module in model.named_modules():
        call = trace.calls.get(name)
        if call is not None and call.outputs:
            total += layer_macs(module, call.outputs[0])
    return total
