"""Recognise a checkpoint's format from its bytes, never from its extension."""

from __future__ import annotations

import enum
import functools
import json
import os
import struct
import tarfile
import zipfile
from pathlib import Path

from ..errors import InputError

__all__ = ["Format", "sniff", "zip_entries", "ZIP_ERRORS", "TORCH_TAR_MEMBERS", "is_torch_tar"]

#: What Python's zipfile raises on archives it cannot read: damaged, encrypted, a
#: compression or feature it does not implement, a name that is not UTF-8.
ZIP_ERRORS = (
    zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError, NotImplementedError,
    UnicodeDecodeError, ValueError,
)

#: The members of torch's oldest checkpoint format, a tar archive (torch < 0.4), that
#: torch.load reads (sys_info is written too, never read).
TORCH_TAR_MEMBERS = frozenset({"pickle", "storages", "tensors"})
#: What Python's tarfile raises on bytes that are no tar archive, or a damaged one.
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError, UnicodeDecodeError, OverflowError)

# torch's legacy (pre-1.6) files begin with a protocol-2 pickle of this 10-byte long.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_PICKLE_PROTOCOL_OPCODE = 0x80
# Opcodes a protocol 0/1 pickle can start with: MARK, EMPTY_DICT/LIST/TUPLE, GLOBAL, ...
_OLD_PICKLE_FIRST_BYTES = set(b"(}]).cNIFSVLGJKMTUX\x8c")

_COMPRESSED: list[tuple[bytes, str, str]] = [
    (b"\x1f\x8b", "gzip", "gunzip"),
    (b"BZh", "bzip2", "bunzip2"),
    (b"\xfd7zXZ\x00", "xz", "unxz"),
]
_NOT_CHECKPOINTS: list[tuple[bytes, str]] = [
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x93NUMPY", "a NumPy .npy array file"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras .h5?)"),
    (b"ustar", "a tar archive"),
]


class Format(str, enum.Enum):
    TORCH_ZIP = "torch-zip"
    TORCH_LEGACY = "torch-legacy"
    TORCHSCRIPT = "torchscript"
    PICKLE = "pickle"
    SAFETENSORS = "safetensors"


EXPECTED = (
    "expected a PyTorch checkpoint (torch.save zip or legacy file, TorchScript archive), "
    "a pickle, or a safetensors file"
)


def sniff(path: Path) -> Format:
    """Return the format of the file at `path`, or raise InputError saying what it is instead."""
    _check_is_readable_file(path)
    with open(path, "rb") as f:
        head = f.read(512)
    size = os.path.getsize(path)
    if not head:
        raise InputError(f"{path}: the file is empty; {EXPECTED}")
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _sniff_zip(path)
    # torch.load tries the tar format before any other non-zip reading, so a file that is
    # also a tar archive (a polyglot) is read as what torch would run.
    if is_torch_tar(path):
        return Format.TORCH_LEGACY
    if head.startswith(_LEGACY_MAGIC):
        return Format.TORCH_LEGACY
    if _looks_like_safetensors(head, size):
        return Format.SAFETENSORS
    if head[0] == _PICKLE_PROTOCOL_OPCODE and len(head) > 1 and head[1] <= 5:
        return Format.PICKLE
    if head[0] in _OLD_PICKLE_FIRST_BYTES and _ends_like_pickle(path):
        return Format.PICKLE
    raise InputError(f"{path}: {_describe_unknown(path, head)}")


def is_torch_tar(path: Path) -> bool:
    """Whether the file opens as a tar archive (as torch.load's `tarfile.open(mode="r:")`
    would, ustar magic or not) holding the members of torch's legacy .tar format."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            return TORCH_TAR_MEMBERS <= set(tar.getnames())
    except _TAR_ERRORS:
        return False


def _check_is_readable_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; {EXPECTED}")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file; {EXPECTED}")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")


def zip_entries(path: Path) -> list[zipfile.ZipInfo]:
    """The archive's central directory as zipfile reads it, read once per file: the sniff
    and the reader (in a child forked after it) share it; a file changed since is read anew."""
    stat = os.stat(path)
    return list(_directory(os.fspath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=1)
def _directory(path: str, *identity: int) -> tuple[zipfile.ZipInfo, ...]:
    with zipfile.ZipFile(path) as archive:
        return tuple(archive.infolist())


def _sniff_zip(path: Path) -> Format:
    try:
        names = [info.filename for info in zip_entries(path)]
    except ZIP_ERRORS as e:
        raise InputError(f"{path}: a damaged or truncated zip archive ({e}); {EXPECTED}") from e
    if any(name.endswith("/constants.pkl") or "/code/" in name for name in names):
        return Format.TORCHSCRIPT
    if any(name.endswith("data.pkl") for name in names):
        return Format.TORCH_ZIP
    shown = ", ".join(names[:5]) + (" …" if len(names) > 5 else "")
    raise InputError(f"{path}: a zip archive without data.pkl (holds: {shown or 'nothing'}); {EXPECTED}")


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    # An 8-byte little-endian length, then a JSON object. A length that is too large or
    # longer than the file still marks safetensors: the reader says what is wrong with it.
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and header_len >= 2


def _ends_like_pickle(path: Path) -> bool:
    # Protocol 0/1 pickles have no header; every pickle ends with STOP ('.').
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 1))
        return f.read(1) == b"."


def _describe_unknown(path: Path, head: bytes) -> str:
    for magic, kind, tool in _COMPRESSED:
        if head.startswith(magic):
            return f"a {kind}-compressed file, not a checkpoint: decompress it ({tool}) and analyse what is inside"
    return f"{_what_it_is(path, head)}; {EXPECTED}"


def _what_it_is(path: Path, head: bytes) -> str:
    for magic, what in _NOT_CHECKPOINTS:
        if head.startswith(magic):
            return f"this is {what}, not a checkpoint"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "this is a tar archive, not a checkpoint"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "unrecognised binary data"
    if head.lstrip()[:1] in (b"{", b"[") and _is_json(path):
        return "this is a JSON document, not a checkpoint"
    return "this is a text file, not a checkpoint"


def _is_json(path: Path) -> bool:
    """Whether the file's first MiB parses as JSON (a larger document counts as text)."""
    try:
        json.loads(path.read_text(encoding="utf-8")[: 1 << 20])
    except (ValueError, UnicodeDecodeError):
        return False
    return True
