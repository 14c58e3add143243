"""The plain-archive reader against torch.load(weights_only=True, mmap=True) itself: the same
objects for what torch.save writes, and None (torch.load reads the file) for anything else —
above all for every file torch's reader refuses."""

from __future__ import annotations

import io
import pickle
import struct
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

from analyzer.errors import InputError
from analyzer.load import load_checkpoint, readers
from analyzer.load.pickle_scan import PickleShape, scan_pickle
from analyzer.load.plain import _STORAGE_TYPES, read_plain


def _data_pkl_name(archive: zipfile.ZipFile) -> str:
    [name] = [n for n in archive.namelist() if n.endswith("data.pkl")]
    return name


def _plain(path: Path) -> Any | None:
    with zipfile.ZipFile(path) as archive:
        data = archive.read(_data_pkl_name(archive))
    shape = PickleShape()
    uses = scan_pickle(io.BytesIO(data), shape=shape)
    return read_plain(path, list(uses), shape)


def _torch(path: Path) -> Any:
    return torch.load(path, weights_only=True, mmap=True, map_location="cpu")


def _same(ours: Any, theirs: Any, pointers: dict[int, int]) -> None:
    """Equal structure, types, values and tensor layout; `pointers` maps theirs' data
    pointers to ours, so that storages shared in one are shared in the other."""
    assert type(ours) is type(theirs)
    if isinstance(theirs, torch.Tensor):
        assert (ours.dtype, ours.shape, ours.stride(), ours.storage_offset()) == (theirs.dtype, theirs.shape, theirs.stride(), theirs.storage_offset())
        assert ours.requires_grad == theirs.requires_grad
        assert torch.equal(ours.detach().reshape(-1).view(torch.uint8), theirs.detach().reshape(-1).view(torch.uint8))
        assert ours.untyped_storage().nbytes() == theirs.untyped_storage().nbytes()
        assert pointers.setdefault(theirs.untyped_storage().data_ptr(), ours.untyped_storage().data_ptr()) == ours.untyped_storage().data_ptr()
        assert ours._backward_hooks == theirs._backward_hooks
    elif isinstance(theirs, dict):
        assert list(ours) == list(theirs)
        for key in theirs:
            _same(ours[key], theirs[key], pointers)
        if isinstance(theirs, OrderedDict):  # a state dict's _metadata
            _same(dict(vars(ours)), dict(vars(theirs)), pointers)
    elif isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            _same(a, b, pointers)
    else:
        assert ours == theirs


def _training_checkpoint() -> dict[str, Any]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.99))
    net(torch.randn(2, 3, 6, 6)).sum().backward()
    optimizer.step()
    return {"epoch": 7, "model": net.state_dict(), "optimizer": optimizer.state_dict(), "best": 0.25, "note": "é", "none": None}


def _views() -> dict[str, Any]:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {"base": base, "t": base.t(), "row": base[2], "slice": base[:, 1:4], "tied": base, "empty": torch.empty(0, 3), "scalar": torch.tensor(3.5)}


def _dtypes() -> dict[str, torch.Tensor]:
    values = torch.tensor([0.0, -1.5, 2.0, 0.0])
    found = {str(d): values.to(d) for d in (torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64)}
    found["uint16"] = torch.tensor([0, 1, 65535], dtype=torch.uint16)
    found["fp8"] = values.to(torch.float8_e4m3fn)
    return found


def _parameters() -> dict[str, Any]:
    linear = nn.Linear(3, 2)
    return {"weight": linear.weight, "frozen": nn.Parameter(torch.ones(2), requires_grad=False), "grad": torch.zeros(2).requires_grad_()}


@pytest.mark.parametrize("make", [_training_checkpoint, _views, _dtypes, _parameters, lambda: nn.Linear(4, 3).state_dict(), lambda: [torch.ones(2), (torch.zeros(1), {"k": [1, 2.5]})]])
def test_plain_reader_gives_what_torch_load_gives(make: Any, tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(make(), path)
    ours = _plain(path)
    assert ours is not None, "a torch.save'd object of plain data was not taken by the plain reader"
    _same(ours, _torch(path), {})


def test_the_analysis_reads_a_state_dict_without_torch_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sd.pt"
    state = _training_checkpoint()["model"]
    torch.save(state, path)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("torch.load called on a plain state dict")

    monkeypatch.setattr(readers, "_torch_load", refuse)
    checkpoint = load_checkpoint(path)  # read in the bounded child, which inherits the patch
    assert checkpoint.loader == "weights_only" and checkpoint.refused is None
    assert sorted(checkpoint.tensors) == sorted(state)
    assert torch.equal(checkpoint.tensors["0.weight"], state["0.weight"])


def test_storage_type_names_have_torchs_dtypes() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage's deprecation, on reading its dtype
        assert {name: getattr(torch, f"{name}Storage").dtype for name in _STORAGE_TYPES} == _STORAGE_TYPES


# -- what the plain reader leaves to torch.load ---------------------------------------------


def _rezip(src: Path, dst: Path, replace: dict[str, bytes]) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            suffix = next((s for s in replace if info.filename.endswith(s)), None)
            zout.writestr(zipfile.ZipInfo(info.filename, date_time=info.date_time), replace[suffix] if suffix else zin.read(info))


def _binunicode(text: str) -> bytes:
    raw = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def _with_item(tmp_path: Path, value_ops: bytes) -> Path:
    """A torch.save'd dict with one more item, `value_ops` the opcodes of its value."""
    src, dst = tmp_path / "src.pt", tmp_path / "crafted.pt"
    torch.save({"w": torch.ones(2, 2)}, src)
    with zipfile.ZipFile(src) as archive:
        data = archive.read(_data_pkl_name(archive))
    assert data.endswith(pickle.STOP)
    _rezip(src, dst, {"data.pkl": data[:-1] + _binunicode("x") + value_ops + pickle.SETITEM + pickle.STOP})
    return dst


_ORDERED_DICT = b"ccollections\nOrderedDict\n" + pickle.EMPTY_TUPLE + pickle.REDUCE
_REFUSED_BY_TORCH = {
    "setitem-into-a-list": pickle.EMPTY_LIST + pickle.NONE + pickle.APPEND + pickle.BININT1 + b"\x00" + pickle.BININT1 + b"\x05" + pickle.SETITEM,
    "build-an-ordered-dict-from-a-pair": _ORDERED_DICT + pickle.EMPTY_DICT + pickle.EMPTY_DICT + pickle.TUPLE2 + pickle.BUILD,
    "build-a-list": pickle.EMPTY_LIST + pickle.EMPTY_DICT + pickle.BUILD,
    "a-set-with-items": pickle.EMPTY_SET + pickle.MARK + pickle.BININT1 + b"\x01" + pickle.ADDITEMS,
    "append-to-a-dict": pickle.EMPTY_DICT + pickle.NONE + pickle.APPEND,
}


@pytest.mark.parametrize("case", sorted(_REFUSED_BY_TORCH))
def test_what_torch_refuses_is_never_read_by_the_plain_reader(case: str, tmp_path: Path) -> None:
    path = _with_item(tmp_path, _REFUSED_BY_TORCH[case])
    with pytest.raises((pickle.UnpicklingError, ValueError)):
        _torch(path)
    assert _plain(path) is None
    # torch's refusal is what the user meets: torch's error in one line, the restricted
    # unpickler's refusal of the same fill, or its read with torch's refusal in the report.
    try:
        checkpoint = load_checkpoint(path)
    except InputError as e:
        assert "torch.load failed" in str(e) or "could not be read safely" in str(e)
    else:
        assert checkpoint.refused is not None and checkpoint.loader != "weights_only"


_TORCH_READS_THESE = {
    "protocol-4": lambda path: torch.save({"w": torch.ones(3)}, path, pickle_protocol=4),
    "a-whole-module": lambda path: torch.save(nn.Linear(2, 2), path),
    "a-conjugate-view": lambda path: torch.save({"c": torch.tensor([1 + 2j]).conj()}, path),
    "a-bare-storage": lambda path: torch.save({"s": torch.ones(2).untyped_storage()}, path),
}


@pytest.mark.parametrize("case", sorted(_TORCH_READS_THESE))
def test_what_is_not_plain_is_left_to_torch_load(case: str, tmp_path: Path) -> None:
    path = tmp_path / f"{case}.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _TORCH_READS_THESE[case](path)
    assert _plain(path) is None


def test_a_big_endian_archive_is_left_to_torch_load_which_swaps_it(tmp_path: Path) -> None:
    src, path = tmp_path / "little.pt", tmp_path / "big.pt"
    torch.save({"w": torch.tensor([1.0, 2.0])}, src)
    with zipfile.ZipFile(src) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data/0")))
    swapped = b"".join(data[i : i + 4][::-1] for i in range(0, len(data), 4))
    _rezip(src, path, {"/byteorder": b"big", "data/0": swapped})
    assert _plain(path) is None
    assert torch.equal(_torch(path)["w"], torch.tensor([1.0, 2.0]))
    assert torch.equal(load_checkpoint(path).tensors["w"], torch.tensor([1.0, 2.0]))


def test_a_storage_larger_than_its_record_is_left_to_torch_load(tmp_path: Path) -> None:
    src, path = tmp_path / "src.pt", tmp_path / "short.pt"
    torch.save({"w": torch.ones(4)}, src)
    with zipfile.ZipFile(src) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data/0")))
    _rezip(src, path, {"data/0": data[:8]})  # 2 of the 4 floats the pickle claims
    assert _plain(path) is None
