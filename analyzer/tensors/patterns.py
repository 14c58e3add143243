"""Zero patterns of a weight tensor, vectorised and chunked over output channels.

For a weight of shape (out, in_per_group, *kernel) — Conv, Linear — it counts zeroed
output channels (filters), zeroed input channels, zeroed kernels, N:M groups along the
input dimension (the GEMM reduction dimension sparse tensor cores compress), and the
scattered element zeros left over. For BatchNorm it tells dead channels (scale and
shift 0) from constant ones (scale 0 alone).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "WeightPattern",
    "BatchNormPattern",
    "weight_pattern",
    "dense_pattern",
    "batchnorm_pattern",
    "NM_PATTERNS",
    "UNSTRUCTURED_MIN",
    "zero_mask",
    "code_tables",
    "pattern_to_dict",
    "pattern_from_dict",
]

#: Element zeros below this fraction of a tensor are incidental, not pruning.
UNSTRUCTURED_MIN = 0.05
#: Zeroed kernels count as a pattern when they hold this share of the zeros (a few fall
#: out of random sparsity by chance).
KERNEL_SHARE_MIN = 0.25
#: N:M patterns checked, strictest first: at most N non-zeros in every M consecutive inputs.
NM_PATTERNS: tuple[tuple[int, int], ...] = ((1, 4), (2, 4), (4, 8))
#: Elements per block of rows: bounds the masks a structure scan allocates.
_CHUNK_ELEMENTS = 1 << 20
#: Magnitudes of the fp4 (E2M1) codes 0-7; codes 8-15 are their negatives.
_E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
_UNSIGNED = {torch.uint8, torch.uint16, torch.uint32, torch.uint64, torch.bool}


@dataclass(frozen=True)
class WeightPattern:
    numel: int
    zeros: int
    out_channels: int
    in_channels: int
    kernel_size: int
    zero_out_channels: list[int] = field(default_factory=list)
    zero_in_channels: list[int] = field(default_factory=list)
    #: Zeroed kernels outside zeroed channels (only for kernels larger than 1 element).
    zero_kernels: int = 0
    #: Zeros that are neither in zeroed channels nor in zeroed kernels.
    unstructured_zeros: int = 0
    #: The N:M patterns that hold ("2:4", ...), strictest first.
    nm: list[str] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

    @property
    def unstructured_fraction(self) -> float:
        return self.unstructured_zeros / self.numel if self.numel else 0.0

    @property
    def label(self) -> str:
        if self.numel and self.zeros == self.numel:
            return "zero"
        if self.nm and self.sparsity >= 0.5 - 1e-9:
            return self.nm[0]
        parts = []
        if self.zero_out_channels:
            parts.append("zeroed-out")
        if self.zero_in_channels:
            parts.append("zeroed-in")
        if self.zero_kernels and self.zero_kernels * self.kernel_size >= KERNEL_SHARE_MIN * self.zeros:
            parts.append("kernels")
        if self.unstructured_fraction >= UNSTRUCTURED_MIN:
            parts.append("unstructured")
        return "+".join(parts) or "dense"


@dataclass(frozen=True)
class BatchNormPattern:
    channels: int
    #: scale and shift both 0: the channel outputs 0.
    dead: list[int] = field(default_factory=list)
    #: scale 0, shift not: the channel outputs a constant.
    constant: list[int] = field(default_factory=list)

    @property
    def label(self) -> str:
        if not self.dead and not self.constant:
            return "dense"
        return "+".join(p for p, c in (("dead", self.dead), ("constant", self.constant)) if c)


@functools.lru_cache(maxsize=4096)
def dense_pattern(shape: tuple[int, ...]) -> WeightPattern:
    """The pattern of a weight known to hold no zero (one shared, read-only value per shape:
    a transformer has thousands of layers of a few shapes)."""
    out_ch, in_ch = shape[0], shape[1]
    numel = math.prod(shape)
    return WeightPattern(numel=numel, zeros=0, out_channels=out_ch, in_channels=in_ch, kernel_size=numel // max(out_ch * in_ch, 1))


def weight_pattern(weight: torch.Tensor, zero_tol: float = 0.0, zeros: int | None = None) -> WeightPattern:
    """Zero pattern of a (out, in, *kernel) or (out, in) weight; `zeros` when already counted.

    Structure is looked for only where the zeros could form it: a zeroed filter needs a
    filter's worth of zeros, a zeroed input channel a column's, a zeroed kernel a kernel's,
    N:M at least half the weights; a weight with a handful of zeros costs no scan at all.
    """
    w = weight.detach()
    if w.is_quantized:
        w = w.dequantize()
    if w.dim() < 2:
        raise ValueError("weight_pattern needs a weight of 2 or more dimensions")
    out_ch, in_ch = w.shape[0], w.shape[1]
    numel = w.numel()
    kernel = numel // (out_ch * in_ch) if numel else 1
    flat_cols = in_ch * kernel
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, flat_cols))
    if zeros is None:
        zeros = sum(int(torch.count_nonzero(zero_mask(w[i : i + rows_per_chunk], zero_tol))) for i in range(0, out_ch, rows_per_chunk))
    find_rows = 0 < flat_cols <= zeros
    find_cols = 0 < out_ch * kernel <= zeros
    find_kernels = 1 < kernel <= zeros
    # N:M needs at least half the weights zero; below that the group counts are not worth computing.
    nm_max = {m: (0 if zeros and 2 * zeros >= numel and flat_cols % m == 0 else m + 1) for _, m in NM_PATTERNS}
    base = dict(numel=numel, zeros=zeros, out_channels=out_ch, in_channels=in_ch, kernel_size=kernel)
    if not (find_rows or find_cols or find_kernels or any(v <= m for m, v in nm_max.items())):
        return WeightPattern(**base, unstructured_zeros=zeros)
    zero_out: list[int] = []
    in_all_zero = torch.ones(in_ch, dtype=torch.uint8) if find_cols else torch.zeros(in_ch, dtype=torch.uint8)
    kernel_zero_total = 0
    for start in range(0, out_ch, rows_per_chunk):
        is_zero = zero_mask(w[start : start + rows_per_chunk], zero_tol)
        rows = is_zero.shape[0]
        if find_rows or find_cols or find_kernels:
            # Reductions of uint8 views: torch vectorises them, not those of bool.
            kernel_zero = _kernel_zero(is_zero.reshape(rows, in_ch, kernel), kernel).view(torch.uint8)
            if find_rows:
                zero_out += (torch.nonzero(kernel_zero.amin(1)).flatten() + start).tolist()
            if find_cols:
                in_all_zero = torch.minimum(in_all_zero, kernel_zero.amin(0))
            if find_kernels:
                kernel_zero_total += int(torch.count_nonzero(kernel_zero))
        for m in nm_max:
            if nm_max[m] <= m:
                counts = (~is_zero).reshape(rows, flat_cols // m, m).sum(2, dtype=torch.uint8)
                nm_max[m] = max(nm_max[m], int(counts.max()) if counts.numel() else 0)
    zero_in = torch.nonzero(in_all_zero).flatten().tolist()
    # Elements in zeroed rows or columns, counted once.
    structured = len(zero_out) * in_ch * kernel + len(zero_in) * out_ch * kernel - len(zero_out) * len(zero_in) * kernel
    # Zeroed kernels outside zeroed rows and columns (a kernel of one element is just an element).
    kernels_outside = 0
    if kernel > 1 and find_kernels:
        kernels_outside = kernel_zero_total - len(zero_out) * in_ch - len(zero_in) * (out_ch - len(zero_out))
        structured += kernels_outside * kernel
    nm = [f"{n}:{m}" for n, m in NM_PATTERNS if nm_max[m] <= n and zeros]
    return WeightPattern(
        **base,
        zero_out_channels=zero_out,
        zero_in_channels=zero_in,
        zero_kernels=max(kernels_outside, 0),
        unstructured_zeros=max(zeros - structured, 0),
        nm=nm,
    )


def _kernel_zero(is_zero: torch.Tensor, kernel: int) -> torch.Tensor:
    """(rows, in, kernel) zero mask → (rows, in): whether each kernel is all zero."""
    if kernel == 1:
        return is_zero.reshape(is_zero.shape[0], is_zero.shape[1])
    return is_zero.sum(2, dtype=torch.uint8 if kernel < 256 else torch.int32) == kernel


def zero_mask(values: torch.Tensor, zero_tol: float = 0.0) -> torch.Tensor:
    """The zero test, everywhere: |x| <= zero_tol, or exactly 0 (−0 included) when zero_tol is 0.

    One-byte floats (fp8; fp4 stored in pairs, a pair being zero when both its values are)
    are tested by their bit patterns, quantized tensors by their dequantized values."""
    tables = code_tables(values.dtype, zero_tol)
    if tables is not None:
        return tables[0][values.view(torch.uint8).int()]
    if values.is_quantized:
        values = values.dequantize()
    if values.dtype in _UNSIGNED:
        return values <= zero_tol if zero_tol > 0 else values == 0
    return values.abs() <= zero_tol if zero_tol > 0 else values == 0


@functools.lru_cache(maxsize=64)
def code_tables(dtype: torch.dtype, zero_tol: float = 0.0) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For a one-byte float type: which of the 256 bit patterns are zero (|x| <= zero_tol) and
    which are NaN or Inf, as boolean tables; None for every other dtype."""
    values = _code_values(dtype)
    if values is None:
        return None
    zero = (values.abs() <= zero_tol if zero_tol > 0 else values == 0).all(1)
    return zero, ~torch.isfinite(values).all(1)


def _code_values(dtype: torch.dtype) -> torch.Tensor | None:
    """(256, lanes) float32 values of every byte pattern: one lane for fp8, two for fp4 pairs."""
    if dtype.itemsize != 1 or not dtype.is_floating_point:
        return None
    codes = torch.arange(256, dtype=torch.int32)
    if dtype == getattr(torch, "float4_e2m1fn_x2", None):
        magnitudes = torch.tensor(_E2M1_MAGNITUDES)
        nibbles = torch.stack([codes & 0xF, codes >> 4], dim=1)
        return torch.where(nibbles >= 8, -magnitudes[nibbles & 7], magnitudes[nibbles & 7])
    # torch's own conversion defines each fp8 format's values (e8m0 has no zero, fnuz no −0).
    return codes.to(torch.uint8).view(dtype).to(torch.float32).reshape(256, 1)


def batchnorm_pattern(scale: torch.Tensor, shift: torch.Tensor | None, zero_tol: float = 0.0) -> BatchNormPattern:
    scale_zero = zero_mask(scale.detach(), zero_tol)
    if shift is None:
        shift_zero = torch.ones_like(scale_zero)
    else:
        shift_zero = zero_mask(shift.detach(), zero_tol)
    return BatchNormPattern(
        channels=scale.numel(),
        dead=torch.nonzero(scale_zero & shift_zero).flatten().tolist(),
        constant=torch.nonzero(scale_zero & ~shift_zero).flatten().tolist(),
    )


def pattern_to_dict(pattern: WeightPattern | BatchNormPattern | None) -> dict[str, Any] | None:
    """A pattern as plain data (what a bounded child sends back), its kind included."""
    if pattern is None:
        return None
    # Fields are ints and lists of ints: a shallow copy is the data (asdict's deep copy is slow).
    return {"kind": "batchnorm" if isinstance(pattern, BatchNormPattern) else "weight", **pattern.__dict__}


def pattern_from_dict(data: dict[str, Any] | None) -> WeightPattern | BatchNormPattern | None:
    if data is None:
        return None
    fields = {k: v for k, v in data.items() if k != "kind"}
    return BatchNormPattern(**fields) if data["kind"] == "batchnorm" else WeightPattern(**fields)
