"""Reading torch's two legacy formats with the restricted unpickler.

The pre-1.6 stream is five pickles in a row — magic number, protocol version, system
info, the object, the list of storage keys — followed by each storage as an 8-byte
element count and raw bytes. Used when torch's own weights_only reader refuses a file,
and for the storages that plain pickles of tensors embed (`torch.storage._load_from_bytes`).

The older .tar format (torch < 0.4; `torch.load` still reads it, with weights_only=False
only) is a tar archive of four members: `sys_info` (a pickle), `storages` (a count, then
per storage a pickle `(key, location, storage type)` and its raw data, then a pickle of
storage views), `tensors` (a count, then per tensor a pickle `(key, storage key, tensor
type)` and its binary size, stride and offset) and `pickle`, the object itself, whose
persistent ids are tensor or storage keys. Every one of those pickles is scanned before
it is read, like every other pickle.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
import warnings
from pathlib import Path
from typing import IO, Any

import torch

from .pickle_scan import GlobalRef, GlobalUse, PickleScanError, scan_pickle
from .policy import GlobalPolicy
from .sniff import TORCH_TAR_MEMBERS
from .unpickler import restricted_load

__all__ = ["load_legacy", "scan_legacy", "load_legacy_tar", "LEGACY_MAGIC_NUMBER", "TarFormatError"]

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001
#: Pickles at the start of a legacy stream: magic, protocol, sys info, the object, storage keys.
_LEGACY_PICKLES = 5
_MAX_DIMS = 64


class TarFormatError(pickle.UnpicklingError):
    """A legacy .tar checkpoint whose members do not hold what torch wrote."""


def scan_legacy(stream: IO[bytes]) -> dict[GlobalRef, GlobalUse]:
    """Globals of the five pickles at the start of a legacy stream, with their uses."""
    uses: dict[GlobalRef, GlobalUse] = {}
    for _ in range(_LEGACY_PICKLES):
        for ref, use in scan_pickle(stream, hands_back_classes=True).items():
            uses[ref] = uses.get(ref, GlobalUse()) | use
    return uses


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
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] in ("module", b"module"):
            # ("module", class, source file, source): torch hands back the class; ours came from find_class.
            if not isinstance(pid[1], type):
                raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
            return pid[1]
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel, view = pid
        dtype = _storage_dtype(storage_type)
        if not isinstance(numel, int) or numel < 0:
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
    _copy_into(stream, storage, nbytes)


def _copy_into(stream: IO[bytes], storage: torch.UntypedStorage, nbytes: int) -> None:
    data = stream.read(nbytes)
    if len(data) != nbytes:
        raise pickle.UnpicklingError("legacy storage data cut short")
    if nbytes:
        target = torch.empty(0, dtype=torch.uint8).set_(storage)
        target.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))


def _storage_dtype(storage_type: Any) -> torch.dtype:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage's deprecation notice
        dtype = getattr(storage_type, "dtype", None)
    if not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError(f"not a storage type: {storage_type!r:.80}")
    return dtype


# -- the .tar format ------------------------------------------------------------------------


def load_legacy_tar(path: Path, policy: GlobalPolicy, size_limit: int) -> Any:
    """The object in a legacy .tar checkpoint, every member pickle scanned (uses recorded
    in `policy`) before it is read; storages may not claim more than `size_limit` bytes."""
    with tarfile.open(path, mode="r:") as tar:
        members = _members(tar)
        # The object and sys_info are plain pickles: scanned up front, so that a file that
        # fails later still reports what they call.
        for name in ("sys_info", "pickle"):
            if name in members:
                _scan_member(_read_member(tar, members[name]), policy, hands_back_classes=name == "pickle")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            objects = _read_storages(_read_member(tar, members["storages"]), policy, size_limit)
            _read_tensors(_read_member(tar, members["tensors"]), policy, objects)
        return _read_object(_read_member(tar, members["pickle"]), policy, objects)


def _members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    members: dict[str, tarfile.TarInfo] = {}
    for info in tar.getmembers():
        if info.name in TORCH_TAR_MEMBERS or info.name == "sys_info":
            if info.name in members:
                raise TarFormatError(f"two tar members named {info.name}")
            if not info.isfile():
                raise TarFormatError(f"tar member {info.name} is not a regular file")
            members[info.name] = info
    missing = sorted(TORCH_TAR_MEMBERS - set(members))
    if missing:
        raise TarFormatError(f"a tar archive without the legacy torch member {missing[0]}")
    return members


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> io.BytesIO:
    # Members are read into memory (never extracted to disk); their sizes are bounded by the file's.
    handle = tar.extractfile(info)
    if handle is None:
        raise TarFormatError(f"tar member {info.name} cannot be read")
    data = handle.read()
    if len(data) != info.size:
        raise TarFormatError(f"tar member {info.name} is cut short")
    return io.BytesIO(data)


def _scan_member(stream: IO[bytes], policy: GlobalPolicy, hands_back_classes: bool = False) -> None:
    start = stream.tell()
    try:
        policy.record_uses(scan_pickle(stream, hands_back_classes=hands_back_classes))
    except PickleScanError as e:
        raise TarFormatError(f"not a well-formed pickle ({e})") from e
    stream.seek(start)


def _scanned_load(stream: IO[bytes], policy: GlobalPolicy) -> Any:
    _scan_member(stream, policy)
    return restricted_load(stream, policy)


def _read_storages(stream: IO[bytes], policy: GlobalPolicy, size_limit: int) -> dict[int, Any]:
    objects: dict[int, Any] = {}
    count = _count(_scanned_load(stream, policy), size_limit, "storages")
    claimed = 0
    for _ in range(count):
        record = _scanned_load(stream, policy)
        if not (isinstance(record, tuple) and len(record) == 3):
            raise TarFormatError(f"malformed storage record {record!r:.80}")
        key, _location, storage_type = record
        dtype = _storage_dtype(storage_type)
        header = stream.read(8)
        if len(header) != 8:
            raise TarFormatError("legacy storage data cut short")
        (numel,) = struct.unpack("<q", header)
        nbytes = numel * torch._utils._element_size(dtype)
        claimed += max(nbytes, 0)
        if numel < 0 or claimed > size_limit:
            raise TarFormatError(f"storages claim {claimed} bytes, more than the file's {size_limit}")
        untyped = torch.UntypedStorage(nbytes)
        _copy_into(stream, untyped, nbytes)
        objects[_key(key)] = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
    views = _scanned_load(stream, policy)
    if not isinstance(views, list):
        raise TarFormatError("legacy storage view list missing")
    for view in views:
        if not (isinstance(view, tuple) and len(view) == 4 and all(isinstance(v, int) for v in view[2:])):
            raise TarFormatError(f"malformed storage view {view!r:.80}")
        target, root_key, offset, numel = view
        root = _object(objects, root_key, torch.storage.TypedStorage)
        size = torch._utils._element_size(root.dtype)
        if offset < 0 or numel < 0 or (offset + numel) * size > root.nbytes():
            raise TarFormatError("a storage view reaches past its storage")
        objects[_key(target)] = torch.storage.TypedStorage(
            wrap_storage=root._untyped_storage[offset * size : (offset + numel) * size], dtype=root.dtype, _internal=True
        )
    return objects


def _read_tensors(stream: IO[bytes], policy: GlobalPolicy, objects: dict[int, Any]) -> None:
    count = _count(_scanned_load(stream, policy), 1 << 40, "tensors")
    for _ in range(count):
        record = _scanned_load(stream, policy)
        if not (isinstance(record, tuple) and len(record) == 3):
            raise TarFormatError(f"malformed tensor record {record!r:.80}")
        key, storage_key, _tensor_type = record
        storage = _object(objects, storage_key, torch.storage.TypedStorage)
        (ndim,) = _unpack(stream, "<i")
        _unpack(stream, "<i")  # padding: the legacy writer treated ndim as 8 bytes
        if not 0 <= ndim <= _MAX_DIMS:
            raise TarFormatError(f"a tensor of {ndim} dimensions")
        size = _unpack(stream, f"<{ndim}q")
        stride = _unpack(stream, f"<{ndim}q")
        (offset,) = _unpack(stream, "<q")
        # set_ checks that size, stride and offset stay inside the storage.
        objects[_key(key)] = torch.empty((0,), dtype=storage.dtype).set_(storage._untyped_storage, offset, size, stride)


def _read_object(stream: IO[bytes], policy: GlobalPolicy, objects: dict[int, Any]) -> Any:
    def persistent_load(pid: Any) -> Any:
        if isinstance(pid, tuple):
            # (class, source file, source): torch hands back the class; ours came from find_class.
            if not pid or not isinstance(pid[0], type):
                raise TarFormatError(f"unexpected persistent id {pid!r:.80}")
            return pid[0]
        return _object(objects, pid, object)

    return restricted_load(stream, policy, persistent_load)


def _count(value: Any, limit: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise TarFormatError(f"malformed {what} count {value!r:.40}")
    return value


def _key(value: Any) -> int:
    # torch keys its storages and tensors by int, and looks persistent ids up with int(id).
    if isinstance(value, bool) or not isinstance(value, (int, str, bytes)):
        raise TarFormatError(f"malformed object key {value!r:.40}")
    try:
        return int(value)
    except ValueError as e:
        raise TarFormatError(f"malformed object key {value!r:.40}") from e


def _object(objects: dict[int, Any], key: Any, kind: type) -> Any:
    found = objects.get(_key(key))
    if found is None or not isinstance(found, kind):
        raise TarFormatError(f"no {kind.__name__} under key {key!r:.40}")
    return found


def _unpack(stream: IO[bytes], fmt: str) -> tuple[Any, ...]:
    size = struct.calcsize(fmt)
    data = stream.read(size)
    if len(data) != size:
        raise TarFormatError("legacy tensor header cut short")
    return struct.unpack(fmt, data)
