"""Fitting checkpoints to `--arch`: load_pruned round trips, state-dict-mismatch causes,
forward failures after rebuilding, failed full-model loads and `--arch` usage errors.

Every checkpoint is made here with the real tools (torch-pruning's MetaPruner,
torch.nn.utils.prune, torch.save) on the zoo's architectures.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import pickle
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune
import torch_pruning as tp

from analyzer import api
from analyzer.model import parse_input_shape
from analyzer.model.fit import PREFIX, WRONG_ARCH
from analyzer.errors import BuildError, UsageError
from analyzer.api import load_pruned
from analyzer.report.model import Finding, Report, Severity
from analyzer.zoo import resnet18, resnet34, resnet50, retinaface_mnet

from .models import layer_width, magnitude_prune

FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "retinaface_mnet": retinaface_mnet,
}
SHAPES = {"resnet18": (1, 3, 32, 32), "resnet34": (1, 3, 32, 32), "retinaface_mnet": (1, 3, 64, 64)}
HEADS = ("ClassHead", "BboxHead", "LandmarkHead")
MISMATCH = "state-dict-mismatch"


# -- helpers ---------------------------------------------------------------------------


def _dense(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return FACTORIES[arch]().eval()


def _ignored(model: nn.Module) -> list[nn.Module]:
    """The classifier of a ResNet; every conv of RetinaFace's three heads."""
    if hasattr(model, "fc"):
        return [model.fc]
    return [m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n.split(".")[0] in HEADS]


def _metaprune(model: nn.Module, shape: tuple[int, ...], ratio: float) -> nn.Module:
    return magnitude_prune(model, shape, ratio, _ignored(model)).eval()


def _run(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        out = model.eval()(x)
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _assert_same_outputs(rebuilt: nn.Module, original: nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    got, want = _run(rebuilt, x), _run(original, x)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5), f"max abs diff {float((a - b).abs().max())}"


def _widths(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every layer's channel geometry: convs (in, out, groups), BatchNorm (features,), Linear (in, out)."""
    widths: dict[str, tuple[int, ...]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            widths[name] = (m.in_channels, m.out_channels, m.groups)
        elif isinstance(m, nn.BatchNorm2d):
            widths[name] = (m.num_features,)
        elif isinstance(m, nn.Linear):
            widths[name] = (m.in_features, m.out_features)
    return widths


_out_width = layer_width


def _expected_kept(pruned: nn.Module, dense: nn.Module) -> dict[str, list[int]]:
    modules = dict(dense.named_modules())
    kept = {}
    for name, m in pruned.named_modules():
        width = _out_width(m)
        if width is not None and width < _out_width(modules[name]):  # type: ignore[operator]
            kept[name] = [width, _out_width(modules[name])]
    return kept


def _kinds(report: Report) -> list[str]:
    return [f.kind for f in report.findings]


def _one(report: Report, kind: str) -> Finding:
    found = [f for f in report.findings if f.kind == kind]
    assert len(found) == 1, f"expected one {kind}, got {_kinds(report)}"
    return found[0]


def _no_failure_notes(report: Report) -> None:
    text = " ".join(report.notes).lower()
    for word in ("fail", "cannot", "not runnable", "placeholder"):
        assert word not in text, report.notes


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("analyze: error: "), err
    assert "Traceback" not in err
    return lines[0]


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, float], tuple[nn.Module, Path]]:
    """(arch, ratio) -> the MetaPruner-pruned model and its state dict on disk (cached)."""
    cache: dict[tuple[str, float], tuple[nn.Module, Path]] = {}
    folder = tmp_path_factory.mktemp("pruned")

    def get(arch: str, ratio: float) -> tuple[nn.Module, Path]:
        if (arch, ratio) not in cache:
            model = _metaprune(_dense(arch), SHAPES[arch], ratio)
            path = folder / f"{arch}_{ratio}.pth"
            torch.save(model.state_dict(), path)
            cache[arch, ratio] = (model, path)
        return cache[arch, ratio]

    return get


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], str]]:
    """Write a module with a unique name under tmp_path, importable for this test only."""
    folder = tmp_path / "usercode"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    written: list[str] = []

    def write(stem: str, source: str) -> str:
        name = f"{stem}_{uuid.uuid4().hex[:8]}"
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


# -- 1. pruned checkpoints round-trip --------------------------------------------------

ROUND_TRIP = [
    ("resnet18", 0.2),
    ("resnet18", 0.37),
    ("resnet18", 0.5),
    ("resnet34", 0.2),
    ("resnet34", 0.5),
    ("retinaface_mnet", 0.2),
    ("retinaface_mnet", 0.37),
    ("retinaface_mnet", 0.5),
]


@pytest.mark.parametrize(("arch", "ratio"), ROUND_TRIP)
def test_load_pruned_rebuilds_metapruner_state_dict(pruned, arch: str, ratio: float) -> None:
    model, path = pruned(arch, ratio)
    dense = _dense(arch)
    assert _widths(model) != _widths(dense), "the pruner must have removed channels"
    rebuilt = load_pruned(path, FACTORIES[arch])
    assert not rebuilt.training
    assert _widths(rebuilt) == _widths(model)
    _assert_same_outputs(rebuilt, model, SHAPES[arch])
    if arch.startswith("resnet"):
        assert rebuilt.conv1.out_channels == model.conv1.out_channels < 64
        assert rebuilt.fc.out_features == 1000  # ignored by the pruner
        assert rebuilt.fc.in_features == model.fc.in_features < 512
    else:
        for head in HEADS:
            for i in range(3):
                conv = rebuilt.get_submodule(f"{head}.{i}.conv1x1")
                assert conv.out_channels == dense.get_submodule(f"{head}.{i}.conv1x1").out_channels
                assert conv.in_channels == model.get_submodule(f"{head}.{i}.conv1x1").in_channels < 64


@pytest.mark.parametrize(("arch", "ratio"), [("resnet18", 0.37), ("retinaface_mnet", 0.37)])
def test_load_pruned_takes_a_factory_spec(pruned, arch: str, ratio: float) -> None:
    model, path = pruned(arch, ratio)
    rebuilt = load_pruned(path, f"analyzer.zoo:{arch}")
    assert _widths(rebuilt) == _widths(model)
    _assert_same_outputs(rebuilt, model, SHAPES[arch])


@pytest.mark.parametrize(
    ("arch", "ratio"),
    [("resnet18", 0.37), ("resnet18", 0.5), ("retinaface_mnet", 0.2), ("retinaface_mnet", 0.37), ("retinaface_mnet", 0.5)],
)
def test_analyze_pruned_against_arch_reports_removal_not_mismatch(pruned, arch: str, ratio: float) -> None:
    model, path = pruned(arch, ratio)
    report = api.analyze(path, arch=f"analyzer.zoo:{arch}", input_shape=SHAPES[arch])
    assert MISMATCH not in _kinds(report)
    assert not [f for f in report.findings if f.severity is Severity.ERROR], _kinds(report)
    removal = _one(report, "channel-removal")
    assert removal.severity is Severity.INFO
    kept = removal.evidence["kept_of_original"]
    assert kept == _expected_kept(model, _dense(arch))
    assert set(removal.modules) == set(kept)
    assert removal.evidence["reference"] == f"--arch analyzer.zoo:{arch}"
    assert removal.evidence["params"] == sum(p.numel() for p in model.parameters())
    _no_failure_notes(report)
    assert not any("channel removal" in line for line in report.not_analysed), report.not_analysed
    if arch.startswith("resnet"):
        assert kept["conv1"] == [model.conv1.out_channels, 64]
        assert "fc" not in kept
    else:
        assert not any(name.split(".")[0] in HEADS for name in kept)


def test_depthwise_convs_are_rebuilt_with_pruned_groups(pruned) -> None:
    model, path = pruned("retinaface_mnet", 0.5)
    dense = _dense("retinaface_mnet")
    rebuilt = load_pruned(path, retinaface_mnet)
    dense_modules, pruned_modules = dict(dense.named_modules()), dict(model.named_modules())
    depthwise = [n for n, m in dense_modules.items() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert "body.stage1.1.0" in depthwise and len(depthwise) == 13
    for name, m in rebuilt.named_modules():
        if name not in depthwise:
            continue
        want = pruned_modules[name].out_channels
        assert want < dense_modules[name].out_channels, name
        assert m.groups == m.in_channels == m.out_channels == want, name
        assert tuple(m.weight.shape) == (want, 1, 3, 3), name
    assert rebuilt.get_submodule("body.stage1.1.0").groups == model.get_submodule("body.stage1.1.0").groups == 4
    _assert_same_outputs(rebuilt, model, SHAPES["retinaface_mnet"])


# -- 2. torch-pruning's own format -----------------------------------------------------


@pytest.mark.parametrize(("arch", "ratio"), [("resnet18", 0.5), ("retinaface_mnet", 0.37)])
def test_tp_state_dict_checkpoint_is_rebuilt(pruned, tmp_path: Path, arch: str, ratio: float) -> None:
    model, _ = pruned(arch, ratio)
    path = tmp_path / "tp_state.pth"
    torch.save(tp.state_dict(model), path)
    rebuilt = load_pruned(path, FACTORIES[arch])
    assert _widths(rebuilt) == _widths(model)
    _assert_same_outputs(rebuilt, model, SHAPES[arch])
    if arch == "resnet18":
        report = api.analyze(path, arch=f"analyzer.zoo:{arch}", input_shape=SHAPES[arch])
        assert report.source.container == "tp-state-dict"
        assert MISMATCH not in _kinds(report)
        assert "forward-failure" not in _kinds(report)
        assert _one(report, "channel-removal").evidence["kept_of_original"]["conv1"] == [model.conv1.out_channels, 64]


# -- 3. training dicts and module. prefixes --------------------------------------------


def _perturbed(model: nn.Module) -> nn.Module:
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.9).add_(0.01)
    return ema.eval()


def test_training_dict_loads_and_reports_weights_key(pruned, tmp_path: Path) -> None:
    model = copy.deepcopy(pruned("resnet18", 0.5)[0]).eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()  # momentum buffers (tensors) in the optimizer's state; lr 0 keeps the weights
    assert optimizer.state_dict()["state"]
    path = tmp_path / "train.pth"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3}, path)

    rebuilt = load_pruned(path, resnet18)
    _assert_same_outputs(rebuilt, model, SHAPES["resnet18"])
    report = api.analyze(path, arch="analyzer.zoo:resnet18", input_shape=SHAPES["resnet18"])
    assert report.source.container == "training-dict"
    assert report.source.weights_key == "model"
    assert report.source.metadata["epoch"] == 3
    assert MISMATCH not in _kinds(report)
    assert _one(report, "channel-removal").evidence["kept_of_original"]["conv1"] == [model.conv1.out_channels, 64]
    # optimizer momentum buffers are not weights of the model
    assert report.summary.params == sum(p.numel() for p in model.parameters())


def test_training_dict_with_ema_key(pruned, tmp_path: Path) -> None:
    model, _ = pruned("resnet18", 0.5)
    ema = _perturbed(model)
    path = tmp_path / "train_ema.pth"
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "epoch": 3}, path)
    _assert_same_outputs(load_pruned(path, resnet18), model, SHAPES["resnet18"])
    _assert_same_outputs(load_pruned(path, resnet18, key="ema"), ema, SHAPES["resnet18"])
    report = api.analyze(path, arch="analyzer.zoo:resnet18", input_shape=SHAPES["resnet18"])
    assert report.source.weights_key == "model"
    assert any("'ema'" in note and "--key" in note for note in report.notes), report.notes


def test_module_prefixed_state_dict_loads_and_notes_the_prefix(pruned, tmp_path: Path) -> None:
    model, _ = pruned("resnet18", 0.5)
    path = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    _assert_same_outputs(load_pruned(path, resnet18), model, SHAPES["resnet18"])
    _assert_same_outputs(load_pruned(path, "analyzer.zoo:resnet18"), model, SHAPES["resnet18"])
    report = api.analyze(path, arch="analyzer.zoo:resnet18", input_shape=SHAPES["resnet18"])
    assert report.source.stripped_prefix == "module."
    assert "prefix 'module.' stripped from every tensor name" in report.notes
    assert MISMATCH not in _kinds(report)
    assert "channel-removal" in _kinds(report)


def test_training_dict_of_a_ddp_retinaface(pruned, tmp_path: Path) -> None:
    model, _ = pruned("retinaface_mnet", 0.37)
    path = tmp_path / "ddp_train.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 7}, path)
    _assert_same_outputs(load_pruned(path, retinaface_mnet), model, SHAPES["retinaface_mnet"])
    report = api.analyze(path, arch="analyzer.zoo:retinaface_mnet", input_shape=SHAPES["retinaface_mnet"])
    assert report.source.weights_key == "state_dict"
    assert report.source.stripped_prefix == "module."
    assert MISMATCH not in _kinds(report)
    assert "channel-removal" in _kinds(report)


# -- 4. masks never removed ------------------------------------------------------------


def _mask_convs(model: nn.Module, amount: float) -> list[str]:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    for name in names:
        prune.l1_unstructured(model.get_submodule(name), "weight", amount=amount)
    return names


def test_masked_state_dict_into_arch_is_folded(tmp_path: Path) -> None:
    model = _dense("resnet18")
    convs = _mask_convs(model, 0.5)
    path = tmp_path / "masked.pth"
    sd = model.state_dict()
    assert "conv1.weight_orig" in sd and "conv1.weight_mask" in sd and "conv1.weight" not in sd
    torch.save(sd, path)

    rebuilt = load_pruned(path, resnet18)
    assert not any(k.endswith(("_orig", "_mask")) for k in rebuilt.state_dict())
    assert torch.equal(rebuilt.conv1.weight, model.conv1.weight)  # weight_orig * weight_mask
    _assert_same_outputs(rebuilt, model, SHAPES["resnet18"])

    report = api.analyze(path, arch="analyzer.zoo:resnet18", input_shape=SHAPES["resnet18"])
    masks = _one(report, "pruning-masks")
    assert masks.evidence["masked_tensors"] == len(convs) == 20
    assert sorted(masks.modules) == sorted(convs)
    assert abs(masks.evidence["masked_fraction"] - 0.5) < 0.01
    assert MISMATCH not in _kinds(report)
    assert "forward-failure" not in _kinds(report)


def test_masks_on_a_metapruned_model_are_folded_and_resized(pruned, tmp_path: Path) -> None:
    model = copy.deepcopy(pruned("resnet18", 0.5)[0])
    _mask_convs(model, 0.3)
    path = tmp_path / "pruned_masked.pth"
    torch.save(model.state_dict(), path)
    rebuilt = load_pruned(path, resnet18)
    assert _widths(rebuilt) == _widths(model)
    _assert_same_outputs(rebuilt, model, SHAPES["resnet18"])
    report = api.analyze(path, arch="analyzer.zoo:resnet18", input_shape=SHAPES["resnet18"])
    assert {"pruning-masks", "channel-removal"} <= set(_kinds(report))
    assert MISMATCH not in _kinds(report)


# -- 5. a prefix the loader cannot strip -----------------------------------------------


def test_backbone_prefix_is_explained_with_working_fix_code(tmp_path: Path) -> None:
    dense = _dense("resnet18")
    sd = dense.state_dict()
    path = tmp_path / "prefixed.pth"
    torch.save({f"backbone.{k}": v for k, v in sd.items()}, path)

    report = api.analyze(path, arch="analyzer.zoo:resnet18", input_shape=SHAPES["resnet18"])
    finding = _one(report, MISMATCH)
    assert finding.severity is Severity.ERROR
    assert finding.evidence["cause"] == PREFIX == "key prefix"
    assert finding.evidence["prefix"] == "backbone."
    # A missing BatchNorm step counter is harmless (the model keeps its own), so it is not listed.
    assert finding.evidence["missing_count"] == len([k for k in sd if not k.endswith("num_batches_tracked")])
    assert finding.evidence["unexpected_count"] == len(sd)
    assert "conv1.weight" in finding.evidence["missing"]
    assert "backbone.conv1.weight" in finding.evidence["unexpected"]
    assert "removeprefix('backbone.')" in finding.fix_code
    assert "channel-removal" not in _kinds(report)
    assert any("channel removal" in line and "key prefix" in line for line in report.not_analysed)

    model = resnet18()
    namespace: dict[str, object] = {"model": model}
    exec(finding.fix_code, namespace)  # noqa: S102 - the report's own fix
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k

    with pytest.raises(BuildError, match="key prefix"):
        load_pruned(path, resnet18)


def test_missing_prefix_is_explained_with_working_fix_code(tmp_path: Path, user_module) -> None:
    """The other way: the model's keys have a prefix ('net.') that the file's lack."""
    name = user_module(
        "fit_wrapped",
        """
        import torch.nn as nn
        from analyzer.zoo import retinaface_mnet

        class Wrapped(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = retinaface_mnet()

            def forward(self, x):
                return self.net(x)

        def wrapped():
            return Wrapped()
        """,
    )
    sd = _dense("retinaface_mnet").state_dict()
    path = tmp_path / "plain.pth"
    torch.save(sd, path)
    report = api.analyze(path, arch=f"{name}:wrapped", input_shape=SHAPES["retinaface_mnet"])
    finding = _one(report, MISMATCH)
    assert finding.evidence["cause"] == PREFIX
    assert finding.evidence["prefix"] == "-net."
    model = importlib.import_module(name).wrapped()
    exec(finding.fix_code, {"model": model})  # noqa: S102
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k.removeprefix("net.")]), k


# -- 6. wrong architecture -------------------------------------------------------------


def _keys(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_resnet18_into_resnet50_is_a_wrong_architecture(tmp_path: Path) -> None:
    r18, r50 = _keys(_dense("resnet18")), _keys(resnet50())
    path = tmp_path / "r18.pth"
    torch.save(_dense("resnet18").state_dict(), path)

    report = api.analyze(path, arch="analyzer.zoo:resnet50", input_shape=SHAPES["resnet18"])
    finding = _one(report, MISMATCH)
    assert finding.severity is Severity.ERROR
    assert finding.evidence["cause"] == WRONG_ARCH == "wrong architecture or variant"
    mismatched = {k for k in r18 if k in r50 and r18[k] != r50[k]}
    assert finding.evidence["size_mismatches"] == len(mismatched) == 24
    # BatchNorm step counters are not listed as missing: the model keeps its own.
    assert finding.evidence["missing_count"] == len({k for k in set(r50) - set(r18) if not k.endswith("num_batches_tracked")}) == 165
    assert finding.evidence["unexpected_count"] == len(set(r18) - set(r50)) == 0
    assert "layer1.0.conv3.weight" in finding.evidence["missing"]
    assert finding.evidence["size_mismatch_by_module"]["layer1.0.conv1"]["weight"] == [[64, 64, 3, 3], [64, 64, 1, 1]]
    assert set(finding.modules) == {k.rpartition(".")[0] for k in mismatched}
    assert "layer1.0.conv1" in finding.modules
    assert "layer1.0.conv1.weight" in finding.message
    assert "channel-removal" not in _kinds(report)
    assert any(
        "channel removal" in line and "not this model's architecture" in line and "wrong architecture" in line
        for line in report.not_analysed
    ), report.not_analysed

    with pytest.raises(BuildError) as info:
        load_pruned(path, resnet50)
    message = str(info.value)
    assert "wrong architecture" in message
    assert "layer1.0.conv1.weight" in message
    assert "\n" not in message


def test_pruned_resnet34_into_resnet18_is_a_wrong_architecture(pruned) -> None:
    """A pruned resnet34 narrows every layer resnet18 has and adds blocks resnet18 lacks
    (layer1.2, layer2.2, ...): not a pruned resnet18."""
    model, path = pruned("resnet34", 0.5)
    r34, r18 = _keys(model), _keys(_dense("resnet18"))
    extra = sorted(set(r34) - set(r18))
    assert "layer1.2.conv1.weight" in extra and not set(r18) - set(r34)

    report = api.analyze(path, arch="analyzer.zoo:resnet18", input_shape=SHAPES["resnet34"])
    assert MISMATCH in _kinds(report), f"resnet34 blocks {extra[:3]}... silently dropped; findings {_kinds(report)}"
    finding = _one(report, MISMATCH)
    assert finding.severity is Severity.ERROR
    assert finding.evidence["cause"] == WRONG_ARCH
    assert finding.evidence["unexpected_count"] == len(extra)
    assert finding.evidence["missing_count"] == 0
    assert "layer1.2.conv1.weight" in finding.evidence["unexpected"]
    assert "channel-removal" not in _kinds(report)
    assert any("channel removal" in line and "not this model's architecture" in line for line in report.not_analysed)

    with pytest.raises(BuildError) as info:
        load_pruned(path, "analyzer.zoo:resnet18")
    assert any(k in str(info.value) for k in extra), str(info.value)


def test_cli_wrong_variant_exits_1_with_the_mismatch(pruned, run_cli) -> None:
    model, path = pruned("resnet18", 0.5)
    result = run_cli(path, "--arch", "analyzer.zoo:resnet34", "--input-shape", "1,3,32,32", "--json", "-")
    assert result.code == 1, result.err
    assert "Traceback" not in result.out + result.err
    (data,) = json.loads(result.out)["reports"]  # the one report of the envelope (analyzer-report/2)
    findings = [f for f in data["findings"] if f["kind"] == MISMATCH]
    assert len(findings) == 1 and findings[0]["severity"] == "error"
    evidence = findings[0]["evidence"]
    assert evidence["cause"] == WRONG_ARCH
    missing = {k for k in set(_keys(resnet34())) - set(_keys(model)) if not k.endswith("num_batches_tracked")}
    assert evidence["missing_count"] == len(missing)
    assert "layer1.2.conv1.weight" in evidence["missing"]
    assert not [f for f in data["findings"] if f["kind"] == "channel-removal"]


# -- 7. the rebuilt model does not run -------------------------------------------------


NARROWED, BLOCK_WIDTH = 50, 64  # layer2.0.conv2 of resnet18 pruned at 0.5 keeps 64 of 128


@pytest.fixture(scope="module")
def narrowed_block(pruned, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet18 pruned at 0.5, then layer2.0.conv2 (and bn2) cut by hand to 50 filters: every
    layer is narrower than resnet18's, so it is rebuilt, but the residual add no longer agrees."""
    model, _ = pruned("resnet18", 0.5)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    assert sd["layer2.0.conv2.weight"].shape[0] == sd["layer2.0.downsample.0.weight"].shape[0] == BLOCK_WIDTH
    sd["layer2.0.conv2.weight"] = sd["layer2.0.conv2.weight"][:NARROWED].clone()
    for name in ("weight", "bias", "running_mean", "running_var"):
        sd[f"layer2.0.bn2.{name}"] = sd[f"layer2.0.bn2.{name}"][:NARROWED].clone()
    path = tmp_path_factory.mktemp("narrowed") / "narrowed.pth"
    torch.save(sd, path)
    return path


def test_forward_failure_after_rebuild_names_the_block(narrowed_block: Path) -> None:
    report = api.analyze(narrowed_block, arch="analyzer.zoo:resnet18", input_shape=SHAPES["resnet18"])
    assert MISMATCH not in _kinds(report)  # fitted as a pruned checkpoint, rebuilt
    errors = [f for f in report.findings if f.kind in ("residual-mismatch", "forward-failure")]
    assert len(errors) == 1, _kinds(report)
    finding = errors[0]
    assert finding.severity is Severity.ERROR
    assert finding.modules[0] == "layer2.0"
    assert finding.evidence["module"] == "layer2.0"
    if finding.kind == "residual-mismatch":
        assert finding.evidence["operand_channels"] == {"layer2.0.bn2": NARROWED, "layer2.0.downsample.1": BLOCK_WIDTH}
    assert str(NARROWED) in finding.message and str(BLOCK_WIDTH) in finding.message


def test_load_pruned_of_the_narrowed_block_still_loads(narrowed_block: Path) -> None:
    """load_pruned only fits weights; the rebuilt model carries the (broken) narrowed layer."""
    rebuilt = load_pruned(narrowed_block, resnet18)
    assert rebuilt.layer2[0].conv2.out_channels == rebuilt.layer2[0].bn2.num_features == NARROWED
    assert rebuilt.layer2[0].downsample[0].out_channels == BLOCK_WIDTH
    with pytest.raises(RuntimeError, match=str(NARROWED)):
        rebuilt(torch.randn(SHAPES["resnet18"]))


def test_cli_forward_failure_prints_no_traceback(narrowed_block: Path, run_cli) -> None:
    result = run_cli(narrowed_block, "--arch", "analyzer.zoo:resnet18", "--input-shape", "1,3,32,32")
    assert result.code == 1, result.err
    assert "Traceback" not in result.out + result.err
    assert result.err.strip() == ""
    assert "layer2.0" in result.out
    assert "residual-mismatch" in result.out or "forward-failure" in result.out


# -- 8. failed full-model loads --------------------------------------------------------

_CUSTOM_NET = """
import torch
import torch.nn as nn

class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))
"""


def test_full_model_of_an_unimportable_class(tmp_path: Path) -> None:
    folder = tmp_path / "gone"
    folder.mkdir()
    name = f"fit_custom_net_{uuid.uuid4().hex[:8]}"
    source = folder / f"{name}.py"
    source.write_text(textwrap.dedent(_CUSTOM_NET))
    sys.path.insert(0, str(folder))
    try:
        importlib.invalidate_caches()
        module = importlib.import_module(name)
        torch.manual_seed(0)
        model = module.TinyNet().eval()
        x = torch.randn(1, 3, 8, 8)
        want = _run(model, x)
        path = tmp_path / "full.pth"
        torch.save(model, path)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(name, None)
        source.unlink()
        importlib.invalidate_caches()
    assert importlib.util.find_spec(name) is None

    report = api.analyze(path)
    finding = _one(report, "unsafe-pickle")
    assert finding.severity is Severity.WARNING
    assert "weights_only" in finding.message and "torch 2.6" in finding.message
    custom = f"{name}.TinyNet"
    nn_classes = sorted(f"{type(m).__module__}.{type(m).__qualname__}" for m in (model.conv, model.bn, model.fc))
    assert nn_classes == [
        "torch.nn.modules.batchnorm.BatchNorm2d",
        "torch.nn.modules.conv.Conv2d",
        "torch.nn.modules.linear.Linear",
    ]
    assert finding.evidence["globals"] == [custom]
    assert finding.evidence["importable_here"] == {custom: False}
    assert finding.evidence["dangerous"] == []
    assert finding.modules == ["<root>"]
    assert f"--allow-module {name}" in finding.fix
    assert "torch.serialization.safe_globals" in finding.fix_code
    for cls in [custom, *nn_classes]:
        assert f"    {cls},\n" in finding.fix_code, cls
    assert "full-model-pickle" not in _kinds(report)

    # Where the class is importable again, the fix_code loads the file for real (weights_only=True).
    source.write_text(textwrap.dedent(_CUSTOM_NET))
    sys.path.insert(0, str(folder))
    try:
        importlib.invalidate_caches()
        namespace: dict[str, object] = {}
        exec(finding.fix_code, namespace)  # noqa: S102
        loaded = namespace["model"]
        assert type(loaded).__qualname__ == "TinyNet"
        for a, b in zip(_run(loaded, x), want):
            assert torch.allclose(a, b, atol=1e-6)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(name, None)


def test_full_model_of_torch_nn_classes_gets_working_safe_globals(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
    ).eval()
    path = tmp_path / "sequential.pth"
    torch.save(model, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # what the user hits without the allowlist

    report = api.analyze(path)
    finding = _one(report, "full-model-pickle")
    assert finding.severity is Severity.INFO
    assert "unsafe-pickle" not in _kinds(report)
    expected = {f"{type(m).__module__}.{type(m).__qualname__}" for m in model.modules()}
    assert set(finding.evidence["globals"]) == expected
    assert "torch.serialization.safe_globals" in finding.fix_code
    assert "weights_only=True" in finding.fix_code
    for cls in expected:
        assert f"    {cls},\n" in finding.fix_code, cls

    namespace: dict[str, object] = {}
    exec("import torch\n" + finding.fix_code, namespace)  # noqa: S102
    loaded = namespace["model"]
    assert isinstance(loaded, nn.Sequential)
    _assert_same_outputs(loaded, model, (1, 3, 8, 8))


# -- 9. --arch and --input-shape errors ------------------------------------------------


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("small") / "retinaface_mnet.pth"
    torch.save(_dense("retinaface_mnet").state_dict(), path)
    return path


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("nosuchpkg.mod:fn", "cannot import nosuchpkg.mod"),
        ("analyzer.zoo:nope", "has no attribute nope"),
        ("resnet18", "expected pkg.module:factory"),
        ("analyzer.zoo:__doc__", "not callable"),
    ],
)
def test_cli_bad_arch_spec_exits_2_in_one_line(small_checkpoint: Path, run_cli, spec: str, expected: str) -> None:
    result = run_cli(small_checkpoint, "--arch", spec)
    assert result.code == 2
    line = _one_line_error(result.err)
    assert f"--arch {spec}" in line
    assert expected in line
    assert result.out.strip() == ""


def test_cli_factory_that_raises_exits_2_with_the_exception_type(small_checkpoint: Path, run_cli, user_module) -> None:
    name = user_module(
        "fit_bad_factories",
        """
        def raises():
            raise KeyError("depth 19 is not a resnet")

        def not_a_module():
            return 42
        """,
    )
    result = run_cli(small_checkpoint, "--arch", f"{name}:raises")
    assert result.code == 2
    line = _one_line_error(result.err)
    assert "KeyError" in line and "depth 19 is not a resnet" in line and f"{name}:raises" in line

    result = run_cli(small_checkpoint, "--arch", f"{name}:not_a_module")
    assert result.code == 2
    line = _one_line_error(result.err)
    assert "not an nn.Module" in line and "int" in line

    with pytest.raises(BuildError, match="KeyError"):
        load_pruned(small_checkpoint, f"{name}:raises")
    with pytest.raises(UsageError, match="cannot import"):
        load_pruned(small_checkpoint, "nosuchpkg.mod:fn")


def test_parse_input_shape_accepts_commas_and_x() -> None:
    assert parse_input_shape("1,3,32,32") == (1, 3, 32, 32)
    assert parse_input_shape("1x3x64x64") == (1, 3, 64, 64)


@pytest.mark.parametrize("bad", ["1,x,3", "1,a,3", "1,0,3", "", "1,-3,32"])
def test_parse_input_shape_rejects_malformed(bad: str) -> None:
    with pytest.raises(UsageError, match="--input-shape"):
        parse_input_shape(bad)


@pytest.mark.parametrize("shape", ["1,x,3", "1,a,3", "0,3,32,32"])
def test_cli_bad_input_shape_exits_2_in_one_line(small_checkpoint: Path, run_cli, shape: str) -> None:
    result = run_cli(small_checkpoint, "--arch", "analyzer.zoo:retinaface_mnet", "--input-shape", shape)
    assert result.code == 2, f"--input-shape {shape} accepted (exit {result.code})"
    line = _one_line_error(result.err)
    assert f"--input-shape {shape}" in line


# -- tied weights in a plain module ---------------------------------------------------------


class TiedLM(nn.Module):
    """Two ties a plain module writes itself: the output layer shares the embedding's
    weight (GPT-2), and two mixing layers share one weight (ALBERT's cross-layer sharing)."""

    def __init__(self, vocab: int = 50, hidden: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.mix = nn.Linear(hidden, hidden)
        self.mix_again = nn.Linear(hidden, hidden)
        self.mix_again.weight = self.mix.weight
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(torch.relu(self.mix_again(torch.relu(self.mix(self.embed(ids))))))


def _pruned_tied_lm(vocab: int, hidden: int) -> TiedLM:
    """The dense model's first `vocab` tokens and first `hidden` features, ties kept."""
    torch.manual_seed(0)
    dense = TiedLM()
    pruned = TiedLM(vocab, hidden)
    with torch.no_grad():
        pruned.embed.weight.copy_(dense.embed.weight[:vocab, :hidden])
        pruned.mix.weight.copy_(dense.mix.weight[:hidden, :hidden])
        pruned.mix.bias.copy_(dense.mix.bias[:hidden])
        pruned.mix_again.bias.copy_(dense.mix_again.bias[:hidden])
    return pruned.eval()


@pytest.mark.parametrize("writer", ["torch.save", "safetensors.save_model"])
def test_load_pruned_shares_tied_weights_again(tmp_path: Path, writer: str) -> None:
    from safetensors.torch import save_model

    pruned = _pruned_tied_lm(vocab=40, hidden=12)
    if writer == "torch.save":
        path = tmp_path / "tied.pth"
        torch.save(pruned.state_dict(), path)  # both names of each tie, one storage
    else:
        path = tmp_path / "tied.safetensors"
        save_model(pruned, str(path))  # one name of each tie kept
    rebuilt = load_pruned(path, TiedLM)
    assert rebuilt.lm_head.weight is rebuilt.embed.weight
    assert rebuilt.mix_again.weight is rebuilt.mix.weight
    assert tuple(rebuilt.embed.weight.shape) == (40, 12) and rebuilt.lm_head.out_features == 40
    assert rebuilt.mix.in_features == rebuilt.mix_again.out_features == 12
    ids = torch.tensor([[0, 7, 39, 3]])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(ids), pruned(ids), rtol=0, atol=0)
