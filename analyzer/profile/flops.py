"""MACs and parameters per module with fvcore; the ops it cannot count are kept, not hidden."""

from __future__ import annotations

import logging
import warnings

import torch
import torch.nn as nn

from ..model.inputs import ExampleInput
from .result import FlopStats

__all__ = ["count_flops"]


def count_flops(label: str, model: nn.Module, example: ExampleInput) -> FlopStats:
    from fvcore.nn import FlopCountAnalysis

    # fvcore logs a warning per unsupported op; they are recorded in the result instead.
    logging.getLogger("fvcore.nn.jit_analysis").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = FlopCountAnalysis(model, example.args)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        total = int(analysis.total())
        by_module = {name: int(count) for name, count in analysis.by_module().items() if name}
        unsupported = {str(op): int(n) for op, n in analysis.unsupported_ops().items()}
    return FlopStats(
        label=label,
        input_shape=list(example.shape),
        macs=total,
        params=sum(p.numel() for p in model.parameters()),
        macs_by_layer=by_module,
        unsupported_ops=unsupported,
    )
