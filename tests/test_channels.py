"""Channel and sparsity passes end to end: real pruning tools, real checkpoints, analyze()."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from analyzer import api
from analyzer.report.model import Finding, Report, Severity
from analyzer.zoo import resnet18

from .models import layer_width, magnitude_prune

ARCH = "analyzer.zoo:resnet18"
SHAPE = (1, 3, 32, 32)


def _resnet18(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return resnet18().eval()


def _findings(report: Report, kind: str) -> list[Finding]:
    return [f for f in report.findings if f.kind == kind]


def _one(report: Report, kind: str) -> Finding:
    found = _findings(report, kind)
    assert len(found) == 1, f"expected one {kind} finding, got {[f.kind for f in report.findings]}"
    return found[0]


def _convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _zero_rows(weight: torch.Tensor) -> set[int]:
    return set(torch.nonzero((weight.detach().reshape(weight.shape[0], -1) == 0).all(1)).flatten().tolist())


_width = layer_width


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- fixtures: checkpoints built with the real tools -----------------------------------


@pytest.fixture(scope="module")
def dense_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dense") / "resnet18.pth"
    torch.save(_resnet18().state_dict(), path)
    return path


def _metapruned(round_to: int | None) -> nn.Module:
    model = _resnet18()
    return magnitude_prune(model, SHAPE, 0.3, [model.fc], round_to=round_to).eval()


@pytest.fixture(scope="module")
def tp_pruned(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    model = _metapruned(None)
    path = tmp_path_factory.mktemp("tp") / "pruned.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def tp_pruned_round8(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    model = _metapruned(8)
    path = tmp_path_factory.mktemp("tp8") / "pruned.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def l1_unstructured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """Every conv of resnet18 pruned with l1_unstructured(0.5): saved with masks, then folded."""
    model = _resnet18()
    convs = _convs(model)
    for module in convs.values():
        prune.l1_unstructured(module, "weight", amount=0.5)
    folder = tmp_path_factory.mktemp("l1")
    masked = folder / "masked.pth"
    torch.save(model.state_dict(), masked)
    for module in convs.values():
        prune.remove(module, "weight")
    folded = folder / "folded.pth"
    torch.save(model.state_dict(), folded)
    return masked, folded, list(convs)


@pytest.fixture(scope="module")
def ln_structured(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, dict[str, set[int]]]:
    """Every conv but conv1 with 30% of its filters zeroed (L2), masks folded in."""
    model = _resnet18()
    for name, module in _convs(model).items():
        if name == "conv1":
            continue
        prune.ln_structured(module, "weight", amount=0.3, n=2, dim=0)
        prune.remove(module, "weight")
    path = tmp_path_factory.mktemp("ln") / "structured.pth"
    torch.save(model.state_dict(), path)
    zeroed = {name: _zero_rows(m.weight) for name, m in _convs(model).items() if name != "conv1"}
    return model, path, zeroed


BN_DEAD = {"layer1.0": [0, 1, 2], "layer2.1": [10, 11]}
BN_CONSTANT = {"layer1.0": [3, 4], "layer2.1": [20]}


@pytest.fixture(scope="module")
def bn_slimmed(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    model = _resnet18()
    with torch.no_grad():
        for block, dead in BN_DEAD.items():
            bn = model.get_submodule(f"{block}.bn1")
            bn.weight[dead] = 0
            bn.bias[dead] = 0
            constant = BN_CONSTANT[block]
            bn.weight[constant] = 0
            bn.bias[constant] = 0.5
    path = tmp_path_factory.mktemp("bn") / "slimmed.pth"
    torch.save(model.state_dict(), path)
    return model, path


# -- torch-pruning MetaPruner: channels really removed ---------------------------------


def _expected_kept(pruned: nn.Module) -> dict[str, list[int]]:
    dense = dict(_resnet18().named_modules())
    kept = {}
    for name, module in pruned.named_modules():
        width = _width(module)
        if width is not None and width < _width(dense[name]):
            kept[name] = [width, _width(dense[name])]
    return kept


def _expected_unaligned(pruned: nn.Module) -> dict[str, int]:
    dense = dict(_resnet18().named_modules())
    return {
        name: module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        for name, module in pruned.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
        and _width(module) % 8
        and _width(module) >= 8
        and _width(module) != _width(dense[name])
    }


def test_metapruner_removal_against_arch(tp_pruned: tuple[nn.Module, Path]) -> None:
    model, path = tp_pruned
    assert model.conv1.out_channels % 8, "ratio 0.3 should leave odd widths"
    report = api.analyze(path, arch=ARCH, input_shape=SHAPE)
    removal = _one(report, "channel-removal")
    assert removal.severity is Severity.INFO
    kept = removal.evidence["kept_of_original"]
    assert kept["conv1"] == [model.conv1.out_channels, 64]
    assert kept["layer4.1.conv1"] == [model.layer4[1].conv1.out_channels, 512]
    assert kept == _expected_kept(model)
    kept_widths = [k for k, _ in kept.values()]
    dense_widths = [o for _, o in kept.values()]
    assert removal.evidence["kept_fraction"] == round(sum(kept_widths) / sum(dense_widths), 4)
    assert "fc" not in kept  # ignored by the pruner
    assert set(removal.modules) == set(kept)
    assert removal.evidence["params"] == _params(model)
    assert removal.evidence["reference_params"] == _params(_resnet18())
    assert removal.evidence["layers_missing"] == []
    assert removal.evidence["reference"] == f"--arch {ARCH}"
    rows = {row.name: row for row in report.layers}
    assert rows["conv1"].shape[0] == model.conv1.out_channels
    assert rows["conv1"].reference_out == 64
    assert "channel removal" not in " ".join(report.not_analysed)


def _token_classifier(hidden: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(100, 32), nn.LayerNorm(32), nn.Linear(32, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def test_removal_behind_layers_it_does_not_compare(tmp_path: Path) -> None:
    """An embedding and a LayerNorm come first in the state dict; the narrowed Linear after
    them is still compared (hidden features 64 → 40, cut by hand)."""
    dense, pruned = tmp_path / "dense.pth", tmp_path / "pruned.pth"
    torch.save(_token_classifier(64).state_dict(), dense)
    torch.save(_token_classifier(40).state_dict(), pruned)
    removal = _one(api.analyze(pruned, baseline=dense), "channel-removal")
    assert removal.evidence["kept_of_original"] == {"2": [40, 64]}
    assert removal.evidence["kept_fraction"] == 0.625


def test_metapruner_unaligned_widths(tp_pruned: tuple[nn.Module, Path]) -> None:
    model, path = tp_pruned
    report = api.analyze(path, arch=ARCH, input_shape=SHAPE)
    unaligned = _one(report, "unaligned-channels")
    expected = _expected_unaligned(model)
    assert expected, "the pruned model should have widths off multiples of 8"
    assert unaligned.severity is Severity.WARNING
    assert set(unaligned.modules) == set(expected)
    assert unaligned.evidence["widths"] == expected
    assert unaligned.evidence["rounded_up"] == {k: -(-v // 8) * 8 for k, v in expected.items()}
    assert "round_to=8" in (unaligned.fix_code or "")
    # nothing else is wrong with a cleanly pruned model
    assert {f.kind for f in report.findings} == {"channel-removal", "unaligned-channels"}


def test_width_read_only_by_a_depthwise_conv_is_hidden(tmp_path: Path) -> None:
    """A state dict alone (no module to ask for groups): the depthwise conv's weight is
    (12, 1, 3, 3), and it reads the 12 channels the pointwise conv before it makes."""
    torch.manual_seed(0)
    path = tmp_path / "dw.pth"
    torch.save(nn.Sequential(nn.Conv2d(3, 12, 1), nn.Conv2d(12, 12, 3, groups=12)).state_dict(), path)
    unaligned = _one(api.analyze(path), "unaligned-channels")
    assert unaligned.evidence["widths"] == {"0": 12}  # the depthwise's own output is read by no layer


def test_metapruner_round_to_8_is_aligned(tp_pruned_round8: tuple[nn.Module, Path]) -> None:
    model, path = tp_pruned_round8
    assert all(m.out_channels % 8 == 0 for m in _convs(model).values())
    report = api.analyze(path, arch=ARCH, input_shape=SHAPE)
    assert _findings(report, "unaligned-channels") == []
    removal = _one(report, "channel-removal")
    assert removal.evidence["kept_of_original"] == _expected_kept(model)
    assert all(kept % 8 == 0 for kept, _ in removal.evidence["kept_of_original"].values())


def test_metapruner_removal_against_baseline(tp_pruned: tuple[nn.Module, Path], dense_path: Path) -> None:
    model, path = tp_pruned
    report = api.analyze(path, baseline=dense_path)
    removal = _one(report, "channel-removal")
    assert removal.evidence["kept_of_original"] == _expected_kept(model)
    assert removal.evidence["kept_of_original"]["conv1"] == [model.conv1.out_channels, 64]
    assert removal.evidence["reference"] == f"--baseline {dense_path}"
    assert removal.evidence["reference_params"] == _params(_resnet18())
    assert removal.evidence["params"] == _params(model)
    unaligned = _one(report, "unaligned-channels")
    assert set(unaligned.modules) == set(_expected_unaligned(model))


def test_metapruner_without_reference_says_removal_not_analysed(tp_pruned: tuple[nn.Module, Path]) -> None:
    model, path = tp_pruned
    report = api.analyze(path)
    assert _findings(report, "channel-removal") == []
    assert any(line.startswith("channel removal") for line in report.not_analysed)
    assert any("--baseline" in line and "--arch" in line for line in report.not_analysed)
    # widths read by another layer are still checked without a reference
    unaligned = _one(report, "unaligned-channels")
    assert set(unaligned.modules) == set(_expected_unaligned(model))


# -- torch.nn.utils.prune l1_unstructured ---------------------------------------------


def test_unstructured_with_masks(l1_unstructured: tuple[Path, Path, list[str]]) -> None:
    masked, _, convs = l1_unstructured
    report = api.analyze(masked)
    masks = _one(report, "pruning-masks")
    assert masks.severity is Severity.WARNING
    assert masks.modules == sorted(convs)
    assert masks.evidence["masked_tensors"] == len(convs)
    assert masks.evidence["masked_fraction_per_tensor"] == {f"{n}.weight": 0.5 for n in convs}
    unstructured = _one(report, "unstructured-sparsity")
    assert set(unstructured.modules) == set(convs)
    assert {f.kind for f in report.findings} == {"pruning-masks", "unstructured-sparsity"}
    rows = {row.name: row for row in report.layers}
    for name in convs:
        assert rows[name].masked
        assert rows[name].pattern == "unstructured"
    assert not rows["fc"].masked


def test_masks_of_different_sparsity_are_summed_over_all_masked_weights(tmp_path: Path) -> None:
    model = _resnet18()
    prune.l1_unstructured(model.conv1, "weight", amount=0.5)
    prune.random_unstructured(model.fc, "weight", amount=0.2)
    path = tmp_path / "masked.pth"
    torch.save(model.state_dict(), path)
    masks = {"conv1.weight": model.conv1.weight_mask, "fc.weight": model.fc.weight_mask}
    zeros = {name: int((mask == 0).sum()) for name, mask in masks.items()}
    finding = _one(api.analyze(path), "pruning-masks")
    assert finding.modules == ["conv1", "fc"]
    assert finding.evidence["masked_fraction"] == round(sum(zeros.values()) / sum(m.numel() for m in masks.values()), 4)
    assert finding.evidence["masked_fraction_per_tensor"] == {
        name: round(zeros[name] / mask.numel(), 4) for name, mask in masks.items()
    }
    assert finding.evidence["extra_bytes"] == sum(m.numel() * m.element_size() for m in masks.values())


def test_unstructured_after_prune_remove(l1_unstructured: tuple[Path, Path, list[str]]) -> None:
    _, folded, convs = l1_unstructured
    report = api.analyze(folded)
    assert _findings(report, "pruning-masks") == []
    unstructured = _one(report, "unstructured-sparsity")
    assert unstructured.severity is Severity.WARNING
    assert set(unstructured.modules) == set(convs)
    assert len(unstructured.modules) == len(convs) == 20
    per_layer = unstructured.evidence["sparsity_per_layer"]
    assert set(per_layer) == set(convs)
    for name, fraction in per_layer.items():
        assert fraction == pytest.approx(0.5, abs=0.01), name
    assert unstructured.evidence["sparsity_in_these_layers"] == pytest.approx(0.5, abs=0.01)
    assert unstructured.evidence["expected_speedup_dense_kernels"] == 1.0
    assert {f.kind for f in report.findings} == {"unstructured-sparsity"}
    rows = {row.name: row for row in report.layers}
    for name in convs:
        assert rows[name].pattern == "unstructured"
        assert not rows[name].masked
        assert rows[name].zero_fraction == pytest.approx(0.5, abs=1e-3)


# -- torch.nn.utils.prune ln_structured: zeroed channels ------------------------------


def test_zeroed_channels_static(ln_structured: tuple[nn.Module, Path, dict[str, set[int]]]) -> None:
    model, path, zeroed = ln_structured
    report = api.analyze(path)
    finding = _one(report, "zeroed-channels")
    assert finding.severity is Severity.WARNING
    assert finding.evidence["coupling_checked"] is False
    assert set(finding.modules) == set(zeroed)
    convs = _convs(model)
    per_layer = finding.evidence["per_layer"]
    assert set(per_layer) == set(zeroed)
    for name, rows in zeroed.items():
        out = convs[name].out_channels
        assert len(rows) == round(0.3 * out)
        assert per_layer[name] == {"zeroed": len(rows), "of": out, "zero_filters": len(rows), "silenced_by_batchnorm": 0}
    expected_params = sum(len(rows) * math.prod(convs[n].weight.shape[1:]) for n, rows in zeroed.items())
    assert finding.evidence["params_removable_at_least"] == expected_params
    assert _findings(report, "unstructured-sparsity") == []
    layer_rows = {row.name: row for row in report.layers}
    for name in zeroed:
        assert layer_rows[name].pattern == "zeroed-out"


def test_zeroed_channels_coupled(ln_structured: tuple[nn.Module, Path, dict[str, set[int]]]) -> None:
    model, path, zeroed = ln_structured
    report = api.analyze(path, arch=ARCH, input_shape=SHAPE)
    finding = _one(report, "zeroed-channels")
    evidence = finding.evidence
    assert evidence["coupling_checked"] is True
    assert evidence["input_shape"] == list(SHAPE)
    assert evidence["per_layer"] == {name: len(rows) for name, rows in zeroed.items()}
    per_group = evidence["per_group"]
    # a group per block-internal conv1 and one per residual stage
    assert len(per_group) == 12
    # the finding names the layers that hold the zeros, not the groups' first layers
    assert set(finding.modules) == set(zeroed)
    by_producers = {frozenset(g["producers"]): (root, g) for root, g in per_group.items()}
    for stage in (1, 2, 3, 4):
        for block in (0, 1):
            name = f"layer{stage}.{block}.conv1"
            root, group = by_producers[frozenset([name])]
            assert root == name
            assert group["removable"] == group["dead"] == len(zeroed[name])
            assert group["constant"] == 0
            assert group["zeroed_in_some_branches_only"] == 0
            assert group["channels"] == model.get_submodule(name).out_channels
    for stage in (1, 2, 3, 4):
        producers = [f"layer{stage}.0.conv2", f"layer{stage}.1.conv2", "conv1" if stage == 1 else f"layer{stage}.0.downsample.0"]
        _, group = by_producers[frozenset(producers)]
        sets = [zeroed.get(p, set()) for p in producers]  # conv1 was not pruned
        everywhere, somewhere = set.intersection(*sets), set.union(*sets)
        assert group["removable"] == group["dead"] == len(everywhere)
        assert group["zeroed_in_some_branches_only"] == len(somewhere) - len(everywhere)
    assert by_producers[frozenset(["conv1", "layer1.0.conv2", "layer1.1.conv2"])][1]["removable"] == 0


def test_zeroed_channels_fix_code_removes_them_exactly(ln_structured: tuple[nn.Module, Path, dict[str, set[int]]]) -> None:
    original, path, zeroed = ln_structured
    report = api.analyze(path, arch=ARCH, input_shape=SHAPE)
    finding = _one(report, "zeroed-channels")
    assert finding.fix_code
    model = copy.deepcopy(original).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)
    params_before = _params(model)
    namespace = {"model": model}
    exec(finding.fix_code, namespace)
    dead = namespace["dead_channels"]
    assert dead["layer1.0.conv1"] == sorted(zeroed["layer1.0.conv1"])
    assert dead["layer3.1.conv1"] == sorted(zeroed["layer3.1.conv1"])
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(before, after, atol=1e-5)
    assert params_before - _params(model) == finding.evidence["params_removable"]
    assert model.layer1[0].conv1.out_channels == 64 - len(zeroed["layer1.0.conv1"])
    assert model.layer4[1].conv1.out_channels == 512 - len(zeroed["layer4.1.conv1"])


# -- BatchNorm slimming: dead vs constant channels -------------------------------------


def test_batchnorm_dead_and_constant_channels(bn_slimmed: tuple[nn.Module, Path]) -> None:
    original, path = bn_slimmed
    report = api.analyze(path, arch=ARCH, input_shape=SHAPE)
    finding = _one(report, "zeroed-channels")
    per_group = finding.evidence["per_group"]
    assert set(per_group) == {"layer1.0.conv1", "layer2.1.conv1"}
    for block in BN_DEAD:
        group = per_group[f"{block}.conv1"]
        # constant channels reach conv2, a padded 3x3 conv: their constant cannot be folded exactly
        assert group["removable"] == len(BN_DEAD[block])
        assert group["dead"] == len(BN_DEAD[block])
        assert group["constant"] == 0
        assert group["not_removable_exactly"] == len(BN_CONSTANT[block])
        assert group["producers"] == [f"{block}.conv1"]
    rows = {row.name: row for row in report.layers}
    assert rows["layer1.0.bn1"].pattern == "dead+constant"
    assert rows["layer2.1.bn1"].pattern == "dead+constant"
    assert rows["layer1.1.bn1"].pattern == "dense"

    model = copy.deepcopy(original).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(x)
    params_before = _params(model)
    namespace = {"model": model}
    exec(finding.fix_code, namespace)
    assert namespace["dead_channels"] == {f"{block}.conv1": dead for block, dead in BN_DEAD.items()}
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(before, after, atol=1e-5)
    assert model.layer1[0].conv1.out_channels == 64 - 3
    assert model.layer2[1].conv1.out_channels == 128 - 2
    # conv1 outputs, bn1 scale+shift, conv2 inputs of each removed channel
    removed = 3 * (64 * 9 + 2 + 64 * 9) + 2 * (128 * 9 + 2 + 128 * 9)
    assert params_before - _params(model) == removed


def test_batchnorm_slimming_static(bn_slimmed: tuple[nn.Module, Path]) -> None:
    _, path = bn_slimmed
    finding = _one(api.analyze(path), "zeroed-channels")
    assert finding.evidence["coupling_checked"] is False
    per_layer = finding.evidence["per_layer"]
    assert set(per_layer) == {"layer1.0.conv1", "layer2.1.conv1"}
    assert per_layer["layer1.0.conv1"]["zeroed"] == 5
    assert per_layer["layer1.0.conv1"]["silenced_by_batchnorm"] == 5
    assert per_layer["layer1.0.conv1"]["zero_filters"] == 0
    assert per_layer["layer2.1.conv1"]["zeroed"] == 3


def test_zeroed_filter_after_batchnorm_with_running_mean_is_constant(tmp_path: Path) -> None:
    # a zero filter feeds 0 into its BatchNorm, which outputs -mean*scale/std + shift: 0 only where mean is 0;
    # a negative mean gives a positive constant, which the ReLU passes on to conv2
    model = _resnet18()
    with torch.no_grad():
        model.layer1[0].conv1.weight[[1, 2, 3]] = 0
        model.layer1[0].bn1.running_mean.fill_(-0.5)
        model.layer1[0].bn1.running_mean[2] = 0
    path = tmp_path / "stats.pth"
    torch.save(model.state_dict(), path)
    finding = _one(api.analyze(path, arch=ARCH, input_shape=SHAPE), "zeroed-channels")
    group = finding.evidence["per_group"]["layer1.0.conv1"]
    # the two constants reach conv2, a padded 3x3 conv: they cannot be folded exactly, so they stay
    assert (group["removable"], group["dead"], group["constant"], group["not_removable_exactly"]) == (1, 1, 0, 2)
    namespace = {"model": copy.deepcopy(model)}
    exec(finding.fix_code, namespace)
    assert namespace["dead_channels"] == {"layer1.0.conv1": [2]}


def test_negative_constant_killed_by_relu_is_dead(tmp_path: Path) -> None:
    # BatchNorm turns the zero filter into -0.5; the ReLU after it makes that exactly 0 for conv2
    model = _resnet18()
    with torch.no_grad():
        model.layer1[0].conv1.weight[[1, 2, 3]] = 0
        model.layer1[0].bn1.running_mean.fill_(0.5)
    path = tmp_path / "relu.pth"
    torch.save(model.state_dict(), path)
    finding = _one(api.analyze(path, arch=ARCH, input_shape=SHAPE), "zeroed-channels")
    group = finding.evidence["per_group"]["layer1.0.conv1"]
    assert (group["removable"], group["dead"], group["constant"]) == (3, 3, 0)


# -- 2:4 on a small MLP ----------------------------------------------------------------


def test_two_of_four_mlp(tmp_path: Path) -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32))
    with torch.no_grad():
        for linear in (mlp[0], mlp[2]):
            groups = linear.weight.reshape(linear.out_features, -1, 4)
            smallest = groups.abs().argsort(-1)[..., :2]
            groups.scatter_(-1, smallest, 0.0)
    path = tmp_path / "mlp.pth"
    torch.save(mlp.state_dict(), path)
    report = api.analyze(path)
    semi = _one(report, "semi-structured-sparsity")
    assert semi.severity is Severity.INFO
    assert semi.modules == ["0", "2"]
    for name, linear in (("0", mlp[0]), ("2", mlp[2])):
        layer = semi.evidence["layers"][name]
        rows, cols = linear.weight.shape
        assert layer["pattern"] == "2:4"
        assert layer["gemm_shape"] == [rows, cols]
        assert layer["shape_ok"] == (rows % 32 == 0 and cols % 64 == 0)
        assert layer["dtype"] == "float32"
        assert layer["dtype_ok"] is False
    assert _findings(report, "unstructured-sparsity") == []
    assert {f.kind for f in report.findings} == {"semi-structured-sparsity"}
    rows_by_name = {row.name: row for row in report.layers}
    assert rows_by_name["0"].pattern == rows_by_name["2"].pattern == "2:4"


# -- dense -----------------------------------------------------------------------------


@pytest.mark.parametrize("with_arch", [False, True], ids=["state-dict", "arch"])
def test_dense_resnet18_has_no_warnings(dense_path: Path, with_arch: bool) -> None:
    kwargs = {"arch": ARCH, "input_shape": SHAPE} if with_arch else {}
    report = api.analyze(dense_path, **kwargs)
    serious = [f.kind for f in report.findings if f.severity in (Severity.WARNING, Severity.ERROR)]
    assert serious == []
    assert _findings(report, "channel-removal") == []
    assert report.summary.findings["warning"] == report.summary.findings["error"] == 0


def test_dense_resnet18_rows_are_dense(dense_path: Path) -> None:
    report = api.analyze(dense_path)
    convs = [row for row in report.layers if row.type.startswith("Conv")]
    assert len(convs) == 20
    assert {row.name: row.pattern for row in convs} == {row.name: "dense" for row in convs}
    fc = next(row for row in report.layers if row.name == "fc")
    assert fc.pattern == "dense"
    assert all(row.pattern == "dense" for row in report.layers if row.type.startswith("BatchNorm"))


def test_no_reference_says_channel_removal_not_analysed(dense_path: Path) -> None:
    report = api.analyze(dense_path)
    assert any("channel removal" in line for line in report.not_analysed)
    with_ref = api.analyze(dense_path, baseline=dense_path)
    assert not any("channel removal" in line for line in with_ref.not_analysed)
