"""A loaded torch zip checkpoint described in JSON, so the bounded child's load is not redone.

The child (isolation.py) reads the file under its limits; when what it found is plain —
no globals beyond torch's tensor allowlist, no module tree, every tensor a dense view of a
storage that `torch.load(mmap=True)` mapped from the file — it describes each tensor as
(file offset of its storage, dtype, size, stride, storage offset) and the checkpoint's
other fields as plain values. The parent maps the file the way torch.load does and
rebuilds the same tensors from that description, without unpickling anything: the most
common checkpoint (a state dict or a training dict) is read once, not twice.

Anything else (module trees, placeholders, legacy or plain pickles, tensors a reader
copied into memory, a big-endian archive whose storages torch swapped in memory) is not
described, and the parent loads the file again: the child has shown that this load stays
within its limits.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .checkpoint import Checkpoint, DictTensorStore
from .extract import find_masks
from .plain import mmap_shared, stored_little_endian

__all__ = ["describe_checkpoint", "rebuild_checkpoint"]

_VERSION = 1


@dataclass(frozen=True)
class _Mapping:
    start: int
    end: int
    file_offset: int


def describe_checkpoint(checkpoint: Checkpoint) -> dict[str, Any] | None:
    """The checkpoint as JSON-able data, or None when it is not plain enough to be rebuilt from it."""
    if checkpoint.format != "torch-zip" or checkpoint.module is not None or checkpoint.tp_state is not None:
        return None
    if checkpoint.globals or checkpoint.refused is not None or checkpoint.config is not None:
        return None
    if not isinstance(checkpoint.tensors, DictTensorStore) or not stored_little_endian(checkpoint.path):
        return None
    mappings = _file_mappings(checkpoint.path)
    if not mappings:
        return None
    starts = [m.start for m in mappings]
    tensors = []
    for name, tensor in checkpoint.tensors.items():
        record = _describe_tensor(name, tensor, mappings, starts)
        if record is None:
            return None
        tensors.append(record)
    return {
        "version": _VERSION,
        "container": checkpoint.container,
        "loader": checkpoint.loader,
        "tensors": tensors,
        "module_types": dict(checkpoint.module_types),
        "buffers": sorted(checkpoint.buffers),
        "weights_key": checkpoint.weights_key,
        "other_weight_keys": list(checkpoint.other_weight_keys),
        "stripped_prefix": checkpoint.stripped_prefix,
        "metadata": checkpoint.metadata,
        "notes": list(checkpoint.notes),
    }


def _describe_tensor(name: Any, tensor: Any, mappings: list[_Mapping], starts: list[int]) -> list[Any] | None:
    if not isinstance(name, str) or type(tensor) not in (torch.Tensor, nn.Parameter):
        return None
    if tensor.layout is not torch.strided or tensor.device.type != "cpu" or tensor.is_quantized:
        return None
    if tensor.is_conj() or tensor.is_neg():
        return None
    storage = tensor.untyped_storage()
    nbytes = storage.nbytes()
    offset: int | None = None
    if nbytes:
        offset = _file_offset(storage.data_ptr(), nbytes, mappings, starts)
        if offset is None:
            return None  # a storage a reader copied into memory: not in the file mapping
    return [
        name,
        str(tensor.dtype).removeprefix("torch."),
        offset,
        nbytes,
        tensor.storage_offset(),
        list(tensor.shape),
        list(tensor.stride()),
        bool(tensor.requires_grad),
        isinstance(tensor, nn.Parameter),
    ]


def _file_mappings(path: Path) -> list[_Mapping]:
    """The address ranges at which this process maps `path` (Linux /proc; empty elsewhere)."""
    try:
        stat = os.stat(path)
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    device = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}"
    found = []
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 6 or parts[4] != str(stat.st_ino) or parts[3] != device:
            continue
        start, _, end = parts[0].partition("-")
        found.append(_Mapping(int(start, 16), int(end, 16), int(parts[2], 16)))
    return sorted(found, key=lambda m: m.start)


def _file_offset(pointer: int, nbytes: int, mappings: list[_Mapping], starts: list[int]) -> int | None:
    index = bisect.bisect_right(starts, pointer) - 1
    if index < 0:
        return None
    mapping = mappings[index]
    if pointer + nbytes > mapping.end:
        return None
    return pointer - mapping.start + mapping.file_offset


def rebuild_checkpoint(path: Path, description: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint `describe_checkpoint` described, its tensors mapped from `path` as
    torch.load(mmap=True) maps them; None when the description does not fit the file."""
    if description.get("version") != _VERSION:
        return None
    size = path.stat().st_size
    try:
        whole = torch.UntypedStorage.from_file(str(path), mmap_shared(), size) if size else None
        tensors = _rebuild_tensors(description["tensors"], whole, size)
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    if tensors is None:
        return None
    return Checkpoint(
        path=path,
        format="torch-zip",
        container=description["container"],
        tensors=DictTensorStore(tensors),
        loader=description["loader"],
        file_size=size,
        module_types=dict(description["module_types"]),
        buffers=set(description["buffers"]),
        weights_key=description["weights_key"],
        other_weight_keys=list(description["other_weight_keys"]),
        stripped_prefix=description["stripped_prefix"],
        metadata=dict(description["metadata"]),
        masks=find_masks(list(tensors)),
        notes=list(description["notes"]),
    )


def _rebuild_tensors(records: list[list[Any]], whole: torch.UntypedStorage | None, size: int) -> dict[str, torch.Tensor] | None:
    storages: dict[tuple[int, int], torch.UntypedStorage] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name, dtype_name, offset, nbytes, storage_offset, shape, stride, requires_grad, parameter in records:
        dtype = getattr(torch, dtype_name, None)
        if not isinstance(dtype, torch.dtype) or not isinstance(nbytes, int) or nbytes < 0:
            return None
        if nbytes == 0:
            storage = torch.UntypedStorage(0)
        else:
            if whole is None or not isinstance(offset, int) or offset < 0 or offset + nbytes > size:
                return None
            key = (offset, nbytes)
            storage = storages.get(key)
            if storage is None:
                storage = storages[key] = whole[offset : offset + nbytes]
        tensor = torch.empty(0, dtype=dtype).set_(storage, storage_offset, shape, stride)
        if parameter:
            tensor = nn.Parameter(tensor, requires_grad=bool(requires_grad))
        elif requires_grad:
            tensor.requires_grad_(True)
        tensors[name] = tensor
    return tensors

