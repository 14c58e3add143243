"""What every pass gets: the checkpoint, its layers, the built model, cached scans."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from ..model import Build, Model, Reference
from ..model.attention import AttentionSite, sites_from_layers
from ..model.hf import apply_patch
from ..model.graph import GraphTrace, trace_graph
from ..tensors.layers import Layer
from ..load import Checkpoint
from ..profile.result import ProfileResult
from ..tensors.patterns import (
    BatchNormPattern,
    WeightPattern,
    batchnorm_pattern,
    dense_pattern,
    pattern_from_dict,
    pattern_to_dict,
    weight_pattern,
)
from ..tensors.stats import SMALL_TENSOR, TensorStats, tensor_stats, tensor_stats_many

__all__ = ["AnalysisOptions", "PassContext", "PassSkipped"]

_T = TypeVar("_T")


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
    build: Build = field(default_factory=Build)
    #: Measurements of --profile; None when not profiled.
    profile: ProfileResult | None = None
    #: Why --profile could not run, when it could not.
    profile_skipped: str | None = None
    _stats: dict[str, TensorStats] = field(default_factory=dict, repr=False)
    _patterns: dict[str, WeightPattern | BatchNormPattern | None] = field(default_factory=dict, repr=False)
    _graph: list[GraphTrace | None] = field(default_factory=list, repr=False)
    _once: dict[str, Any] = field(default_factory=dict, repr=False)

    def attention_sites(self) -> list[AttentionSite]:
        """The attention modules of the checkpoint's layers (from names and shapes), found once."""
        return self.once("attention sites", lambda: sites_from_layers(self.layers, lambda name: self.checkpoint.meta(name)[0]))

    def once(self, key: str, compute: Callable[[], _T]) -> _T:
        """`compute()` the first time `key` is asked for, the same value after: a pass that
        another consults (is this failure yours?) runs once."""
        if key not in self._once:
            self._once[key] = compute()
        return self._once[key]  # type: ignore[no-any-return]

    @property
    def model(self) -> Model | None:
        return self.build.model

    @property
    def reference(self) -> Reference | None:
        return self.build.reference

    @property
    def config(self) -> dict[str, Any] | None:
        """config.json as the tensors need it: with the stale fields patched when the pruning
        left them stale (state-dict-mismatch reports that), so that other checks read true widths."""
        config = self.checkpoint.config
        fit = self.build.config_fit
        if config is not None and fit is not None and fit.patch is not None:
            return apply_patch(config, fit.patch)
        return config

    @property
    def matching_reference(self) -> Reference | None:
        """The reference when the checkpoint is it or a pruned copy of it (widths comparable)."""
        reference = self.build.reference
        return reference if reference is not None and reference.matches else None

    def tensor(self, name: str) -> torch.Tensor:
        """The effective tensor (masks applied)."""
        return self.checkpoint.effective(name)

    def stats(self, name: str) -> TensorStats:
        if name not in self._stats:
            self._stats[name] = tensor_stats(self.tensor(name), self.options.zero_tol)
        return self._stats[name]

    def scan(self, layer: Layer) -> None:
        """Compute (and cache) everything the passes will ask of this layer's tensors."""
        for name in (*layer.params.values(), *layer.buffers.values()):
            self.stats(name)
        self.pattern(layer)

    def scan_all(self, layers: list[Layer] | None = None) -> None:
        """scan() every layer (or those given)."""
        layers = self.layers if layers is None else layers
        # Small tensors are counted together: a checkpoint of many costs a few calls, not one
        # each. Larger ones, one at a time below (masked ones are products made on the way).
        names = dict.fromkeys(
            n for layer in layers for n in (*layer.params.values(), *layer.buffers.values())
            if n not in self._stats and math.prod(self.checkpoint.meta(n)[0]) <= SMALL_TENSOR
        )
        for name, stats in zip(names, tensor_stats_many([self.tensor(n) for n in names], self.options.zero_tol)):
            self._stats[name] = stats
        for layer in layers:
            self.scan(layer)

    def scanned(self) -> dict[str, Any]:
        """What the scans so far computed, as plain data for adopt_scan()."""
        return {
            "stats": {name: stats.to_dict() for name, stats in self._stats.items()},
            "patterns": {name: pattern_to_dict(pattern) for name, pattern in self._patterns.items()},
        }

    def adopt_scan(self, scanned: dict[str, Any]) -> None:
        """Take over what scanned() returned for the same checkpoint and options elsewhere
        (in a bounded child process)."""
        self._stats.update({name: TensorStats.from_dict(stats) for name, stats in scanned["stats"].items()})
        self._patterns.update({name: pattern_from_dict(pattern) for name, pattern in scanned["patterns"].items()})

    def pattern(self, layer: Layer) -> WeightPattern | BatchNormPattern | None:
        """Zero pattern of a Conv/Linear weight or of a BatchNorm's scale and shift; None for others."""
        if layer.name not in self._patterns:
            self._patterns[layer.name] = self._compute_pattern(layer)
        return self._patterns[layer.name]

    def _compute_pattern(self, layer: Layer) -> WeightPattern | BatchNormPattern | None:
        weight = layer.weight
        if weight is None or layer.shape is None:
            return None
        stats = self.stats(weight)
        if stats.nonzero is None or stats.layout == "sparse":
            return None  # no data, or a layout whose zeros are not stored
        if (layer.is_conv or layer.is_linear) and len(layer.shape) >= 2:
            out, inp = layer.out_width(), layer.in_width()
            if stats.nonzero == stats.numel and out:
                # no zero at all: skip the structure scan
                return dense_pattern((out, inp, *layer.shape[2:]))  # type: ignore[arg-type]
            # patterns are about outputs: ConvTranspose and Conv1D store (in, out, ...)
            tensor = layer.oriented(self.tensor(weight))
            return weight_pattern(tensor, self.options.zero_tol, zeros=stats.numel - stats.nonzero)
        if layer.is_batchnorm and len(layer.shape) == 1:
            bias = layer.params.get("bias")
            return batchnorm_pattern(self.tensor(weight), self.tensor(bias) if bias else None, self.options.zero_tol)
        return None

    def graph(self) -> GraphTrace | None:
        """The model's op-by-op trace on its example input (None: no model, or it does not trace)."""
        if not self._graph:
            model = self.model
            self._graph.append(trace_graph(model.module, model.example_input) if model is not None else None)
        return self._graph[0]

    def layer(self, name: str) -> Layer | None:
        return next((layer for layer in self.layers if layer.name == name), None)
