"""safetensors: no code, only a JSON header and raw bytes; read lazily with safe_open.

The header is JSON written by whoever made the file: its size and nesting are bounded
before it is parsed (100,000 nested arrays would exhaust the parser's recursion). Every
dtype safetensors writes is read (fp8 and fp4 formats, complex, unsigned); those torch has
no type for (fp6) are reported with their shape and no values.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .checkpoint import TensorStore

__all__ = ["SafetensorsStore", "open_safetensors", "read_header", "dtype_of", "MAX_HEADER_BYTES", "MAX_HEADER_DEPTH"]

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz, "F8_E5M2FNUZ": torch.float8_e5m2fnuz, "F8_E8M0": torch.float8_e8m0fnu,
    "F4": torch.float4_e2m1fn_x2, "C64": torch.complex64,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}
#: Formats that pack two values a byte: the header's last dimension counts values, torch's bytes.
_PAIRED = {"F4"}
MAX_HEADER_BYTES = 100 * 1024 * 1024
#: A header is an object of objects holding arrays: three levels. Far more is not a header.
MAX_HEADER_DEPTH = 32
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class SafetensorsStore(TensorStore):
    """Tensors of a safetensors file, each read only when asked for."""

    may_share_storage = False

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self._path = path
        from safetensors import safe_open  # only for safetensors files

        self._header = {k: v for k, v in header.items() if k != "__metadata__"}
        self._handle = safe_open(str(path), framework="pt", device="cpu")

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._header:
            raise KeyError(name)
        if self._header[name]["dtype"] not in _DTYPES:
            return torch.empty(self.meta(name)[0], dtype=torch.uint8, device="meta")  # no torch type: no values
        try:
            return self._handle.get_tensor(name)
        except Exception as e:  # safetensors raises its own SafetensorError
            raise InputError(f"{self._path}: tensor {name!r} cannot be read ({str(e).splitlines()[0][:200]})") from e

    def __iter__(self) -> Iterator[str]:
        return iter(self._header)

    def __len__(self) -> int:
        return len(self._header)

    def meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        entry = self._header[name]
        shape = tuple(entry["shape"])
        if entry["dtype"] in _PAIRED and shape:
            shape = (*shape[:-1], shape[-1] // 2)
        return shape, dtype_of(entry["dtype"])

    def unreadable_dtypes(self) -> dict[str, str]:
        """Tensor name → dtype, for the tensors torch has no type for."""
        return {name: entry["dtype"] for name, entry in self._header.items() if entry["dtype"] not in _DTYPES}


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
    depth = _nesting_depth(raw)
    if depth > MAX_HEADER_DEPTH:
        raise InputError(f"{path}: safetensors header nests JSON {depth} levels deep (a header needs 3, at most {MAX_HEADER_DEPTH} are read); refused")
    try:
        header = json.loads(raw)
    except RecursionError as e:  # the bound above is the rule; this only backs it
        raise InputError(f"{path}: safetensors header nests JSON too deeply to parse; refused") from e
    except (UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: safetensors header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise InputError(f"{path}: safetensors header is not a JSON object")
    for name, entry in header.items():
        if name != "__metadata__" and not (isinstance(entry, dict) and {"dtype", "shape", "data_offsets"} <= entry.keys()):
            raise InputError(f"{path}: safetensors entry {name!r} lacks dtype, shape or data_offsets")
    return header


def _nesting_depth(raw: bytes) -> int:
    """How deep the JSON text's arrays and objects nest, without parsing it: brackets
    outside strings, +1 for each opening one and -1 for each closing one, at their deepest."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = torch.frombuffer(bytearray(brackets), dtype=torch.uint8).to(torch.int32)
    # '[' 0x5B and '{' 0x7B have bit 1 set, ']' 0x5D and '}' 0x7D do not.
    steps = ((codes >> 1) & 1) * 2 - 1
    return int(torch.cumsum(steps, 0).max())
