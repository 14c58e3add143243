"""The allowlist is the whole rule: payloads of every class, in every container.

Each payload of tests/payloads.py would create a sentinel file if any unpickler ran it
(`test_payloads_are_live` proves it with plain `pickle.load` and `torch.load`). Built once
per container — plain pickle, torch zip, HF-style `pytorch_model.bin`, legacy torch
stream, legacy .tar checkpoint, TorchScript archive — and analysed once through the CLI,
each file must leave its sentinel absent, and give an `unsafe-pickle` error naming the
callable with exit 1 when it would run code, or a warning naming the class when it only
instantiates one. Every fix snippet the reports print is then run, all in one
subprocess, against its file: the sentinels stay absent, and a snippet never allowlists
anything but nn.Module classes. The test's own package (tests.payloads) is allowed with
`--allow-module` and its real model is rebuilt and runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from analyzer.cli import main
from analyzer.load import LoadOptions, load_checkpoint
from analyzer.load.pickle_scan import GlobalRef, GlobalUse, scan_pickle
from analyzer.load.policy import GlobalKind, GlobalPolicy
from analyzer.load.readers import TAR_NOTE
from analyzer.report.model import Report, Severity

from . import payloads
from .payloads import CONTAINERS, PACKAGE, PAYLOADS, Container, Payload, TinyNet, call, glob, legacy_tar, text

UNSAFE = "unsafe-pickle"
ROOT = Path(__file__).resolve().parents[1]
FORMATS = {
    "pickle": "pickle", "torch-zip": "torch-zip", "hf-bin": "torch-zip", "torch-legacy": "torch-legacy",
    "legacy-tar": "torch-legacy", "torchscript": "torchscript",
}
#: Phrases of torch's advice to load with weights_only=False: never repeated by the analyzer.
UNSAFE_ADVICE = ("Re-running", "weights_only` set to `False", "weights_only=False will", "arbitrary code execution")


@dataclass
class Outcome:
    path: Path
    sentinel: Path | None
    code: int
    out: str
    err: str
    report: Report | None


def _analyse(path: Path, flags: tuple[str, ...], json_path: Path, sentinel: Path | None = None) -> Outcome:
    """`analyze PATH FLAGS --json JSON`, in-process, its terminal report and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(path), *flags, "--json", str(json_path)])
    report = Report.from_json(json_path.read_text()) if json_path.exists() else None
    return Outcome(path, sentinel, code, out.getvalue(), err.getvalue(), report)


def _write_model(container: str, model: torch.nn.Module, path: Path) -> None:
    if container == "pickle":
        path.write_bytes(pickle.dumps(model, protocol=2))
    elif container in ("torch-zip", "hf-bin"):
        torch.save(model, path)
    elif container == "torch-legacy":
        torch.save(model, path, _use_new_zipfile_serialization=False)
    elif container == "legacy-tar":
        path.write_bytes(legacy_tar(model))
    else:
        torch.jit.script(model).save(str(path))


@dataclass
class Matrix:
    root: Path
    outcomes: dict[tuple[str, str], Outcome]
    #: container -> (the model saved, analysed with --allow-module, analysed without)
    models: dict[str, tuple[TinyNet, Outcome, Outcome]]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Matrix:
    """Every payload in every container, written once and analysed once through the CLI."""
    root = tmp_path_factory.mktemp("payloads")
    scratch, sentinels, reports = root / "scratch", root / "sentinels", root / "reports"
    for folder in (scratch, sentinels, reports):
        folder.mkdir()
    outcomes: dict[tuple[str, str], Outcome] = {}
    models: dict[str, tuple[TinyNet, Outcome, Outcome]] = {}
    for container in CONTAINERS:
        write = container.prepare(scratch)
        for payload in PAYLOADS:
            folder = root / container.name / payload.name
            folder.mkdir(parents=True)
            sentinel = sentinels / f"{payload.name}-{container.name}"
            path = folder / container.filename
            path.write_bytes(write(payload.ops(sentinel, scratch)))
            outcomes[payload.name, container.name] = _analyse(path, payload.flags, reports / f"{payload.name}-{container.name}.json", sentinel)
        torch.manual_seed(0)
        model = TinyNet().eval()
        path = root / container.name / f"tinynet-{container.filename}"
        _write_model(container.name, model, path)
        allowed = _analyse(path, ("--allow-module", PACKAGE), reports / f"tinynet-allowed-{container.name}.json")
        plain = _analyse(path, (), reports / f"tinynet-{container.name}.json")
        models[container.name] = (model, allowed, plain)
    return Matrix(root, outcomes, models)


def _unsafe(report: Report) -> list[Any]:
    return [f for f in report.findings if f.kind == UNSAFE]


# -- the payloads would run ---------------------------------------------------------------------


#: One child process for every subprocess check of the run: each fix snippet in a fresh
#: namespace (cwd: an empty folder), then the controls that must run their payload.
_CHILD = textwrap.dedent(
    """
    import json, pickle, sys, time
    import torch
    todo = json.load(open(sys.argv[1]))
    snippets = {}
    for snippet in todo["snippets"]:
        try:
            exec(compile(snippet["code"], snippet["label"], "exec"), {"__name__": "__fix__"})
            snippets[snippet["label"]] = "ok"
        except BaseException as e:
            snippets[snippet["label"]] = type(e).__name__
    for path in todo["pickle_load"]:
        try:
            with open(path, "rb") as f:
                pickle.load(f)
        except BaseException:
            pass
    for path in todo["torch_load"]:
        try:
            torch.load(path, weights_only=False)
        except BaseException:
            pass
    time.sleep(0.5)  # Popen payloads run in a child process of their own
    print(json.dumps(snippets))
    """
)


@dataclass
class Child:
    #: snippet label -> "ok" or the exception that stopped it
    snippets: dict[str, str]
    #: sentinels of the control files, which must exist
    controls: list[Path]


def _fix_snippets(matrix: Matrix) -> list[dict[str, str]]:
    """Every fix_code of every report, as the JSON holds it, labelled payload-container:kind."""
    outcomes = [*matrix.outcomes.items(), *((("tinynet", c), o) for c, (_, o, _) in matrix.models.items())]
    return [
        {"label": f"{key[0]}-{key[1]}:{f.kind}", "code": f.fix_code}
        for key, outcome in outcomes
        for f in (outcome.report.findings if outcome.report else [])
        if f.fix_code
    ]


@pytest.fixture(scope="module")
def child(matrix: Matrix) -> Child:
    """The fix snippets and the liveness controls, run in one subprocess."""
    folder = matrix.root / "child"
    scratch = folder / "scratch"
    scratch.mkdir(parents=True)
    write = CONTAINERS[0].prepare(scratch)
    assert CONTAINERS[0].name == "pickle"
    todo: dict[str, list[Any]] = {"snippets": _fix_snippets(matrix), "pickle_load": [], "torch_load": []}
    controls = []
    for payload in (p for p in PAYLOADS if p.live):
        sentinel = folder / f"ran-{payload.name}"
        path = scratch / f"{payload.name}.pkl"
        path.write_bytes(write(payload.ops(sentinel, scratch)))
        todo["pickle_load"].append(str(path))
        controls.append(sentinel)
    # torch.load runs a payload carried by the legacy .tar format (the test's writer makes the real layout).
    tar_sentinel = folder / "ran-tar"
    tar = scratch / "payload.tar.pth"
    tar.write_bytes(legacy_tar(payloads.base_state(), extra=call(glob("torch", "os.system"), text(payloads.touch(tar_sentinel)))))
    todo["torch_load"].append(str(tar))
    controls.append(tar_sentinel)
    (folder / "todo.json").write_text(json.dumps(todo))
    (folder / "child.py").write_text(_CHILD)
    cwd = folder / "cwd"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(folder / "child.py"), str(folder / "todo.json")],
        cwd=cwd, env=env, timeout=300, capture_output=True, text=True, check=True,
    )
    return Child(json.loads(done.stdout.strip().splitlines()[-1]), controls)


def test_payloads_are_live(child: Child) -> None:
    """Control: plain pickle.load runs every live payload, and torch.load one carried by the
    legacy .tar format, so that an absent sentinel elsewhere means something."""
    assert [s.name for s in child.controls if not s.exists()] == []


def test_legacy_tar_layout_is_what_torch_reads(tmp_path: Path) -> None:
    """The test's .tar writer makes what torch.load's legacy_load reads: the same tensors back."""
    state = payloads.base_state()
    path = tmp_path / "old.tar.pth"
    path.write_bytes(legacy_tar(state))
    loaded = torch.load(path, weights_only=False)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], v) for k, v in state.items())


# -- never run, always reported ------------------------------------------------------------------

MATRIX = pytest.mark.parametrize(
    ("payload", "container"),
    [pytest.param(p, c, id=f"{p.name}-{c.name}") for p in PAYLOADS for c in CONTAINERS],
)


@MATRIX
def test_payload_never_runs_and_is_reported(payload: Payload, container: Container, matrix: Matrix) -> None:
    outcome = matrix.outcomes[payload.name, container.name]
    assert outcome.sentinel is not None and not outcome.sentinel.exists(), "the payload ran"
    assert "Traceback" not in outcome.out + outcome.err
    assert outcome.report is not None, outcome.err
    assert outcome.report.source.format == FORMATS[container.name]
    [finding] = _unsafe(outcome.report)
    if payload.runs:
        assert outcome.code == 1, outcome.err
        assert finding.severity is Severity.ERROR
        assert finding.evidence["dangerous"] == sorted(payload.runs)
        assert finding.evidence["classes"] == []
        for name in payload.runs:
            assert name in finding.message
            assert name in outcome.out
        assert "class" not in finding.message  # functions are not called classes
        assert finding.fix_code is None and "state_dict()" in finding.fix
    else:
        assert outcome.code == 0, outcome.err  # a warning is below the default --fail-on error
        assert finding.severity is Severity.WARNING
        assert finding.evidence["dangerous"] == []
        assert finding.evidence["classes"] == sorted(payload.classes)
        assert set(payload.classes) <= set(outcome.report.source.placeholders)


def test_every_printed_fix_snippet_leaves_the_sentinels_absent(matrix: Matrix, child: Child) -> None:
    """Every fix_code of every report run against its file: no sentinel appears, and the
    snippets for bare classes that are not nn.Module classes stop before allowlisting them."""
    labels = {s["label"] for s in _fix_snippets(matrix)}
    # torch's own reader read these with placeholders: their warnings print the allowlist snippet.
    assert {f"own-package-gadget-bare-torch-zip:{UNSAFE}", f"popen-bare-class-hf-bin:{UNSAFE}"} <= labels
    assert set(child.snippets) == labels
    leaked = [o.sentinel.name for o in matrix.outcomes.values() if o.sentinel is not None and o.sentinel.exists()]
    assert leaked == []
    for container in ("torch-zip", "hf-bin"):
        # The file named a class that is not an nn.Module: the snippet stops before torch.load.
        assert child.snippets[f"own-package-gadget-bare-{container}:{UNSAFE}"] == "SystemExit"
        assert child.snippets[f"popen-bare-class-{container}:{UNSAFE}"] == "SystemExit"
        # An nn.Module class under a name not its own (torch's Linear, re-exported): allowlisted, and
        # torch refuses the name anyway, as it refuses any global not registered under it.
        assert child.snippets[f"own-package-reexported-class-{container}:{UNSAFE}"] == "UnpicklingError"
        assert child.snippets[f"tinynet-{container}:full-model-pickle"] == "ok"


# -- --allow-module of the test's own package: the real model, rebuilt and run --------------------


@pytest.mark.parametrize("container", [c.name for c in CONTAINERS])
def test_allowed_own_package_model_is_rebuilt_and_runs(container: str, matrix: Matrix) -> None:
    model, allowed, plain = matrix.models[container]
    assert allowed.code == 0 and plain.code == 0, (allowed.err, plain.err)
    assert allowed.report is not None and plain.report is not None
    assert allowed.report.summary.tensors == len(model.state_dict())
    if container == "torchscript":
        assert _unsafe(plain.report) == []  # TorchScript's own classes; runnable only with --trust
        return
    if container == "torch-legacy":
        # torch's weights_only reader refuses the class ids of legacy full models outright: said, not an error.
        [refused] = _unsafe(allowed.report)
        assert refused.severity is Severity.WARNING and refused.evidence["dangerous"] == refused.evidence["classes"] == []
        assert "persistent_load" in refused.evidence["refused"]
    else:
        assert _unsafe(allowed.report) == []
        [full] = [f for f in allowed.report.findings if f.kind == "full-model-pickle"]
        assert {f"{PACKAGE}.TinyNet", f"{PACKAGE}.Head"} <= set(full.evidence["globals"])
    checkpoint = load_checkpoint(allowed.path, LoadOptions(allow_modules=(PACKAGE,)))
    assert type(checkpoint.module) is TinyNet and checkpoint.runnable
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(checkpoint.module.eval()(x), model(x))
    # Without the flag the same file names two unknown classes: a warning, placeholders, nothing run.
    [finding] = _unsafe(plain.report)
    assert finding.severity is Severity.WARNING
    assert finding.evidence["classes"] == [f"{PACKAGE}.Head", f"{PACKAGE}.TinyNet"]


def test_policy_rebuilds_only_module_classes_defined_in_the_package_by_plain_names() -> None:
    """torch.nn, the implicit analyzer.zoo and --allow-module packages: one rule, checked by import."""
    policy = GlobalPolicy((PACKAGE, "numpy"))
    rebuilt = {
        ("torch.nn.modules.module", "Module"): GlobalKind.TORCH_NN_CLASS,
        ("torch.nn.utils.prune", "L1Unstructured"): GlobalKind.TORCH_NN_CLASS,
        ("analyzer.zoo.resnet", "ResNet"): GlobalKind.ALLOWED_CLASS,
        (PACKAGE, "TinyNet"): GlobalKind.ALLOWED_CLASS,
    }
    for (module, name), kind in rebuilt.items():
        assert policy.resolve(module, name).kind is kind, (module, name)
    refused = {
        ("torch.nn.modules.module", "torch._dynamo.eval_frame.OptimizedModule"): "a dotted name, which is never followed",
        ("analyzer.zoo.resnet", "torch.serialization.io.FileIO"): "a dotted name, which is never followed",
        ("analyzer.zoo.resnet", "nn"): "a module, not a class",
        ("torch.nn.functional", "relu"): "a function, not a class",
        (PACKAGE, "Gadget"): "a class that is not an nn.Module",
        (PACKAGE, "ReExported"): f"a class defined in torch.nn.modules.linear, outside {PACKAGE}",
        ("numpy", "memmap"): "a class that is not an nn.Module",
        ("numpy.f2py.__main__", "X"): "a module that runs a program when imported",
    }
    for (module, name), found in refused.items():
        resolved = policy.resolve(module, name)
        assert resolved.needs_placeholder and resolved.found == found, (module, name, resolved.found)
    assert "numpy.f2py.__main__" not in sys.modules


def test_allow_module_that_is_no_package_name_is_a_usage_error(tmp_path: Path, run_cli: Any) -> None:
    path = tmp_path / "sd.pth"
    torch.save(payloads.base_state(), path)
    result = run_cli(path, "--allow-module", "../evil")
    assert result.code == 2 and len(result.err.splitlines()) == 1 and "--allow-module" in result.err


# -- the scan: how each global is used -------------------------------------------------------------


def _uses(ops: bytes) -> dict[str, GlobalUse]:
    return {ref.full_name: use for ref, use in scan_pickle(io.BytesIO(pickle.PROTO + b"\x04" + ops + pickle.STOP)).items()}


CALLED, BARE, KEPT = GlobalUse(called=True), GlobalUse(instantiated=True), GlobalUse(referenced=True)


@pytest.mark.parametrize(
    ("ops", "expected"),
    [
        pytest.param(payloads.bare(glob("m", "C"), pickle.EMPTY_DICT), {"m.C": BARE}, id="newobj-build"),
        pytest.param(call(glob("copyreg", "_reconstructor"), glob("m", "C"), glob("builtins", "object"), pickle.NONE),
                     {"copyreg._reconstructor": CALLED, "m.C": BARE, "builtins.object": BARE}, id="reconstructor-plain"),
        pytest.param(call(glob("copyreg", "_reconstructor"), glob("m", "C"), glob("m", "B"), text("s")),
                     {"copyreg._reconstructor": CALLED, "m.C": CALLED, "m.B": CALLED}, id="reconstructor-base-called"),
        pytest.param(call(glob("copyreg", "__newobj__"), glob("m", "C")), {"copyreg.__newobj__": CALLED, "m.C": BARE}, id="newobj-helper"),
        pytest.param(call(glob("copyreg", "__newobj__"), glob("m", "C"), text("a")), {"copyreg.__newobj__": CALLED, "m.C": CALLED},
                     id="newobj-helper-with-args"),
        pytest.param(glob("m", "C") + payloads.tup(text("a")) + pickle.NEWOBJ, {"m.C": CALLED}, id="newobj-with-args"),
        # Calling an instance runs its class's __call__.
        pytest.param(payloads.bare(glob("m", "C"), pickle.EMPTY_DICT) + pickle.EMPTY_TUPLE + pickle.REDUCE,
                     {"m.C": GlobalUse(called=True, instantiated=True)}, id="instance-called"),
        pytest.param(call(call(glob("m", "f"), text("a")), text("b")), {"m.f": CALLED}, id="chained-call"),
        pytest.param(pickle.EMPTY_LIST + glob("m", "f") + pickle.APPEND, {"m.f": KEPT}, id="kept-in-a-list"),
        pytest.param(glob("m", "f") + pickle.EMPTY_DICT + pickle.BUILD, {"m.f": KEPT}, id="global-mutated-by-build"),
        pytest.param(payloads.tup(glob("m", "f"), text("a")) + pickle.BINPERSID + pickle.EMPTY_TUPLE + pickle.REDUCE,
                     {"m.f": GlobalUse(called=True, referenced=True)}, id="persistent-id-called"),
        pytest.param(text("m") + text("C") + pickle.MEMOIZE + pickle.POP + pickle.BINGET + b"\x00" + pickle.STACK_GLOBAL
                     + pickle.MEMOIZE + pickle.EMPTY_TUPLE + pickle.NEWOBJ + pickle.POP + pickle.BINGET + b"\x01" + pickle.EMPTY_TUPLE
                     + pickle.NEWOBJ, {"m.C": BARE}, id="memo-stack-global-bare-twice"),
        pytest.param(pickle.MARK + text("a") + pickle.INST + b"m\nf\n", {"m.f": CALLED}, id="inst"),
    ],
)
def test_scan_records_how_each_global_is_used(ops: bytes, expected: dict[str, GlobalUse]) -> None:
    assert _uses(ops) == expected


def test_scan_of_a_legacy_persistent_id_hands_back_the_class() -> None:
    ops = payloads.tup(glob("m", "C"), text("file"), text("source")) + pickle.BINPERSID + pickle.EMPTY_TUPLE + pickle.NEWOBJ
    data = io.BytesIO(pickle.PROTO + b"\x02" + ops + pickle.STOP)
    assert scan_pickle(data, hands_back_classes=True) == {GlobalRef("m", "C"): BARE}
    legacy = payloads.tup(text("module"), glob("m", "C"), text("file"), text("source")) + pickle.BINPERSID + pickle.EMPTY_TUPLE + pickle.NEWOBJ
    assert scan_pickle(io.BytesIO(pickle.PROTO + b"\x02" + legacy + pickle.STOP), hands_back_classes=True) == {GlobalRef("m", "C"): BARE}
    # Elsewhere no reader hands it back: calling what a persistent id gave calls what it named.
    assert scan_pickle(io.BytesIO(pickle.PROTO + b"\x02" + legacy + pickle.STOP)) == {GlobalRef("m", "C"): GlobalUse(called=True, referenced=True)}


# -- the legacy .tar format -----------------------------------------------------------------------


def test_legacy_tar_state_dict_is_analysed(tmp_path: Path, run_cli: Any) -> None:
    state = payloads.base_state()
    path = tmp_path / "old.pth"
    path.write_bytes(legacy_tar(state))
    checkpoint = load_checkpoint(path)
    assert (checkpoint.format, checkpoint.loader, checkpoint.container) == ("torch-legacy", "restricted-unpickler", "state-dict")
    assert set(checkpoint.tensors) == set(state)
    assert all(torch.equal(checkpoint.tensors[k], v) for k, v in state.items())
    assert TAR_NOTE in checkpoint.notes
    result = run_cli(path)
    assert result.code == 0 and result.err == ""
    assert UNSAFE not in result.out


@pytest.mark.parametrize("member", ["pickle", "storages"])
def test_payload_in_any_legacy_tar_member_is_reported(member: str, tmp_path: Path, run_cli: Any) -> None:
    """Every member pickle is scanned: a payload in the object or in a storage record."""
    sentinel = tmp_path / "PWNED"
    payload = call(glob("posix", "system"), text(payloads.touch(sentinel)))
    data = legacy_tar(payloads.base_state(), extra=payload if member == "pickle" else None)
    if member == "storages":
        data = _with_storage_type(data, payload)
    path = tmp_path / "old.pth"
    path.write_bytes(data)
    result = run_cli(path, "--json", "-")
    assert not sentinel.exists()
    assert result.code == 1, result.err
    [finding] = _unsafe(Report.from_json(result.out))
    assert finding.severity is Severity.ERROR and finding.evidence["dangerous"] == ["posix.system"]


def _with_storage_type(tar_bytes: bytes, payload: bytes) -> bytes:
    """The first storage record's type replaced by a payload (torch would call it reading `storages`)."""
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        bodies = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    storages = bodies["storages"]
    count = pickle.dumps(len(payloads.base_state()), protocol=2)
    assert storages.startswith(count)
    record_end = storages.index(pickle.STOP, len(count)) + 1
    record = pickle.loads(storages[len(count):record_end])  # (key, location, storage type): plain data
    forged = pickle.PROTO + b"\x02" + payloads.tup(payloads.integer(record[0]), text("cpu"), payload) + pickle.STOP
    bodies["storages"] = count + forged + storages[record_end:]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, body in bodies.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


_LEGACY_MAGIC_PICKLE = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)


@pytest.mark.parametrize("torch_members", [True, False], ids=["tar-with-torch-members", "tar-without"])
def test_tar_and_legacy_polyglot_never_quotes_torch_unsafe_advice(torch_members: bool, tmp_path: Path, run_cli: Any) -> None:
    """A tar whose first header begins with the legacy stream's magic pickle. torch.load tries
    the tar first, and refuses it with weights_only=True in words that advise weights_only=False."""
    name = _LEGACY_MAGIC_PICKLE.decode("utf-8", "surrogateescape")
    if torch_members:
        data = legacy_tar(payloads.base_state(), first_name=name)
    else:
        import tarfile

        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            tar.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
        data = out.getvalue()
    assert data.startswith(_LEGACY_MAGIC_PICKLE)
    path = tmp_path / "polyglot.pth"
    path.write_bytes(data)
    with pytest.raises(RuntimeError, match="Re-running"):
        torch.load(path, weights_only=True)  # what torch says
    result = run_cli(path)
    assert not any(advice in result.out + result.err for advice in UNSAFE_ADVICE), result.out + result.err
    if torch_members:
        assert result.code == 0 and "torch-legacy" in result.out
    else:
        assert result.code == 2 and len(result.err.splitlines()) == 1


# -- CRC of every zip entry -----------------------------------------------------------------------


def test_bad_crc_on_tensor_data_is_refused_in_one_line(tmp_path: Path, run_cli: Any, unchanged: Any) -> None:
    path = tmp_path / "crc.pth"
    torch.save(payloads.base_state(), path)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("crc/data/0")
    data = bytearray(path.read_bytes())
    offset = info.header_offset + 30 + int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    offset += int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    data[offset] ^= 0x40  # one bit of fc.weight's first float
    path.write_bytes(bytes(data))
    check_unchanged = unchanged(path)
    # torch never checks: it loads the damaged weight as if nothing happened.
    loaded = torch.load(path, weights_only=True)
    assert not torch.equal(loaded["fc.weight"], payloads.base_state()["fc.weight"])

    result = run_cli(path)
    assert result.code == 2 and result.out == ""
    [line] = result.err.splitlines()
    assert "crc/data/0" in line and "CRC-32" in line and str(path) in line
    check_unchanged()
