"""The reader of plain torch.save archives: tensors in dicts, lists and tuples of numbers and strings.

torch.load(weights_only=True) unpickles in pure Python and rebuilds every tensor through
checks written for every kind of tensor: at tens of thousands of tensors that is most of
the time of a whole analysis. Most checkpoints are of one plain shape — a state dict,
or a training dict of state dicts, step counts and hyperparameters — and for that shape
the C unpickler with a closed table of globals gives the very same objects:

- the scan's walk (pickle_scan) has already seen every opcode and every global: the file
  is read here only when each opcode is one torch's reader handles the same way, each
  global is in the table below, and each fill is one torch's reader allows (items into a
  dict or an OrderedDict, appends to a list, BUILD of an OrderedDict from a dict);
- `find_class` hands out only this table: OrderedDict, our own rebuilders of torch's three
  tensor functions (the same steps, every argument checked) and inert tags for the storage
  types and dtypes — nothing else exists for the pickle to call;
- every question about the archive (which data.pkl, where a record starts, its byte
  order) is asked of torch's own archive reader, and storages are slices of the file
  mapped as torch.load(mmap=True) maps it;
- anything else — an argument outside the plain shape, a storage left bare, any error —
  makes `read_plain` return None, and torch.load reads the file as before, its errors in
  its own words.
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import struct
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .pickle_scan import GlobalRef, PickleShape

__all__ = ["read_plain", "stored_little_endian", "mmap_shared"]

#: Opcodes of protocol 2 that torch's weights_only reader and the C unpickler read alike.
_PLAIN_OPCODES = frozenset({
    "PROTO", "STOP", "MARK", "GLOBAL", "REDUCE", "BUILD", "BINPERSID",
    "EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
    "SETITEM", "SETITEMS", "APPEND", "APPENDS",
    "NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "BINUNICODE",
    "BINGET", "LONG_BINGET", "BINPUT", "LONG_BINPUT",
})
_MADE_BY_ORDERED_DICT = "made by collections.OrderedDict"
#: What may be filled, and with what: the fills torch's reader allows.
_PLAIN_FILLS = frozenset({
    ("SETITEM", "dict", ""), ("SETITEMS", "dict", ""),
    ("SETITEM", _MADE_BY_ORDERED_DICT, ""), ("SETITEMS", _MADE_BY_ORDERED_DICT, ""),
    ("APPEND", "list", ""), ("APPENDS", "list", ""),
    ("BUILD", _MADE_BY_ORDERED_DICT, "dict"),
})
#: The typed storages torch.save names, and their dtypes.
_STORAGE_TYPES = {
    "Double": torch.float64, "Float": torch.float32, "Half": torch.float16, "BFloat16": torch.bfloat16,
    "Long": torch.int64, "Int": torch.int32, "Short": torch.int16, "Char": torch.int8, "Byte": torch.uint8,
    "Bool": torch.bool, "ComplexDouble": torch.complex128, "ComplexFloat": torch.complex64,
}


class _NotPlain(Exception):
    """Something outside the plain shape: torch.load reads the file instead."""


class _StorageTag:
    """Stands for a storage type in a persistent id: its dtype, nothing to call."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _Storage:
    """A storage handed to the rebuilders: a slice of the mapped file, and its dtype."""

    __slots__ = ("untyped", "dtype")

    def __init__(self, untyped: torch.UntypedStorage, dtype: torch.dtype) -> None:
        self.untyped = untyped
        self.dtype = dtype


def _check(condition: bool) -> None:
    if not condition:
        raise _NotPlain


def _ints(values: Any) -> bool:
    return type(values) is tuple and all(type(v) is int for v in values)


def _no_hooks(hooks: Any) -> bool:
    return type(hooks) is OrderedDict and not hooks


def _check_view(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, metadata: Any) -> None:
    """The arguments both tensor rebuilders take, as torch.save writes them (no hooks, no metadata)."""
    _check(type(storage) is _Storage and type(offset) is int and _ints(size) and _ints(stride))
    _check(type(requires_grad) is bool and _no_hooks(hooks) and (metadata is None or (type(metadata) is dict and not metadata)))


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, metadata: Any = None) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2's steps on a CPU storage, without fake modes or tensor metadata."""
    _check_view(storage, offset, size, stride, requires_grad, hooks, metadata)
    tensor = torch.empty((0,), dtype=storage.dtype).set_(storage.untyped, offset, size, stride)
    tensor.requires_grad = requires_grad
    tensor._backward_hooks = hooks
    return tensor


def _rebuild_tensor_v3(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, dtype: Any, metadata: Any = None
) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v3's steps (a dtype without a typed storage: fp8, uint16)."""
    _check_view(storage, offset, size, stride, requires_grad, hooks, metadata)
    _check(type(dtype) is torch.dtype)
    tensor = torch.empty((0,), dtype=dtype, requires_grad=requires_grad)
    tensor.set_(storage.untyped, offset, size, stride)
    tensor._backward_hooks = hooks
    return tensor


def _rebuild_parameter(data: Any, requires_grad: Any, hooks: Any) -> nn.Parameter:
    _check(type(data) is torch.Tensor and type(requires_grad) is bool and _no_hooks(hooks))
    parameter = nn.Parameter(data, requires_grad)
    parameter._backward_hooks = hooks
    return parameter


def _table() -> dict[GlobalRef, Any]:
    table: dict[GlobalRef, Any] = {
        GlobalRef("collections", "OrderedDict"): OrderedDict,
        GlobalRef("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        GlobalRef("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        GlobalRef("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        GlobalRef("torch.storage", "UntypedStorage"): _StorageTag(torch.uint8),
    }
    for kind, dtype in _STORAGE_TYPES.items():
        table[GlobalRef("torch", f"{kind}Storage")] = table[GlobalRef("torch.cuda", f"{kind}Storage")] = _StorageTag(dtype)
    for name in dir(torch):
        value = getattr(torch, name, None)
        if type(value) is torch.dtype:
            table[GlobalRef("torch", name)] = value
    return table


_TABLE = _table()


def read_plain(path: Path, globals_used: list[GlobalRef], shape: PickleShape) -> Any | None:
    """The object torch.load(weights_only=True, mmap=True) gives for this archive, read by the
    C unpickler; None when the pickle is not of the plain shape (torch.load must read it)."""
    if not (shape.opcodes <= _PLAIN_OPCODES and shape.fills <= _PLAIN_FILLS and all(ref in _TABLE for ref in globals_used)):
        return None
    if sys.byteorder != "little":
        return None
    try:
        reader = torch._C.PyTorchFileReader(str(path))
        if not _little_endian(reader) or reader.has_record("constants.pkl"):
            return None
        obj = _Unpickler(io.BytesIO(reader.get_record("data.pkl")), _storages(path, reader)).load()
        _check_plain(obj)
    except (_NotPlain, pickle.UnpicklingError, RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError, EOFError, OverflowError, struct.error):
        return None
    return obj


def stored_little_endian(path: Path) -> bool:
    """Whether torch.load reads this archive's tensors as they are stored (a big-endian one it
    byte-swaps in memory: its tensors are then not the file's bytes)."""
    try:
        return sys.byteorder == "little" and _little_endian(torch._C.PyTorchFileReader(str(path)))
    except RuntimeError:
        return False


def mmap_shared() -> bool:
    """As torch.load(mmap=True) maps a file: private unless the user set MAP_SHARED as torch's default."""
    return os.name != "nt" and torch.serialization.get_default_mmap_options() == mmap.MAP_SHARED


def _little_endian(reader: Any) -> bool:
    """As torch.load decides: the archive's byteorder record, else torch's default (little)."""
    if reader.has_record("byteorder"):
        return bytes(reader.get_record("byteorder")) == b"little"
    default = torch.serialization.get_default_load_endianness()
    return default is None or default == torch.serialization.LoadEndianness.LITTLE


def _storages(path: Path, reader: Any) -> Any:
    """persistent_load: each storage a slice of the whole file mapped once, as torch.load(mmap=True)
    maps it, at the offset torch's archive reader gives; the first dtype of a key is kept, as torch keeps it."""
    whole = torch.UntypedStorage.from_file(str(path), mmap_shared(), os.path.getsize(path))
    loaded: dict[str, _Storage] = {}

    def load(pid: Any) -> _Storage:
        _check(type(pid) is tuple and len(pid) == 5 and pid[0] == "storage")
        _, tag, key, location, numel = pid
        _check(type(tag) is _StorageTag and type(key) is str and type(location) is str and type(numel) is int and numel >= 0)
        storage = loaded.get(key)
        if storage is None:
            name = f"data/{key}"
            nbytes = numel * tag.dtype.itemsize
            _check(reader.get_record_size(name) >= nbytes)
            offset = reader.get_record_offset(name)
            storage = _Storage(whole[offset : offset + nbytes], tag.dtype)
            if storage.untyped.data_ptr() != 0:
                loaded[key] = storage
        return storage

    return load


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, persistent: Any) -> None:
        super().__init__(file, fix_imports=False, encoding="utf-8")
        self._persistent = persistent

    def find_class(self, module: str, name: str) -> Any:
        value = _TABLE.get(GlobalRef(module, name))
        _check(value is not None)
        return value

    def persistent_load(self, pid: Any) -> Any:
        return self._persistent(pid)


_LEAVES = (str, int, float, bool, type(None), torch.Tensor, nn.Parameter, torch.dtype)


def _check_plain(obj: Any) -> None:
    """Only containers, plain values and tensors came out (no storage left bare)."""
    pending, seen = [obj], set()
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind in _LEAVES:
            continue
        _check(kind in (dict, OrderedDict, list, tuple))
        if id(item) in seen:
            continue
        seen.add(id(item))
        if kind is dict or kind is OrderedDict:
            pending.extend(item.keys())
            pending.extend(item.values())
            if kind is OrderedDict:
                pending.extend(vars(item).values())
        else:
            pending.extend(item)
