"""Group a checkpoint's tensors into layers: one per module, with a type.

The type comes from the module tree when the file had one, otherwise it is inferred
from parameter names and shapes (a 4-d `weight` is a Conv2d, a 1-d one next to
`running_mean` a BatchNorm, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from ..load import Checkpoint

__all__ = ["Layer", "build_layers", "neighbour_names", "adjacent", "BUFFER_NAMES"]

#: Last name components that are buffers, not parameters, when no module says otherwise.
BUFFER_NAMES = frozenset({"running_mean", "running_var", "num_batches_tracked"})


@dataclass
class Layer:
    name: str
    type: str
    #: "module" when the type came from the module tree, "inferred" otherwise.
    type_source: str
    #: Local parameter name ("weight", "bias") -> effective tensor name in the checkpoint.
    params: dict[str, str] = field(default_factory=dict)
    buffers: dict[str, str] = field(default_factory=dict)
    masked: bool = False
    shape: tuple[int, ...] | None = None
    dtype: torch.dtype | None = None

    @property
    def weight(self) -> str | None:
        return self.params.get("weight")

    @property
    def is_conv(self) -> bool:
        return "Conv" in self.type

    @property
    def is_linear(self) -> bool:
        return self.type in ("Linear", "LazyLinear", "NonDynamicallyQuantizableLinear")

    @property
    def is_batchnorm(self) -> bool:
        return "BatchNorm" in self.type

    def out_width(self, shape: tuple[int, ...] | None = None) -> int | None:
        """Output channels of a conv, linear or norm layer with weight `shape` (default: its own)."""
        shape = shape if shape is not None else self.shape
        if not shape or not (self.is_conv or self.is_linear or self.is_batchnorm):
            return None
        # ConvTranspose stores (in, out/groups, *k); groups are rarely >1 there.
        return shape[1] if self.type.startswith("ConvTranspose") and len(shape) > 1 else shape[0]


def neighbour_names(name: str, forward: bool) -> list[str]:
    """Where a BatchNorm sits next to its conv: conv1/bn1, cv1.conv/cv1.bn, seq.0/seq.1.
    forward: the names after a conv; otherwise the names before a BatchNorm."""
    parent, _, last = name.rpartition(".")
    prefix = f"{parent}." if parent else ""
    names = []
    swaps = (("conv", "bn"), ("Conv", "BN")) if forward else (("bn", "conv"), ("BN", "Conv"))
    for old, new in swaps:
        if old in last:
            names.append(prefix + last.replace(old, new))
    if last.isdigit():
        names.append(prefix + str(int(last) + (1 if forward else -1)))
    return names


_T = TypeVar("_T")


def adjacent(name: str, forward: bool, candidates: Mapping[str, _T], accept: Callable[[_T], bool]) -> _T | None:
    """The first of `name`'s neighbours (neighbour_names) among `candidates` that `accept` takes."""
    for neighbour in neighbour_names(name, forward):
        candidate = candidates.get(neighbour)
        if candidate is not None and accept(candidate):
            return candidate
    return None


def build_layers(checkpoint: Checkpoint) -> list[Layer]:
    layers: dict[str, Layer] = {}
    for tensor_name in checkpoint.effective_names():
        module, _, local = tensor_name.rpartition(".")
        layer = layers.get(module)
        if layer is None:
            layer = layers[module] = Layer(name=module, type="", type_source="inferred")
        if _is_buffer(checkpoint, tensor_name, local):
            layer.buffers[local] = tensor_name
        else:
            layer.params[local] = tensor_name
        if tensor_name in checkpoint.masks:
            layer.masked = True
    for layer in layers.values():
        _set_shape_and_type(checkpoint, layer)
    return list(layers.values())


def _is_buffer(checkpoint: Checkpoint, name: str, local: str) -> bool:
    if name in checkpoint.masks:
        return False
    if checkpoint.buffers:
        return name in checkpoint.buffers
    return local in BUFFER_NAMES


def _set_shape_and_type(checkpoint: Checkpoint, layer: Layer) -> None:
    main = layer.params.get("weight") or next(iter(layer.params.values()), None)
    if main is not None:
        layer.shape, layer.dtype = checkpoint.meta(main)
    module_type = checkpoint.module_types.get(layer.name)
    if module_type:
        layer.type, layer.type_source = module_type, "module"
    else:
        layer.type = _infer_type(layer)


def _infer_type(layer: Layer) -> str:
    rank = len(layer.shape) if layer.shape is not None else None
    if "weight" not in layer.params:
        return "Parameters" if layer.params else "Buffers"
    if rank in (3, 4, 5):
        return f"Conv{rank - 2}d"
    if rank == 2:
        return "Embedding" if "embed" in layer.name.lower() else "Linear"
    if rank == 1:
        if "running_mean" in layer.buffers or "running_var" in layer.buffers:
            return "BatchNorm"
        return "Norm"
    return "Parameters"
