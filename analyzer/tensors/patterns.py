"""Zero patterns of a weight tensor, vectorised and chunked over output channels.

For a weight of shape (out, in_per_group, *kernel) — Conv, Linear — it counts zeroed
output channels (filters), zeroed input channels, zeroed kernels, N:M groups along the
input dimension (the GEMM reduction dimension sparse tensor cores compress), and the
scattered element zeros left over. For BatchNorm it tells dead channels (scale and
shift 0) from constant ones (scale 0 alone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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
]

#: Element zeros below this fraction of a tensor are incidental, not pruning.
UNSTRUCTURED_MIN = 0.05
#: Zeroed kernels count as a pattern when they hold this share of the zeros (a few fall
#: out of random sparsity by chance).
KERNEL_SHARE_MIN = 0.25
#: N:M patterns checked, strictest first: at most N non-zeros in every M consecutive inputs.
NM_PATTERNS: tuple[tuple[int, int], ...] = ((1, 4), (2, 4), (4, 8))
_CHUNK_ELEMENTS = 1 << 24


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


def dense_pattern(shape: tuple[int, ...]) -> WeightPattern:
    """The pattern of a weight known to hold no zero."""
    out_ch, in_ch = shape[0], shape[1]
    numel = math.prod(shape)
    return WeightPattern(numel=numel, zeros=0, out_channels=out_ch, in_channels=in_ch, kernel_size=numel // max(out_ch * in_ch, 1))


def weight_pattern(weight: torch.Tensor, zero_tol: float = 0.0, zeros: int | None = None) -> WeightPattern:
    """Zero pattern of a (out, in, *kernel) or (out, in) weight; `zeros` when already counted."""
    w = weight.detach()
    if w.is_quantized:
        w = w.dequantize()
    if w.dim() < 2:
        raise ValueError("weight_pattern needs a weight of 2 or more dimensions")
    out_ch, in_ch = w.shape[0], w.shape[1]
    kernel = w[0, 0].numel() if w.numel() else 1
    flat_cols = w[0].numel()
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, flat_cols))
    if zeros is None:
        zeros = sum(int(torch.count_nonzero(zero_mask(w[i : i + rows_per_chunk], zero_tol))) for i in range(0, out_ch, rows_per_chunk))
    # N:M needs at least half the weights zero; below that the group counts are not worth computing.
    nm_max = {m: (0 if 2 * zeros >= w.numel() and flat_cols % m == 0 else m + 1) for _, m in NM_PATTERNS}
    zero_out: list[int] = []
    in_all_zero = torch.ones(in_ch, dtype=torch.bool)
    kernel_zero_total = 0
    for start in range(0, out_ch, rows_per_chunk):
        is_zero = zero_mask(w[start : start + rows_per_chunk], zero_tol)
        rows = is_zero.shape[0]
        kernel_zero = is_zero.reshape(rows, in_ch, kernel).all(2)
        row_zero = kernel_zero.all(1)
        zero_out += (torch.nonzero(row_zero).flatten() + start).tolist()
        in_all_zero &= kernel_zero.all(0)
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
    if kernel > 1:
        kernels_outside = kernel_zero_total - len(zero_out) * in_ch - len(zero_in) * (out_ch - len(zero_out))
        structured += kernels_outside * kernel
    nm = [f"{n}:{m}" for n, m in NM_PATTERNS if nm_max[m] <= n and zeros]
    return WeightPattern(
        numel=w.numel(),
        zeros=zeros,
        out_channels=out_ch,
        in_channels=in_ch,
        kernel_size=kernel,
        zero_out_channels=zero_out,
        zero_in_channels=zero_in,
        zero_kernels=max(kernels_outside, 0),
        unstructured_zeros=max(zeros - structured, 0),
        nm=nm,
    )


def zero_mask(values: torch.Tensor, zero_tol: float = 0.0) -> torch.Tensor:
    """The zero test, everywhere: |x| <= zero_tol, or exactly 0 when zero_tol is 0."""
    return values.abs() <= zero_tol if zero_tol > 0 else values == 0


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
