"""Bad input: a clear line, exit 2, nothing lost. Odd but valid input: analysed, never a crash."""

from __future__ import annotations

import gzip
import json
import pickle
import random
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from analyzer import analyze
from analyzer.errors import InputError
from analyzer.report.model import Report, Severity


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _assert_one_error_line(result: Any, path: Path, says: str) -> None:
    assert result.code == 2
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("analyze: error: ")
    assert str(path) in lines[0]
    assert says in lines[0]
    assert result.out == ""
    assert "Traceback" not in result.err + result.out


# -- cannot be analysed ---------------------------------------------------------------------


def _torch_file(tmp_path: Path, net: nn.Module) -> bytes:
    scratch = tmp_path / "scratch" / "real.pth"
    scratch.parent.mkdir(exist_ok=True)
    torch.save(net.state_dict(), scratch)
    return scratch.read_bytes()


def _truncated_zip(path: Path, tmp_path: Path, net: nn.Module) -> None:
    data = _torch_file(tmp_path, net)
    path.write_bytes(data[: len(data) // 2])


def _gzipped_torch(path: Path, tmp_path: Path, net: nn.Module) -> None:
    path.write_bytes(gzip.compress(_torch_file(tmp_path, net), mtime=0))


def _random_bytes(path: Path, tmp_path: Path, net: nn.Module) -> None:
    path.write_bytes(random.Random(0).randbytes(4096))


def _png(path: Path, tmp_path: Path, net: nn.Module) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(64))


def _json_text(path: Path, tmp_path: Path, net: nn.Module) -> None:
    path.write_text(json.dumps({"epoch": 3, "weights": [0.1, 0.2, 0.3]}))


def _no_tensors(path: Path, tmp_path: Path, net: nn.Module) -> None:
    with open(path, "wb") as f:
        pickle.dump({"epoch": 3, "lr": 0.1}, f)


def _zip_without_data_pkl(path: Path, tmp_path: Path, net: nn.Module) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/data/0", bytes(16))


def _empty(path: Path, tmp_path: Path, net: nn.Module) -> None:
    path.write_bytes(b"")


def _pickle_of_none(path: Path, tmp_path: Path, net: nn.Module) -> None:
    path.write_bytes(pickle.dumps(None))


def _torch_save_of_none(path: Path, tmp_path: Path, net: nn.Module) -> None:
    torch.save(None, path)


def _truncated_legacy(path: Path, tmp_path: Path, net: nn.Module) -> None:
    scratch = tmp_path / "scratch" / "legacy.pth"
    scratch.parent.mkdir(exist_ok=True)
    torch.save(net.state_dict(), scratch, _use_new_zipfile_serialization=False)
    data = scratch.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _truncated_pickle(path: Path, tmp_path: Path, net: nn.Module) -> None:
    data = pickle.dumps(net.state_dict(), protocol=4)
    path.write_bytes(data[: len(data) // 2])


def _truncated_safetensors(path: Path, tmp_path: Path, net: nn.Module) -> None:
    scratch = tmp_path / "scratch" / "model.safetensors"
    scratch.parent.mkdir(exist_ok=True)
    save_file(net.state_dict(), str(scratch))
    data = scratch.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _zip_with_garbage_data_pkl(path: Path, tmp_path: Path, net: nn.Module) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02garbage")


BAD_FILES = [
    pytest.param(_empty, "the file is empty", id="empty"),
    pytest.param(_truncated_zip, "damaged or truncated zip archive", id="truncated-torch-zip"),
    pytest.param(_gzipped_torch, "gzip-compressed", id="gzipped-torch"),
    pytest.param(_random_bytes, "unrecognised binary data", id="random-bytes"),
    pytest.param(_png, "PNG image", id="png-renamed-pth"),
    pytest.param(_json_text, "JSON document", id="json-text"),
    pytest.param(_no_tensors, "a dict with keys [epoch, lr] that holds no tensors", id="pickle-without-tensors"),
    pytest.param(_zip_without_data_pkl, "a zip archive without data.pkl", id="zip-without-data-pkl"),
    pytest.param(_truncated_legacy, "damaged or incomplete file", id="truncated-torch-legacy"),
    pytest.param(_truncated_pickle, "not a well-formed pickle", id="truncated-pickle"),
    pytest.param(_truncated_safetensors, "malformed safetensors file", id="truncated-safetensors"),
    pytest.param(_zip_with_garbage_data_pkl, "not a well-formed pickle", id="zip-with-garbage-data-pkl"),
    # None holds no tensors just as {"epoch": 3} does.
    pytest.param(_pickle_of_none, "holds no tensors", id="pickle-of-none"),
    pytest.param(_torch_save_of_none, "holds no tensors", id="torch-save-of-none"),
]


@pytest.mark.parametrize(("make", "says"), BAD_FILES)
def test_bad_file_gives_one_line_and_exit_2(
    make: Callable[[Path, Path, nn.Module], None], says: str,
    tmp_path: Path, small_net: nn.Module, run_cli: Any, unchanged: Any,
) -> None:
    path = tmp_path / "model.pth"
    make(path, tmp_path, small_net)
    check_unchanged = unchanged(path)

    _assert_one_error_line(run_cli(path), path, says)
    with pytest.raises(InputError) as raised:
        analyze(path)
    assert raised.value.exit_code == 2
    assert "\n" not in str(raised.value)
    # Nothing written beside it either.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "scratch") == ["model.pth"]
    check_unchanged()


def test_bad_file_with_debug_shows_the_traceback_on_stderr_only(tmp_path: Path, run_cli: Any) -> None:
    path = tmp_path / "model.pth"
    path.write_bytes(random.Random(0).randbytes(4096))
    result = run_cli(path, "--debug")
    assert result.code == 2
    assert "Traceback" in result.err
    assert result.err.splitlines()[-1].startswith("analyze: error: ")
    assert result.out == ""


def test_missing_path(tmp_path: Path, run_cli: Any) -> None:
    path = tmp_path / "nope.pth"
    _assert_one_error_line(run_cli(path), path, "no such file")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_directory(tmp_path: Path, run_cli: Any) -> None:
    path = tmp_path / "checkpoints.pth"
    path.mkdir()
    (path / "inside.txt").write_text("x")
    _assert_one_error_line(run_cli(path), path, "is a directory")
    assert [p.name for p in path.iterdir()] == ["inside.txt"]


def test_one_bad_file_among_good_ones_still_exits_2(tmp_path: Path, small_net: nn.Module, run_cli: Any) -> None:
    good = tmp_path / "good.pth"
    torch.save(small_net.state_dict(), good)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"")
    result = run_cli(good, bad)
    _assert_one_error_line(result, bad, "the file is empty")


# -- odd but valid: analysed, never a crash ------------------------------------------------


@dataclass(frozen=True)
class Odd:
    """A state dict whose tensors are unusual, and what the report must say about it."""

    make: Callable[[nn.Module], dict[str, torch.Tensor]]
    check: Callable[[Report, dict[str, torch.Tensor], nn.Module], None]
    exit_code: int = 0


def _nan_inf(net: nn.Module) -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    state["conv1.weight"][1, 0, 0, 0] = float("nan")
    state["fc.bias"][1] = float("inf")
    return state


def _check_nan_inf(report: Report, state: dict[str, torch.Tensor], net: nn.Module) -> None:
    [finding] = [f for f in report.findings if f.kind == "non-finite-weights"]
    assert finding.severity is Severity.ERROR
    assert finding.modules == ["conv1", "fc"]
    assert finding.evidence["nonfinite_per_tensor"] == {"conv1.weight": 2, "fc.bias": 1}
    assert report.summary.params == _params(net)


def _cast(dtype: torch.dtype) -> Callable[[nn.Module], dict[str, torch.Tensor]]:
    return lambda net: {k: v.to(dtype) if v.is_floating_point() else v for k, v in net.state_dict().items()}


def _check_dtype(dtype: str) -> Callable[[Report, dict[str, torch.Tensor], nn.Module], None]:
    def check(report: Report, state: dict[str, torch.Tensor], net: nn.Module) -> None:
        assert report.summary.params == _params(net)
        assert {row.name: row.dtype for row in report.layers} == dict.fromkeys(["conv1", "bn1", "conv2", "bn2", "fc"], dtype)
        assert {row.name: row.type for row in report.layers}["conv1"] == "Conv2d"
        assert report.findings == []

    return check


def _int8(net: nn.Module) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "fc.weight": torch.randint(-3, 4, (4, 16), dtype=torch.int8, generator=gen),
        "fc.bias": torch.zeros(4, dtype=torch.int8),
    }


def _quantized(net: nn.Module) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 16, generator=gen)
    weight[0] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # quantized dtypes are deprecated, but still saved and loaded
        quantized = torch.quantize_per_tensor(weight, 0.05, 0, torch.qint8)
    return {"fc.weight": quantized, "fc.bias": torch.randn(4, generator=gen)}


def _check_fc_only(dtype: str, nonzero: Callable[[dict[str, torch.Tensor]], int | None]) -> Callable[..., None]:
    def check(report: Report, state: dict[str, torch.Tensor], net: nn.Module) -> None:
        [row] = report.layers
        assert (row.name, row.type, row.shape, row.dtype) == ("fc", "Linear", [4, 16], dtype)
        assert row.params == 68
        assert row.nonzero == nonzero(state)
        assert report.summary.params == 68
        assert report.summary.tensors == 2
        assert [f.kind for f in report.findings if f.severity is Severity.ERROR] == []

    return check


def _dense_nonzero(state: dict[str, torch.Tensor]) -> int:
    total = 0
    for tensor in state.values():
        if tensor.is_quantized:
            tensor = tensor.dequantize()
        elif tensor.is_sparse:
            tensor = tensor.to_dense()
        total += int(torch.count_nonzero(tensor))
    return total


def _check_invalid_sparse(report: Report) -> None:
    [row] = report.layers
    assert (row.name, row.params, row.nonzero) == ("fc", 68, None)  # values of a corrupt tensor are not counted
    [finding] = report.findings
    assert (finding.kind, finding.severity, finding.modules) == ("invalid-sparse-tensor", Severity.ERROR, ["fc"])
    assert list(finding.evidence["invalid_tensors"]) == ["fc.weight"]


def _meta(net: nn.Module) -> dict[str, torch.Tensor]:
    return {"fc.weight": torch.empty(4, 16, device="meta"), "fc.bias": torch.empty(4, device="meta")}


def _shared(net: nn.Module) -> dict[str, torch.Tensor]:
    tied = torch.randn(10, 6, generator=torch.Generator().manual_seed(0))
    return {"embed.weight": tied, "head.weight": tied, "head.bias": torch.zeros(10)}


def _check_shared(report: Report, state: dict[str, torch.Tensor], net: nn.Module) -> None:
    assert report.summary.tensors == 3
    assert report.summary.params == 60 + 10  # the tied 10x6 matrix counted once
    [note] = [n for n in report.notes if "shares its storage" in n]
    assert "head.weight" in note and "embed.weight" in note
    assert report.findings == []


def _sparse(net: nn.Module) -> dict[str, torch.Tensor]:
    weight = torch.zeros(4, 16)
    weight[0, 3], weight[2, 7], weight[3, 15] = 1.5, -2.0, 0.25
    return {"fc.weight": weight.to_sparse(), "fc.bias": torch.tensor([0.0, 1.0, 0.0, 2.0])}


def _invalid_sparse(net: nn.Module) -> dict[str, torch.Tensor]:
    # Row index 99 of a 4-row tensor: out of bounds, allowed only because invariants are not checked.
    indices = torch.tensor([[0, 99], [0, 1]])
    weight = torch.sparse_coo_tensor(indices, torch.tensor([1.0, 2.0]), (4, 16), check_invariants=False)
    return {"fc.weight": weight, "fc.bias": torch.tensor([0.0, 1.0, 0.0, 2.0])}


ODD = {
    "nan-inf": Odd(_nan_inf, _check_nan_inf, exit_code=1),
    "fp16": Odd(_cast(torch.float16), _check_dtype("float16")),
    "bf16": Odd(_cast(torch.bfloat16), _check_dtype("bfloat16")),
    "int8": Odd(_int8, _check_fc_only("int8", _dense_nonzero)),
    "qint8": Odd(_quantized, _check_fc_only("qint8", _dense_nonzero)),
    "meta": Odd(_meta, _check_fc_only("float32", lambda state: None)),
    "shared-storage": Odd(_shared, _check_shared),
    "sparse-coo": Odd(_sparse, _check_fc_only("float32", lambda state: 3 + 2)),
    # Out-of-bounds indices: a report with an invalid-sparse-tensor error, not a crash.
    "invalid-sparse": Odd(_invalid_sparse, lambda report, state, net: _check_invalid_sparse(report), exit_code=1),
}


def _save_zip(state: dict[str, torch.Tensor], path: Path) -> None:
    torch.save(state, path)


def _save_legacy(state: dict[str, torch.Tensor], path: Path) -> None:
    torch.save(state, path, _use_new_zipfile_serialization=False)


def _save_pickle(state: dict[str, torch.Tensor], path: Path) -> None:
    path.write_bytes(pickle.dumps(state, protocol=5))


#: (writer, format, loader)
ODD_FORMATS = {
    "torch-zip": (_save_zip, "torch-zip", "weights_only"),
    "torch-legacy": (_save_legacy, "torch-legacy", "weights_only"),
    "pickle-p5": (_save_pickle, "pickle", "restricted-unpickler"),
}


@pytest.mark.parametrize("fmt", list(ODD_FORMATS))
@pytest.mark.parametrize("case", list(ODD.values()), ids=list(ODD))
def test_odd_tensors_are_analysed(
    case: Odd, fmt: str, tmp_path: Path, small_net: nn.Module, run_cli: Any, unchanged: Any
) -> None:
    write, expected_format, expected_loader = ODD_FORMATS[fmt]
    state = case.make(small_net)
    path = tmp_path / "odd.pth"
    write(state, path)
    check_unchanged = unchanged(path)

    report = analyze(path)
    assert (report.source.format, report.source.container, report.source.loader) == (expected_format, "state-dict", expected_loader)
    case.check(report, state, small_net)
    json.loads(report.to_json())  # serialisable, no NaN leaks into the JSON

    result = run_cli(path)
    assert result.code == case.exit_code, result.err
    assert result.err == ""
    assert "Traceback" not in result.out
    assert str(path.name) in result.out

    result = run_cli(path, "--json", "-")
    assert result.code == case.exit_code, result.err
    assert Report.from_json(result.out).summary.params == report.summary.params
    check_unchanged()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.pth"]


def test_meta_tensors_are_not_counted_as_zeros(tmp_path: Path, run_cli: Any) -> None:
    """A meta tensor has no values: the report must not claim that its parameters are all zero."""
    path = tmp_path / "meta.pth"
    torch.save(_meta(nn.Module()), path)
    report = analyze(path)
    [row] = report.layers
    assert row.nonzero is None
    assert report.summary.params == 68
    result = run_cli(path)
    assert result.code == 0
    assert "100.0% zero" not in result.out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_safetensors_state_dict(dtype: torch.dtype, tmp_path: Path, small_net: nn.Module, run_cli: Any, unchanged: Any) -> None:
    path = tmp_path / "model.safetensors"
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in small_net.state_dict().items()}, str(path))
    check_unchanged = unchanged(path)

    report = analyze(path)
    assert (report.source.format, report.source.loader, report.source.container) == ("safetensors", "safetensors", "state-dict")
    assert report.summary.params == _params(small_net)
    assert report.summary.tensors == len(small_net.state_dict())
    expected_dtype = str(dtype).removeprefix("torch.")
    assert {row.name: row.dtype for row in report.layers} == dict.fromkeys(["conv1", "bn1", "conv2", "bn2", "fc"], expected_dtype)
    assert report.findings == []

    result = run_cli(path)
    assert (result.code, result.err) == (0, "")
    assert "Traceback" not in result.out
    check_unchanged()
