"""Hardening of the loader against crafted files, beyond the payload matrix of test_security.

- payloads inside TorchScript archives (data.pkl rewritten; its code is never run);
- zip archives whose local headers disagree with the central directory;
- resource exhaustion: entries that lie about their size, compressed entries, "billion
  laughs" memo expansion, oversized or inconsistent safetensors headers, pickles and
  storages asking for more memory than the file could hold, absurd tensor sizes, and the
  loader's own address-space and time limits.

Each crafted file is analysed in-process and through the CLI: either a report or one line
on stderr with exit code 2, never a traceback or a hang, the sentinel a payload would
create never exists, the input is unchanged and nothing is written beside it.
"""

from __future__ import annotations

import ctypes
import io
import json
import mmap
import os
import pickle
import pickletools
import resource
import signal
import struct
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

import analyzer.load as load_module
from analyzer import analyze
from analyzer.errors import AnalyzerError, InputError, UsageError
from analyzer.load import Format, LoadOptions, load_checkpoint
from analyzer.load.isolation import ChildCrashed, ChildLimits, ChildRaised, LimitExceeded, run_bounded
from analyzer.load.limits import count_records, limits_for
from analyzer.load.pickle_scan import scan_globals
from analyzer.load.safetensors_file import MAX_HEADER_BYTES
from analyzer.report.model import Report, Severity

from .models import SmallNet

UNSAFE = "unsafe-pickle"
#: os.system pickles under the module that defines it: posix.system on Linux.
OS_SYSTEM = f"{os.system.__module__}.system"
#: Generous wall-clock bound for one analysis of a crafted file (they take milliseconds).
TIME_BOUND_S = 10.0
#: Bound for the memo-expansion files, which must not be expanded at all.
LAUGHS_BOUND_S = 5.0


# -- helpers ------------------------------------------------------------------------------


class Call:
    """Pickles as `f(*args)`; never called in the test process."""

    def __init__(self, f: Any, *args: Any) -> None:
        self.f, self.args = f, args

    def __call__(self, *args: Any) -> Any:
        raise AssertionError("a test payload was called in the test process")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (self.f, self.args)


def _touch_cmd(sentinel: Path) -> str:
    return f"touch {sentinel}"


def _payload_ops(sentinel: Path) -> bytes:
    """The opcodes of a protocol-2 pickle of os.system('touch sentinel'), without PROTO, STOP or memo ops."""
    data = pickletools.optimize(pickle.dumps(Call(os.system, _touch_cmd(sentinel)), protocol=2))
    assert data[:2] == pickle.PROTO + b"\x02" and data[-1:] == pickle.STOP
    ops = data[2:-1]
    assert not any(op.name.endswith("PUT") for op, _, _ in pickletools.genops(data))
    return ops


def _refused_by_torch(data_pkl: bytes) -> bytes:
    """The same pickle with a harmless NONE, POP after PROTO: torch's weights_only unpickler
    refuses POP, so the file goes to the analyzer's restricted unpickler."""
    assert data_pkl[:1] == pickle.PROTO
    return data_pkl[:2] + pickle.NONE + pickle.POP + data_pkl[2:]


def _binunicode(text: str) -> bytes:
    raw = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def _data_pkl_name(archive: zipfile.ZipFile) -> str:
    [name] = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
    return name


def _read_data_pkl(path: Path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(_data_pkl_name(archive))


def _rezip(src: Path, dst: Path, *, data_pkl: bytes | None = None, compress: int | None = None) -> None:
    """Copy a zip entry by entry (same order, same compression unless `compress`), data.pkl replaced."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        pkl = _data_pkl_name(zin)
        for info in zin.infolist():
            body = data_pkl if (data_pkl is not None and info.filename == pkl) else zin.read(info)
            out = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            out.compress_type = info.compress_type if compress is None else compress
            zout.writestr(out, body)


def _central_records(data: bytes) -> Iterator[tuple[int, str]]:
    """(offset, name) of each central-directory record."""
    pos = 0
    while (pos := data.find(b"PK\x01\x02", pos)) >= 0:
        (name_len,) = struct.unpack_from("<H", data, pos + 28)
        yield pos, data[pos + 46 : pos + 46 + name_len].decode()
        pos += 4


def _local_header_offset(path: Path, name: str) -> int:
    with zipfile.ZipFile(path) as archive:
        return archive.getinfo(name).header_offset


def _cli_one_line(result: Any, path: Path, *says: str) -> str:
    assert result.code == 2, (result.code, result.out[-2000:], result.err)
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    line = lines[0]
    assert line.startswith("analyze: error: ")
    assert str(path) in line
    line = line.replace(str(path), "<path>")  # what is said, not the file's name
    for text in says:
        assert text in line, line
    assert "Traceback" not in result.err
    return line


@dataclass
class Guard:
    """The input's bytes and mtime and its folder's listing, recorded before the analysis."""

    path: Path
    data: bytes
    mtime: int
    listing: list[str]

    def check(self) -> None:
        assert self.path.read_bytes() == self.data, f"{self.path} was modified"
        assert self.path.stat().st_mtime_ns == self.mtime, f"{self.path} was touched"
        assert sorted(p.name for p in self.path.parent.iterdir()) == self.listing, "a file was written beside the input"


def _guard(path: Path) -> Guard:
    return Guard(path, path.read_bytes(), path.stat().st_mtime_ns, sorted(p.name for p in path.parent.iterdir()))


@dataclass
class Outcome:
    report: Report | None
    error: AnalyzerError | None
    seconds: float


def _analyze_bounded(path: Path, bound: float = TIME_BOUND_S, **kwargs: Any) -> Outcome:
    """analyze(path): a Report or an AnalyzerError (anything else propagates), within `bound`; RLIMIT_AS restored."""
    limits_before = resource.getrlimit(resource.RLIMIT_AS)
    start = time.perf_counter()
    report: Report | None = None
    error: AnalyzerError | None = None
    try:
        report = analyze(path, **kwargs)
    except AnalyzerError as e:
        error = e
    seconds = time.perf_counter() - start
    assert seconds < bound, f"analysing {path.name} took {seconds:.1f} s"
    assert resource.getrlimit(resource.RLIMIT_AS) == limits_before
    if error is not None:
        assert error.exit_code == 2
        assert "\n" not in str(error), str(error)
    return Outcome(report, error, seconds)


def _refused(path: Path, *says: str, bound: float = TIME_BOUND_S) -> str:
    outcome = _analyze_bounded(path, bound)
    assert outcome.error is not None, f"{path.name} was analysed instead of refused"
    assert isinstance(outcome.error, InputError)
    message = str(outcome.error)
    assert str(path) in message
    message = message.replace(str(path), "<path>")  # what is said, not the file's name
    for text in says:
        assert text in message, message
    return message


@pytest.fixture
def net(small_net: SmallNet) -> SmallNet:
    return small_net


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An empty folder for the crafted file alone (scratch files go to tmp_path/scratch)."""
    path = tmp_path / "input"
    path.mkdir()
    (tmp_path / "scratch").mkdir()
    return path


# -- 1. payloads inside TorchScript archives ------------------------------------------------


def _script(net: nn.Module, path: Path) -> None:
    torch.jit.script(net).save(str(path))


def _splice_into_top_level_dict(data_pkl: bytes, key: str, value_ops: bytes) -> bytes:
    """Insert `key: value` as the first item of the top-level module's state dict (after its `}(`)."""
    ops = list(pickletools.genops(data_pkl))
    # PROTO, GLOBAL (the module class), BINPUT, EMPTY_TUPLE, NEWOBJ, EMPTY_DICT, MARK, ...
    names = [op.name for op, _, _ in ops[:7]]
    assert names == ["PROTO", "GLOBAL", "BINPUT", "EMPTY_TUPLE", "NEWOBJ", "EMPTY_DICT", "MARK"], names
    at = ops[7][2]
    return data_pkl[:at] + _binunicode(key) + value_ops + data_pkl[at:]


def test_payload_in_torchscript_data_pkl_never_runs(folder: Path, tmp_path: Path, net: SmallNet, run_cli: Any) -> None:
    sentinel = tmp_path / "PWNED-torchscript"
    original = tmp_path / "scratch" / "scripted.pt"
    _script(net, original)
    crafted = _splice_into_top_level_dict(_read_data_pkl(original), "x", _payload_ops(sentinel))
    # Statically (nothing run): the pickle calls posix.system, and is still a well-formed pickle.
    assert {r.full_name for r in scan_globals(io.BytesIO(crafted))} >= {OS_SYSTEM}
    path = folder / "scripted.pt"
    _rezip(original, path, data_pkl=crafted)
    assert _read_data_pkl(path) == crafted
    guard = _guard(path)

    outcome = _analyze_bounded(path)
    assert not sentinel.exists(), "the payload ran"
    report = outcome.report
    assert report is not None, outcome.error
    assert report.source.format == "torchscript"
    unsafe = [f for f in report.findings if f.kind == UNSAFE]
    assert len(unsafe) == 1, [f.kind for f in report.findings]
    assert unsafe[0].severity is Severity.ERROR
    assert unsafe[0].evidence["dangerous"] == [OS_SYSTEM]
    assert OS_SYSTEM in unsafe[0].message
    assert report.source.placeholders == [OS_SYSTEM]
    # The TorchScript archive's tensors are still read.
    assert report.summary.tensors == len(net.state_dict())

    result = run_cli(path)
    assert not sentinel.exists(), "the payload ran"
    assert result.code == 1, result.err
    assert result.err == ""
    assert UNSAFE in result.out and OS_SYSTEM in result.out
    assert "Traceback" not in result.out
    guard.check()


def test_payload_replacing_a_torchscript_tensor_never_runs(folder: Path, tmp_path: Path, net: SmallNet, run_cli: Any) -> None:
    """The payload stands where conv1's weight was: no tensor can be recovered for it, still nothing runs."""
    sentinel = tmp_path / "PWNED-torchscript-weight"
    original = tmp_path / "scratch" / "scripted.pt"
    _script(net, original)
    data = _read_data_pkl(original)
    ops = list(pickletools.genops(data))
    # conv1's 'weight' key, then its value (GLOBAL _rebuild_tensor_v2 ... REDUCE): swap the value's
    # first opcode (GLOBAL) for the payload, which leaves the payload's result as the first REDUCE's callee.
    weight_at = next(i for i, (_op, arg, _pos) in enumerate(ops) if arg == "weight")
    rebuild = next(i for i in range(weight_at, len(ops)) if ops[i][0].name == "GLOBAL")
    assert ops[rebuild][1] == "torch._utils _rebuild_tensor_v2"
    start, end = ops[rebuild][2], ops[rebuild + 1][2]
    crafted = data[:start] + _payload_ops(sentinel) + data[end:]
    path = folder / "scripted.pt"
    _rezip(original, path, data_pkl=crafted)
    guard = _guard(path)

    outcome = _analyze_bounded(path)
    assert not sentinel.exists(), "the payload ran"
    if outcome.report is not None:
        assert any(f.kind == UNSAFE and f.severity is Severity.ERROR for f in outcome.report.findings)
    result = run_cli(path)
    assert not sentinel.exists(), "the payload ran"
    assert result.code in (1, 2), result.err
    assert "Traceback" not in result.out + result.err
    guard.check()


# -- 2. local headers that disagree with the central directory ------------------------------


def _rename_local_header(path: Path, name: str, new_name: str) -> None:
    assert len(new_name) == len(name)
    data = bytearray(path.read_bytes())
    offset = _local_header_offset(path, name)
    assert data[offset : offset + 4] == b"PK\x03\x04"
    (name_len,) = struct.unpack_from("<H", data, offset + 26)
    assert data[offset + 30 : offset + 30 + name_len] == name.encode()
    data[offset + 30 : offset + 30 + name_len] = new_name.encode()
    path.write_bytes(bytes(data))


def _swap_central_names(path: Path, first: str, second: str) -> None:
    """Swap two same-length names in the central directory only: each local entry keeps its name."""
    assert len(first) == len(second)
    data = bytearray(path.read_bytes())
    records = dict((name, pos) for pos, name in _central_records(bytes(data)))
    for name, other in ((first, second), (second, first)):
        pos = records[name]
        data[pos + 46 : pos + 46 + len(name)] = other.encode()
    path.write_bytes(bytes(data))


def test_data_pkl_local_header_with_another_name_is_refused(folder: Path, net: SmallNet, run_cli: Any) -> None:
    path = folder / "renamed.pth"
    torch.save(net.state_dict(), path)
    _rename_local_header(path, "renamed/data.pkl", "renamed/data.pkx")
    guard = _guard(path)
    _refused(path, "inconsistent zip archive")
    _cli_one_line(run_cli(path), path, "inconsistent zip archive")
    guard.check()


def test_tensor_entry_local_header_with_another_name_is_refused(folder: Path, net: SmallNet, run_cli: Any) -> None:
    path = folder / "renamed.pth"
    torch.save(net.state_dict(), path)
    _rename_local_header(path, "renamed/data/0", "renamed/data/9")
    guard = _guard(path)
    _refused(path, "inconsistent zip archive")
    _cli_one_line(run_cli(path), path, "inconsistent zip archive")
    guard.check()


def test_hidden_payload_behind_a_renamed_local_header_never_runs(folder: Path, tmp_path: Path, net: SmallNet, run_cli: Any) -> None:
    """The central directory's data.pkl is a payload whose local header calls itself something else."""
    sentinel = tmp_path / "PWNED-hidden"
    path = folder / "hidden.pth"
    torch.save({"state_dict": net.state_dict(), "x": Call(os.system, _touch_cmd(sentinel))}, path)
    _rename_local_header(path, "hidden/data.pkl", "hidden/data.pkx")
    # torch's reader goes by the central directory alone: it would read the payload as data.pkl.
    record = bytes(torch._C.PyTorchFileReader(str(path)).get_record("data.pkl"))
    assert b"posix\nsystem" in record or b"os\nsystem" in record
    guard = _guard(path)

    _refused(path, "inconsistent zip archive")
    assert not sentinel.exists(), "the payload ran"
    _cli_one_line(run_cli(path), path, "inconsistent zip archive")
    assert not sentinel.exists(), "the payload ran"
    guard.check()


def test_two_views_of_one_archive_are_refused(folder: Path, tmp_path: Path, net: SmallNet, run_cli: Any) -> None:
    """Local headers show a benign data.pkl; the central directory maps data.pkl to a payload entry.

    A streaming unzip (local headers) sees one archive, torch (central directory) another.
    """
    sentinel = tmp_path / "PWNED-two-views"
    benign = tmp_path / "scratch" / "benign.pth"
    torch.save(net.state_dict(), benign)
    payload = _splice_dict_item(_read_data_pkl(benign), "x", _payload_ops(sentinel))
    path = folder / "views.pth"
    with zipfile.ZipFile(benign) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
            if info.filename == "benign/data.pkl":
                zout.writestr("benign/data.pkX", payload)
    _swap_central_names(path, "benign/data.pkl", "benign/data.pkX")
    record = bytes(torch._C.PyTorchFileReader(str(path)).get_record("data.pkl"))
    assert record == payload  # what torch would unpickle
    guard = _guard(path)

    _refused(path, "inconsistent zip archive")
    assert not sentinel.exists(), "the payload ran"
    _cli_one_line(run_cli(path), path, "inconsistent zip archive")
    assert not sentinel.exists(), "the payload ran"
    guard.check()


def _splice_dict_item(data_pkl: bytes, key: str, value_ops: bytes) -> bytes:
    """Add `key: value` to a torch.save'd top-level dict: SETITEM just before the final STOP."""
    assert data_pkl.endswith(pickle.STOP)
    return data_pkl[:-1] + _binunicode(key) + value_ops + pickle.SETITEM + pickle.STOP


def _patch_zip_entry(path: Path, name: str, *, central: dict[int, int], local: dict[int, int] | None = None) -> None:
    """OR (offset -> bits) into 16-bit fields of `name`'s central record and local header; a
    value with the 0x10000 bit set replaces the field instead (its low 16 bits)."""
    data = bytearray(path.read_bytes())
    [record] = [pos for pos, n in _central_records(bytes(data)) if n == name]
    header = _local_header_offset(path, name)
    for base, fields in ((record, central), (header, local or {})):
        for offset, bits in fields.items():
            (old,) = struct.unpack_from("<H", data, base + offset)
            struct.pack_into("<H", data, base + offset, bits & 0xFFFF if bits & 0x10000 else old | bits)
    path.write_bytes(bytes(data))


def _non_utf8_name(path: Path, name: str) -> None:
    """The UTF-8 flag (bit 11) set, and the local header's name starting with a byte that is not UTF-8."""
    _patch_zip_entry(path, name, central={8: 0x800}, local={6: 0x800})
    data = bytearray(path.read_bytes())
    data[_local_header_offset(path, name) + 30] = 0xFF
    path.write_bytes(bytes(data))


def _non_utf8_central_name(path: Path, name: str) -> None:
    """The UTF-8 flag set in the central record, whose name starts with a byte that is not UTF-8."""
    _patch_zip_entry(path, name, central={8: 0x800})
    data = bytearray(path.read_bytes())
    [record] = [pos for pos, n in _central_records(bytes(data)) if n == name]
    data[record + 46] = 0xFF
    path.write_bytes(bytes(data))


#: Central record offsets: 6 version needed, 8 flags, 10 method; local header: 4, 6, 8.
ZIP_FIELD_DAMAGE: dict[str, Callable[[Path, str], None]] = {
    "encrypted-flag": lambda p, n: _patch_zip_entry(p, n, central={8: 0x1}, local={6: 0x1}),
    "strong-encryption-flag": lambda p, n: _patch_zip_entry(p, n, central={8: 0x40}, local={6: 0x40}),
    "patched-data-flag": lambda p, n: _patch_zip_entry(p, n, central={8: 0x20}, local={6: 0x20}),
    "needs-zip-version-6.4": lambda p, n: _patch_zip_entry(p, n, central={6: 0x10000 | 64}, local={4: 0x10000 | 64}),
    "unknown-compression-method": lambda p, n: _patch_zip_entry(p, n, central={10: 0x10000 | 97}, local={8: 0x10000 | 97}),
    "non-utf8-name": _non_utf8_name,
    "non-utf8-central-name": _non_utf8_central_name,
}


@pytest.mark.parametrize("entry", ["data.pkl", "version"])
@pytest.mark.parametrize("damage", list(ZIP_FIELD_DAMAGE))
def test_zip_entry_python_cannot_open_is_refused_in_one_line(
    damage: str, entry: str, folder: Path, net: SmallNet, run_cli: Any
) -> None:
    """Flags, versions, methods and names that Python's zipfile refuses to open: one line, exit 2.

    (Found by tests/test_fuzz.py: single bit flips in a central directory record.)
    """
    path = folder / "flags.pth"
    torch.save(net.state_dict(), path)
    ZIP_FIELD_DAMAGE[damage](path, f"flags/{entry}")
    guard = _guard(path)
    _refused(path)
    _cli_one_line(run_cli(path), path)
    guard.check()


# -- 3. resource limits ---------------------------------------------------------------------

# - zip entries that lie about their size


def _patch_entry_size(path: Path, name: str, size: int) -> None:
    """Set the compressed and uncompressed sizes of `name` in its local header and central record."""
    data = bytearray(path.read_bytes())
    local = _local_header_offset(path, name)
    struct.pack_into("<II", data, local + 18, size, size)
    [central] = [pos for pos, n in _central_records(bytes(data)) if n == name]
    struct.pack_into("<II", data, central + 20, size, size)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("entry", ["data.pkl", "data/0"])
@pytest.mark.parametrize("claim", ["file-size-plus-one", "4-GB"])
def test_zip_entry_claiming_more_bytes_than_the_file_is_refused(
    entry: str, claim: str, folder: Path, net: SmallNet, run_cli: Any
) -> None:
    path = folder / "liar.pth"
    torch.save(net.state_dict(), path)
    size = path.stat().st_size + 1 if claim == "file-size-plus-one" else 0xFFFFFFF0
    _patch_entry_size(path, f"liar/{entry}", size)
    guard = _guard(path)
    says = [f"data.pkl claims {size} bytes, more than the file holds"] if entry == "data.pkl" else []
    message = _refused(path, *says)
    assert "damaged" in message or "claims" in message, message
    _cli_one_line(run_cli(path), path, *says)
    guard.check()


# - compressed entries


@pytest.mark.parametrize("kind", ["torch-zip", "torchscript"])
def test_deflated_archive_is_refused(kind: str, folder: Path, tmp_path: Path, net: SmallNet, run_cli: Any) -> None:
    original = tmp_path / "scratch" / "original.pt"
    if kind == "torch-zip":
        torch.save(net.state_dict(), original)
    else:
        _script(net, original)
    path = folder / "deflated.pt"
    _rezip(original, path, compress=zipfile.ZIP_DEFLATED)
    guard = _guard(path)
    _refused(path, "zip entries are compressed")
    _cli_one_line(run_cli(path), path, "zip entries are compressed")
    guard.check()


def test_deflated_zip_bomb_data_pkl_is_never_inflated(folder: Path, tmp_path: Path, net: SmallNet, run_cli: Any) -> None:
    """A deflated data.pkl that inflates to 64 MB of pickle: refused from the header, never inflated."""
    original = tmp_path / "scratch" / "original.pth"
    torch.save(net.state_dict(), original)
    data = _read_data_pkl(original)
    # A long STRING-free run of NONE/POP pairs is a valid pickle and deflates ~1000:1.
    bomb = data[:-1] + (pickle.NONE + pickle.POP) * (32 << 20) + pickle.STOP
    path = folder / "bomb.pth"
    with zipfile.ZipFile(original) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            if info.filename.endswith("data.pkl"):
                zout.writestr(info.filename, bomb, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
            else:
                zout.writestr(info.filename, zin.read(info))
    del bomb
    assert path.stat().st_size < 1 << 20
    guard = _guard(path)
    _refused(path, "zip entries are compressed", bound=LAUGHS_BOUND_S)
    _cli_one_line(run_cli(path), path, "zip entries are compressed")
    guard.check()


# - billion laughs: memo expansion


def _laughs_pop(levels: int = 30, width: int = 10) -> bytes:
    """List i holds `width` BINGETs of list i-1, each list POPped after BINPUT; the last one is the value."""
    out = bytearray(pickle.EMPTY_LIST + pickle.BINPUT + b"\x00" + pickle.POP)
    for i in range(1, levels + 1):
        out += pickle.EMPTY_LIST + pickle.MARK + (pickle.BINGET + bytes([i - 1])) * width + pickle.APPENDS
        out += pickle.BINPUT + bytes([i]) + pickle.POP
    return bytes(out + pickle.BINGET + bytes([levels]))


def _laughs_appends(levels: int = 30, width: int = 10) -> bytes:
    """The same lists, all kept in one outer list (opcodes torch's weights_only unpickler accepts)."""
    out = bytearray(pickle.EMPTY_LIST + pickle.MARK + pickle.EMPTY_LIST + pickle.BINPUT + b"\x00")
    for i in range(1, levels + 1):
        out += pickle.EMPTY_LIST + pickle.MARK + (pickle.BINGET + bytes([i - 1])) * width + pickle.APPENDS
        out += pickle.BINPUT + bytes([i])
    return bytes(out + pickle.APPENDS)


def _laughs_dict(levels: int = 30, width: int = 10, base: int = 1 << 16) -> bytes:
    """Dicts whose `width` keys all map to the dict of the level below (LONG_BINPUT/GET, after a real state dict)."""
    def put(i: int) -> bytes:
        return pickle.LONG_BINPUT + struct.pack("<I", base + i)

    def get(i: int) -> bytes:
        return pickle.LONG_BINGET + struct.pack("<I", base + i)

    out = bytearray(pickle.EMPTY_DICT + put(0) + pickle.POP)
    for i in range(1, levels + 1):
        out += pickle.EMPTY_DICT + pickle.MARK
        for k in range(width):
            out += _binunicode(f"k{k}") + get(i - 1)
        out += pickle.SETITEMS + put(i) + pickle.POP
    return bytes(out + get(levels))


def _plain(ops: bytes) -> bytes:
    return pickle.PROTO + b"\x02" + ops + pickle.STOP


@pytest.mark.parametrize("carrier", ["pickle", "torch-zip"])
@pytest.mark.parametrize("laughs", [_laughs_pop, _laughs_appends], ids=["pop", "appends"])
def test_billion_laughs_alone_holds_no_tensors(
    laughs: Callable[[], bytes], carrier: str, folder: Path, tmp_path: Path, net: SmallNet, run_cli: Any
) -> None:
    data = _plain(laughs())
    if carrier == "pickle":
        path = folder / "laughs.pkl"
        path.write_bytes(data)
    else:
        original = tmp_path / "scratch" / "laughs.pth"
        torch.save(net.state_dict(), original)
        path = folder / "laughs.pth"
        _rezip(original, path, data_pkl=data)
    guard = _guard(path)
    _refused(path, "holds no tensors", bound=LAUGHS_BOUND_S)
    start = time.perf_counter()
    _cli_one_line(run_cli(path), path, "holds no tensors")
    assert time.perf_counter() - start < LAUGHS_BOUND_S
    guard.check()


@pytest.mark.parametrize("carrier", ["pickle-p2", "torch-zip"])
@pytest.mark.parametrize("laughs", [_laughs_pop, _laughs_dict], ids=["lists", "dicts"])
def test_billion_laughs_next_to_a_state_dict_is_not_expanded(
    laughs: Callable[[], bytes], carrier: str, folder: Path, tmp_path: Path, net: SmallNet, run_cli: Any
) -> None:
    """{'state_dict': ..., 'junk': 10**30 references}: the tensors are reported, the junk never walked."""
    state = net.state_dict()
    if carrier == "pickle-p2":
        path = folder / "laughs.pkl"
        path.write_bytes(_splice_dict_item(pickle.dumps({"state_dict": state}, protocol=2), "junk", laughs()))
    else:
        original = tmp_path / "scratch" / "laughs.pth"
        torch.save({"state_dict": state}, original)
        path = folder / "laughs.pth"
        _rezip(original, path, data_pkl=_splice_dict_item(_read_data_pkl(original), "junk", laughs()))
    guard = _guard(path)
    outcome = _analyze_bounded(path, LAUGHS_BOUND_S)
    assert outcome.report is not None, outcome.error
    assert outcome.report.summary.tensors == len(state)
    assert outcome.report.summary.params == sum(p.numel() for p in net.parameters())
    start = time.perf_counter()
    result = run_cli(path)
    assert time.perf_counter() - start < LAUGHS_BOUND_S
    assert result.code in (0, 1), result.err
    assert "Traceback" not in result.out + result.err
    guard.check()


# - safetensors headers


def _safetensors(path: Path, header: dict[str, Any], body: bytes, length: int | None = None) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + body)


def _two_f32(a_offsets: list[int], b_offsets: list[int], a_shape: list[int] | None = None) -> dict[str, Any]:
    return {
        "fc.weight": {"dtype": "F32", "shape": a_shape or [4], "data_offsets": a_offsets},
        "fc.bias": {"dtype": "F32", "shape": [4], "data_offsets": b_offsets},
    }


def test_safetensors_control_is_analysed(folder: Path) -> None:
    path = folder / "ok.safetensors"
    _safetensors(path, _two_f32([0, 16], [16, 32]), bytes(32))
    outcome = _analyze_bounded(path)
    assert outcome.report is not None, outcome.error
    assert outcome.report.summary.tensors == 2


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(_two_f32([0, 16], [8, 24]), id="overlapping-offsets"),
        pytest.param(_two_f32([0, 16], [0, 16]), id="same-offsets"),
        pytest.param(_two_f32([0, 16], [16, 32], a_shape=[2**40, 2**40]), id="shape-overflows"),
        pytest.param(_two_f32([0, 16], [16, 32], a_shape=[2**32, 2**32, 2**32]), id="shape-overflows-u64"),
        pytest.param(_two_f32([0, 16], [16, 2**62]), id="offset-past-the-end"),
        pytest.param(_two_f32([0, 16], [16, 2**64 - 1]), id="offset-u64-max"),
        pytest.param(_two_f32([16, 0], [16, 32]), id="offsets-reversed"),
    ],
)
def test_inconsistent_safetensors_header_is_refused(header: dict[str, Any], folder: Path, run_cli: Any) -> None:
    path = folder / "bad.safetensors"
    _safetensors(path, header, bytes(32))
    guard = _guard(path)
    _refused(path, "malformed safetensors file")
    _cli_one_line(run_cli(path), path, "malformed safetensors file")
    guard.check()


@pytest.mark.parametrize(
    ("declared", "file_size"),
    [
        pytest.param(MAX_HEADER_BYTES + 1, None, id="just-over-small-file"),
        pytest.param(200 * 1024 * 1024, None, id="200MB-small-file"),
        # A sparse file really larger than its declared header: not merely truncated.
        pytest.param(MAX_HEADER_BYTES + 1, MAX_HEADER_BYTES + 4096, id="just-over-sparse-large-file"),
    ],
)
def test_safetensors_header_over_the_limit_is_refused_as_such(
    declared: int, file_size: int | None, folder: Path, run_cli: Any
) -> None:
    """A safetensors file whose header length is over MAX_HEADER_BYTES: refused in one line that says
    so, not read (and not mistaken for some other kind of file)."""
    path = folder / "huge-header.safetensors"
    _safetensors(path, _two_f32([0, 16], [16, 32]), bytes(32), length=declared)
    if file_size is not None:
        with open(path, "r+b") as f:
            f.truncate(file_size)
    mtime = path.stat().st_mtime_ns
    listing = sorted(p.name for p in folder.iterdir())
    head = path.read_bytes()[:4096]

    # e.g. "<path>: safetensors header of 104857601 bytes is over the 104857600 byte limit"
    _refused(path, "safetensors header")
    _cli_one_line(run_cli(path), path, "safetensors header")
    assert path.read_bytes()[:4096] == head and path.stat().st_mtime_ns == mtime
    assert path.stat().st_size == (file_size or len(head))
    assert sorted(p.name for p in folder.iterdir()) == listing


# - memory: pickles and storages that ask for more than the file holds


def test_plain_pickle_asking_for_an_8_gb_tensor_is_refused(folder: Path, run_cli: Any) -> None:
    path = folder / "bigtensor.pkl"
    path.write_bytes(pickle.dumps({"fc.weight": Call(torch.Tensor, 2_000_000_000)}, protocol=2))
    assert path.stat().st_size < 200
    guard = _guard(path)
    says = "asks for more memory than the file could ever hold"
    _refused(path, says)
    _cli_one_line(run_cli(path), path, says)
    guard.check()


def test_memory_limit_option_bounds_the_load(folder: Path) -> None:
    """LoadOptions(memory_limit=): a 400 MB tensor request is refused under a 64 MB budget, read under the default."""
    path = folder / "tensor400mb.pkl"
    path.write_bytes(pickle.dumps({"fc.weight": Call(torch.Tensor, 100_000_000)}, protocol=2))
    guard = _guard(path)
    before = resource.getrlimit(resource.RLIMIT_AS)
    with pytest.raises(InputError, match="more memory"):
        load_checkpoint(path, LoadOptions(memory_limit=64 << 20))
    assert resource.getrlimit(resource.RLIMIT_AS) == before
    checkpoint = load_checkpoint(path)
    assert checkpoint.tensors["fc.weight"].numel() == 100_000_000
    assert resource.getrlimit(resource.RLIMIT_AS) == before
    guard.check()


def _int_op(value: int) -> bytes:
    return pickle.LONG1 + bytes([8]) + value.to_bytes(8, "little", signed=True)


def _patch_op(data: bytes, op_pos: int, op_len: int, replacement: bytes) -> bytes:
    return data[:op_pos] + replacement + data[op_pos + op_len :]


def _ops(data: bytes, start: int = 0) -> list[tuple[Any, Any, int, int]]:
    """(opcode, arg, position, length) of the pickle that starts at `start`."""
    stream = io.BytesIO(data)
    stream.seek(start)
    ops = list(pickletools.genops(stream))
    return [(op, arg, pos, (ops[i + 1][2] if i + 1 < len(ops) else pos + 1) - pos) for i, (op, arg, pos) in enumerate(ops)]


def _first_size_tuple(ops: list[tuple[Any, Any, int, int]]) -> list[tuple[Any, Any, int, int]]:
    """The int opcodes of the first tensor's size tuple: the ints right after the first BINPERSID's offset."""
    persid = next(i for i, (op, *_rest) in enumerate(ops) if op.name == "BINPERSID")
    # storage offset (one int), then the size: MARK ints TUPLE, or ints TUPLE1/2/3.
    i = persid + 1
    while ops[i][0].name in ("BINPUT", "LONG_BINPUT", "MEMOIZE"):
        i += 1
    assert ops[i][0].name.startswith("BININT"), ops[i][0].name  # the storage offset
    i += 1
    if ops[i][0].name == "MARK":
        i += 1
    ints = []
    while ops[i][0].name.startswith("BININT"):
        ints.append(ops[i])
        i += 1
    assert ints and ops[i][0].name.startswith("TUPLE"), ops[i][0].name
    return ints


def _absurd_sizes(data: bytes, value: int, dims: int) -> bytes:
    """The first `dims` sizes of the first tensor set to `value`."""
    for _op, _arg, pos, length in reversed(_first_size_tuple(_ops(data))[:dims]):
        data = _patch_op(data, pos, length, _int_op(value))
    return data


@pytest.mark.parametrize(
    ("value", "dims"),
    [(2**30, 1), (2**40, 1), (2**40, 2), (2**62, 4)],
    ids=["2^30x3x3x3", "2^40x3x3x3", "2^40x2^40x3x3", "2^62x4-overflows"],
)
@pytest.mark.parametrize("kind", ["torch-zip", "torchscript", "torch-zip-restricted"])
def test_absurd_tensor_size_in_an_archive_is_refused(
    kind: str, value: int, dims: int, folder: Path, tmp_path: Path, net: SmallNet, run_cli: Any
) -> None:
    """conv1.weight's size tuple patched to absurd sizes while its storage holds 216 floats."""
    original = tmp_path / "scratch" / "original.pt"
    if kind == "torchscript":
        _script(net, original)
    else:
        torch.save(net.state_dict(), original)
    crafted = _absurd_sizes(_read_data_pkl(original), value, dims)
    if kind == "torch-zip-restricted":
        crafted = _refused_by_torch(crafted)
    path = folder / "absurd.pt"
    _rezip(original, path, data_pkl=crafted)
    guard = _guard(path)
    says = "torch.load failed on a damaged or incomplete file" if kind == "torch-zip" else "the pickle could not be read safely"
    _refused(path, says)
    _cli_one_line(run_cli(path), path, says)
    guard.check()


@pytest.mark.parametrize("kind", ["torch-zip", "torch-zip-restricted", "torchscript"])
def test_archive_controls_are_analysed(kind: str, folder: Path, tmp_path: Path, net: SmallNet) -> None:
    """The crafting above changes only what it says: unpatched, each archive is analysed."""
    original = tmp_path / "scratch" / "original.pt"
    if kind == "torchscript":
        _script(net, original)
    else:
        torch.save(net.state_dict(), original)
    data = _read_data_pkl(original)
    path = folder / "control.pt"
    _rezip(original, path, data_pkl=_refused_by_torch(data) if kind == "torch-zip-restricted" else data)
    outcome = _analyze_bounded(path)
    assert outcome.report is not None, outcome.error
    assert outcome.report.summary.tensors == len(net.state_dict())
    expected_loader = "weights_only" if kind == "torch-zip" else "restricted-unpickler"
    assert outcome.report.source.loader == expected_loader


def _legacy_object_pickle_start(data: bytes) -> int:
    """Where the object pickle (the 4th of 5) of a legacy torch file starts."""
    stream = io.BytesIO(data)
    for _ in range(3):
        for _op in pickletools.genops(stream):
            pass
    return stream.tell()


def _legacy_numel_patched(path: Path, numel: int, restricted: bool) -> None:
    """Patch the first storage's element count in the legacy file's object pickle."""
    data = path.read_bytes()
    start = _legacy_object_pickle_start(data)
    ops = _ops(data, start)
    persid = next(i for i, (op, *_rest) in enumerate(ops) if op.name == "BINPERSID")
    # ('storage', StorageType, key, location, numel, view): the last int before BINPERSID.
    numel_op = next(ops[i] for i in range(persid, -1, -1) if ops[i][0].name.startswith("BININT"))
    _op, arg, pos, length = numel_op
    assert arg == 216  # conv1.weight: 8 * 3 * 3 * 3
    data = _patch_op(data, pos, length, _int_op(numel))
    if restricted:
        data = data[:start] + _refused_by_torch(data[start:])
    path.write_bytes(data)


@pytest.mark.parametrize("numel", [2**31, 2**33, 2**40], ids=["8GB", "32GB", "4TB"])
@pytest.mark.parametrize("reader", ["weights_only", "restricted"])
def test_legacy_storage_claiming_more_than_the_file_is_refused(
    reader: str, numel: int, folder: Path, net: SmallNet, run_cli: Any
) -> None:
    path = folder / "legacy.pth"
    torch.save(net.state_dict(), path, _use_new_zipfile_serialization=False)
    _legacy_numel_patched(path, numel, restricted=reader == "restricted")
    guard = _guard(path)
    # torch's reader tries to allocate and is stopped by the address-space limit; the restricted
    # reader checks the claim against the file's size before allocating anything.
    says = "allocate" if reader == "weights_only" else "more than the file's"
    _refused(path, says)
    _cli_one_line(run_cli(path), path, says)
    guard.check()


@pytest.mark.parametrize("reader", ["weights_only", "restricted"])
def test_legacy_control_is_analysed(reader: str, folder: Path, net: SmallNet) -> None:
    path = folder / "legacy.pth"
    torch.save(net.state_dict(), path, _use_new_zipfile_serialization=False)
    _legacy_numel_patched(path, 216, restricted=reader == "restricted")
    outcome = _analyze_bounded(path)
    assert outcome.report is not None, outcome.error
    assert outcome.report.summary.tensors == len(net.state_dict())
    assert outcome.report.source.loader == ("weights_only" if reader == "weights_only" else "restricted-unpickler")


class _Rebuild:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, 0, (2,), (1,), False, OrderedDict(), metadata)."""

    def __init__(self, metadata: Any) -> None:
        self.metadata = metadata

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        from collections import OrderedDict

        storage = torch.zeros(2).untyped_storage()
        typed = torch.storage.TypedStorage(wrap_storage=storage, dtype=torch.float32, _internal=True)
        return (torch._utils._rebuild_tensor_v2, (typed, 0, (2,), (1,), False, OrderedDict(), self.metadata))


@pytest.mark.parametrize("carrier", ["pickle-p2", "pickle-p5", "torch-zip"])
@pytest.mark.parametrize("metadata", [5], ids=["int"])
def test_tensor_rebuild_with_malformed_metadata_is_refused_in_one_line(
    metadata: Any, carrier: str, folder: Path, run_cli: Any
) -> None:
    """_rebuild_tensor_v2's 7th argument must be a dict; torch asserts it (AssertionError).

    (Found by tests/test_fuzz.py: a payload spliced so that its result became that argument.)
    """
    obj = {"fc.weight": _Rebuild(metadata), "fc.bias": torch.zeros(2)}
    path = folder / "metadata.pth"
    if carrier == "torch-zip":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=int(carrier[-1])))
    _report_or_one_line(path, run_cli)


def _report_or_one_line(path: Path, run_cli: Any) -> None:
    """Analysed (exit 0/1, nothing on stderr) or refused in one line (exit 2); never a traceback; input untouched."""
    guard = _guard(path)
    outcome = _analyze_bounded(path)
    result = run_cli(path)
    assert "Traceback" not in result.out + result.err
    if outcome.error is not None:
        _cli_one_line(result, path)
    else:
        assert result.code in (0, 1) and result.err == ""
    guard.check()


def test_tensor_rebuild_control_is_analysed(folder: Path) -> None:
    path = folder / "metadata.pkl"
    path.write_bytes(pickle.dumps({"fc.weight": _Rebuild({}), "fc.bias": torch.zeros(2)}, protocol=2))
    outcome = _analyze_bounded(path)
    assert outcome.report is not None, outcome.error
    assert outcome.report.summary.tensors == 2


# - the loader's own limits: in a bounded child, never in this process


@dataclass
class HostState:
    """What a test suite or a service relies on: its SIGALRM handler, its rlimits."""

    alarm_handler: Any
    cpu_limit: tuple[int, int]
    address_space: tuple[int, int]

    @classmethod
    def now(cls) -> HostState:
        return cls(signal.getsignal(signal.SIGALRM), resource.getrlimit(resource.RLIMIT_CPU), resource.getrlimit(resource.RLIMIT_AS))


@pytest.fixture
def host_timer() -> Iterator[list[int]]:
    """A pytest-timeout-like SIGALRM handler and a running ITIMER_REAL; yields the list its fires go to."""
    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    signal.setitimer(signal.ITIMER_REAL, 600.0)
    try:
        yield fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _host_untouched(before: HostState, fired: list[int]) -> None:
    """Handler and rlimits as they were, the timer still counting down, and still firing into the handler."""
    assert HostState.now() == before
    remaining, _interval = signal.getitimer(signal.ITIMER_REAL)
    assert 0 < remaining <= 600.0, "the host's timer was cancelled or reset"
    assert fired == [], "the host's timer fired early"
    signal.setitimer(signal.ITIMER_REAL, 0.02)
    deadline = time.monotonic() + 5
    while not fired and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fired == [signal.SIGALRM]


def test_time_limit_stops_a_load(folder: Path, host_timer: list[int]) -> None:
    """LoadOptions(time_limit=0.001): a normal file (hundreds of tensors, pure-Python unpickler)
    needs more CPU than that; the child is stopped and the host's timer never noticed."""
    state = {f"layer{i}.weight": torch.full((4, 4), float(i)) for i in range(400)}
    path = folder / "many.pkl"
    path.write_bytes(pickle.dumps(state, protocol=2))
    guard = _guard(path)
    before = HostState.now()
    assert len(load_checkpoint(path).tensors) == 400  # control: it loads with the default limits

    with pytest.raises(InputError, match="took longer than 0.001 s of CPU time") as raised:
        load_checkpoint(path, LoadOptions(time_limit=0.001))
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)
    assert len(load_checkpoint(path).tensors) == 400
    _host_untouched(before, host_timer)
    guard.check()


def _record_each_read(record: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every read of the file appends the reading process's id and limits to `record`."""
    original = load_module._read_checkpoint

    def spy(*args: Any, **kwargs: Any) -> Any:
        with open(record, "a") as f:
            f.write(json.dumps({
                "pid": os.getpid(),
                "address_space": resource.getrlimit(resource.RLIMIT_AS),
                "cpu": resource.getrlimit(resource.RLIMIT_CPU),
                "cpu_timer": signal.getitimer(signal.ITIMER_PROF)[0],
            }) + "\n")
        return original(*args, **kwargs)

    monkeypatch.setattr(load_module, "_read_checkpoint", spy)


def _reads(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text().splitlines()]


@pytest.mark.parametrize("fmt", ["torch-zip", "torch-legacy", "pickle", "torchscript", "safetensors"])
def test_limits_apply_in_a_child_and_never_here(
    fmt: str, folder: Path, tmp_path: Path, net: SmallNet, monkeypatch: pytest.MonkeyPatch, host_timer: list[int]
) -> None:
    path = folder / "model.bin"
    if fmt == "torch-zip":
        torch.save(net.state_dict(), path)
    elif fmt == "torch-legacy":
        torch.save(net.state_dict(), path, _use_new_zipfile_serialization=False)
    elif fmt == "pickle":
        path.write_bytes(pickle.dumps(net.state_dict(), protocol=5))
    elif fmt == "torchscript":
        _script(net, path)
    else:
        save_file(net.state_dict(), str(path))
    record = tmp_path / "scratch" / "reads.jsonl"
    _record_each_read(record, monkeypatch)
    before = HostState.now()
    checkpoint = load_checkpoint(path)
    assert checkpoint.format == fmt
    assert len(checkpoint.tensors) == len(net.state_dict())
    assert torch.equal(checkpoint.tensors["conv1.weight"], net.state_dict()["conv1.weight"])

    [child, *here] = _reads(record)
    # First, a child read the file under its own limits: an address-space ceiling below the
    # host's, and a CPU budget (the profiling timer, backed by RLIMIT_CPU) of at most a minute
    # plus a minute per GB and per 10,000 records.
    assert child["pid"] != os.getpid()
    assert child["address_space"][0] != resource.RLIM_INFINITY
    if before.address_space[0] != resource.RLIM_INFINITY:
        assert child["address_space"][0] <= before.address_space[0]
    assert child["cpu"][0] != resource.RLIM_INFINITY
    assert 0 < child["cpu_timer"] <= 60 + 60 * path.stat().st_size / 2**30 + 1e-4 * path.stat().st_size
    # Then this process took the result over under its own, unchanged limits: a plain torch
    # zip is rebuilt from the child's description without a second read.
    assert len(here) == (0 if fmt == "torch-zip" else 1)
    for read in here:
        assert read["pid"] == os.getpid()
        assert tuple(read["address_space"]) == before.address_space and tuple(read["cpu"]) == before.cpu_limit
        assert read["cpu_timer"] == 0.0
    _host_untouched(before, host_timer)


def test_host_timer_handler_and_rlimits_survive_every_kind_of_analysis(
    folder: Path, tmp_path: Path, net: SmallNet, host_timer: list[int]
) -> None:
    """analyze() inside a test suite or a service: a plain file, a memory bomb, a billion
    laughs, a model whose first forward asks for 58 GB — none of them touches the host."""
    plain = folder / "plain.pth"
    torch.save(net.state_dict(), plain)
    bomb = folder / "bomb.pkl"
    bomb.write_bytes(pickle.dumps({"w": Call(torch.Tensor, 2_000_000_000)}, protocol=2))
    laughs = folder / "laughs.pkl"
    laughs.write_bytes(_plain(_laughs_pop()))
    upsample = folder / "upsample.pth"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Upsample(scale_factor=2000.0)), upsample)
    before = HostState.now()
    assert analyze(plain).summary.tensors == len(net.state_dict())
    for refused in (bomb, laughs):
        with pytest.raises(InputError):
            analyze(refused)
    report = analyze(upsample, input_shape=(1, 3, 32, 32))
    assert [f.modules for f in report.findings if f.kind == "forward-failure"] == [["1"]]
    _host_untouched(before, host_timer)


def test_limits_are_restored_after_refusals(folder: Path, run_cli: Any) -> None:
    before = HostState.now()
    big = folder / "big.pkl"
    big.write_bytes(pickle.dumps({"w": Call(torch.Tensor, 2_000_000_000)}, protocol=2))
    laughs = folder / "laughs.pkl"
    laughs.write_bytes(_plain(_laughs_pop()))
    for path in (big, laughs):
        with pytest.raises(InputError):
            analyze(path)
        assert HostState.now() == before
        assert run_cli(path).code == 2
        assert HostState.now() == before


def _crash(*args: Any, **kwargs: Any) -> Any:
    ctypes.string_at(0)  # a reader in C dereferencing a pointer the file chose


def test_a_reader_that_crashes_costs_one_line(folder: Path, net: SmallNet, monkeypatch: pytest.MonkeyPatch, run_cli: Any) -> None:
    """A segfault while reading (a C reader's bug) kills the bounded child, not this process."""
    path = folder / "model.pth"
    torch.save(net.state_dict(), path)
    guard = _guard(path)
    monkeypatch.setattr(load_module, "_read_checkpoint", _crash)
    _refused(path, "the reader crashed while reading it (SIGSEGV)")
    _cli_one_line(run_cli(path), path, "the reader crashed while reading it (SIGSEGV)")
    guard.check()


def test_a_file_replaced_while_it_is_read_is_refused(folder: Path, tmp_path: Path, net: SmallNet, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child read one file; another one took its place (same name) before this process
    used the child's result: refused, nothing of either is reported."""
    path = folder / "model.pth"
    torch.save(net.state_dict(), path)
    other = tmp_path / "scratch" / "other.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, other)
    original = load_module._read_checkpoint

    def swap_after_reading(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        os.replace(other, path)  # happens in the child: the file is replaced on disk
        return result

    monkeypatch.setattr(load_module, "_read_checkpoint", swap_after_reading)
    with pytest.raises(InputError, match="changed while it was being read") as raised:
        load_checkpoint(path)
    assert "\n" not in str(raised.value)


def test_a_checkpoint_of_50000_tensors_is_analysed(tmp_path: Path) -> None:
    """50,000 tensors (a large transformer's count, in 15 MB): loaded within the limits, whose
    CPU budget grows with the file's records, and analysed."""
    state = {f"blocks.{i // 4}.{'qkvo'[i % 4]}.weight": torch.full((2,), float(i % 7)) for i in range(50_000)}
    path = tmp_path / "many.pth"
    torch.save(state, path)
    with zipfile.ZipFile(path) as archive:
        entries = len(archive.infolist())
    assert count_records(path, Format.TORCH_ZIP) >= entries > 50_000
    small = limits_for(path.stat().st_size)
    scaled = limits_for(path.stat().st_size, count_records(path, Format.TORCH_ZIP))
    assert scaled.cpu_seconds >= small.cpu_seconds + 1e-4 * entries  # type: ignore[operator]
    report = analyze(path)
    assert report.summary.tensors == 50_000
    assert report.summary.params == 100_000
    assert report.summary.nonzero_params == sum(2 for i in range(50_000) if i % 7)
    assert report.source.loader == "weights_only"


# - isolation itself: what a bounded child reports, whatever the step does


_TIGHT = ChildLimits(memory_bytes=256 << 20, cpu_seconds=0.3)


def _spin() -> None:
    while True:
        pass


@pytest.mark.parametrize(
    ("step", "expected", "resource_name"),
    [
        (lambda: bytearray(2 << 30), LimitExceeded, "memory"),
        (lambda: torch.empty(1 << 30).numel(), LimitExceeded, "memory"),
        (_spin, LimitExceeded, "cpu"),
        (lambda: ctypes.string_at(0), ChildCrashed, None),
        (lambda: {}["missing"], ChildRaised, None),
        (lambda: object(), ChildRaised, None),  # a result that is not JSON: never pickled
    ],
    ids=["python-memory", "torch-memory", "cpu-spin", "segfault", "exception", "not-json"],
)
def test_bounded_child_failures(step: Callable[[], Any], expected: type, resource_name: str | None, host_timer: list[int]) -> None:
    before = HostState.now()
    with pytest.raises(expected) as raised:
        run_bounded(step, _TIGHT)
    if resource_name is not None:
        assert raised.value.resource == resource_name  # type: ignore[attr-defined]
    _host_untouched(before, host_timer)


def test_bounded_child_results_and_our_errors_come_back() -> None:
    assert run_bounded(lambda: {"sum": int(torch.arange(10).sum()), "pid": os.getpid()}, _TIGHT)["pid"] != os.getpid()
    with pytest.raises(UsageError, match="as raised in the child"):
        run_bounded(lambda: (_ for _ in ()).throw(UsageError("as raised in the child")), _TIGHT)


def test_first_forward_run_out_of_cpu_is_a_failed_trace() -> None:
    """A model whose first run needs more CPU than its budget: a failed trace, not a hang."""
    from analyzer.model.bounded_run import BoundedFirstRun
    from analyzer.model.inputs import random_input

    model = nn.Sequential(nn.Conv2d(3, 64, 7), nn.Conv2d(64, 64, 7)).eval()
    example = random_input(model, (4, 3, 256, 256))
    trace = BoundedFirstRun(ChildLimits(memory_bytes=None, cpu_seconds=0.01))(model, example)
    assert trace.failure is not None
    assert trace.failure.exception_type == "TimeoutError"
    assert "CPU time" in trace.failure.message


# -- found by tests/test_fuzz.py: crafted object graphs that crashed instead of one line ------


def _full_model(path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    torch.save(model, path)


@pytest.mark.parametrize("attribute", ["_parameters", "_modules", "_forward_hooks", "in_features", "kernel_size"])
def test_full_model_with_a_missing_attribute_is_reported_or_refused(
    attribute: str, folder: Path, tmp_path: Path, run_cli: Any
) -> None:
    """A full-model pickle whose module state lacks one attribute (its key renamed, same length):
    a report (the model cannot be built or run) or one line — never a traceback."""
    original = tmp_path / "scratch" / "full.pth"
    _full_model(original)
    data = _read_data_pkl(original)
    key = attribute.encode()
    assert data.count(_binunicode(attribute)) >= 1
    renamed = key[:-1] + (b"z" if key[-1:] != b"z" else b"y")
    path = folder / "full.pth"
    _rezip(original, path, data_pkl=data.replace(_binunicode(attribute), _binunicode(renamed.decode()), 1))
    _report_or_one_line(path, run_cli)


def test_full_model_control_is_analysed(folder: Path, tmp_path: Path) -> None:
    original = tmp_path / "scratch" / "full.pth"
    _full_model(original)
    path = folder / "full.pth"
    _rezip(original, path, data_pkl=_read_data_pkl(original))
    outcome = _analyze_bounded(path)
    assert outcome.report is not None, outcome.error
    assert outcome.report.source.container == "full-module"


@pytest.mark.parametrize(
    "data_pkl",
    [
        # BINPERSID of an int: torch's persistent_load asserts that saved ids are tuples.
        pytest.param(pickle.PROTO + b"\x02" + pickle.BININT1 + b"\x05" + pickle.BINPERSID + pickle.STOP, id="persistent-id-int"),
    ],
)
def test_crafted_data_pkl_is_refused_in_one_line(data_pkl: bytes, folder: Path, tmp_path: Path, net: SmallNet, run_cli: Any) -> None:
    original = tmp_path / "scratch" / "crafted.pth"
    torch.save({"a": torch.zeros(2)}, original)
    path = folder / "crafted.pth"
    _rezip(original, path, data_pkl=data_pkl)
    guard = _guard(path)
    _refused(path)
    _cli_one_line(run_cli(path), path)
    guard.check()


def test_global_with_a_nul_in_its_name_is_reported(folder: Path, tmp_path: Path) -> None:
    # No class can be named after it: the placeholder gets a cleaned name, the report the real one.
    data_pkl = pickle.PROTO + b"\x02" + pickle.GLOBAL + b"mod\nna\x00me\n" + pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.STOP
    original = tmp_path / "scratch" / "crafted.pth"
    torch.save({"a": torch.zeros(2)}, original)
    path = folder / "crafted.pth"
    _rezip(original, path, data_pkl=data_pkl)
    guard = _guard(path)
    outcome = _analyze_bounded(path, TIME_BOUND_S)
    assert outcome.report is not None
    [finding] = [f for f in outcome.report.findings if f.kind == "unsafe-pickle"]
    assert finding.evidence["globals"] == ["mod.na\x00me"]
    guard.check()


def test_running_a_crafted_model_is_memory_bounded(tmp_path: Path) -> None:
    # The layers' attributes come from the file: an Upsample factor of 2000 asks ~58 GB on
    # the first forward. It must fail under the analyzer's own limit, as a finding.
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Upsample(scale_factor=2000.0))
    path = tmp_path / "upsample.pth"
    torch.save(model, path)
    limits_before = resource.getrlimit(resource.RLIMIT_AS)
    start = time.perf_counter()
    report = analyze(path, input_shape=(1, 3, 32, 32))
    assert time.perf_counter() - start < TIME_BOUND_S
    assert resource.getrlimit(resource.RLIMIT_AS) == limits_before
    [failure] = [f for f in report.findings if f.kind == "forward-failure"]
    assert failure.modules == ["1"]
    assert "allocate" in failure.message


def test_without_fork_the_file_is_read_here_and_the_report_says_so(folder: Path, net: SmallNet, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where os.fork does not exist (Windows), nothing is bounded, and the report says it."""
    path = folder / "model.pth"
    torch.save(net.state_dict(), path)
    monkeypatch.delattr(os, "fork")
    report = analyze(path)
    assert report.summary.tensors == len(net.state_dict())
    assert any("without memory or CPU limits" in note for note in report.notes)


def test_records_of_a_zip64_archive_are_counted(tmp_path: Path) -> None:
    """Over 65,535 entries the entry count lives in the zip64 end record: still counted, from
    the end of the file and the first directory record alone (oracle: zipfile's own listing)."""
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"x" * 1600)
        for i in range(70_000):
            archive.writestr(f"archive/data/{i}", b"")
    with zipfile.ZipFile(path) as archive:
        entries = len(archive.infolist())
        first = archive.infolist()[0].file_size
    assert count_records(path, Format.TORCH_ZIP) == entries + first // 16 == 70_001 + 100


# -- the scan's opcode reader against pickletools.genops -----------------------------------


class _Plain:
    """A class pickled by reference (GLOBAL/STACK_GLOBAL, NEWOBJ, BUILD)."""

    def __init__(self) -> None:
        self.items = [1, -1, 255, 256, 65535, 65536, -(2**31), 2**31 - 1, 2**31, 2**64, -(2**70), 1.5, float("inf")]


def _pickles() -> list[bytes]:
    value = {
        "text": "ascii", "unicode": "π – \U0001f600", "surrogate": "\udc80", "long": "x" * 300,
        "bytes": b"\x00\xff" * 200, "short": b"ab", "bytearray": bytearray(b"xyz"), "none": None, "flags": (True, False),
        "tuples": ((), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)), "set": {1, 2}, "frozen": frozenset({3}),
        "object": _Plain(), "shared": ["same"] * 3, "nested": [[[]]], "ints": list(range(-300, 300, 7)),
    }
    buffer = io.BytesIO()
    torch.save({"w": torch.arange(6.0).view(2, 3)}, buffer)
    archive = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    data_pkl = next(archive.read(n) for n in archive.namelist() if n.endswith("data.pkl"))
    return [pickle.dumps(value, protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)] + [data_pkl]


def _ops_read_by_the_scan(data: bytes, stream: Any) -> list[tuple[str, Any]]:
    from analyzer.load.pickle_scan import _OPCODES, _walk

    seen: list[tuple[str, Any]] = []
    handlers = [(lambda info, arg: seen.append((info.name, arg))) if info else None for info, *_ in _OPCODES]
    _walk(stream, handlers)
    return seen


@pytest.mark.parametrize("index", range(pickle.HIGHEST_PROTOCOL + 2))
def test_the_scans_opcode_reader_reads_what_genops_reads(index: int, tmp_path: Path) -> None:
    data = _pickles()[index]
    expected = [(op.name, arg) for op, arg, _ in pickletools.genops(io.BytesIO(data))]
    assert _ops_read_by_the_scan(data, io.BytesIO(data)) == expected
    # From a mapped file, starting where an earlier pickle ended: the stream is left after STOP.
    path = tmp_path / "two.pkl"
    path.write_bytes(b"\x80\x02K\x07." + data + b"tail")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        mapped.seek(5)
        assert _ops_read_by_the_scan(data, mapped) == expected
        assert mapped.tell() == 5 + len(data)


@pytest.mark.parametrize("cut", [1, 2, 3, 7, 40])
def test_a_pickle_cut_short_is_not_well_formed_for_the_scan_as_for_genops(cut: int) -> None:
    from analyzer.load.pickle_scan import PickleScanError, scan_pickle

    for data in _pickles():
        short = data[: len(data) - cut]
        with pytest.raises(ValueError):
            list(pickletools.genops(io.BytesIO(short)))
        with pytest.raises(PickleScanError):
            scan_pickle(io.BytesIO(short))
