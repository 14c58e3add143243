"""Reading torch's legacy (pre-1.6, non-zip) format with the restricted unpickler.

The format is five pickles in a row — magic number, protocol version, system info, the
object, the list of storage keys — followed by each storage as an 8-byte element count
and raw bytes. Used when torch's own weights_only reader refuses a file, and for the
storages that plain pickles of tensors embed (`torch.storage._load_from_bytes`).
"""

from __future__ import annotations

import pickle
import struct
from typing import IO, Any

import torch

from .policy import GlobalPolicy
from .unpickler import restricted_load

__all__ = ["load_legacy", "LEGACY_MAGIC_NUMBER"]

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001


def load_legacy(stream: IO[bytes], policy: GlobalPolicy, size_limit: int) -> Any:
    """The object in a legacy torch stream; storages may not claim more than `size_limit` bytes."""
    if restricted_load(stream, policy) != LEGACY_MAGIC_NUMBER:
        raise pickle.UnpicklingError("not a legacy torch file (bad magic number)")
    if restricted_load(stream, policy) != _PROTOCOL_VERSION:
        raise pickle.UnpicklingError("unsupported legacy torch protocol version")
    restricted_load(stream, policy)  # system info: endianness and type sizes
    storages: dict[str, torch.storage.TypedStorage] = {}
    claimed = 0

    def persistent_load(pid: Any) -> Any:
        nonlocal claimed
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel, view = pid
        dtype = getattr(storage_type, "dtype", None)
        if not isinstance(dtype, torch.dtype) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"malformed storage reference {pid!r:.80}")
        key = str(key)
        if key not in storages:
            nbytes = numel * torch._utils._element_size(dtype)
            claimed += nbytes
            if claimed > size_limit:
                raise pickle.UnpicklingError(f"storages claim {claimed} bytes, more than the file's {size_limit}")
            storages[key] = torch.storage.TypedStorage(wrap_storage=torch.UntypedStorage(nbytes), dtype=dtype, _internal=True)
        storage = storages[key]
        if view is None:
            return storage
        _view_key, offset, view_numel = view
        size = torch._utils._element_size(dtype)
        return torch.storage.TypedStorage(
            wrap_storage=storage._untyped_storage[offset * size : (offset + view_numel) * size], dtype=dtype, _internal=True
        )

    result = restricted_load(stream, policy, persistent_load)
    keys = restricted_load(stream, policy)
    if not isinstance(keys, list):
        raise pickle.UnpicklingError("legacy storage key list missing")
    for key in keys:
        storage = storages[str(key)]
        _fill_storage(stream, storage._untyped_storage, torch._utils._element_size(storage.dtype))
    return result


def _fill_storage(stream: IO[bytes], storage: torch.UntypedStorage, element_size: int) -> None:
    header = stream.read(8)
    if len(header) != 8:
        raise pickle.UnpicklingError("legacy storage data cut short")
    (numel,) = struct.unpack("<q", header)
    nbytes = numel * element_size
    if numel < 0 or nbytes != storage.nbytes():
        raise pickle.UnpicklingError("legacy storage size disagrees with its reference")
    data = stream.read(nbytes)
    if len(data) != nbytes:
        raise pickle.UnpicklingError("legacy storage data cut short")
    if nbytes:
        target = torch.empty(0, dtype=torch.uint8).set_(storage)
        target.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
