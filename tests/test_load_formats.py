"""Every common checkpoint format, made by the real tools, read back with the right names."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune
import torch_pruning as tp
from safetensors.torch import save_file

from analyzer import analyze, load_checkpoint
from analyzer.load import Format

from .models import SmallNet, magnitude_prune


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _state_names(model: nn.Module) -> set[str]:
    return set(model.state_dict())


def test_state_dict_zip(tmp_path: Path, small_net: SmallNet) -> None:
    path = tmp_path / "sd.pth"
    torch.save(small_net.state_dict(), path)
    ckpt = load_checkpoint(path)
    assert (ckpt.format, ckpt.container, ckpt.loader) == ("torch-zip", "state-dict", "weights_only")
    assert set(ckpt.tensors) == _state_names(small_net)
    assert torch.equal(ckpt.tensors["conv1.weight"], small_net.conv1.weight)


def test_state_dict_is_memory_mapped(tmp_path: Path, small_net: SmallNet) -> None:
    path = tmp_path / "sd.pth"
    torch.save(small_net.state_dict(), path)
    tensor = load_checkpoint(path).tensors["conv2.weight"]
    # A tensor read with mmap=True lives in pages mapped from the file, not in a copy.
    assert _mapped_file_of(tensor.data_ptr()) == str(path)


def _mapped_file_of(address: int) -> str | None:
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end:
            return fields[5] if len(fields) > 5 else None
    return None


def test_full_module_of_torch_nn_classes(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 8, 8))
    path = tmp_path / "full.pth"
    torch.save(model, path)
    ckpt = load_checkpoint(path)
    assert ckpt.container == "full-module"
    assert ckpt.module_types["0"] == "Conv2d" and ckpt.module_types["1"] == "BatchNorm2d"
    assert ckpt.runnable
    # Rebuilt without placeholders, it computes what the original computes.
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(ckpt.module.eval()(x), model.eval()(x))
    report = analyze(path)
    assert [f.kind for f in report.findings] == ["full-model-pickle"]
    code = report.findings[0].fix_code
    assert "torch.nn.modules.conv.Conv2d" in code and "safe_globals" in code


def test_zoo_full_module_is_runnable(tmp_path: Path) -> None:
    from analyzer.zoo import resnet18

    model = resnet18(num_classes=10).eval()
    path = tmp_path / "resnet18_full.pth"
    torch.save(model, path)
    ckpt = load_checkpoint(path)
    assert ckpt.runnable and type(ckpt.module).__name__ == "ResNet"
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(ckpt.module(x), model(x))


@pytest.mark.parametrize(
    "wrap, key",
    [
        (lambda sd, m: {"model": sd, "optimizer": {"state": {}}, "epoch": 7}, "model"),
        (lambda sd, m: {"state_dict": sd, "epoch": 7, "best_acc1": 0.7}, "state_dict"),
        (lambda sd, m: {"net": sd, "epoch": 7}, "net"),
        (lambda sd, m: {"model": m, "ema": m, "epoch": 7, "optimizer": None}, "model"),
    ],
    ids=["model-key", "state_dict-key", "net-key", "yolo-style-module"],
)
def test_training_dict(tmp_path: Path, small_net: SmallNet, wrap, key: str) -> None:
    path = tmp_path / "train.pth"
    torch.save(wrap(small_net.state_dict(), small_net), path)
    ckpt = load_checkpoint(path)
    assert ckpt.container == "training-dict"
    assert ckpt.weights_key == key
    assert set(ckpt.tensors) == _state_names(small_net)
    assert ckpt.metadata["epoch"] == 7


def test_training_dict_key_override_and_other_keys_noted(tmp_path: Path, small_net: SmallNet) -> None:
    ema = SmallNet(width=4).state_dict()
    path = tmp_path / "train.pth"
    torch.save({"model": small_net.state_dict(), "ema": ema, "epoch": 1}, path)
    report = analyze(path)
    assert report.source.weights_key == "model"
    assert any("'ema'" in note and "--key" in note for note in report.notes)
    chosen = load_checkpoint(path, options=_options(key="ema"))
    assert chosen.weights_key == "ema"
    assert chosen.tensors["conv1.weight"].shape[0] == 4


def _options(**kwargs):
    from analyzer.load import LoadOptions

    return LoadOptions(**kwargs)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_prefixes_are_stripped(tmp_path: Path, small_net: SmallNet, prefix: str) -> None:
    path = tmp_path / "prefixed.pth"
    torch.save({prefix + k: v for k, v in small_net.state_dict().items()}, path)
    ckpt = load_checkpoint(path)
    assert ckpt.stripped_prefix == prefix
    assert set(ckpt.tensors) == _state_names(small_net)
    assert any(prefix in note for note in analyze(path).notes)


def test_data_parallel_module_is_unwrapped(tmp_path: Path, small_net: SmallNet) -> None:
    path = tmp_path / "dp.pth"
    torch.save(nn.DataParallel(small_net), path)
    ckpt = load_checkpoint(path)
    assert ckpt.stripped_prefix == "module."
    assert type(ckpt.module).__name__ == "SmallNet" or ckpt.module_types.get("") == "SmallNet"
    assert "conv1.weight" in ckpt.tensors


def test_legacy_format(tmp_path: Path, small_net: SmallNet) -> None:
    path = tmp_path / "legacy.pth"
    torch.save(small_net.state_dict(), path, _use_new_zipfile_serialization=False)
    ckpt = load_checkpoint(path)
    assert ckpt.format == Format.TORCH_LEGACY.value
    assert set(ckpt.tensors) == _state_names(small_net)
    assert torch.equal(ckpt.tensors["fc.weight"], small_net.fc.weight)


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_plain_pickle_every_protocol(tmp_path: Path, small_net: SmallNet, protocol: int) -> None:
    path = tmp_path / "plain.pth"  # the extension lies: sniffing reads the bytes
    with open(path, "wb") as f:
        pickle.dump(small_net.state_dict(), f, protocol=protocol)
    ckpt = load_checkpoint(path)
    assert (ckpt.format, ckpt.loader) == ("pickle", "restricted-unpickler")
    assert set(ckpt.tensors) == _state_names(small_net)
    assert torch.equal(ckpt.tensors["conv2.weight"], small_net.conv2.weight)
    assert not ckpt.globals


def test_torch_save_with_pickle_protocol_4(tmp_path: Path, small_net: SmallNet) -> None:
    # torch's weights_only unpickler reads protocol 2 only; ours reads the rest.
    path = tmp_path / "p4.pth"
    torch.save(small_net.state_dict(), path, pickle_protocol=4)
    ckpt = load_checkpoint(path)
    assert set(ckpt.tensors) == _state_names(small_net)
    assert torch.equal(ckpt.tensors["fc.bias"], small_net.fc.bias)


def test_safetensors_is_lazy(tmp_path: Path, small_net: SmallNet) -> None:
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in small_net.state_dict().items()}, str(path), metadata={"format": "pt"})
    ckpt = load_checkpoint(path)
    assert (ckpt.format, ckpt.loader) == ("safetensors", "safetensors")
    assert ckpt.tensors.meta("conv1.weight") == ((8, 3, 3, 3), torch.float32)
    assert torch.equal(ckpt.tensors["conv1.weight"], small_net.conv1.weight)
    assert ckpt.metadata == {"format": "pt"}
    assert analyze(path).summary.params == _param_count(small_net)


def test_torchscript_read_without_running(tmp_path: Path, small_net: SmallNet) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.script(small_net).save(str(path))
    ckpt = load_checkpoint(path)
    assert (ckpt.format, ckpt.loader) == ("torchscript", "restricted-unpickler")
    assert {"conv1.weight", "bn1.running_mean", "fc.bias"} <= set(ckpt.tensors)
    assert ckpt.module_types["conv1"] == "Conv2d"
    assert not ckpt.runnable
    report = analyze(path)
    assert not [f for f in report.findings if f.kind == "unsafe-pickle"]
    assert any("TorchScript" in note for note in report.notes)
    assert report.summary.params == _param_count(small_net)


def test_torchscript_with_trust_is_runnable(tmp_path: Path, small_net: SmallNet) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.script(small_net).save(str(path))
    ckpt = load_checkpoint(path, options=_options(trust=True))
    assert ckpt.loader == "trusted"
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(ckpt.module(x), small_net(x))


def test_prune_masks_are_read_as_effective_weight(tmp_path: Path, small_net: SmallNet) -> None:
    prune.l1_unstructured(small_net.conv2, "weight", amount=0.5)
    path = tmp_path / "masked.pth"
    torch.save(small_net.state_dict(), path)
    ckpt = load_checkpoint(path)
    assert set(ckpt.masks) == {"conv2.weight"}
    assert torch.equal(ckpt.effective("conv2.weight"), small_net.conv2.weight)
    report = analyze(path)
    masks = [f for f in report.findings if f.kind == "pruning-masks"]
    assert len(masks) == 1 and masks[0].modules == ["conv2"]
    assert masks[0].evidence["masked_fraction"] == pytest.approx(0.5, abs=0.01)
    assert "prune.remove" in masks[0].fix
    row = next(r for r in report.layers if r.name == "conv2")
    assert row.masked and row.shape == [16, 8, 3, 3]
    assert row.params == 16 * 8 * 9 + 16  # weight counted once, not orig + mask


def test_torch_pruning_tp_state_dict(tmp_path: Path, small_net: SmallNet) -> None:
    magnitude_prune(small_net, (1, 3, 8, 8), 0.5, [small_net.fc])
    path = tmp_path / "tp.pth"
    torch.save(tp.state_dict(small_net), path)
    ckpt = load_checkpoint(path)
    assert ckpt.container == "tp-state-dict"
    assert ckpt.tensors["conv1.weight"].shape == (4, 3, 3, 3)
    assert ckpt.tensors["conv2.weight"].shape == (8, 4, 3, 3)
    assert ckpt.module_types["conv1"] == "Conv2d"
    assert analyze(path).summary.params == _param_count(small_net)


def test_torch_pruning_full_model(tmp_path: Path) -> None:
    from analyzer.zoo import resnet18

    model = resnet18(num_classes=10).eval()
    magnitude_prune(model, (1, 3, 32, 32), 0.3, [model.fc])
    path = tmp_path / "pruned_full.pth"
    torch.save(model, path)
    report = analyze(path)
    assert report.summary.params == _param_count(model)
    conv1 = next(r for r in report.layers if r.name == "conv1")
    assert conv1.shape == [model.conv1.out_channels, 3, 7, 7] and conv1.type == "Conv2d"
