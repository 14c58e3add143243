"""Per-tensor statistics, computed once, in one pass, without copying mapped files whole.

Every dtype and layout a checkpoint can hold is counted or said to be unreadable, never a
crash: floating point (fp64 … fp16/bf16, every fp8 and fp4 format), complex, integers
(uint16/32/64 included), bool, quantized (per tensor or per channel), sparse (COO, CSR,
CSC, BSR, BSC — their invariants checked first), meta and nested tensors.

One pass: each tensor is read in cache-sized chunks, and the zero count and the
finiteness check come from the same chunk while it is in cache; for fp16/bf16 both come
from one integer view of the bits, faster than `count_nonzero` on the floats themselves.
The zero test is patterns.zero_mask's (exactly 0, −0 included, or |x| <= zero_tol).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .patterns import code_tables, zero_mask

__all__ = ["TensorStats", "tensor_stats", "tensor_stats_many", "iter_chunks", "nbytes", "CHUNK_BYTES", "SMALL_TENSOR"]

#: Bytes per chunk: small enough that the second look at a chunk is served from cache.
CHUNK_BYTES = 1 << 20

_SPARSE_COMPRESSED = {torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc}
#: Signed views with the same bits, for unsigned types torch has few kernels for.
_SIGNED_VIEW = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}
#: Half types: (bit mask without the sign, smallest bit pattern of Inf/NaN).
_HALF_BITS = {torch.float16: (0x7FFF, 0x7C00), torch.bfloat16: (0x7FFF, 0x7F80)}
#: Dtypes whose small tensors are counted together (zero_mask and isfinite apply as they are).
_BATCHED = {
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex64, torch.complex128,
    torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
}
#: Elements of a tensor counted with others, and of one such batch (below torch's grain
#: size: one thread, no spinning partner on a busy machine).
SMALL_TENSOR = 1 << 12
_BATCH = 1 << 15


@dataclass(frozen=True)
class TensorStats:
    numel: int
    #: None when the tensor has no values to count (meta tensors, corrupt sparse ones).
    nonzero: int | None
    nonfinite: int = 0
    #: How the tensor was read when not a plain dense one: "quantized", "sparse", "meta", "nested".
    layout: str = "dense"
    #: Why the tensor is corrupt (a sparse tensor breaking its invariants), when it is.
    invalid: str | None = None

    @property
    def zero_fraction(self) -> float | None:
        if self.nonzero is None or self.numel == 0:
            return None
        return 1.0 - self.nonzero / self.numel

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)  # plain fields only: no deep copy (dataclasses.asdict) needed

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorStats:
        return cls(**data)


def tensor_stats(tensor: torch.Tensor, zero_tol: float = 0.0) -> TensorStats:
    tensor = tensor.detach()
    if tensor.is_meta:
        return TensorStats(_numel(tensor), None, layout="meta")
    if tensor.is_nested:
        return TensorStats(_numel(tensor), None, layout="nested")
    if tensor.layout is torch.sparse_coo or tensor.layout in _SPARSE_COMPRESSED:
        return _sparse_stats(tensor, zero_tol)
    if tensor.is_quantized:
        return _quantized_stats(tensor, zero_tol)
    if tensor.layout is not torch.strided:
        return TensorStats(_numel(tensor), None, layout=str(tensor.layout).removeprefix("torch."))
    nonzero, nonfinite = _count(tensor, zero_tol)
    return TensorStats(tensor.numel(), nonzero, nonfinite)


def tensor_stats_many(tensors: Sequence[torch.Tensor], zero_tol: float = 0.0) -> list[TensorStats]:
    """tensor_stats of each tensor. What small tensors cost is the calls, not the bytes: those
    of one dtype are laid end to end and counted together, a few calls for thousands."""
    results: list[TensorStats | None] = [None] * len(tensors)
    batches: dict[torch.dtype, list[int]] = {}
    for index, tensor in enumerate(tensors):
        if _batchable(tensor):
            batches.setdefault(tensor.dtype, []).append(index)
        else:
            results[index] = tensor_stats(tensor, zero_tol)
    for indices in batches.values():
        for batch in _batches(indices, tensors):
            for index, stats in zip(batch, _count_together([tensors[i] for i in batch], zero_tol)):
                results[index] = stats
    return results  # type: ignore[return-value]


def _batchable(tensor: torch.Tensor) -> bool:
    return (
        tensor.layout is torch.strided and tensor.dtype in _BATCHED and tensor.device.type == "cpu"
        and not (tensor.is_meta or tensor.is_quantized or tensor.is_nested) and tensor.numel() <= SMALL_TENSOR
    )


def _batches(indices: list[int], tensors: Sequence[torch.Tensor]) -> Iterator[list[int]]:
    batch: list[int] = []
    elements = 0
    for index in indices:
        if batch and elements + tensors[index].numel() > _BATCH:
            yield batch
            batch, elements = [], 0
        batch.append(index)
        elements += tensors[index].numel()
    if batch:
        yield batch


def _count_together(tensors: list[torch.Tensor], zero_tol: float) -> list[TensorStats]:
    """Zeros (the zero test of zero_mask) and non-finite values of each tensor, from one mask
    over all of them: each tensor's count is the difference of the running sum at its ends."""
    sizes = [t.numel() for t in tensors]
    with torch.no_grad():
        # One C++ call that lays them end to end (what DDP buckets use): a reshape and a
        # detach per tensor from Python cost more than counting thousands of small ones.
        flat = torch._C._nn.flatten_dense_tensors(list(tensors))
    ends = torch.tensor(sizes).cumsum(0)
    zeros = _per_segment(zero_mask(flat, zero_tol), ends)
    floating = flat.dtype.is_floating_point or flat.dtype.is_complex
    if floating and not bool(torch.isfinite(flat).all()):
        nonfinite = _per_segment(~torch.isfinite(flat), ends)
    else:
        nonfinite = [0] * len(tensors)
    return [TensorStats(size, size - zero, bad) for size, zero, bad in zip(sizes, zeros, nonfinite)]


def _per_segment(mask: torch.Tensor, ends: torch.Tensor) -> list[int]:
    running = torch.empty(mask.numel() + 1, dtype=torch.int64)
    running[0] = 0
    torch.cumsum(mask, 0, out=running[1:])
    at_ends = running[ends]
    return torch.diff(at_ends, prepend=running[:1]).tolist()


def nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def iter_chunks(tensor: torch.Tensor, chunk: int) -> Iterator[torch.Tensor]:
    """1-d pieces of at most about `chunk` elements covering `tensor` in order; only a piece,
    never the whole tensor, is copied when the tensor is not contiguous."""
    if tensor.is_contiguous() or tensor.dim() <= 1:
        flat = tensor.reshape(-1)
        for start in range(0, flat.numel(), chunk):
            yield flat[start : start + chunk]
        return
    row = math.prod(tensor.shape[1:])
    if row > chunk:
        for index in range(tensor.shape[0]):
            yield from iter_chunks(tensor[index], chunk)
        return
    rows = max(1, chunk // max(row, 1))
    for start in range(0, tensor.shape[0], rows):
        yield tensor[start : start + rows].reshape(-1)


# -- dense ---------------------------------------------------------------------------------


def _count(tensor: torch.Tensor, zero_tol: float) -> tuple[int, int]:
    """(non-zero, non-finite) elements of a dense strided tensor."""
    dtype = tensor.dtype
    tables = code_tables(dtype, zero_tol)
    if tables is not None:
        return _count_by_codes(tensor, *tables)
    chunk = max(1, CHUNK_BYTES // dtype.itemsize)
    if dtype in _HALF_BITS and zero_tol == 0:
        return _count_half(tensor, chunk, *_HALF_BITS[dtype])
    if dtype in _SIGNED_VIEW:
        tensor = tensor.view(_SIGNED_VIEW[dtype])
    floating = dtype.is_floating_point or dtype.is_complex
    if tensor.numel() <= chunk and zero_tol == 0:  # most tensors of a checkpoint: no chunking to do
        nonzero = int(torch.count_nonzero(tensor))
        return nonzero, (_nonfinite(tensor) if floating and not _sum_is_finite(tensor) else 0)
    nonzero = nonfinite = 0
    for part in iter_chunks(tensor, chunk):
        if zero_tol > 0 and floating:
            # NaN is not <= tol, so it counts as non-zero, as count_nonzero counts it.
            nonzero += part.numel() - int(torch.count_nonzero(zero_mask(part, zero_tol)))
        else:
            nonzero += int(torch.count_nonzero(part))
        if floating and not _sum_is_finite(part):
            nonfinite += _nonfinite(part)
    return nonzero, nonfinite


def _count_half(tensor: torch.Tensor, chunk: int, magnitude: int, inf_bits: int) -> tuple[int, int]:
    """fp16/bf16 from their bits: x == 0 iff the bits without the sign are 0 (−0 included),
    Inf or NaN iff they are at least the all-ones exponent."""
    nonzero = nonfinite = 0
    for part in iter_chunks(tensor.view(torch.int16), chunk):
        bits = part & magnitude
        nonzero += int(torch.count_nonzero(bits))
        if part.numel() and int(bits.amax()) >= inf_bits:
            nonfinite += int(torch.count_nonzero(bits >= inf_bits))
    return nonzero, nonfinite


def _count_by_codes(tensor: torch.Tensor, zero_codes: torch.Tensor, nonfinite_codes: torch.Tensor) -> tuple[int, int]:
    """One-byte floats (fp8, paired fp4): a histogram of the 256 bit patterns, weighed by
    which patterns are zero and which are NaN/Inf."""
    histogram = torch.zeros(256, dtype=torch.int64)
    for part in iter_chunks(tensor.view(torch.uint8), CHUNK_BYTES):
        histogram += torch.bincount(part, minlength=256)
    zeros = int(histogram[zero_codes].sum())
    return tensor.numel() - zeros, int(histogram[nonfinite_codes].sum())


def _sum_is_finite(part: torch.Tensor) -> bool:
    # A finite sum means no NaN and no Inf: one cheap reduction of a chunk still in cache.
    # A sum that overflows only costs the exact count. fp16 overflows early: its extremes.
    if part.is_complex():
        part = torch.view_as_real(part)
    if part.numel() == 0:
        return True
    if part.dtype in (torch.float16, torch.bfloat16):
        low, high = torch.aminmax(part)
        return math.isfinite(low.item()) and math.isfinite(high.item())
    return math.isfinite(part.sum().item())


def _nonfinite(part: torch.Tensor) -> int:
    # A complex value is finite when both its parts are (torch.isfinite says so).
    return part.numel() - int(torch.isfinite(part).sum())


# -- quantized, sparse -----------------------------------------------------------------------


def _quantized_stats(tensor: torch.Tensor, zero_tol: float) -> TensorStats:
    """The dequantized values, a block of rows at a time (per-channel tensors cannot be
    flattened; a block keeps its channels' scales)."""
    nonzero = nonfinite = 0
    if tensor.dim() == 0:
        blocks: Iterator[torch.Tensor] = iter([tensor])
    else:
        rows = max(1, (CHUNK_BYTES // 4) // max(1, math.prod(tensor.shape[1:])))
        blocks = (tensor[start : start + rows] for start in range(0, tensor.shape[0], rows))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated, still saved and loaded
        for block in blocks:
            values = block.dequantize()
            counted, bad = _count(values, zero_tol)
            nonzero += counted
            nonfinite += bad
    return TensorStats(tensor.numel(), nonzero, nonfinite, layout="quantized")


def _sparse_stats(tensor: torch.Tensor, zero_tol: float) -> TensorStats:
    problem = _sparse_invariant_violation(tensor)
    if problem:
        return TensorStats(tensor.numel(), None, layout="sparse", invalid=problem)
    values = tensor.coalesce().values() if tensor.layout is torch.sparse_coo else tensor.values()
    stats = tensor_stats(values, zero_tol)
    return TensorStats(tensor.numel(), stats.nonzero, stats.nonfinite, layout="sparse")


def _sparse_invariant_violation(tensor: torch.Tensor) -> str | None:
    # Indices out of bounds make coalesce() and every kernel read out of bounds: check first,
    # by rebuilding the tensor from its parts with torch's invariant checks on.
    try:
        with torch.sparse.check_sparse_tensor_invariants():
            if tensor.layout is torch.sparse_coo:
                torch.sparse_coo_tensor(tensor._indices(), tensor._values(), tensor.shape)
            else:
                compressed, plain = _compressed_indices(tensor)
                torch.sparse_compressed_tensor(compressed, plain, tensor.values(), tensor.shape, layout=tensor.layout)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        return " ".join(str(e).split())[:200]
    return None


def _compressed_indices(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if tensor.layout in (torch.sparse_csr, torch.sparse_bsr):
        return tensor.crow_indices(), tensor.col_indices()
    return tensor.ccol_indices(), tensor.row_indices()


def _numel(tensor: torch.Tensor) -> int:
    try:
        return tensor.numel()
    except RuntimeError:  # nested tensors of ragged sizes
        return sum(t.numel() for t in tensor.unbind())
