"""Turn a file of a known format into objects, under the global policy.

Every pickle of every format is scanned first (pickle_scan.py): which globals it names
and how it uses each, recorded in the policy. Then torch.save files go through
torch.load(weights_only=True) with the policy's allowlist and placeholders registered;
files torch's unpickler cannot or will not read (pickle protocol > 2, blocked payloads),
plain pickles, legacy .tar checkpoints and TorchScript data go through the analyzer's
restricted unpickler, which shares the policy and never runs a global. One behaviour
per payload in every container: when the objects cannot be rebuilt from a file whose
globals would run code, the reader still returns what it found, for the report.
Each reader returns a `Raw`: the top-level object, the globals beyond torch's tensor
allowlist, and how it was read.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import pickle
import re
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
import torch.jit._pickle

from ..errors import InputError
from .legacy import LEGACY_MAGIC_NUMBER, load_legacy, load_legacy_tar, scan_legacy
from .pickle_scan import GlobalRef, GlobalUse, PickleScanError, PickleShape, scan_pickle
from .plain import read_plain
from .placeholder import Placeholder, make_placeholder
from .policy import GlobalPolicy, ResolvedGlobal
from .sniff import ZIP_ERRORS, is_torch_tar, zip_entries
from .unpickler import restricted_load

__all__ = ["Raw", "read_torch_zip", "read_torch_legacy", "read_pickle", "read_torchscript", "TAR_NOTE"]

_FALLBACK_NOTE = (
    "torch.load(weights_only=True) refused the pickle ({reason}); the analyzer's restricted "
    "unpickler read it instead, with placeholders that never run"
)
TAR_NOTE = (
    "legacy .tar checkpoint (torch < 0.4): torch.load reads it only with weights_only=False, which runs "
    "its pickles; the analyzer's restricted unpickler read every member instead"
)
_TORCHSCRIPT_BUILDERS = (
    "build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "build_tensor_from_id", "restore_type_tag",
)
#: Bytes per zlib.crc32 call when checking zip entries (the mapped file is never copied).
_CRC_CHUNK = 8 << 20
#: Sentences of torch's error messages that advise loading with less safety; never repeated.
_UNSAFE_ADVICE = re.compile(
    r"weights_only\W{0,3}(?:set to\W{0,3}|=\W{0,3})False|Re-running|arbitrary code|trusted source|add_safe_globals"
    r"|safe_globals|allowlist this global|Check the documentation|Please file an issue",
    re.IGNORECASE,
)


@dataclass
class Raw:
    obj: Any
    loader: str
    globals: list[ResolvedGlobal] = field(default_factory=list)
    #: Why the objects could not be rebuilt as torch would (torch refused, or nothing could), when so.
    refused: str | None = None
    notes: list[str] = field(default_factory=list)


class _Unreadable(InputError):
    """A reader failed on the bytes (not a limit): a file whose globals run code still gets its report."""


def read_torch_zip(path: Path, policy: GlobalPolicy, trust: bool, mmap_tensors: bool = True) -> Raw:
    _add_restricted_replacements(policy)
    shape = PickleShape()
    refs = _scan_zip_pickle(path, policy, shape)
    if not trust and mmap_tensors:
        # What torch.load(weights_only=True) would give, without its per-tensor cost, when the walk shows a plain pickle.
        obj = read_plain(path, refs, shape)
        if obj is not None:
            return Raw(obj, "weights_only", policy.reported())
    return _read_torch_file(path, policy, trust, refs, mmap_tensors, lambda: _read_zip_restricted(path, policy))


def read_torch_legacy(path: Path, policy: GlobalPolicy, trust: bool) -> Raw:
    _add_restricted_replacements(policy)
    if is_torch_tar(path):
        return _read_legacy_tar(path, policy, trust)
    refs = _scan_legacy_pickles(path, policy)

    def read_restricted() -> Raw:
        with _mapped(path) as data:
            obj = _restricted(lambda: load_legacy(data, policy, path.stat().st_size), path)
        return Raw(obj, "restricted-unpickler", policy.reported())

    return _read_torch_file(path, policy, trust, refs, False, read_restricted)


def _read_legacy_tar(path: Path, policy: GlobalPolicy, trust: bool) -> Raw:
    """torch's oldest format: only ever read by the restricted unpickler (torch's weights_only
    reader refuses it), or by torch.load(weights_only=False) with --trust."""
    _scan_polyglot(path, policy)

    def read_restricted() -> Raw:
        try:
            obj = _restricted(lambda: load_legacy_tar(path, policy, path.stat().st_size), path)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise _Unreadable(f"{path}: a damaged legacy .tar checkpoint ({type(e).__name__}: {_first_line(e)})") from e
        return Raw(obj, "restricted-unpickler", policy.reported(), notes=[TAR_NOTE])

    if trust:
        with contextlib.suppress(InputError):
            read_restricted()  # nothing runs in it: it lists every member's globals for the report
        return Raw(_torch_load(path, weights_only=False, mmap_tensors=False), "trusted", policy.reported())
    return _guarded(policy, path, read_restricted)


def _scan_polyglot(path: Path, policy: GlobalPolicy) -> None:
    """A tar whose bytes also start like a legacy stream or a pickle: another reader would
    run those pickles, so their globals are reported too (best effort: they may not parse)."""
    with _mapped(path) as data:
        head = data[:2]
        if head[:1] != b"\x80" or head[1:2] > b"\x05":
            return
        with contextlib.suppress(PickleScanError):
            policy.record_uses(scan_legacy(data) if _starts_legacy(data) else scan_pickle(data))


def _starts_legacy(data: IO[bytes]) -> bool:
    return data[:14] == b"\x80\x02\x8a\x0a" + LEGACY_MAGIC_NUMBER.to_bytes(10, "little")  # type: ignore[index]


def _read_torch_file(
    path: Path, policy: GlobalPolicy, trust: bool, refs: list[GlobalRef], mmap_tensors: bool, read_restricted: Callable[[], Raw]
) -> Raw:
    """torch.load(weights_only=True) with the policy's globals registered; the restricted
    unpickler when torch refuses; torch.load(weights_only=False) only with --trust."""
    if trust:
        return Raw(_torch_load(path, weights_only=False, mmap_tensors=mmap_tensors), "trusted", policy.reported())
    try:
        with torch.serialization.safe_globals(policy.torch_safe_globals(refs)):
            obj = _torch_load(path, weights_only=True, mmap_tensors=mmap_tensors)
        return Raw(obj, "weights_only", policy.reported())
    except pickle.UnpicklingError as e:
        reason = _torch_refusal(e)
    except _Unreadable as e:
        # torch failed on what a placeholder gave back (a tensor rebuilt from a payload's
        # result): a file that runs code is read by the restricted unpickler instead.
        if not _runs_code(policy):
            raise
        reason = _reason(e, path)
    return _fallback(policy, path, reason, read_restricted)


def read_pickle(path: Path, policy: GlobalPolicy, trust: bool) -> Raw:
    _add_restricted_replacements(policy)
    with _mapped(path) as data:
        policy.record_uses(_scan(data, path))
        data.seek(0)
        if trust:
            return Raw(pickle.load(data), "trusted", policy.reported())  # noqa: S301 - the user said --trust

        def read_restricted() -> Raw:
            obj = _restricted(lambda: restricted_load(data, policy), path)
            return Raw(obj, "restricted-unpickler", policy.reported())

        return _guarded(policy, path, read_restricted)


def read_torchscript(path: Path, policy: GlobalPolicy, trust: bool) -> Raw:
    """TorchScript archives are code: with --trust, torch.jit.load; otherwise only the
    tensors of data.pkl are read, every class a placeholder."""
    if trust:
        try:
            return Raw(torch.jit.load(str(path), map_location="cpu"), "trusted")
        except RuntimeError as e:
            raise InputError(f"{path}: torch.jit.load failed: {_torch_text(e)}") from e
    _add_restricted_replacements(policy)
    _scan_zip_pickle(path, policy)
    raw = _guarded(policy, path, lambda: _read_zip_restricted(path, policy))
    # TorchScript names the classes of its own code (__torch__.*): what the format is, not a payload.
    raw.globals = [g for g in raw.globals if not _is_torchscript_own(g)]
    raw.notes.append(
        "TorchScript archive: its code was not run; tensors were read from data.pkl "
        "(--trust runs torch.jit.load and makes the model runnable)"
    )
    return raw


def _is_torchscript_own(resolved: ResolvedGlobal) -> bool:
    """A class of the archive's own code, by a plain name, instantiated as modules are."""
    ref = resolved.ref
    own = ref.module == "__torch__" or ref.module.startswith("__torch__.")
    return own and not resolved.refusals


def _guarded(policy: GlobalPolicy, path: Path, read: Callable[[], Raw]) -> Raw:
    """The restricted read; when it fails on a file whose globals would run code, the
    report still says so (with no tensors) instead of a bare one-line failure."""
    try:
        return read()
    except _Unreadable as e:
        if not _runs_code(policy):
            raise
        return Raw(None, "refused", policy.reported(), refused=_reason(e, path))


def _fallback(policy: GlobalPolicy, path: Path, reason: str, read_restricted: Callable[[], Raw]) -> Raw:
    """torch refused the pickle: read it with the restricted unpickler. If that fails too,
    a file whose globals run code still gets its report (with no tensors)."""
    raw = _guarded(policy, path, read_restricted)
    if raw.loader != "refused":
        raw.notes.append(_FALLBACK_NOTE.format(reason=reason))
    raw.refused = reason  # what torch says is what the user meets
    return raw


def _runs_code(policy: GlobalPolicy) -> bool:
    return any(g.refusals for g in policy.reported())


def _read_zip_restricted(path: Path, policy: GlobalPolicy) -> Raw:
    try:
        reader = torch._C.PyTorchFileReader(str(path))
    except RuntimeError as e:
        raise _Unreadable(f"{path}: a damaged torch archive ({_torch_text(e)})") from e
    data = io.BytesIO(reader.get_record("data.pkl"))
    obj = _restricted(lambda: restricted_load(data, policy, _zip_storage_loader(reader)), path)
    return Raw(obj, "restricted-unpickler", policy.reported())


def _add_restricted_replacements(policy: GlobalPolicy) -> None:
    """The loaders' own safe rebuilders, registered before any global is resolved."""

    def load_storage_from_bytes(data: bytes) -> Any:
        # Safe stand-in for torch.storage._load_from_bytes, which runs torch.load(weights_only=False).
        if not isinstance(data, (bytes, bytearray)):
            raise pickle.UnpicklingError("storage bytes expected")
        try:
            policy.record_uses(scan_legacy(io.BytesIO(data)))
        except PickleScanError as e:
            raise pickle.UnpicklingError(f"embedded storage is not a well-formed pickle ({e})") from e
        return load_legacy(io.BytesIO(data), policy, len(data))

    policy.add_safe("torch.storage._load_from_bytes", load_storage_from_bytes)
    policy.add_safe("copyreg._reconstructor", _reconstruct_without_init)
    policy.add_safe("torch._tensor._rebuild_from_type_v2", _rebuild_from_type_checked)
    # TorchScript's list builders and type tags: identity functions of torch's own.
    for name in _TORCHSCRIPT_BUILDERS:
        policy.add_safe(f"torch.jit._pickle.{name}", getattr(torch.jit._pickle, name))


def _restricted(load: Callable[[], Any], path: Path) -> Any:
    try:
        return load()
    except MemoryError as e:
        raise _Unreadable(f"{path}: the pickle asks for more memory than the file could ever hold; refused") from e
    except RuntimeError as e:
        if "allocate" in str(e):
            raise _Unreadable(f"{path}: the pickle asks for more memory than the file could ever hold; refused ({_torch_text(e)})") from e
        raise _Unreadable(f"{path}: the pickle could not be read safely (RuntimeError: {_torch_text(e)})") from e
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, AssertionError, struct.error) as e:
        raise _Unreadable(f"{path}: the pickle could not be read safely ({type(e).__name__}: {_torch_text(e)})") from e


def _zip_storage_loader(reader: Any) -> Callable[[Any], Any]:
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


def _is_placeholder(obj: Any) -> bool:
    return isinstance(obj, Placeholder) or (isinstance(obj, type) and issubclass(obj, Placeholder))


def _reconstruct_without_init(cls: Any, base: Any, state: Any) -> Any:
    """Safe stand-in for copyreg._reconstructor (protocol 0/1 object creation)."""
    if _is_placeholder(base):
        return base(cls, state)  # base.__init__(obj, state) would run: a placeholder records it instead
    if base is not object or state is not None or not isinstance(cls, type):
        raise pickle.UnpicklingError("copyreg._reconstructor is only allowed for plain objects")
    return cls.__new__(cls)


def _rebuild_from_type_checked(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """torch's _rebuild_from_type_v2 (a tensor subclass: `func(*args)`, then the type), with
    placeholders recorded instead of handed to torch: a placeholder `func` is a call the
    pickle makes, a placeholder `new_type` an unknown tensor subclass (the plain tensor is kept)."""
    if _is_placeholder(func):
        return make_placeholder("torch._tensor", "_rebuild_from_type_v2")(func, new_type, args, state)
    if _is_placeholder(new_type):
        return func(*args)
    return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)


def _torch_load(path: Path, weights_only: bool, mmap_tensors: bool) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, weights_only=weights_only, mmap=mmap_tensors, map_location="cpu")
    except pickle.UnpicklingError:
        raise
    except RuntimeError as e:
        if "allocate" in str(e):
            raise _Unreadable(f"{path}: the file asks for more memory than it could ever hold; refused ({_torch_text(e)})") from e
        raise _Unreadable(f"{path}: torch.load failed on a damaged or incomplete file ({_torch_text(e)})") from e
    except (EOFError, ValueError, OSError, KeyError, AttributeError, TypeError, IndexError, AssertionError) as e:
        raise _Unreadable(f"{path}: torch.load failed on a damaged or incomplete file ({type(e).__name__}: {_torch_text(e)})") from e


def _scan_zip_pickle(path: Path, policy: GlobalPolicy, shape: PickleShape | None = None) -> list[GlobalRef]:
    try:
        infos = zip_entries(path)
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
        _check_entries(path, infos)
        data = _stored_entry(path, pickles[0])
    except ZIP_ERRORS as e:
        raise InputError(f"{path}: a damaged or inconsistent zip archive ({e})") from e
    uses = _scan(io.BytesIO(data), path, shape)
    policy.record_uses(uses)
    return list(uses)


def _stored_entry(path: Path, info: zipfile.ZipInfo) -> bytes:
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        start = _opened_entry_start(data, info)
        return data[start : start + info.compress_size]


def _check_entries(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    """Every entry opened as zipfile opens it — its local header compared with the central
    directory: a crafted archive can show one reader one entry and another reader another —
    and its CRC-32, which torch never checks: damaged tensor data is said, not analysed.
    Stored entries are read straight from the mapped file (no copy); others through zipfile."""
    with contextlib.ExitStack() as opened:
        f = opened.enter_context(open(path, "rb"))
        data = opened.enter_context(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        view = opened.enter_context(memoryview(data))
        archive: zipfile.ZipFile | None = None  # opened once, at the first compressed entry
        for info in infos:
            if info.compress_type == zipfile.ZIP_STORED:
                start = _opened_entry_start(data, info)
                end = start + info.compress_size
                if end > len(data):
                    raise InputError(f"{path}: zip entry {info.filename} claims {info.compress_size} bytes, more than the file holds")
                crc = 0
                for pos in range(start, end, _CRC_CHUNK):
                    crc = zlib.crc32(view[pos : min(end, pos + _CRC_CHUNK)], crc)
            else:
                archive = archive or opened.enter_context(zipfile.ZipFile(path))
                with archive.open(info) as entry:  # zipfile checks the CRC itself at the end
                    while entry.read(_CRC_CHUNK):
                        pass
                continue
            if crc != info.CRC:
                raise InputError(
                    f"{path}: zip entry {info.filename} fails its CRC-32 check (stored {info.CRC:08x}, "
                    f"computed {crc:08x}): the file was damaged or altered after it was saved"
                )


def _opened_entry_start(data: mmap.mmap, info: zipfile.ZipInfo) -> int:
    """Where a stored entry's bytes start, after the checks ZipFile.open makes (the same
    refusals, in the same words): one read of the local header instead of an open per entry."""
    header = data[info.header_offset : info.header_offset + 30]
    if len(header) != 30:
        raise zipfile.BadZipFile("Truncated file header")
    if header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile("Bad magic number for file header")
    local_flags, = struct.unpack_from("<H", header, 6)
    name_len, extra_len = struct.unpack_from("<HH", header, 26)
    name_at = info.header_offset + 30
    if info.flag_bits & 0x20:
        raise NotImplementedError("compressed patched data (flag bit 5)")
    if info.flag_bits & 0x40:
        raise NotImplementedError("strong encryption (flag bit 6)")
    raw_name = data[name_at : name_at + name_len]
    name = raw_name.decode("utf-8" if local_flags & 0x800 else "cp437")
    if name != info.orig_filename:
        raise zipfile.BadZipFile(f"File name in directory {info.orig_filename!r} and header {raw_name!r} differ.")
    if info.flag_bits & 0x1:
        raise RuntimeError(f"File {info.filename!r} is encrypted, password required for extraction")
    return name_at + name_len + extra_len


def _scan_legacy_pickles(path: Path, policy: GlobalPolicy) -> list[GlobalRef]:
    with _mapped(path) as data:
        try:
            uses = scan_legacy(data)
        except PickleScanError as e:
            raise InputError(f"{path}: not a well-formed pickle ({e})") from e
    policy.record_uses(uses)
    return list(uses)


def _scan(stream: IO[bytes], path: Path, shape: PickleShape | None = None) -> dict[GlobalRef, GlobalUse]:
    try:
        return scan_pickle(stream, shape=shape)
    except PickleScanError as e:
        raise InputError(f"{path}: not a well-formed pickle ({e})") from e


def _torch_refusal(error: BaseException) -> str:
    """What torch's weights_only error says it refused, without its advice."""
    return _torch_text(error)


def _torch_text(error: BaseException) -> str:
    """torch's error text, first informative line, with every sentence that advises a less
    safe load (weights_only=False, allowlisting a global) left out: the analyzer never
    repeats the call that would run a payload."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue", "WeightsUnpickler error:")
    for line in [line for line in lines if not line.startswith(boilerplate)] + lines:
        kept = " ".join(s for s in re.split(r"(?<=[.!?])\s+", line) if s and not _UNSAFE_ADVICE.search(s))
        kept = kept.removeprefix("WeightsUnpickler error:").strip()
        if kept:
            return kept[:300]
    return type(error).__name__


def _reason(error: InputError, path: Path) -> str:
    return str(error).removeprefix(f"{path}: ")


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
