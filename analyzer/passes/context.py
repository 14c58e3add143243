"""What every pass gets: the checkpoint, its layers, the options, cached tensor scans."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..layers import Layer
from ..load import Checkpoint
from ..scan import TensorStats, tensor_stats

__all__ = ["AnalysisOptions", "PassContext", "PassSkipped"]


class PassSkipped(Exception):
    """Raised by a pass that cannot run on this input; the report says why."""


@dataclass(frozen=True)
class AnalysisOptions:
    #: Values with |x| <= zero_tol count as zero; 0 means exactly zero.
    zero_tol: float = 0.0


@dataclass
class PassContext:
    checkpoint: Checkpoint
    layers: list[Layer]
    options: AnalysisOptions = field(default_factory=AnalysisOptions)
    #: A runnable model (full module or --arch), when one could be built.
    model: Any = None
    #: The dense reference (--baseline or the dense --arch), when one is known.
    baseline: Any = None
    _stats: dict[str, TensorStats] = field(default_factory=dict, repr=False)

    def tensor(self, name: str) -> torch.Tensor:
        """The effective tensor (masks applied)."""
        return self.checkpoint.effective(name)

    def stats(self, name: str) -> TensorStats:
        if name not in self._stats:
            self._stats[name] = tensor_stats(self.tensor(name), self.options.zero_tol)
        return self._stats[name]

    def layer(self, name: str) -> Layer | None:
        return next((layer for layer in self.layers if layer.name == name), None)
