"""Turn a file of a known format into objects, under the global policy.

torch.save files go through torch.load(weights_only=True) with the policy's allowlist
and placeholders registered. Files torch's unpickler cannot or will not read (pickle
protocol > 2, blocked payloads), plain pickles and TorchScript data go through the
analyzer's restricted unpickler, which shares the policy and never runs a global.
Each reader returns a `Raw`: the top-level object, the globals beyond torch's tensor
allowlist, and how it was read.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import pickle
import struct
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from ..errors import InputError
from .legacy import load_legacy
from .pickle_scan import GlobalRef, PickleScanError, scan_globals
from .sniff import ZIP_ERRORS
from .policy import GlobalKind, GlobalPolicy, ResolvedGlobal
from .unpickler import restricted_load

__all__ = ["Raw", "read_torch_zip", "read_torch_legacy", "read_pickle", "read_torchscript"]

# Legacy torch files are a sequence of pickles: magic, protocol, sys info, the object, storage keys.
_LEGACY_PICKLES = 5
_FALLBACK_NOTE = (
    "torch.load(weights_only=True) refused the pickle ({reason}); the analyzer's restricted "
    "unpickler read it instead, with placeholders that never run"
)


@dataclass
class Raw:
    obj: Any
    loader: str
    globals: list[ResolvedGlobal] = field(default_factory=list)
    #: Why torch's weights_only unpickler refused the file, when it did.
    refused: str | None = None
    notes: list[str] = field(default_factory=list)


def read_torch_zip(path: Path, policy: GlobalPolicy, trust: bool, mmap_tensors: bool = True) -> Raw:
    refs = _scan_zip_pickle(path)
    return _read_torch_file(path, policy, trust, refs, mmap_tensors, lambda: _read_zip_restricted(path, policy, refs))


def read_torch_legacy(path: Path, policy: GlobalPolicy, trust: bool) -> Raw:
    refs = _scan_legacy_pickles(path)

    def read_restricted() -> Raw:
        _add_restricted_replacements(policy)
        with _mapped(path) as data:
            obj = _restricted(lambda: load_legacy(data, policy, path.stat().st_size), path)
        return Raw(obj, "restricted-unpickler", _unsafe(policy, refs))

    return _read_torch_file(path, policy, trust, refs, False, read_restricted)


def _read_torch_file(
    path: Path, policy: GlobalPolicy, trust: bool, refs: list[GlobalRef], mmap_tensors: bool, read_restricted: Any
) -> Raw:
    """torch.load(weights_only=True) with the policy's globals registered; the restricted
    unpickler when torch refuses; torch.load(weights_only=False) only with --trust."""
    if trust:
        return Raw(_torch_load(path, weights_only=False, mmap_tensors=mmap_tensors), "trusted", _unsafe(policy, refs))
    try:
        with torch.serialization.safe_globals(policy.torch_safe_globals(refs)):
            obj = _torch_load(path, weights_only=True, mmap_tensors=mmap_tensors)
        return Raw(obj, "weights_only", _unsafe(policy, refs))
    except pickle.UnpicklingError as e:
        return _fallback(policy, refs, _torch_refusal(e), read_restricted)


def read_pickle(path: Path, policy: GlobalPolicy, trust: bool) -> Raw:
    with _mapped(path) as data:
        refs = _scan(data, path)
        data.seek(0)
        if trust:
            return Raw(pickle.load(data), "trusted", _unsafe(policy, refs))  # noqa: S301 - the user said --trust
        _add_restricted_replacements(policy)
        obj = _restricted(lambda: restricted_load(data, policy), path)
    return Raw(obj, "restricted-unpickler", _unsafe(policy, refs))


def read_torchscript(path: Path, policy: GlobalPolicy, trust: bool) -> Raw:
    """TorchScript archives are code: with --trust, torch.jit.load; otherwise only the
    tensors of data.pkl are read, every class a placeholder."""
    if trust:
        try:
            return Raw(torch.jit.load(str(path), map_location="cpu"), "trusted")
        except RuntimeError as e:
            raise InputError(f"{path}: torch.jit.load failed: {_first_line(e)}") from e
    raw = _read_zip_restricted(path, policy, _scan_zip_pickle(path))
    # TorchScript names its own classes (__torch__.*) and helpers (torch.jit._pickle.*):
    # they are what the format is, not an unsafe payload.
    raw.globals = [g for g in raw.globals if not _is_torchscript_own(g.ref)]
    raw.notes.append(
        "TorchScript archive: its code was not run; tensors were read from data.pkl "
        "(--trust runs torch.jit.load and makes the model runnable)"
    )
    return raw


def _is_torchscript_own(ref: GlobalRef) -> bool:
    return ref.module == "__torch__" or ref.module.startswith(("__torch__.", "torch.jit._pickle"))


def _fallback(policy: GlobalPolicy, refs: list[GlobalRef], reason: str, read_restricted: Any) -> Raw:
    """torch refused the pickle: read it with the restricted unpickler. If that fails too,
    a file that names dangerous globals still gets its report (with no tensors)."""
    try:
        raw = read_restricted()
    except InputError:
        unsafe = _unsafe(policy, refs)
        if not any(g.kind is GlobalKind.DANGEROUS for g in unsafe):
            raise
        return Raw(None, "refused", unsafe, refused=reason)
    raw.refused = reason
    raw.notes.append(_FALLBACK_NOTE.format(reason=reason))
    return raw


def _read_zip_restricted(path: Path, policy: GlobalPolicy, refs: list[GlobalRef]) -> Raw:
    try:
        reader = torch._C.PyTorchFileReader(str(path))
    except RuntimeError as e:
        raise InputError(f"{path}: a damaged torch archive ({_first_line(e)})") from e
    _add_restricted_replacements(policy)
    data = io.BytesIO(reader.get_record("data.pkl"))
    obj = _restricted(lambda: restricted_load(data, policy, _zip_storage_loader(reader)), path)
    return Raw(obj, "restricted-unpickler", _unsafe(policy, refs))


def _add_restricted_replacements(policy: GlobalPolicy) -> None:
    def load_storage_from_bytes(data: bytes) -> Any:
        # Safe stand-in for torch.storage._load_from_bytes, which runs torch.load(weights_only=False).
        if not isinstance(data, (bytes, bytearray)):
            raise pickle.UnpicklingError("storage bytes expected")
        return load_legacy(io.BytesIO(data), policy, len(data))

    policy.add_safe("torch.storage._load_from_bytes", load_storage_from_bytes)
    policy.add_safe("copyreg._reconstructor", _reconstruct_without_init)


def _restricted(load: Any, path: Path) -> Any:
    try:
        return load()
    except MemoryError as e:
        raise InputError(f"{path}: the pickle asks for more memory than the file could ever hold; refused") from e
    except RuntimeError as e:
        if "allocate" in str(e):
            raise InputError(f"{path}: the pickle asks for more memory than the file could ever hold; refused ({_first_line(e)})") from e
        raise InputError(f"{path}: the pickle could not be read safely (RuntimeError: {_first_line(e)})") from e
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, AssertionError, struct.error) as e:
        raise InputError(f"{path}: the pickle could not be read safely ({type(e).__name__}: {_first_line(e)})") from e


def _zip_storage_loader(reader: Any) -> Any:
    loaded: dict[str, Any] = {}

    def load(pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        dtype = torch.uint8 if storage_type is torch.UntypedStorage else getattr(storage_type, "dtype", None)
        if not isinstance(dtype, torch.dtype) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"malformed storage reference {pid!r:.80}")
        key = str(key)
        if key not in loaded:
            nbytes = numel * torch._utils._element_size(dtype)
            record = f"data/{key}"
            if not reader.has_record(record) or reader.get_record_size(record) < nbytes:
                raise pickle.UnpicklingError(f"storage {key} claims {nbytes} bytes the archive does not hold")
            untyped = reader.get_storage_from_record(record, nbytes, torch.uint8).untyped_storage()
            loaded[key] = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
        return loaded[key]

    return load


def _reconstruct_without_init(cls: Any, base: Any, state: Any) -> Any:
    """Safe stand-in for copyreg._reconstructor (protocol 0/1 object creation)."""
    if base is not object or state is not None or not isinstance(cls, type):
        raise pickle.UnpicklingError("copyreg._reconstructor is only allowed for plain objects")
    return cls.__new__(cls)


def _torch_load(path: Path, weights_only: bool, mmap_tensors: bool) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, weights_only=weights_only, mmap=mmap_tensors, map_location="cpu")
    except pickle.UnpicklingError:
        raise
    except RuntimeError as e:
        if "allocate" in str(e):
            raise InputError(f"{path}: the file asks for more memory than it could ever hold; refused ({_first_line(e)})") from e
        raise InputError(f"{path}: torch.load failed on a damaged or incomplete file ({_first_line(e)})") from e
    except (EOFError, ValueError, OSError, KeyError, AttributeError, TypeError, IndexError, AssertionError) as e:
        raise InputError(f"{path}: torch.load failed on a damaged or incomplete file ({type(e).__name__}: {_first_line(e)})") from e


def _scan_zip_pickle(path: Path) -> list[GlobalRef]:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            pickles = [i for i in infos if i.filename.endswith("/data.pkl") or i.filename == "data.pkl"]
            if len(pickles) != 1:
                raise InputError(f"{path}: a torch archive must hold one data.pkl, this one holds {len(pickles)}")
            # torch writes tensor data and data.pkl stored (TorchScript compresses only its code/).
            compressed = [
                i.filename for i in infos
                if i.compress_type != zipfile.ZIP_STORED and (i is pickles[0] or "/data/" in i.filename)
            ]
            if compressed:
                raise InputError(
                    f"{path}: zip entries are compressed ({compressed[0]}…); torch.save writes them stored, "
                    "so this archive was rebuilt by another tool; unzip it and re-save with torch.save"
                )
            if pickles[0].file_size > path.stat().st_size:
                raise InputError(f"{path}: data.pkl claims {pickles[0].file_size} bytes, more than the file holds")
            for info in infos:
                # Opening an entry compares its local header with the central directory: a
                # crafted archive can show one reader one entry and another reader another.
                with archive.open(info):
                    pass
            data = archive.read(pickles[0])
    except ZIP_ERRORS as e:
        raise InputError(f"{path}: a damaged or inconsistent zip archive ({e})") from e
    return _scan(io.BytesIO(data), path)


def _scan_legacy_pickles(path: Path) -> list[GlobalRef]:
    refs: dict[GlobalRef, None] = {}
    with _mapped(path) as data:
        for _ in range(_LEGACY_PICKLES):
            refs.update(dict.fromkeys(_scan(data, path)))
    return list(refs)


def _scan(stream: IO[bytes], path: Path) -> list[GlobalRef]:
    try:
        return scan_globals(stream)
    except PickleScanError as e:
        raise InputError(f"{path}: not a well-formed pickle ({e})") from e


def _unsafe(policy: GlobalPolicy, refs: list[GlobalRef]) -> list[ResolvedGlobal]:
    """Globals beyond torch's tensor allowlist: those the scan saw, and any a nested
    pickle (storage bytes inside a plain pickle) resolved while loading."""
    seen = {g.ref: g for g in (policy.resolve(r.module, r.name) for r in refs)}
    seen.update({g.ref: g for g in policy.resolved() if g.ref not in seen})
    return [g for g in seen.values() if g.kind is not GlobalKind.SAFE]


def _torch_refusal(error: BaseException) -> str:
    """The line of torch's weights_only error that says what it refused."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    specific = [line for line in lines if not line.startswith(boilerplate)]
    return (specific or lines or [type(error).__name__])[0][:300]


@contextlib.contextmanager
def _mapped(path: Path) -> Iterator[IO[bytes]]:
    # mmap: reading a large file never copies it whole, and a length field that lies
    # cannot make read() allocate more than the file holds.
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise InputError(f"{path}: the file is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield mapped  # type: ignore[misc]


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
