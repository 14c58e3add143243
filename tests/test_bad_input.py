"""Bad input: a clear line, exit 2, nothing lost. Odd but valid input: analysed, never a crash."""

from __future__ import annotations

import cmath
import gzip
import json
import pickle
import random
import struct
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


# -- every dtype and layout: counted against an oracle written another way, or reported ------

#: (zero, NaN/Inf) of a byte pattern, from each format's specification (not from torch).
FP8_SPEC: dict[str, Callable[[int], tuple[bool, bool]]] = {
    "float8_e4m3fn": lambda b: (b & 0x7F == 0, b & 0x7F == 0x7F),
    "float8_e5m2": lambda b: (b & 0x7F == 0, b & 0x7C == 0x7C),
    "float8_e4m3fnuz": lambda b: (b == 0, b == 0x80),
    "float8_e5m2fnuz": lambda b: (b == 0, b == 0x80),
    "float8_e8m0fnu": lambda b: (False, b == 0xFF),  # exponent only: no zero at all
    # Two fp4 (E2M1) values a byte, zero with both magnitudes 0; no NaN or Inf.
    "float4_e2m1fn_x2": lambda b: (b & 0x77 == 0, False),
}


def _every_byte(dtype_name: str) -> torch.Tensor:
    """An (8, 32) tensor holding each of the 256 byte patterns once, shuffled."""
    codes = torch.randperm(256, generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    return codes.reshape(8, 32).view(getattr(torch, dtype_name))


def _spec_counts(tensor: torch.Tensor, dtype_name: str) -> tuple[int, int]:
    zero_nonfinite = [FP8_SPEC[dtype_name](b) for b in tensor.view(torch.uint8).flatten().tolist()]
    return sum(not z for z, _ in zero_nonfinite), sum(n for _, n in zero_nonfinite)


def _python_counts(tensor: torch.Tensor) -> tuple[int, int]:
    """Non-zero and non-finite elements counted on Python numbers."""
    values = tensor.flatten().tolist()
    return sum(v != 0 for v in values), sum(not cmath.isfinite(complex(v)) for v in values)


def _quantized_counts(tensor: torch.Tensor) -> tuple[int, int]:
    """A quantized value is zero exactly where its integer equals its zero point."""
    if tensor.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        shape = [1] * tensor.dim()
        shape[tensor.q_per_channel_axis()] = -1
        zero_points = tensor.q_per_channel_zero_points().reshape(shape)
    else:
        zero_points = torch.tensor(tensor.q_zero_point())
    return int((tensor.int_repr().long() != zero_points).sum()), 0


def _with_specials(dtype: torch.dtype) -> torch.Tensor:
    """Zeros of both signs, NaN, ±Inf and ordinary values."""
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
    w[0] = 0.0
    w[1, :5] = -0.0
    w[2, 3], w[3, 4], w[4, 5] = float("nan"), float("inf"), -float("inf")
    return w.to(dtype)


def _complex(dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    real, imag = torch.randn(8, 32, generator=g), torch.randn(8, 32, generator=g)
    real[:2], imag[:1] = 0.0, 0.0  # row 0 zero; row 1 purely imaginary: not zero
    imag[5, 5] = float("inf")
    return torch.complex(real, imag).to(dtype)


def _unsigned(dtype: torch.dtype) -> torch.Tensor:
    top = {torch.uint16: 2**16 - 1, torch.uint32: 2**32 - 1, torch.uint64: 2**63}[dtype]
    values = [0, 1, top, 2**15, 0, 7, top - 1, 0] * 32
    return torch.tensor(values, dtype=torch.int64 if dtype is not torch.uint64 else torch.uint64).reshape(8, 32).to(dtype)


def _quantize(per_channel: bool, dtype: torch.dtype = torch.qint8) -> torch.Tensor:
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(3))
    w[1] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if per_channel:
            return torch.quantize_per_channel(w, torch.linspace(0.01, 0.08, 8), torch.arange(-4, 4), 0, dtype)
        return torch.quantize_per_tensor(w, 0.02, 3, dtype)


#: name -> (weight, oracle of (non-zero, non-finite), also written as safetensors)
DTYPES: dict[str, tuple[Callable[[], torch.Tensor], Callable[[torch.Tensor], tuple[int, int]], bool]] = {
    **{name: (lambda name=name: _every_byte(name), lambda t, name=name: _spec_counts(t, name), True) for name in FP8_SPEC},
    "float32": (lambda: _with_specials(torch.float32), _python_counts, True),
    "float64": (lambda: _with_specials(torch.float64), _python_counts, True),
    "float16": (lambda: _with_specials(torch.float16), _python_counts, True),
    "bfloat16": (lambda: _with_specials(torch.bfloat16), _python_counts, True),
    "complex64": (lambda: _complex(torch.complex64), _python_counts, True),
    "complex128": (lambda: _complex(torch.complex128), _python_counts, False),
    "complex32": (lambda: _complex(torch.complex32), lambda t: _python_counts(t.to(torch.complex64)), False),
    "bool": (lambda: _every_byte("float8_e4m3fn").view(torch.uint8) % 3 == 0, _python_counts, True),
    "uint16": (lambda: _unsigned(torch.uint16), _python_counts, True),
    "uint32": (lambda: _unsigned(torch.uint32), _python_counts, True),
    "uint64": (lambda: _unsigned(torch.uint64), _python_counts, True),
    "qint8": (lambda: _quantize(False), _quantized_counts, False),
    "quint8": (lambda: _quantize(False, torch.quint8), _quantized_counts, False),
    "qint8-per-channel": (lambda: _quantize(True), _quantized_counts, False),
}


@pytest.mark.parametrize(
    ("case", "container"),
    [(case, container) for case, (_, _, st) in DTYPES.items() for container in ("torch-zip", "safetensors") if st or container == "torch-zip"],
)
def test_every_dtype_is_counted(case: str, container: str, tmp_path: Path) -> None:
    make, oracle, _ = DTYPES[case]
    weight = make()
    nonzero, nonfinite = oracle(weight)
    path = tmp_path / f"model.{'safetensors' if container == 'safetensors' else 'pth'}"
    state = {"fc.weight": weight, "fc.bias": torch.ones(8)}
    if container == "safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)

    report = analyze(path)
    [row] = report.layers
    assert (row.name, row.type, row.dtype) == ("fc", "Linear", str(weight.dtype).removeprefix("torch."))
    assert row.nonzero == nonzero + 8, (nonzero, nonfinite)
    non_finite = [f.evidence["nonfinite_per_tensor"] for f in report.findings if f.kind == "non-finite-weights"]
    assert non_finite == ([{"fc.weight": nonfinite}] if nonfinite else [])
    json.loads(report.to_json())


@pytest.mark.parametrize("case", ["float8_e4m3fn", "float8_e5m2fnuz", "float4_e2m1fn_x2", "bfloat16", "uint32", "qint8-per-channel"])
def test_zeroed_rows_are_found_in_every_dtype(case: str, tmp_path: Path) -> None:
    """Rows 2 and 5 zero (−0 where the format has it), every other value non-zero and finite."""
    weight = torch.full((8, 32), 3.0)
    weight[2], weight[5, ::2], weight[5, 1::2] = 0.0, 0.0, -0.0
    if case == "float4_e2m1fn_x2":
        codes = torch.full((8, 32), 0x35, dtype=torch.uint8)  # 1.0 and 3.0
        codes[2], codes[5] = 0x80, 0x08  # −0 in one value, +0 in the other: both pairs zero
        weight = codes.view(torch.float4_e2m1fn_x2)
    elif case == "uint32":
        weight = weight.abs().to(torch.uint32)
    elif case == "qint8-per-channel":
        weight = torch.quantize_per_channel(weight, torch.full((8,), 0.5), torch.arange(8), 0, torch.qint8)
    else:
        weight = weight.to(getattr(torch, case))
    path = tmp_path / "model.pth"
    torch.save({"fc.weight": weight, "fc.bias": torch.ones(8)}, path)
    report = analyze(path)
    [finding] = [f for f in report.findings if f.kind == "zeroed-channels"]
    assert finding.modules == ["fc"]
    assert report.layers[0].nonzero == 6 * 32 + 8
    assert "zeroed-out" in (report.layers[0].pattern or "")


def _compressed(layout: torch.layout) -> torch.Tensor:
    dense = torch.zeros(8, 16)
    dense[0, 3], dense[2, 7], dense[3, 15], dense[6, 0] = 1.5, -2.0, 0.25, 4.0
    if layout is torch.sparse_coo:
        return dense.to_sparse()
    blocksize = (2, 2) if layout in (torch.sparse_bsr, torch.sparse_bsc) else None
    return dense.to_sparse(layout=layout, blocksize=blocksize)


def _broken(layout: torch.layout) -> torch.Tensor:
    """A sparse tensor with an index of 99 in an (8, 16) tensor (torch.save does not check)."""
    values = torch.tensor([1.0, 2.0])
    if layout is torch.sparse_coo:
        return torch.sparse_coo_tensor(torch.tensor([[0, 99], [0, 1]]), values, (8, 16), check_invariants=False)
    if layout is torch.sparse_csr:
        return torch.sparse_csr_tensor(torch.tensor([0, 1, 2, 2, 2, 2, 2, 2, 2]), torch.tensor([0, 99]), values, (8, 16), check_invariants=False)
    if layout is torch.sparse_csc:
        return torch.sparse_csc_tensor(torch.tensor([0] + [2] * 16), torch.tensor([0, 99]), values, (8, 16), check_invariants=False)
    blocks = torch.ones(2, 2, 2)
    if layout is torch.sparse_bsr:
        return torch.sparse_bsr_tensor(torch.tensor([0, 1, 2, 2, 2]), torch.tensor([0, 99]), blocks, (8, 16), check_invariants=False)
    return torch.sparse_bsc_tensor(torch.tensor([0, 1, 2] + [2] * 6), torch.tensor([0, 99]), blocks, (8, 16), check_invariants=False)


LAYOUTS = [torch.sparse_coo, torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: str(layout).removeprefix("torch."))
def test_every_sparse_layout_is_counted(layout: torch.layout, tmp_path: Path, run_cli: Any) -> None:
    weight = _compressed(layout)
    path = tmp_path / "sparse.pth"
    torch.save({"fc.weight": weight, "fc.bias": torch.zeros(8)}, path)
    report = analyze(path)
    [row] = report.layers
    assert (row.name, row.params) == ("fc", 8 * 16 + 8)
    assert row.nonzero == int(torch.count_nonzero(weight.to_dense())) == 4
    assert report.findings == []
    result = run_cli(path)
    assert (result.code, result.err) == (0, "")


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: str(layout).removeprefix("torch."))
def test_every_broken_sparse_layout_is_reported(layout: torch.layout, tmp_path: Path, run_cli: Any) -> None:
    weight = _broken(layout)
    path = tmp_path / "broken.pth"
    torch.save({"fc.weight": weight, "fc.bias": torch.zeros(8)}, path)
    report = analyze(path)
    [row] = report.layers
    assert row.nonzero is None  # values of a corrupt tensor are not counted
    [finding] = report.findings
    assert (finding.kind, finding.severity, finding.modules) == ("invalid-sparse-tensor", Severity.ERROR, ["fc"])
    assert list(finding.evidence["invalid_tensors"]) == ["fc.weight"]
    result = run_cli(path)
    assert result.code == 1 and result.err == "" and "Traceback" not in result.out


def test_safetensors_header_of_100k_nested_arrays_is_one_line(tmp_path: Path, run_cli: Any, unchanged: Any) -> None:
    raw = b'{"fc.weight": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    check_unchanged = unchanged(path)
    _assert_one_error_line(run_cli(path), path, "safetensors header nests JSON 100001 levels deep")
    with pytest.raises(InputError, match="nests JSON"):
        analyze(path)
    check_unchanged()


def test_brackets_inside_safetensors_strings_are_not_nesting(tmp_path: Path) -> None:
    """The same 100k brackets inside a metadata string: text, not structure — analysed."""
    header = {"fc.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "__metadata__": {"note": "[" * 100_000 + '\\"]'}}
    raw = json.dumps(header).encode()
    path = tmp_path / "text.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + struct.pack("<2f", 1.0, 0.0))
    report = analyze(path)
    assert report.summary.tensors == 1 and report.layers[0].nonzero == 1


def test_safetensors_dtype_torch_cannot_hold_is_reported(tmp_path: Path, run_cli: Any) -> None:
    """fp6 (F6_E2M3): safetensors reads the header, torch has no such type: shape, no values."""
    header = {
        "fc.weight": {"dtype": "F6_E2M3", "shape": [4, 4], "data_offsets": [0, 12]},
        "fc.bias": {"dtype": "F32", "shape": [4], "data_offsets": [12, 28]},
    }
    raw = json.dumps(header).encode()
    path = tmp_path / "fp6.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(12) + struct.pack("<4f", 1, 0, 2, 0))
    report = analyze(path)
    [row] = report.layers
    assert (row.params, row.nonzero) == (20, None)
    assert any("F6_E2M3" in note for note in report.notes)
    assert run_cli(path).code == 0


def test_small_tensors_counted_together_match_one_by_one() -> None:
    """Many small tensors are counted in batches (stats.tensor_stats_many): every count equals
    the tensor's own, across dtypes, empty and strided tensors, NaN, Inf and −0."""
    from analyzer.tensors.stats import tensor_stats, tensor_stats_many

    generator = torch.Generator().manual_seed(0)
    picks = random.Random(0)
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.complex64, torch.int8, torch.bool, torch.float8_e5m2]
    tensors = []
    for i in range(600):
        values = torch.randn(picks.choice([0, 1, 7, 300, 4096, 5000]), generator=generator)
        values[values.abs() < 0.5] = 0.0
        values[values.abs() > 2.5] = -0.0
        if i % 7 == 0 and values.numel():
            values[0] = float("nan") if i % 2 else float("inf")
        tensor = values.to(picks.choice(dtypes))
        tensors.append(tensor[::2] if i % 5 == 0 else tensor)
    for zero_tol in (0.0, 0.1):
        assert tensor_stats_many(tensors, zero_tol) == [tensor_stats(t, zero_tol) for t in tensors]
    nonzero = [int(torch.count_nonzero(t.view(torch.uint8) & 0x7F)) if t.dtype == torch.float8_e5m2 else int((t != 0).sum()) for t in tensors]
    assert [s.nonzero for s in tensor_stats_many(tensors)] == nonzero
