"""MACs and parameters per module, from the one counter (analyzer/model/macs.py); the ops it
cannot count are kept as data, not hidden."""

from __future__ import annotations

import torch.nn as nn

from ..model.inputs import ExampleInput
from ..model.macs import MacCount, count_macs
from .result import FlopStats

__all__ = ["count_flops", "flop_stats"]


def count_flops(label: str, model: nn.Module, example: ExampleInput) -> FlopStats:
    return flop_stats(label, model, count_macs(model, example))


def flop_stats(label: str, model: nn.Module, count: MacCount) -> FlopStats:
    return FlopStats(
        label=label,
        input_shape=count.input_shape,
        macs=count.total,
        params=sum(p.numel() for p in model.parameters()),
        macs_by_layer={name: macs for name, macs in count.own_by_module.items() if name and macs},
        unsupported_ops=dict(sorted(count.uncounted_ops.items(), key=lambda item: -item[1])),
        macs_per_sample=count.per_sample,
    )
