"""Malicious pickles never run.

Every payload here would create a sentinel file inside tmp_path if any unpickler ran
it (`test_payloads_are_live` proves that they do, with plain `pickle.load`). The
analyzer must leave the sentinel absent, report `unsafe-pickle` at severity error
naming the dangerous global, exit 1 from the CLI, and — where a real state dict sat
next to the payload — still recover every tensor.
"""

from __future__ import annotations

import builtins
import importlib
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

from analyzer import analyze
from analyzer.load import LoadOptions, load_checkpoint
from analyzer.report.model import Finding, Report, Severity

UNSAFE = "unsafe-pickle"
#: os.system pickles under the module that defines it: posix.system on Linux, nt.system on Windows.
OS_SYSTEM = f"{os.system.__module__}.system"


# -- payloads ---------------------------------------------------------------------------


class Call:
    """Pickles as `f(*args)`; `f` may itself be a Call, which chains calls (getattr(import_module('os'), 'system'))."""

    def __init__(self, f: Any, *args: Any) -> None:
        self.f, self.args = f, args

    def __call__(self, *args: Any) -> Any:  # pickle requires the reduce callable to be callable
        raise AssertionError("a test payload was called in the test process")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (self.f, self.args)


@dataclass(frozen=True)
class Payload:
    name: str
    build: Callable[[str], Any]
    #: The dangerous globals the analyzer must name, given the pickle protocol.
    dangerous: Callable[[int], list[str]]
    #: Whether the payload acts asynchronously (a child process).
    spawns: bool = False


def _touch_cmd(sentinel: str) -> str:
    return f"touch {sentinel}"


PAYLOADS = [
    Payload("os.system", lambda s: Call(os.system, _touch_cmd(s)), lambda proto: [OS_SYSTEM]),
    Payload("subprocess.Popen", lambda s: Call(subprocess.Popen, ["touch", s]), lambda proto: ["subprocess.Popen"], spawns=True),
    Payload("builtins.exec", lambda s: Call(builtins.exec, f"open({s!r}, 'w').close()"), lambda proto: ["builtins.exec"]),
    Payload(
        "builtins.eval",
        lambda s: Call(builtins.eval, f"__import__('os').system({_touch_cmd(s)!r})"),
        lambda proto: ["builtins.eval"],
    ),
    Payload(
        "import_module-chain",
        lambda s: Call(Call(builtins.getattr, Call(importlib.import_module, "os"), "system"), _touch_cmd(s)),
        lambda proto: ["builtins.getattr", "importlib.import_module"],
    ),
    Payload(
        "getattr-chain",
        lambda s: Call(Call(builtins.getattr, Call(builtins.__import__, "os"), "system"), _touch_cmd(s)),
        lambda proto: ["builtins.__import__", "builtins.getattr"],
    ),
    Payload(
        "nested-pickle.loads",
        lambda s: Call(pickle.loads, pickle.dumps(Call(os.system, _touch_cmd(s)))),
        # pickle.loads is _pickle.loads; protocols < 3 write it under its Python 2 name `pickle`.
        lambda proto: ["pickle.loads" if proto < 3 else "_pickle.loads"],
    ),
]


# -- carriers: every format that can hold a pickle --------------------------------------


@dataclass(frozen=True)
class Carrier:
    name: str
    suffix: str
    protocol: int
    write: Callable[[Path, Any, int], None]
    expected_format: str


def _torch_zip(path: Path, obj: Any, protocol: int) -> None:
    torch.save(obj, path)


def _torch_legacy(path: Path, obj: Any, protocol: int) -> None:
    torch.save(obj, path, _use_new_zipfile_serialization=False)


def _plain_pickle(path: Path, obj: Any, protocol: int) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _renamed_pickle(path: Path, obj: Any, protocol: int) -> None:
    original = path.with_suffix(".pkl")
    _plain_pickle(original, obj, protocol)
    original.rename(path)


CARRIERS = [
    Carrier("torch-zip", ".pth", torch.serialization.DEFAULT_PROTOCOL, _torch_zip, "torch-zip"),
    Carrier("torch-legacy", ".pth", torch.serialization.DEFAULT_PROTOCOL, _torch_legacy, "torch-legacy"),
    *(Carrier(f"pickle-p{p}", ".pkl", p, _plain_pickle, "pickle") for p in range(6)),
    Carrier("pickle-renamed-pth", ".pth", pickle.DEFAULT_PROTOCOL, _renamed_pickle, "pickle"),
]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _unsafe_findings(report: Report) -> list[Finding]:
    return [f for f in report.findings if f.kind == UNSAFE]


def _assert_not_created(sentinel: Path, spawns: bool = False) -> None:
    if spawns:
        time.sleep(0.05)  # a child process, had one been spawned, would have touched it by now
    assert not sentinel.exists(), f"the payload ran: {sentinel} was created"


def _assert_refused(report: Report, dangerous: list[str]) -> Finding:
    unsafe = _unsafe_findings(report)
    assert len(unsafe) == 1, [f.kind for f in report.findings]
    finding = unsafe[0]
    assert finding.severity is Severity.ERROR
    assert finding.evidence["dangerous"] == sorted(dangerous)
    assert finding.evidence["globals"] == sorted(dangerous)
    for name in dangerous:
        assert name in finding.message
        assert name in report.source.placeholders
    assert finding.fix_code is None  # no allowlist snippet is offered for a payload
    return finding


@pytest.fixture
def payload_file(tmp_path: Path, small_net: nn.Module) -> Callable[[Payload, Carrier], tuple[Path, Path]]:
    """Write {"state_dict": ..., "x": payload} in a carrier; returns (file, sentinel)."""

    def make(payload: Payload, carrier: Carrier) -> tuple[Path, Path]:
        sentinel = tmp_path / f"PWNED-{payload.name}-{carrier.name}"
        path = tmp_path / f"payload-{carrier.name}{carrier.suffix}"
        obj = {"state_dict": small_net.state_dict(), "x": payload.build(str(sentinel))}
        carrier.write(path, obj, carrier.protocol)
        return path, sentinel

    return make


MATRIX = pytest.mark.parametrize(
    ("payload", "carrier"),
    [pytest.param(p, c, id=f"{p.name}-{c.name}") for p in PAYLOADS for c in CARRIERS],
)


# -- the payloads would run ---------------------------------------------------------------


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.name)
def test_payloads_are_live(payload: Payload, tmp_path: Path) -> None:
    """Control: plain pickle.load does run each payload, so an absent sentinel below means something."""
    sentinel = tmp_path / "ran"
    data = pickle.dumps({"x": payload.build(str(sentinel))}, protocol=2)
    result = pickle.loads(data)  # noqa: S301 - deliberately, into tmp_path
    if isinstance(result["x"], subprocess.Popen):
        result["x"].wait(timeout=10)
    assert sentinel.exists()


def test_memo_payload_is_live(tmp_path: Path, small_net: nn.Module) -> None:
    sentinel = tmp_path / "ran"
    path = tmp_path / "memo.pkl"
    _write_memo_pickle(path, {"state_dict": small_net.state_dict()}, str(sentinel), protocol=4)
    with open(path, "rb") as f:
        loaded = pickle.load(f)  # noqa: S301 - deliberately, into tmp_path
    assert sentinel.exists()
    assert set(loaded["state_dict"]) == set(small_net.state_dict())


# -- never run, always reported ----------------------------------------------------------


@MATRIX
def test_payload_never_runs_and_is_reported(
    payload: Payload, carrier: Carrier, payload_file: Callable[..., tuple[Path, Path]], run_cli: Any, unchanged: Any
) -> None:
    path, sentinel = payload_file(payload, carrier)
    check_unchanged = unchanged(path)

    report = analyze(path)
    _assert_not_created(sentinel)
    assert report.source.format == carrier.expected_format
    _assert_refused(report, payload.dangerous(carrier.protocol))

    result = run_cli(path)
    _assert_not_created(sentinel, payload.spawns)
    assert result.code == 1, result.err
    assert result.err == ""
    assert UNSAFE in result.out
    assert all(name in result.out for name in payload.dangerous(carrier.protocol))
    assert "Traceback" not in result.out
    check_unchanged()


@MATRIX
def test_tensors_next_to_payload_are_recovered(
    payload: Payload, carrier: Carrier, payload_file: Callable[..., tuple[Path, Path]], small_net: nn.Module
) -> None:
    path, sentinel = payload_file(payload, carrier)
    report = analyze(path)
    _assert_not_created(sentinel, payload.spawns)
    finding = _assert_refused(report, payload.dangerous(carrier.protocol))
    state = small_net.state_dict()
    assert finding.evidence["tensors_recovered"] == len(state)
    assert report.summary.tensors == len(state)
    assert report.summary.params == _params(small_net)
    assert {row.name for row in report.layers} == {"conv1", "bn1", "conv2", "bn2", "fc"}
    assert report.source.weights_key == "state_dict"


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.name)
@pytest.mark.parametrize("carrier", [c for c in CARRIERS if c.name in ("torch-zip", "pickle-p2", "pickle-p5")], ids=lambda c: c.name)
def test_allowing_an_unrelated_module_changes_nothing(
    payload: Payload, carrier: Carrier, payload_file: Callable[..., tuple[Path, Path]], run_cli: Any
) -> None:
    path, sentinel = payload_file(payload, carrier)
    report = analyze(path, allow_modules=("json",))
    _assert_not_created(sentinel)
    _assert_refused(report, payload.dangerous(carrier.protocol))

    result = run_cli(path, "--allow-module", "json", "--json", "-")
    _assert_not_created(sentinel, payload.spawns)
    assert result.code == 1, result.err
    parsed = Report.from_json(result.out)
    assert [f.kind for f in parsed.findings if f.severity is Severity.ERROR] == [UNSAFE]
    assert parsed.findings[0].evidence["dangerous"] == sorted(payload.dangerous(carrier.protocol))


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.name)
def test_allowing_the_dangerous_module_itself_is_still_refused(
    payload: Payload, payload_file: Callable[..., tuple[Path, Path]], run_cli: Any
) -> None:
    """`--allow-module subprocess` must not turn subprocess.Popen (a class) into an allowed class."""
    carrier = CARRIERS[0]
    path, sentinel = payload_file(payload, carrier)
    dangerous = payload.dangerous(carrier.protocol)
    roots = ["os", "posix", "subprocess", "builtins", "importlib", "pickle", "_pickle"]
    report = analyze(path, allow_modules=roots)
    _assert_not_created(sentinel)
    _assert_refused(report, dangerous)

    args = [a for root in roots for a in ("--allow-module", root)]
    result = run_cli(path, *args, "-q")
    _assert_not_created(sentinel, payload.spawns)
    assert result.code == 1


# -- STACK_GLOBAL whose strings come back from the memo -----------------------------------


def _short_unicode(text: str) -> bytes:
    data = text.encode()
    assert len(data) < 256
    return pickle.SHORT_BINUNICODE + bytes([len(data)]) + data


def _binget(index: int) -> bytes:
    return pickle.BINGET + bytes([index]) if index < 256 else pickle.LONG_BINGET + index.to_bytes(4, "little")


def _memo_payload_ops(first_memo_index: int, command: str) -> bytes:
    """Push 'os' and 'system', MEMOIZE both, POP both, BINGET them back, STACK_GLOBAL, call, POP the result."""
    return (
        _short_unicode("os") + pickle.MEMOIZE
        + _short_unicode("system") + pickle.MEMOIZE
        + pickle.POP + pickle.POP
        + _binget(first_memo_index) + _binget(first_memo_index + 1)
        + pickle.STACK_GLOBAL
        + _short_unicode(command) + pickle.TUPLE1 + pickle.REDUCE
        + pickle.POP
    )


class _MemoPayloadPickler(pickle._Pickler):  # type: ignore[name-defined,misc]
    """The pure-Python pickler, unframed, with the memo payload after the real object (before STOP)."""

    command = ""

    def dump(self, obj: Any) -> None:
        self.write(pickle.PROTO + bytes([self.proto]))
        self.save(obj)
        self.write(_memo_payload_ops(len(self.memo), self.command))
        self.write(pickle.STOP)


def _memo_pickler_for(command: str) -> type:
    return type("MemoPickler", (_MemoPayloadPickler,), {"command": command})


def _write_memo_pickle(path: Path, obj: Any, sentinel: str, protocol: int) -> None:
    with open(path, "wb") as f:
        _memo_pickler_for(_touch_cmd(sentinel))(f, protocol).dump(obj)


def _write_memo_torch_zip(path: Path, obj: Any, sentinel: str, protocol: int) -> None:
    module = types.ModuleType("memo_payload_pickle")
    module.Pickler = _memo_pickler_for(_touch_cmd(sentinel))  # type: ignore[attr-defined]
    module.Unpickler = pickle.Unpickler  # type: ignore[attr-defined]
    torch.save(obj, path, pickle_module=module, pickle_protocol=protocol)


def test_bare_memo_stack_global_pickle(tmp_path: Path, run_cli: Any, unchanged: Any) -> None:
    sentinel = tmp_path / "PWNED"
    path = tmp_path / "memo.pkl"
    body = _memo_payload_ops(0, _touch_cmd(str(sentinel)))
    # Without the trailing POP the call's result is the pickle's value.
    path.write_bytes(pickle.PROTO + b"\x04" + body[: -len(pickle.POP)] + pickle.STOP)
    check_unchanged = unchanged(path)

    report = analyze(path)
    _assert_not_created(sentinel)
    finding = _assert_refused(report, ["os.system"])
    assert finding.evidence["tensors_recovered"] == 0
    assert report.summary.params == 0

    result = run_cli(path)
    _assert_not_created(sentinel)
    assert result.code == 1
    assert "os.system" in result.out
    check_unchanged()


@pytest.mark.parametrize(
    ("writer", "name", "protocol", "expected_format"),
    [
        pytest.param(_write_memo_pickle, "memo.pkl", 4, "pickle", id="pickle-p4"),
        pytest.param(_write_memo_pickle, "memo.pkl", 5, "pickle", id="pickle-p5"),
        pytest.param(_write_memo_pickle, "memo.pth", 4, "pickle", id="pickle-renamed-pth"),
        pytest.param(_write_memo_torch_zip, "memo.pth", 4, "torch-zip", id="torch-zip-p4"),
    ],
)
def test_memo_stack_global_next_to_a_state_dict(
    writer: Callable[..., None], name: str, protocol: int, expected_format: str,
    tmp_path: Path, small_net: nn.Module, run_cli: Any, unchanged: Any,
) -> None:
    sentinel = tmp_path / "PWNED"
    path = tmp_path / name
    writer(path, {"state_dict": small_net.state_dict(), "epoch": 3}, str(sentinel), protocol)
    check_unchanged = unchanged(path)

    report = analyze(path)
    _assert_not_created(sentinel)
    assert report.source.format == expected_format
    finding = _assert_refused(report, ["os.system"])
    assert finding.evidence["tensors_recovered"] == len(small_net.state_dict())
    assert report.summary.params == _params(small_net)
    assert report.source.metadata["epoch"] == 3

    result = run_cli(path)
    _assert_not_created(sentinel)
    assert result.code == 1
    assert UNSAFE in result.out and "os.system" in result.out
    check_unchanged()


# -- calls made by INST and OBJ rather than REDUCE ----------------------------------------


def _inst_pickle(command: str) -> bytes:
    """Protocol 0: MARK, the argument, INST 'os system' (calls os.system(command))."""
    return pickle.MARK + pickle.STRING + repr(command).encode() + b"\n" + pickle.INST + b"os\nsystem\n" + pickle.STOP


def _obj_pickle(command: str) -> bytes:
    """Protocol 1: MARK, GLOBAL 'os system', the argument, OBJ (calls os.system(command))."""
    data = command.encode()
    return (
        pickle.PROTO + b"\x01" + pickle.MARK + pickle.GLOBAL + b"os\nsystem\n"
        + pickle.BINUNICODE + len(data).to_bytes(4, "little") + data + pickle.OBJ + pickle.STOP
    )


@pytest.mark.parametrize("build", [_inst_pickle, _obj_pickle], ids=["INST", "OBJ"])
def test_inst_and_obj_calls_never_run(build: Callable[[str], bytes], tmp_path: Path, run_cli: Any) -> None:
    control = tmp_path / "ran"
    pickle.loads(build(_touch_cmd(str(control))))  # noqa: S301 - the control: it is a live payload
    assert control.exists()

    sentinel = tmp_path / "PWNED"
    path = tmp_path / "inst.pth"
    path.write_bytes(build(_touch_cmd(str(sentinel))))
    report = analyze(path)
    _assert_not_created(sentinel)
    assert report.source.format == "pickle"
    _assert_refused(report, ["os.system"])
    result = run_cli(path)
    _assert_not_created(sentinel)
    assert result.code == 1
    assert "os.system" in result.out


# -- full-model pickles of classes that are (not) importable -------------------------------

_GHOST_MODULE = "analyzer_test_ghostnet"
_GHOST_SOURCE = textwrap.dedent(
    """
    import torch.nn as nn


    class GhostNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.stem(x).mean((2, 3)))
    """
)


@dataclass
class Ghost:
    folder: Path
    checkpoint: Path
    params: int

    def make_importable(self) -> None:
        (self.folder / f"{_GHOST_MODULE}.py").write_text(_GHOST_SOURCE)
        sys.path.insert(0, str(self.folder))
        importlib.invalidate_caches()


@pytest.fixture
def ghost(tmp_path: Path) -> Iterator[Ghost]:
    """A full model saved from a module that is then made unimportable (file deleted, path and sys.modules cleaned)."""
    folder = tmp_path / "src"
    folder.mkdir()
    source = folder / f"{_GHOST_MODULE}.py"
    source.write_text(_GHOST_SOURCE)
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(_GHOST_MODULE)
        torch.manual_seed(0)
        model = module.GhostNet()
        checkpoint = tmp_path / "ghost_full.pth"
        torch.save(model, checkpoint)
        params = _params(model)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(_GHOST_MODULE, None)
    source.unlink()
    shutil.rmtree(folder / "__pycache__", ignore_errors=True)
    importlib.invalidate_caches()
    ghost = Ghost(folder, checkpoint, params)
    try:
        yield ghost
    finally:
        while str(folder) in sys.path:
            sys.path.remove(str(folder))
        sys.modules.pop(_GHOST_MODULE, None)
        importlib.invalidate_caches()


def test_full_model_of_an_unimportable_class_uses_placeholders(ghost: Ghost, run_cli: Any, unchanged: Any) -> None:
    check_unchanged = unchanged(ghost.checkpoint)
    report = analyze(ghost.checkpoint)
    target = f"{_GHOST_MODULE}.GhostNet"

    unsafe = _unsafe_findings(report)
    assert len(unsafe) == 1
    finding = unsafe[0]
    assert finding.severity is Severity.WARNING
    assert finding.evidence["globals"] == [target]
    assert finding.evidence["dangerous"] == []
    assert finding.evidence["importable_here"] == {target: False}
    assert finding.modules == ["<root>"]
    assert f"--allow-module {_GHOST_MODULE}" in finding.fix
    assert report.source.placeholders == [target]
    assert report.source.container == "full-module"
    assert report.summary.params == ghost.params
    assert {row.name: row.type for row in report.layers} == {"stem": "Conv2d", "head": "Linear"}
    assert _GHOST_MODULE not in sys.modules  # the placeholder imported nothing

    result = run_cli(ghost.checkpoint)
    assert result.code == 0  # a warning is below the default --fail-on error
    assert UNSAFE in result.out
    assert run_cli(ghost.checkpoint, "--fail-on", "warning", "-q").code == 1
    # Allowing a module that is not there changes nothing: still a placeholder, still a warning.
    report = analyze(ghost.checkpoint, allow_modules=(_GHOST_MODULE,))
    assert report.source.placeholders == [target]
    assert [f.severity for f in _unsafe_findings(report)] == [Severity.WARNING]
    check_unchanged()


def test_allow_module_rebuilds_the_real_class_when_importable(ghost: Ghost, run_cli: Any, unchanged: Any) -> None:
    check_unchanged = unchanged(ghost.checkpoint)
    ghost.make_importable()

    checkpoint = load_checkpoint(ghost.checkpoint, LoadOptions(allow_modules=(_GHOST_MODULE,)))
    assert type(checkpoint.module).__module__ == _GHOST_MODULE
    assert type(checkpoint.module).__name__ == "GhostNet"
    assert checkpoint.runnable
    assert checkpoint.placeholders == []

    report = analyze(ghost.checkpoint, allow_modules=[_GHOST_MODULE])
    assert _unsafe_findings(report) == []
    assert [f.kind for f in report.findings] == ["full-model-pickle"]
    assert f"{_GHOST_MODULE}.GhostNet" in report.findings[0].evidence["globals"]
    assert report.source.placeholders == []
    assert report.summary.params == ghost.params
    assert {row.name: row.type for row in report.layers} == {"stem": "Conv2d", "head": "Linear"}

    result = run_cli(ghost.checkpoint, "--allow-module", _GHOST_MODULE)
    assert result.code == 0
    assert UNSAFE not in result.out
    # Importable but not allowed: still a placeholder.
    report = analyze(ghost.checkpoint)
    assert report.source.placeholders == [f"{_GHOST_MODULE}.GhostNet"]
    assert [f.severity for f in _unsafe_findings(report)] == [Severity.WARNING]
    check_unchanged()

