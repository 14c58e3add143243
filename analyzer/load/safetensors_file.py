"""safetensors: no code, only a JSON header and raw bytes; read lazily with safe_open."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import InputError
from .checkpoint import TensorStore

__all__ = ["SafetensorsStore", "open_safetensors", "read_header", "dtype_of", "MAX_HEADER_BYTES"]

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024


class SafetensorsStore(TensorStore):
    """Tensors of a safetensors file, each read only when asked for."""

    may_share_storage = False

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self._header = {k: v for k, v in header.items() if k != "__metadata__"}
        self._handle = safe_open(str(path), framework="pt", device="cpu")

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._header:
            raise KeyError(name)
        return self._handle.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._header)

    def __len__(self) -> int:
        return len(self._header)

    def meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        entry = self._header[name]
        return tuple(entry["shape"]), dtype_of(entry["dtype"])


def dtype_of(name: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype name (uint8 for the ones torch lacks)."""
    return _DTYPES.get(name, torch.uint8)


def open_safetensors(path: Path) -> tuple[SafetensorsStore, dict[str, str]]:
    """The lazy store and the file's `__metadata__`."""
    header = read_header(path)
    try:
        store = SafetensorsStore(path, header)
    except Exception as e:  # safetensors raises its own SafetensorError for any bad header
        raise InputError(f"{path}: a malformed safetensors file ({str(e).splitlines()[0][:200]})") from e
    metadata = header.get("__metadata__") or {}
    return store, {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def read_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise InputError(f"{path}: a truncated safetensors file (no header length)")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise InputError(f"{path}: safetensors header of {length} bytes is over the {MAX_HEADER_BYTES} byte limit")
        raw = f.read(length)
    if len(raw) < length:
        raise InputError(f"{path}: a truncated safetensors file (header cut short)")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: safetensors header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise InputError(f"{path}: safetensors header is not a JSON object")
    for name, entry in header.items():
        if name != "__metadata__" and not (isinstance(entry, dict) and {"dtype", "shape", "data_offsets"} <= entry.keys()):
            raise InputError(f"{path}: safetensors entry {name!r} lacks dtype, shape or data_offsets")
    return header
