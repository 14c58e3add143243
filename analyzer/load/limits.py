"""How much memory and CPU time reading a file, or running a model rebuilt from one, may take.

A checkpoint can only hold as many bytes of tensors as the file has, and reading it costs
time in proportion to its bytes and to its records (zip entries, pickle opcodes, tensors);
a file that asks for more (a `torch.Tensor(10**10)` REDUCE, a storage that claims
terabytes, a pickle that spins) is lying. The budgets below are generous for every
legitimate file of that size and shape — 50,000 small tensors included, on a busy machine
— and they are enforced in a child process (isolation.py), never in the caller's.

CPU time, not wall-clock: a machine shared with other work slows a load down without
making it any more suspicious.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from .isolation import ChildLimits
from .sniff import Format

__all__ = ["limits_for", "forward_limits", "count_records", "LIMITS_NOTE"]

_GB = 1 << 30
#: A minute of CPU for any file, plus this much per GB: the scan, CRCs and tensor rebuilds.
_BASE_CPU_S = 60.0
_CPU_S_PER_GB = 60.0
#: Per record (zip entry, ~16 bytes of pickle): the pure-Python unpicklers run at a few µs
#: an opcode and torch rebuilds a tensor in ~50 µs; this is twenty times that.
_CPU_S_PER_RECORD = 1e-4
_BYTES_PER_RECORD = 4096
#: Bytes of pickle per record: torch's data.pkl spends ~100 bytes and ~6 objects per tensor.
_PICKLE_BYTES_PER_RECORD = 16
#: Activations of the first forward run, beyond the model's own weights.
_ACTIVATIONS = 2 * _GB

LIMITS_NOTE = (
    "this platform cannot fork a child process, so the file was read (and its model run) "
    "in this process without memory or CPU limits"
)


def limits_for(file_size: int, records: int = 0, memory_bytes: int | None = None, cpu_seconds: float | None = None) -> ChildLimits:
    """Reading a file: room for it mapped once and copied once, plus 2 GB and 4 KB a record
    (at most another copy of the file); a minute of CPU, plus a minute per GB and 100 µs a record."""
    record_memory = min(_BYTES_PER_RECORD * records, 2 * file_size + 2 * _GB)
    return ChildLimits(
        memory_bytes=memory_bytes if memory_bytes is not None else 2 * file_size + 2 * _GB + record_memory,
        cpu_seconds=cpu_seconds if cpu_seconds is not None else (
            _BASE_CPU_S + _CPU_S_PER_GB * file_size / _GB + _CPU_S_PER_RECORD * records
        ),
    )


def forward_limits(file_size: int) -> ChildLimits:
    """The first forward run of a model whose layers come from a file: the reading budget
    plus 2 GB of activations; its CPU time as reading the file would be allowed."""
    reading = limits_for(file_size)
    assert reading.memory_bytes is not None
    return ChildLimits(memory_bytes=reading.memory_bytes + _ACTIVATIONS, cpu_seconds=reading.cpu_seconds)


def count_records(path: Path, fmt: Format) -> int:
    """An upper estimate of the records a load walks, from a few bytes of the file (never
    a parser of the whole): zip entries and the first entry's pickle for archives, the
    whole file as pickle for plain and legacy pickles, the header for safetensors."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            if fmt in (Format.TORCH_ZIP, Format.TORCHSCRIPT):
                entries, first_entry = _zip_directory(f, size)
                return entries + first_entry // _PICKLE_BYTES_PER_RECORD
            if fmt is Format.SAFETENSORS:
                (header,) = struct.unpack("<Q", f.read(8))
                return min(header, size) // _PICKLE_BYTES_PER_RECORD
    except (OSError, struct.error):
        return 0
    return size // _PICKLE_BYTES_PER_RECORD


def _zip_directory(f: BinaryIO, size: int) -> tuple[int, int]:
    """(entry count, stored size of the first entry) from the end-of-central-directory
    record (zip64's when it says so) and the first central-directory record: torch.save
    writes data.pkl first, and its local header leaves the sizes to a data descriptor."""
    tail_size = min(size, 22 + 0xFFFF)
    f.seek(size - tail_size)
    tail = f.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return 0, 0
    entries, directory = struct.unpack_from("<H", tail, at + 10)[0], struct.unpack_from("<I", tail, at + 16)[0]
    if (entries == 0xFFFF or directory == 0xFFFFFFFF) and at >= 20 and tail[at - 20 : at - 16] == b"PK\x06\x07":
        (zip64_at,) = struct.unpack_from("<Q", tail, at - 12)
        if 0 <= zip64_at <= size - 56:
            f.seek(zip64_at)
            record = f.read(56)
            if record[:4] == b"PK\x06\x06":
                entries, directory = struct.unpack_from("<QQ", record, 32)[0], struct.unpack_from("<Q", record, 48)[0]
    entries = min(entries, size // 30)  # a local header alone is 30 bytes
    first = 0
    if 0 <= directory <= size - 46:
        f.seek(directory)
        record = f.read(46)
        if record[:4] == b"PK\x01\x02":
            compressed, uncompressed = struct.unpack_from("<II", record, 20)
            first = size if 0xFFFFFFFF in (compressed, uncompressed) else min(max(compressed, uncompressed), size)
    return entries, first
