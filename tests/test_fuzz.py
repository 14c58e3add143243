"""Fuzzing the loader with mutated real checkpoints of every format.

Seeds: small real files written by the real tools — a torch.save zip state dict, a torch.save
zip of a whole torch.nn model, a legacy (pre-1.6) torch file, plain pickles (protocols 2 and
5), a safetensors file and a TorchScript archive. Mutations:

(a) bytes flipped, set, inserted or deleted anywhere in the file;
(b) the same, only inside a zip's data.pkl (the zip rewritten, so it stays a valid zip);
(c) pickle opcodes replaced by other valid opcodes, deleted, duplicated, or the pickle cut at
    an opcode boundary (positions from pickletools.genops);
(d) the safetensors JSON header changed (dtypes, shapes, offsets, metadata), the length prefix
    kept, shifted or replaced;
(e) a pickled os.system('touch SENTINEL') spliced into the pickle at random positions.

For every example the analyzer must return a Report or raise an AnalyzerError (with a
one-line message) — any other exception is a bug — within 10 s, leave the input unchanged,
write nothing beside it, restore RLIMIT_AS, and never create the sentinel.

Short run (part of the suite): the "analyzer-fuzz" profile, 25 derandomized examples per
strategy and format. Long run:

    ANALYZER_FUZZ_EXAMPLES=2000 python -m pytest tests/test_fuzz.py

(profile "analyzer-fuzz-long": that many examples per strategy and format, randomized; a
failure prints the mutation, the sha256 of the file and a reproduce blob).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import pickle
import pickletools
import resource
import struct
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from analyzer import analyze
from analyzer.errors import AnalyzerError
from analyzer.report.model import Report

from .models import SmallNet

# -- profiles -------------------------------------------------------------------------------

_LONG_EXAMPLES = int(os.environ.get("ANALYZER_FUZZ_EXAMPLES") or 0)
_COMMON: dict[str, Any] = dict(
    deadline=None,  # timed by the test itself (TIME_BOUND_S), not by hypothesis
    database=None,  # nothing written into the checkout
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile("analyzer-fuzz", max_examples=25, derandomize=True, **_COMMON)
settings.register_profile("analyzer-fuzz-long", max_examples=max(_LONG_EXAMPLES, 1), derandomize=False, **_COMMON)
FUZZ = settings.get_profile("analyzer-fuzz-long" if _LONG_EXAMPLES else "analyzer-fuzz")

#: Per-example wall-clock bound (each analysis takes milliseconds).
TIME_BOUND_S = 10.0
SENTINEL = "PWNED"


# -- seeds: small real checkpoints ------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    name: str
    suffix: str
    data: bytes


def _tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return SmallNet(width=2).eval().state_dict()


def _tiny_sequential() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    ).eval()


def _tiny_scripted() -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    return torch.jit.script(SmallNet(width=2).eval())


def _canonical_legacy(data: bytes) -> bytes:
    """A legacy torch file with its storage keys (memory addresses, listed and stored in address
    order) renamed 0, 1, ... in order of first use, and the storages stored in that order: the
    same bytes on every run, so that derandomized mutations hit the same structure every time."""
    stream = io.BytesIO(data)
    for _ in range(3):  # magic number, protocol version, system info
        for _op in pickletools.genops(stream):
            pass
    object_start = stream.tell()
    ops = list(pickletools.genops(stream))
    keys_start = stream.tell()
    old_keys = pickle.load(stream)  # noqa: S301 - a list of strings the test itself just wrote
    data_start = stream.tell()

    # Persistent ids: ('storage', <StorageType>, key, location, numel, view); the type may come from the memo.
    memo: dict[Any, str] = {}
    element_size: dict[str, int] = {}
    renamed: dict[str, str] = {}
    last_global = ""
    for i, (op, arg, _pos) in enumerate(ops):
        if op.name == "GLOBAL":
            last_global = arg
        elif op.name in ("BINPUT", "LONG_BINPUT") and ops[i - 1][0].name == "GLOBAL":
            memo[arg] = ops[i - 1][1]
        elif op.name in ("BINGET", "LONG_BINGET"):
            last_global = memo.get(arg, last_global)
        elif op.name in ("BINUNICODE", "SHORT_BINUNICODE") and arg in old_keys and arg not in renamed:
            renamed[arg] = str(len(renamed))
            storage_type = getattr(torch, last_global.split(" ")[1])
            element_size[arg] = torch._utils._element_size(storage_type.dtype)
    assert set(renamed) == set(old_keys)

    records: dict[str, bytes] = {}
    cursor = data_start
    for key in old_keys:
        (numel,) = struct.unpack_from("<q", data, cursor)
        end = cursor + 8 + numel * element_size[key]
        records[key], cursor = data[cursor:end], end
    assert cursor == len(data)

    out = bytearray(data[:object_start])
    cursor = object_start
    ends = [pos for _op, _arg, pos in ops[1:]] + [keys_start]
    for (op, arg, pos), end in zip(ops, ends):
        if op.name in ("BINUNICODE", "SHORT_BINUNICODE") and arg in renamed:
            new = renamed[arg].encode()
            out += data[cursor:pos] + pickle.BINUNICODE + struct.pack("<I", len(new)) + new
            cursor = end
    out += data[cursor:keys_start]
    in_use_order = sorted(old_keys, key=lambda k: int(renamed[k]))
    out += pickle.dumps([renamed[k] for k in in_use_order], protocol=2)
    for key in in_use_order:
        out += records[key]
    return bytes(out)


def _legacy_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=False)
    return _canonical_legacy(buffer.getvalue())


class _CanonicalPickler(pickle.Pickler):
    """pickle.dump as is, except that storages embed canonical legacy bytes (what they
    reduce to anyway: torch.storage._load_from_bytes(legacy torch.save bytes))."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (torch.storage.TypedStorage, torch.UntypedStorage)):
            return (torch.storage._load_from_bytes, (_legacy_bytes(obj),))
        return NotImplemented


def _plain_pickle(obj: Any, protocol: int) -> bytes:
    buffer = io.BytesIO()
    _CanonicalPickler(buffer, protocol=protocol).dump(obj)
    return buffer.getvalue()


@functools.cache
def seeds() -> dict[str, Seed]:
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)

        def written(name: str, suffix: str, write: Callable[[Path], None]) -> Seed:
            path = base / f"{name}{suffix}"
            write(path)
            return Seed(name, suffix, path.read_bytes())

        state = _tiny_state()
        made = [
            written("torch-zip", ".pth", lambda p: torch.save(state, p)),
            written("torch-full", ".pth", lambda p: torch.save(_tiny_sequential(), p)),
            written("torch-legacy", ".pth", lambda p: p.write_bytes(_legacy_bytes(state))),
            written("pickle-p2", ".pkl", lambda p: p.write_bytes(_plain_pickle(state, 2))),
            written("pickle-p5", ".pkl", lambda p: p.write_bytes(_plain_pickle(state, 5))),
            written("safetensors", ".safetensors", lambda p: save_file(state, str(p))),
            # Its code/ entries list constants in set order (PYTHONHASHSEED) and its serialization
            # id is random: a few bytes vary between runs, but entries start 64-byte aligned, so
            # every offset (data.pkl, tensors, the central directory) is the same on every run.
            written("torchscript", ".pt", lambda p: _tiny_scripted().save(str(p))),
        ]
    return {seed.name: seed for seed in made}


ALL_FORMATS = ["torch-zip", "torch-full", "torch-legacy", "pickle-p2", "pickle-p5", "safetensors", "torchscript"]
ZIP_FORMATS = ["torch-zip", "torch-full", "torchscript"]
PICKLE_FORMATS = ["torch-zip", "torch-full", "torchscript", "torch-legacy", "pickle-p2", "pickle-p5"]


# -- zips and pickles -------------------------------------------------------------------------


def _is_data_pkl(name: str) -> bool:
    return name == "data.pkl" or name.endswith("/data.pkl")


def _data_pkl(zip_bytes: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
        [name] = [n for n in archive.namelist() if _is_data_pkl(n)]
        return archive.read(name)


def _with_data_pkl(zip_bytes: bytes, data_pkl: bytes) -> bytes:
    """The zip rewritten entry by entry (order and compression kept), data.pkl replaced."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            body = data_pkl if _is_data_pkl(info.filename) else zin.read(info)
            entry = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            entry.compress_type = info.compress_type
            zout.writestr(entry, body)
    return out.getvalue()


@dataclass(frozen=True)
class PickleTarget:
    """The pickle bytes of a format, where its opcodes start, and how to put mutated bytes back."""

    data: bytes
    #: Opcode start positions (every pickle in the bytes: five for a legacy file), and the end.
    boundaries: tuple[int, ...]
    rebuild: Callable[[bytes], bytes]


def _boundaries(data: bytes, pickles: int = 1) -> tuple[int, ...]:
    stream = io.BytesIO(data)
    positions: list[int] = []
    for _ in range(pickles):
        positions.extend(pos for _op, _arg, pos in pickletools.genops(stream))
    positions.append(stream.tell())
    return tuple(positions)


@functools.cache
def pickle_target(fmt: str) -> PickleTarget:
    seed = seeds()[fmt]
    if fmt in ZIP_FORMATS:
        data = _data_pkl(seed.data)
        return PickleTarget(data, _boundaries(data), functools.partial(_with_data_pkl, seed.data))
    pickles = 5 if fmt == "torch-legacy" else 1
    return PickleTarget(seed.data, _boundaries(seed.data, pickles), lambda mutated: mutated)


# -- the per-example check --------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def check_analysis(root: Path, fmt: str, make: Callable[[Path], bytes]) -> None:
    """Write make(sentinel) to a fresh folder and analyse it: a Report or an AnalyzerError, nothing else."""
    with tempfile.TemporaryDirectory(dir=root) as folder:
        base = Path(folder)
        sentinel = base / SENTINEL
        data = make(sentinel)
        path = base / f"input{seeds()[fmt].suffix}"
        path.write_bytes(data)
        note(f"format={fmt} size={len(data)} sha256={hashlib.sha256(data).hexdigest()}")
        mtime = path.stat().st_mtime_ns
        limits = resource.getrlimit(resource.RLIMIT_AS)

        start = time.perf_counter()
        try:
            result = analyze(path)
        except AnalyzerError as e:
            message = str(e)
            assert "\n" not in message, f"a multi-line error: {message!r}"
            assert e.exit_code == 2
        else:
            assert isinstance(result, Report)
            json.loads(result.to_json())
        seconds = time.perf_counter() - start

        assert not sentinel.exists(), "the payload ran"
        assert seconds < TIME_BOUND_S, f"analysis took {seconds:.1f} s"
        assert [p.name for p in base.iterdir()] == [path.name], "a file was written beside the input"
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime, "the input was modified"
        assert resource.getrlimit(resource.RLIMIT_AS) == limits


# -- (a) and (b): byte mutations --------------------------------------------------------------

#: (kind, position, byte). Positions: anywhere, or near either end (headers, zip directories).
BYTE_MUTATION = st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete"]),
    st.one_of(st.integers(0, 1 << 30), st.integers(0, 511), st.integers(-512, -1)),
    st.integers(0, 255),
)
BYTE_MUTATIONS = st.lists(BYTE_MUTATION, min_size=1, max_size=8)


def mutate_bytes(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, position, value in mutations:
        if not out:
            out = bytearray([value])
            continue
        at = position % len(out)
        if kind == "flip":
            out[at] ^= 1 << (value % 8)
        elif kind == "set":
            out[at] = value
        elif kind == "insert":
            out.insert(at, value)
        else:
            del out[at]
    return bytes(out)


@FUZZ
@given(mutations=BYTE_MUTATIONS)
@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_bytes_mutated_anywhere(fuzz_root: Path, fmt: str, mutations: list[tuple[str, int, int]]) -> None:
    check_analysis(fuzz_root, fmt, lambda sentinel: mutate_bytes(seeds()[fmt].data, mutations))


@FUZZ
@given(mutations=BYTE_MUTATIONS)
@pytest.mark.parametrize("fmt", ZIP_FORMATS)
def test_bytes_mutated_inside_data_pkl(fuzz_root: Path, fmt: str, mutations: list[tuple[str, int, int]]) -> None:
    target = pickle_target(fmt)
    check_analysis(fuzz_root, fmt, lambda sentinel: target.rebuild(mutate_bytes(target.data, mutations)))


# -- (c): opcode mutations --------------------------------------------------------------------

OPCODE_BYTES = sorted(op.code.encode("latin-1") for op in pickletools.opcodes)
#: (kind, opcode index, replacement opcode)
OPCODE_MUTATION = st.tuples(
    st.sampled_from(["replace", "replace", "delete", "duplicate", "truncate", "truncate+stop"]),
    st.integers(0, 1 << 20),
    st.sampled_from(OPCODE_BYTES),
)


def mutate_opcodes(target: PickleTarget, mutations: list[tuple[str, int, bytes]]) -> bytes:
    """Apply opcode-level mutations, at distinct opcodes of the original, from the last to the first."""
    data = target.data
    starts = target.boundaries[:-1]
    chosen: dict[int, tuple[str, bytes]] = {}
    for kind, index, opcode in mutations:
        chosen.setdefault(index % len(starts), (kind, opcode))
    for index in sorted(chosen, reverse=True):
        kind, opcode = chosen[index]
        start, end = starts[index], target.boundaries[index + 1]
        if kind == "replace":
            data = data[:start] + opcode + data[start + 1 :]
        elif kind == "delete":
            data = data[:start] + data[end:]
        elif kind == "duplicate":
            data = data[:end] + data[start:end] + data[end:]
        elif kind == "truncate":
            data = data[:start]
        else:
            data = data[:start] + pickle.STOP
    return data


@FUZZ
@given(mutations=st.lists(OPCODE_MUTATION, min_size=1, max_size=3))
@pytest.mark.parametrize("fmt", PICKLE_FORMATS)
def test_pickle_opcodes_mutated(fuzz_root: Path, fmt: str, mutations: list[tuple[str, int, bytes]]) -> None:
    target = pickle_target(fmt)
    check_analysis(fuzz_root, fmt, lambda sentinel: target.rebuild(mutate_opcodes(target, mutations)))


# -- (d): safetensors header mutations --------------------------------------------------------

_INTERESTING_INTS = [0, 1, 2, 3, 4, 7, 8, 16, 255, 256, 2**31 - 1, 2**31, 2**32, 2**53, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -1, -(2**63)]
INTS = st.one_of(st.sampled_from(_INTERESTING_INTS), st.integers(-(2**70), 2**70), st.integers(0, 4096))
DTYPES = st.one_of(
    st.sampled_from(["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "U16", "U32", "U64"]),
    st.sampled_from(["F4", "C64", "f32", "", "F32 ", "BOOL\u0000"]),
    st.text(max_size=8),
)
JSON_JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), INTS, st.floats(allow_nan=False), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=8,
)
HEADER_MUTATION = st.one_of(
    st.tuples(st.just("dtype"), st.integers(0, 1 << 16), DTYPES),
    st.tuples(st.just("shape"), st.integers(0, 1 << 16), st.one_of(st.lists(INTS, max_size=6), JSON_JUNK)),
    st.tuples(st.just("data_offsets"), st.integers(0, 1 << 16), st.one_of(st.lists(INTS, min_size=2, max_size=2), JSON_JUNK)),
    st.tuples(st.just("shift_offsets"), st.integers(0, 1 << 16), st.integers(-64, 64)),
    st.tuples(st.just("drop_field"), st.integers(0, 1 << 16), st.sampled_from(["dtype", "shape", "data_offsets"])),
    st.tuples(st.just("replace_entry"), st.integers(0, 1 << 16), JSON_JUNK),
    st.tuples(st.just("rename"), st.integers(0, 1 << 16), st.text(max_size=12)),
    st.tuples(st.just("metadata"), st.integers(0, 1 << 16), JSON_JUNK),
)
LENGTH_PREFIX = st.one_of(
    st.just(("keep", 0)),
    st.tuples(st.just("shift"), st.integers(-64, 64)),
    st.tuples(st.just("set"), st.one_of(st.sampled_from(_INTERESTING_INTS).filter(lambda n: 0 <= n < 2**64), st.integers(0, 2**64 - 1))),
)


@functools.cache
def _safetensors_parts() -> tuple[dict[str, Any], bytes]:
    data = seeds()["safetensors"].data
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def mutate_safetensors(mutations: list[tuple[str, int, Any]], prefix: tuple[str, int], padding: int) -> bytes:
    header, body = _safetensors_parts()
    header = json.loads(json.dumps(header))
    for kind, index, value in mutations:
        names = [n for n in header if n != "__metadata__"]
        if kind == "metadata":
            header["__metadata__"] = value
            continue
        if not names:
            continue
        name = names[index % len(names)]
        entry = header[name]
        if kind == "replace_entry":
            header[name] = value
        elif kind == "rename":
            header[value] = header.pop(name)
        elif not isinstance(entry, dict):
            continue
        elif kind == "drop_field":
            entry.pop(value, None)
        elif kind == "shift_offsets":
            offsets = entry.get("data_offsets")
            if isinstance(offsets, list) and offsets and isinstance(offsets[-1], int):
                offsets[index % len(offsets)] += value
        else:
            entry[kind] = value
    raw = json.dumps(header, separators=(",", ":")).encode() + b" " * padding
    length = len(raw)
    mode, amount = prefix
    if mode == "shift":
        length = max(0, length + amount)
    elif mode == "set":
        length = amount
    return struct.pack("<Q", length) + raw + body


@FUZZ
@given(
    mutations=st.lists(HEADER_MUTATION, min_size=1, max_size=4),
    prefix=LENGTH_PREFIX,
    padding=st.sampled_from([0, 0, 1, 7]),
)
def test_safetensors_header_mutated(
    fuzz_root: Path, mutations: list[tuple[str, int, Any]], prefix: tuple[str, int], padding: int
) -> None:
    check_analysis(fuzz_root, "safetensors", lambda sentinel: mutate_safetensors(mutations, prefix, padding))


def test_safetensors_mutation_control(fuzz_root: Path) -> None:
    """With no change, the rewritten file holds the seed's header and data, and is analysed."""
    data = mutate_safetensors([], ("keep", 0), 0)
    (length,) = struct.unpack("<Q", data[:8])
    header, body = _safetensors_parts()
    assert json.loads(data[8 : 8 + length]) == header and data[8 + length :] == body
    with tempfile.TemporaryDirectory(dir=fuzz_root) as folder:
        path = Path(folder) / "control.safetensors"
        path.write_bytes(data)
        assert analyze(path).summary.tensors == len(header) - ("__metadata__" in header)


# -- (e): payloads spliced into the pickle ----------------------------------------------------


class _Call:
    def __init__(self, f: Any, *args: Any) -> None:
        self.f, self.args = f, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (self.f, self.args)


def payload_ops(sentinel: Path) -> bytes:
    """os.system('touch sentinel') as protocol-2 opcodes, without PROTO, STOP or memo opcodes."""
    data = pickletools.optimize(pickle.dumps(_Call(os.system, f"touch {sentinel}"), protocol=2))
    return data[2:-1]


def test_spliced_payload_is_live(tmp_path: Path) -> None:
    """Control: the spliced opcodes do run under plain pickle.loads, so an absent sentinel means something."""
    sentinel = tmp_path / SENTINEL
    pickle.loads(pickle.PROTO + b"\x02" + payload_ops(sentinel) + pickle.STOP)  # noqa: S301 - deliberately, into tmp_path
    assert sentinel.exists()


#: (where, index, keep stack balanced with a POP after the payload)
SPLICE = st.tuples(st.sampled_from(["opcode-boundary", "opcode-boundary", "any-byte"]), st.integers(0, 1 << 20), st.booleans())


def splice_payloads(target: PickleTarget, sentinel: Path, splices: list[tuple[str, int, bool]]) -> bytes:
    payload = payload_ops(sentinel)
    data = target.data
    positions = []
    for where, index, balanced in splices:
        if where == "opcode-boundary":
            # Not before PROTO (the first opcode), so that the pickle still looks like one.
            at = target.boundaries[1 + index % (len(target.boundaries) - 1)]
        else:
            at = index % (len(data) + 1)
        positions.append((at, payload + pickle.POP if balanced else payload))
    for at, ops in sorted(positions, key=lambda item: item[0], reverse=True):
        data = data[:at] + ops + data[at:]
    return data


@FUZZ
@given(splices=st.lists(SPLICE, min_size=1, max_size=3))
@pytest.mark.parametrize("fmt", PICKLE_FORMATS)
def test_payload_spliced_into_the_pickle_never_runs(fuzz_root: Path, fmt: str, splices: list[tuple[str, int, bool]]) -> None:
    target = pickle_target(fmt)
    check_analysis(fuzz_root, fmt, lambda sentinel: target.rebuild(splice_payloads(target, sentinel, splices)))


# -- controls: the seeds and the rewriting are sound ------------------------------------------


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_seed_is_analysed(fmt: str, fuzz_root: Path) -> None:
    seed = seeds()[fmt]
    with tempfile.TemporaryDirectory(dir=fuzz_root) as folder:
        path = Path(folder) / f"seed{seed.suffix}"
        path.write_bytes(seed.data)
        report = analyze(path)
    assert report.summary.tensors > 0
    assert not [f for f in report.findings if f.kind == "unsafe-pickle"]


@pytest.mark.parametrize("fmt", ZIP_FORMATS)
def test_rewritten_zip_is_analysed(fmt: str, fuzz_root: Path) -> None:
    target = pickle_target(fmt)
    with tempfile.TemporaryDirectory(dir=fuzz_root) as folder:
        path = Path(folder) / "rewritten.pt"
        path.write_bytes(target.rebuild(target.data))
        report = analyze(path)
    assert report.summary.tensors == analyze_seed_tensors(fmt, fuzz_root)


def analyze_seed_tensors(fmt: str, root: Path) -> int:
    seed = seeds()[fmt]
    with tempfile.TemporaryDirectory(dir=root) as folder:
        path = Path(folder) / f"seed{seed.suffix}"
        path.write_bytes(seed.data)
        return analyze(path).summary.tensors


@pytest.mark.parametrize("fmt", PICKLE_FORMATS)
def test_balanced_payload_at_a_boundary_is_reported(fmt: str, fuzz_root: Path) -> None:
    """The payload (with its POP) after the first opcode keeps the pickle valid: reported as unsafe, never run."""
    target = pickle_target(fmt)
    with tempfile.TemporaryDirectory(dir=fuzz_root) as folder:
        sentinel = Path(folder) / SENTINEL
        path = Path(folder) / f"payload{seeds()[fmt].suffix}"
        path.write_bytes(target.rebuild(splice_payloads(target, sentinel, [("opcode-boundary", 0, True)])))
        report = analyze(path)
        assert not sentinel.exists()
    unsafe = [f for f in report.findings if f.kind == "unsafe-pickle"]
    assert unsafe and unsafe[0].evidence["dangerous"] == [f"{os.system.__module__}.system"]
