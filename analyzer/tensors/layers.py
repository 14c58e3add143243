"""Group a checkpoint's tensors into layers: one per module, with a type.

The type comes from the module tree when the file had one, otherwise it is inferred
from parameter names and shapes (a 4-d `weight` is a Conv2d, a 1-d one next to
`running_mean` a BatchNorm, a 2-d one whose bias runs along its second axis a
transformers `Conv1D`, ...).

Most layers store their weight (out, in, *kernel). ConvTranspose stores (in, out, ...)
and transformers' `Conv1D` (GPT-2's c_attn, c_fc, c_proj: a linear layer despite its
name) stores (in, out): `weight_axes` is the one rule every reader of widths and zero
patterns goes through.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from ..load import Checkpoint

__all__ = ["Layer", "build_layers", "neighbour_names", "adjacent", "weight_axes", "BUFFER_NAMES", "TRANSPOSED_LINEAR"]

#: Last name components that are buffers, not parameters, when no module says otherwise.
BUFFER_NAMES = frozenset({"running_mean", "running_var", "num_batches_tracked"})
#: transformers' `Conv1D` (GPT-2, GPT, ...): a linear layer whose weight is stored (in, out).
TRANSPOSED_LINEAR = "Conv1D"
_LINEAR_TYPES = frozenset({"Linear", "LazyLinear", "NonDynamicallyQuantizableLinear", TRANSPOSED_LINEAR})


@functools.lru_cache(maxsize=1024)
def weight_axes(type_name: str, rank: int = 2) -> tuple[int, int]:
    """(output axis, input axis) of a layer's stored weight of `rank` dimensions, from its type name."""
    if (type_name == TRANSPOSED_LINEAR and rank == 2) or type_name.startswith("ConvTranspose"):
        return 1, 0
    return 0, 1


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
    #: Shape of the `bias` parameter, when there is one.
    bias_shape: tuple[int, ...] | None = None

    @property
    def weight(self) -> str | None:
        return self.params.get("weight")

    @property
    def is_conv(self) -> bool:
        return _kind(self.type, len(self.shape) if self.shape is not None else None)[0]

    @property
    def is_linear(self) -> bool:
        return _kind(self.type, len(self.shape) if self.shape is not None else None)[1]

    @property
    def is_batchnorm(self) -> bool:
        return "BatchNorm" in self.type

    @property
    def out_axis(self) -> int:
        """The axis of the stored weight that holds the output channels (see weight_axes)."""
        return weight_axes(self.type, len(self.shape))[0] if self.shape is not None and len(self.shape) > 1 else 0

    def out_width(self, shape: tuple[int, ...] | None = None) -> int | None:
        """Output channels of a conv, linear or norm layer with weight `shape` (default: its own)."""
        shape = shape if shape is not None else self.shape
        if not shape or not (self.is_conv or self.is_linear or self.is_batchnorm):
            return None
        # ConvTranspose stores (in, out/groups, *k); groups are rarely >1 there.
        return shape[weight_axes(self.type, len(shape))[0]] if len(shape) > 1 else shape[0]

    def in_width(self, shape: tuple[int, ...] | None = None) -> int | None:
        """Input channels per group of a conv or linear layer with weight `shape` (default: its own)."""
        shape = shape if shape is not None else self.shape
        if not shape or len(shape) < 2 or not (self.is_conv or self.is_linear):
            return None
        return shape[weight_axes(self.type, len(shape))[1]]

    def oriented(self, tensor: torch.Tensor) -> torch.Tensor:
        """The weight viewed (out, in, *kernel), whatever its storage order."""
        return tensor.transpose(0, 1) if tensor.dim() > 1 and self.out_axis == 1 else tensor


@functools.lru_cache(maxsize=1024)
def _kind(type_name: str, rank: int | None) -> tuple[bool, bool]:
    """(is a convolution, is a linear layer) for a layer type and weight rank: asked of every
    layer by every pass, answered once per kind (a large checkpoint has a few kinds)."""
    # A class named Conv1D with a conv kernel is a convolution, not transformers' linear.
    linear = type_name in _LINEAR_TYPES and not (type_name == TRANSPOSED_LINEAR and rank is not None and rank != 2)
    return "Conv" in type_name and not linear, linear


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
    _settle_square_linears(list(layers.values()))
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
    if "bias" in layer.params:
        layer.bias_shape = tuple(checkpoint.meta(layer.params["bias"])[0])
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
        if "embed" in layer.name.lower():
            return "Embedding"
        return TRANSPOSED_LINEAR if _bias_runs_along_axis_1(layer) else "Linear"
    if rank == 1:
        if "running_mean" in layer.buffers or "running_var" in layer.buffers:
            return "BatchNorm"
        return "Norm"
    return "Parameters"


def _bias_runs_along_axis_1(layer: Layer) -> bool | None:
    """A 2-d weight's bias is as long as its outputs: along axis 1 it is stored (in, out).
    None when that cannot tell (no bias, or a square weight)."""
    bias = layer.bias_shape
    if bias is None or len(bias) != 1 or layer.shape is None or len(layer.shape) != 2 or layer.shape[0] == layer.shape[1]:
        return None
    return bias[0] == layer.shape[1]


def _settle_square_linears(layers: list[Layer]) -> None:
    """A square inferred linear layer (GPT-2's attn.c_proj) is stored like the layers that
    share its last name where their bias told (mlp.c_proj): one class per name in a model."""
    decided: dict[str, set[str]] = {}
    for layer in layers:
        if layer.type_source == "inferred" and layer.is_linear and _bias_runs_along_axis_1(layer) is not None:
            decided.setdefault(layer.name.rpartition(".")[2], set()).add(layer.type)
    for layer in layers:
        if layer.type_source != "inferred" or layer.type != "Linear" or _bias_runs_along_axis_1(layer) is not None:
            continue
        types = decided.get(layer.name.rpartition(".")[2], set())
        if types == {TRANSPOSED_LINEAR}:
            layer.type = TRANSPOSED_LINEAR
