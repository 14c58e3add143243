"""Multiply-accumulates of a model on an input: the one count the whole report uses.

The model runs once under a TorchDispatchMode and every aten op it executes is counted
with the FLOP formulas torch maintains in `torch.utils.flop_counter` (convolutions and
transposed ones, mm/addmm/bmm/baddbmm, the scaled_dot_product_attention kernels — what
`FlopCounterMode` counts), plus the kernels that registry lacks: the CPU flash-attention
kernel that `F.scaled_dot_product_attention` runs on CPU, and the fused fast paths of
`nn.MultiheadAttention` and `nn.TransformerEncoderLayer` (one aten op each). No JIT
tracing. Each op is attributed to the modules running when it ran, so the count breaks
down per module (inclusive, and each module's own ops); ops that ran without a formula
(elementwise, normalisation, pooling) are kept as data, not hidden.

torch's formulas count FLOPs (2 per multiply-add); everything here is MACs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from .inputs import ExampleInput, example_from

__all__ = ["MacCount", "count_macs", "count_macs_or_note"]

aten = torch.ops.aten


@dataclass
class MacCount:
    """MACs of one forward pass on one input."""

    #: All MACs of the forward pass on the input (every sample of its batch).
    total: int
    #: The input's batch (first dimension of its first tensor; 1 when it has none).
    batch: int
    input_shape: list[int]
    #: Module name ("" is the model) -> MACs of the ops that ran while it was running (its children included).
    by_module: dict[str, int] = field(default_factory=dict)
    #: Module name -> MACs of the ops it ran itself, outside any child module (attention matmuls, say).
    own_by_module: dict[str, int] = field(default_factory=dict)
    #: "aten::convolution" -> MACs.
    by_op: dict[str, int] = field(default_factory=dict)
    #: Ops that ran without a MAC formula (elementwise, norms, pooling, ...) -> how often they ran.
    uncounted_ops: dict[str, int] = field(default_factory=dict)
    #: Module name -> bytes its own ops read and wrote (tensor arguments and results, views excluded):
    #: with own_by_module, each layer's arithmetic intensity.
    own_bytes_by_module: dict[str, int] = field(default_factory=dict)

    @property
    def per_sample(self) -> int:
        return round(self.total / self.batch) if self.batch > 0 else self.total


def count_macs_or_note(model: nn.Module, example: ExampleInput | torch.Tensor, notes: list[str]) -> MacCount | None:
    """`count_macs`, or None with a line in `notes`: an op the counter's dispatch mode cannot
    run leaves the count out, it does not stop what needs the model."""
    try:
        return count_macs(model, example)
    except Exception as e:  # said in `notes`, not hidden
        notes.append(f"MACs not counted ({type(e).__name__}: {' '.join(str(e).split())[:160]})")
        return None


def count_macs(model: nn.Module, example: ExampleInput | torch.Tensor) -> MacCount:
    """Run `model` once on `example` (without autograd) and count its MACs. Raises what the model raises."""
    example = example_from(example)
    names = {module: name for name, module in model.named_modules()}
    tally = _Tally()
    handles = []
    for module in names:
        handles.append(module.register_forward_pre_hook(lambda m, args: tally.stack.append(names[m])))
        handles.append(module.register_forward_hook(lambda m, args, out: tally.pop(), always_call=True))
    try:
        with torch.no_grad(), _Counter(tally):
            example.call(model)
    finally:
        for handle in handles:
            handle.remove()
    first = example.tensors[0] if example.tensors else None
    batch = int(first.shape[0]) if first is not None and first.dim() else 1
    return MacCount(
        total=tally.flops // 2,
        batch=max(batch, 1),
        input_shape=list(example.shape),
        by_module={name: flops // 2 for name, flops in tally.inclusive.items()},
        own_by_module={name: flops // 2 for name, flops in tally.own.items()},
        by_op={op: flops // 2 for op, flops in tally.by_op.items()},
        uncounted_ops=dict(tally.uncounted),
        own_bytes_by_module=dict(tally.own_bytes),
    )


@dataclass
class _Tally:
    stack: list[str] = field(default_factory=list)
    flops: int = 0
    inclusive: dict[str, int] = field(default_factory=dict)
    own: dict[str, int] = field(default_factory=dict)
    by_op: dict[str, int] = field(default_factory=dict)
    uncounted: dict[str, int] = field(default_factory=dict)
    own_bytes: dict[str, int] = field(default_factory=dict)

    def pop(self) -> None:
        if self.stack:
            self.stack.pop()

    def add(self, op: str, flops: int) -> None:
        self.flops += flops
        self.by_op[op] = self.by_op.get(op, 0) + flops
        for name in set(self.stack):  # a module re-entered through itself counts once
            self.inclusive[name] = self.inclusive.get(name, 0) + flops
        if self.stack:
            innermost = self.stack[-1]
            self.own[innermost] = self.own.get(innermost, 0) + flops

    def skip(self, op: str) -> None:
        self.uncounted[op] = self.uncounted.get(op, 0) + 1

    def moved(self, nbytes: int) -> None:
        innermost = self.stack[-1] if self.stack else ""
        self.own_bytes[innermost] = self.own_bytes.get(innermost, 0) + nbytes


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape)


def _native_mha_flops(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, embed_dim: int, *args: Any, **kwargs: Any) -> int:
    """nn.MultiheadAttention's fused fast path: q/k/v projections, the two attention matmuls, the output projection."""
    batch, tq, _ = _shape(query)
    tk = _shape(key)[1]
    macs = batch * (tq + 2 * tk) * embed_dim * embed_dim + 2 * batch * tq * tk * embed_dim + batch * tq * embed_dim * embed_dim
    return 2 * macs


def _encoder_layer_flops(src: torch.Tensor, embed_dim: int, *args: Any, **kwargs: Any) -> int:
    """nn.TransformerEncoderLayer's fused fast path: self-attention as above, then the two feed-forward linears."""
    ffn_weight_1 = kwargs.get("ffn_weight_1", args[12] if len(args) > 12 else None)
    batch, tokens, _ = _shape(src)
    hidden = int(ffn_weight_1.shape[0]) if isinstance(ffn_weight_1, torch.Tensor) else 0
    attention = _native_mha_flops(src, src, src, embed_dim)
    return attention + 2 * 2 * batch * tokens * embed_dim * hidden


#: torch's formulas, and the kernels they do not cover. The CPU flash kernel takes
#: (query, key, value, ...) like the other SDPA kernels, so it shares their formula.
_FORMULAS: dict[Any, Callable[..., int]] = {
    **flop_registry,
    aten._scaled_dot_product_flash_attention_for_cpu: flop_registry[aten._scaled_dot_product_efficient_attention],
    aten._native_multi_head_attention: _native_mha_flops,
    aten._transformer_encoder_layer_fwd: _encoder_layer_flops,
}

#: Ops that move or allocate data and do no arithmetic: not listed as uncounted.
_DATA_MOVEMENT = {
    "cat", "stack", "clone", "copy_", "_to_copy", "contiguous", "empty", "empty_like", "empty_strided", "zeros",
    "zeros_like", "ones", "ones_like", "full", "full_like", "arange", "lift_fresh", "detach", "fill_", "zero_",
    "index_select", "index", "gather", "embedding", "constant_pad_nd", "repeat", "new_empty", "new_zeros",
    "new_ones", "scalar_tensor", "_local_scalar_dense", "dropout", "native_dropout", "masked_fill", "where",
    "_unsafe_view", "_reshape_alias",
}

#: Metadata queries that reach a dispatch mode for tensor subclasses with custom sizes (nested tensors).
_METADATA = {
    aten.is_contiguous.default, aten.is_contiguous.memory_format, aten.is_strides_like_format.default,
    aten.is_non_overlapping_and_dense.default, aten.size.default, aten.sym_size.default, aten.stride.default,
    aten.sym_stride.default, aten.storage_offset.default, aten.sym_storage_offset.default, aten.numel.default,
    aten.sym_numel.default, aten.dim.default, torch.ops.prim.layout.default,
}


class _Counter(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # By default torch wraps a mode's __torch_dispatch__ in dynamo.disable, which imports
        # torch._dynamo (about a second) on first use; nothing is compiled under this mode.
        return False

    def __init__(self, tally: _Tally) -> None:
        super().__init__()
        self.tally = tally

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _METADATA:
            return NotImplemented
        packet = func._overloadpacket
        formula = _FORMULAS.get(packet)
        if formula is None:
            # A composite op (linear, conv2d, matmul, SDPA under inference mode): count what it decomposes into.
            with self:
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        out = func(*args, **kwargs)
        if not func.is_view:
            self.tally.moved(_tensor_bytes(args) + _tensor_bytes(kwargs) + _tensor_bytes(out))
        name = f"aten::{packet.__name__}"
        if formula is not None:
            try:
                self.tally.add(name, int(formula(*args, **kwargs, out_val=out)))
            except Exception:  # shapes the formula cannot read (nested tensors): listed, not guessed
                self.tally.skip(name)
        elif not func.is_view and packet.__name__ not in _DATA_MOVEMENT:
            self.tally.skip(name)
        return out


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size() if value.layout == torch.strided else 0
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    return 0
