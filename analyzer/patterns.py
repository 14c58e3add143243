"""Zero patterns of a weight tensor, vectorised and chunked over output channels.

For a weight of shape (out, in_per_group, *kernel) — Conv, Linear — it counts zeroed
output channels (filters), zeroed input channels, zeroed kernels, N:M groups along the
input dimension (the GEMM reduction dimension sparse tensor cores compress), and the
scattered element zeros left over. For BatchNorm it tells dead channels (scale and
shift 0) from constant ones (scale 0 alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["WeightPattern", "BatchNormPattern", "weight_pattern", "batchnorm_pattern", "NM_PATTERNS", "UNSTRUCTURED_MIN"]

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


def weight_pattern(weight: torch.Tensor, zero_tol: float = 0.0) -> WeightPattern:
    """Zero pattern of a (out, in, *kernel) or (out, in) weight."""
    w = weight.detach()
    if w.is_quantized:
        w = w.dequantize()
    if w.dim() < 2:
        raise ValueError("weight_pattern needs a weight of 2 or more dimensions")
    out_ch, in_ch = w.shape[0], w.shape[1]
    kernel = w[0, 0].numel() if w.numel() else 1
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, w[0].numel()))
    zeros = 0
    zero_out: list[int] = []
    in_zero_counts = torch.zeros(in_ch, dtype=torch.int64)
    kernel_zero_total = 0
    kernels_in_zero_out = 0
    nm_max = {m: 0 for _, m in NM_PATTERNS}
    flat_cols = w[0].numel()
    for start in range(0, out_ch, rows_per_chunk):
        chunk = w[start : start + rows_per_chunk]
        is_zero = (chunk.abs() <= zero_tol) if zero_tol > 0 else (chunk == 0)
        per_kernel = is_zero.reshape(chunk.shape[0], in_ch, kernel)
        zeros += int(is_zero.sum())
        row_zero = per_kernel.reshape(chunk.shape[0], -1).all(1)
        zero_out += (torch.nonzero(row_zero).flatten() + start).tolist()
        in_zero_counts += per_kernel.sum(dim=(0, 2))
        kernel_zero = per_kernel.all(2)
        kernel_zero_total += int(kernel_zero.sum())
        kernels_in_zero_out += int(row_zero.sum()) * in_ch
        nonzero = (~is_zero).reshape(chunk.shape[0], flat_cols)
        for m in nm_max:
            if flat_cols % m == 0 and nm_max[m] <= m:
                groups = nonzero.reshape(chunk.shape[0], flat_cols // m, m).sum(2)
                nm_max[m] = max(nm_max[m], int(groups.max()) if groups.numel() else 0)
            else:
                nm_max[m] = m + 1
    zero_in = torch.nonzero(in_zero_counts == out_ch * kernel).flatten().tolist()
    # Elements in zeroed rows or columns, counted once.
    structured = len(zero_out) * in_ch * kernel + len(zero_in) * out_ch * kernel - len(zero_out) * len(zero_in) * kernel
    # Zeroed kernels outside zeroed rows and columns (a kernel of one element is just an element).
    kernels_outside = 0
    if kernel > 1:
        kernels_outside = kernel_zero_total - kernels_in_zero_out - len(zero_in) * (out_ch - len(zero_out))
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


def batchnorm_pattern(scale: torch.Tensor, shift: torch.Tensor | None, zero_tol: float = 0.0) -> BatchNormPattern:
    scale_zero = (scale.detach().abs() <= zero_tol) if zero_tol > 0 else scale.detach() == 0
    if shift is None:
        shift_zero = torch.ones_like(scale_zero)
    else:
        shift_zero = (shift.detach().abs() <= zero_tol) if zero_tol > 0 else shift.detach() == 0
    return BatchNormPattern(
        channels=scale.numel(),
        dead=torch.nonzero(scale_zero & shift_zero).flatten().tolist(),
        constant=torch.nonzero(scale_zero & ~shift_zero).flatten().tolist(),
    )
