"""--compact end to end: real pruning tools, real checkpoints, analyze(), load_pruned, the CLI.

Every pruned model is built once per module. Expected widths, parameter counts and MACs
are worked out here from the architecture (which layers share a residual sum) and the
zeros the pruning tool left, not from the analyzer's own grouping.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from analyzer import analyze, load_pruned
from analyzer.errors import UsageError
from analyzer.report.model import Report
from analyzer.zoo import resnet18, resnet34, retinaface_mnet

ARCH34 = "analyzer.zoo:resnet34"
ARCH18 = "analyzer.zoo:resnet18"
ARCH_RF = "analyzer.zoo:retinaface_mnet"
SHAPE = (1, 3, 64, 64)
RF_SHAPE = (1, 3, 128, 128)
RESNET34_STAGES = {"layer1": (64, 3), "layer2": (128, 4), "layer3": (256, 6), "layer4": (512, 3)}
RESNET18_STAGES = {"layer1": (64, 2), "layer2": (128, 2), "layer3": (256, 2), "layer4": (512, 2)}


# ---------------------------------------------------------------------------- helpers


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _kinds(report: Report) -> list[str]:
    return [f.kind for f in report.findings]


def _zero_filters(weight: torch.Tensor) -> set[int]:
    rows = weight.detach().reshape(weight.shape[0], -1)
    return set(torch.nonzero((rows == 0).all(1)).flatten().tolist())


def _flat(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for v in value for t in _flat(v)]


def _inputs(shape: tuple[int, ...], seed: int = 7, count: int = 2) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn((2, *shape[1:]), generator=generator) * (1 + i) for i in range(count)]


def _assert_same_outputs(reference: nn.Module, model: nn.Module, inputs: list[torch.Tensor]) -> None:
    reference.eval()
    model.eval()
    with torch.no_grad():
        for x in inputs:
            expected, got = _flat(reference(x)), _flat(model(x))
            assert len(expected) == len(got)
            for a, b in zip(expected, got):
                assert a.shape == b.shape
                scale = max(1.0, float(a.abs().max()))
                diff = float((a - b).abs().max())
                assert diff <= 1e-4 * scale, f"outputs differ by {diff:.3g} (scale {scale:.3g})"


def _expected_shapes(dense: nn.Module, cut_out: dict[str, int], cut_in: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of `dense` with `cut_out[m]` output channels and `cut_in[m]` input channels removed."""
    shapes = {}
    for name, module in dense.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            shape = list(p.shape)
            if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
                shape[0] -= cut_out.get(name, 0)
            if pname == "weight" and len(shape) > 1:
                if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1):
                    shape[1] -= cut_in.get(name, 0)
            shapes[f"{name}.{pname}"] = tuple(shape)
    return shapes


def _expected_macs(dense: nn.Module, shape: tuple[int, ...], cut_out: dict[str, int], cut_in: dict[str, int]) -> int:
    """MACs per sample of the conv and linear layers with the given channels removed."""
    out_shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            out_shapes[name] = tuple(output.shape)

        return hook

    handles = [
        module.register_forward_hook(record(name))
        for name, module in dense.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            dense.eval()(torch.zeros(shape))
    finally:
        for h in handles:
            h.remove()
    total = 0
    modules = dict(dense.named_modules())
    for name, out in out_shapes.items():
        module = modules[name]
        if isinstance(module, nn.Conv2d):
            per_group_in = module.in_channels // module.groups - (cut_in.get(name, 0) if module.groups == 1 else 0)
            total += (module.out_channels - cut_out.get(name, 0)) * math.prod(out[2:]) * per_group_in * math.prod(module.kernel_size)
        else:
            total += module.out_features * (module.in_features - cut_in.get(name, 0))
    return total


def _resnet_cuts(
    zero: dict[str, set[int]], stages: dict[str, tuple[int, int]], round_to: int | None = None
) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Channels a BasicBlock ResNet loses, from its zero filters (every BatchNorm is the identity
    at init, so a zero filter is a dead channel).

    Each block's conv1 group is its own (conv1, bn1, conv2's input). A stage's residual sum
    couples the downsample conv and every block's conv2 (layer1's also holds the stem conv1,
    which is not pruned): only filters zero in all of them go. Returns (cut_out, cut_in,
    dead per group, keyed by block conv1 / stage name)."""
    cut_out: dict[str, int] = {}
    cut_in: dict[str, int] = {}
    dead: dict[str, int] = {}

    def removed(width: int, n: int) -> int:
        return n - (min((-(width - n)) % round_to, n) if round_to and n else 0)

    layers = list(stages)
    for s, layer in enumerate(layers):
        planes, blocks = stages[layer]
        for i in range(blocks):
            block = f"{layer}.{i}"
            n = len(zero.get(f"{block}.conv1", set()))
            dead[f"{block}.conv1"] = n
            cut_out[f"{block}.conv1"] = cut_out[f"{block}.bn1"] = cut_in[f"{block}.conv2"] = removed(planes, n)
        if s == 0:
            n = 0
        else:
            producers = [f"{layer}.0.downsample.0"] + [f"{layer}.{i}.conv2" for i in range(blocks)]
            n = len(set.intersection(*(zero.get(p, set()) for p in producers)))
            dead[layer] = n
        k = removed(planes, n)
        for i in range(blocks):
            cut_out[f"{layer}.{i}.conv2"] = cut_out[f"{layer}.{i}.bn2"] = k
            if i > 0:
                cut_in[f"{layer}.{i}.conv1"] = k
        if s > 0:
            cut_out[f"{layer}.0.downsample.0"] = cut_out[f"{layer}.0.downsample.1"] = k
        if s + 1 < len(layers):
            cut_in[f"{layers[s + 1]}.0.conv1"] = cut_in[f"{layers[s + 1]}.0.downsample.0"] = k
        else:
            cut_in["fc"] = k
    return cut_out, cut_in, dead


def _check_widths(
    model: nn.Module, dense: nn.Module, cut_out: dict[str, int], cut_in: dict[str, int], compaction: dict[str, Any], shape: tuple[int, ...]
) -> None:
    expected = _expected_shapes(dense, cut_out, cut_in)
    got = {n: tuple(p.shape) for n, p in model.named_parameters()}
    wrong = {n: (got.get(n), s) for n, s in expected.items() if got.get(n) != s}
    assert not wrong and set(got) == set(expected), f"parameter shapes (got, expected): {dict(list(wrong.items())[:8])}"
    params = sum(math.prod(s) for s in expected.values())
    assert compaction["params_before"] == _params(dense)
    assert compaction["params_after"] == params == _params(model)
    assert compaction["params_after"] < compaction["params_before"]
    assert compaction["macs_before"] == _expected_macs(dense, shape, {}, {})
    assert compaction["macs_after"] == _expected_macs(dense, shape, cut_out, cut_in)
    assert compaction["macs_after"] < compaction["macs_before"]


def _state_dict_payload(path: Path) -> dict[str, Any]:
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"state_dict", "arch", "analyzer"}
    assert not [k for k in payload["state_dict"] if k.endswith(("_orig", "_mask"))]
    return payload


def _run_load_code(code: str) -> nn.Module:
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # noqa: S102 - the code the report tells users to run
    return namespace["model"]


# ---------------------------------------------------------------------------- ResNet-34, ln_structured


@dataclass(repr=False)
class Pruned34:
    masked: nn.Module  # masks still attached (forward pre-hooks)
    folded: nn.Module  # prune.remove applied
    masked_path: Path
    folded_path: Path
    pruned: list[str]
    zero: dict[str, set[int]]
    folder: Path


@pytest.fixture(scope="module")
def r34(tmp_path_factory: pytest.TempPathFactory) -> Pruned34:
    folder = tmp_path_factory.mktemp("r34")
    torch.manual_seed(0)
    model = resnet34().eval()
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n != "conv1"}
    for module in convs.values():
        prune.ln_structured(module, "weight", amount=0.3, n=2, dim=0)
    masked_path = folder / "masked.pth"
    torch.save(model.state_dict(), masked_path)
    masked_state = model.state_dict()
    folded = resnet34().eval()
    folded.load_state_dict({
        **{k: v for k, v in masked_state.items() if not k.endswith(("_orig", "_mask"))},
        **{f"{n}.weight": masked_state[f"{n}.weight_orig"] * masked_state[f"{n}.weight_mask"] for n in convs},
    })
    folded_path = folder / "folded.pth"
    torch.save(folded.state_dict(), folded_path)
    zero = {n: _zero_filters(m.weight) for n, m in folded.named_modules() if n in convs}
    return Pruned34(model, folded, masked_path, folded_path, sorted(convs), zero, folder)


@pytest.fixture(scope="module")
def r34_masked(r34: Pruned34) -> tuple[Report, Path]:
    out = r34.folder / "masked.compact.pth"
    return analyze(r34.masked_path, arch=ARCH34, input_shape=SHAPE, compact_to=out), out


@pytest.fixture(scope="module")
def r34_folded(r34: Pruned34) -> tuple[Report, Path]:
    out = r34.folder / "folded.compact.pth"
    return analyze(r34.folded_path, arch=ARCH34, input_shape=SHAPE, compact_to=out), out


def test_pruned_fixture_is_what_ln_structured_makes(r34: Pruned34) -> None:
    assert len(r34.pruned) == 35
    # round(0.3 * width) filters per conv
    assert len(r34.zero["layer1.0.conv1"]) == 19 and len(r34.zero["layer4.2.conv1"]) == 154
    assert [k for k in r34.masked.state_dict() if k.endswith("weight_mask")]


@pytest.mark.parametrize("variant", ["masked", "folded"])
def test_resnet34_compacts_to_exact_widths_with_equal_outputs(r34: Pruned34, r34_masked, r34_folded, variant: str) -> None:
    report, out = r34_masked if variant == "masked" else r34_folded
    c = report.compaction
    assert c is not None and c["refused"] is None, c and c["refused"]
    assert c["saved_as"] == "state dict + arch"
    assert c["output"] == str(out) and out.exists()
    payload = _state_dict_payload(out)
    assert payload["arch"] == ARCH34 and payload["analyzer"]["params"] == c["params_after"]

    model = load_pruned(out, ARCH34)
    _assert_same_outputs(r34.masked, model, _inputs(SHAPE))
    assert c["max_abs_diff"] <= c["tolerance"]

    cut_out, cut_in, dead = _resnet_cuts(r34.zero, RESNET34_STAGES)
    # conv1 groups are not coupled through the residual adds: each loses exactly its zero filters
    for layer, (planes, blocks) in RESNET34_STAGES.items():
        for i in range(blocks):
            name = f"{layer}.{i}.conv1"
            assert dict(model.named_modules())[name].out_channels == planes - len(r34.zero[name])
    _check_widths(model, resnet34(), cut_out, cut_in, c, SHAPE)
    # what the groups report adds up to the same channels
    assert sum(g["removed"] for g in c["groups"]) == sum(dead.values())
    assert all(g["removed"] == g["dead"] and g["constants_folded"] == 0 and g["left"] == 0 for g in c["groups"])


def test_masked_state_dict_reports_masks_folded(r34: Pruned34, r34_masked, r34_folded) -> None:
    # The input holds 35 weight_orig/weight_mask pairs; the output holds none: 35 masks were folded.
    masks_in_input = len(r34.pruned)
    reported = r34_masked[0].compaction["masks_folded"]
    assert reported == masks_in_input, f"{masks_in_input} weight_orig/weight_mask pairs folded, report says {reported}"
    assert r34_folded[0].compaction["masks_folded"] == 0


def test_compacted_resnet34_analyses_clean_and_load_code_runs(r34: Pruned34, r34_folded) -> None:
    report, out = r34_folded
    again = analyze(out, arch=ARCH34, input_shape=SHAPE)
    assert "zeroed-channels" not in _kinds(again)
    assert "pruning-masks" not in _kinds(again)
    code = report.compaction["load_code"]
    assert "load_pruned" in code and repr(str(out)) in code and repr(ARCH34) in code
    _assert_same_outputs(r34.masked, _run_load_code(code), _inputs(SHAPE, seed=11))


# ---------------------------------------------------------------------------- --round-to 8


@pytest.fixture(scope="module")
def r34_round8(r34: Pruned34) -> tuple[Report, Path]:
    out = r34.folder / "round8.pth"
    return analyze(r34.folded_path, arch=ARCH34, input_shape=SHAPE, compact_to=out, round_to=8), out


def test_round_to_8_keeps_widths_multiples_of_8(r34: Pruned34, r34_folded, r34_round8) -> None:
    report, out = r34_round8
    c = report.compaction
    assert c["refused"] is None and c["round_to"] == 8
    model = load_pruned(out, ARCH34)
    widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert all(w % 8 == 0 for w in widths.values()), {n: w for n, w in widths.items() if w % 8}
    for layer, (planes, blocks) in RESNET34_STAGES.items():
        for i in range(blocks):
            name = f"{layer}.{i}.conv1"
            n = len(r34.zero[name])
            keep = (-(planes - n)) % 8
            group = next(g for g in c["groups"] if g["root"] == name)
            assert (group["removed"], group["kept_for_alignment"]) == (n - keep, keep)
            assert widths[name] == planes - n + keep
    assert any(g["kept_for_alignment"] > 0 for g in c["groups"])
    _assert_same_outputs(r34.masked, model, _inputs(SHAPE))
    cut_out, cut_in, _ = _resnet_cuts(r34.zero, RESNET34_STAGES, round_to=8)
    _check_widths(model, resnet34(), cut_out, cut_in, c, SHAPE)
    # the trade: more parameters than the unrounded compaction, still fewer than dense
    assert r34_folded[0].compaction["params_after"] < c["params_after"] < c["params_before"]


def test_round_to_reports_every_group_it_kept_zero_channels_in(r34: Pruned34, r34_round8) -> None:
    c = r34_round8[0].compaction
    _, _, dead = _resnet_cuts(r34.zero, RESNET34_STAGES)
    zero_channels = sum(dead.values())
    assert zero_channels > 0
    # Every zero channel is either removed or kept for alignment, and the report says which:
    # a group whose few zero channels were all kept (e.g. 1 of 128) is still part of the trade.
    accounted = sum(g["removed"] + g["kept_for_alignment"] for g in c["groups"])
    residual_roots = [g["root"] for g in c["groups"] if not g["root"].endswith(".conv1")]
    unreported = {
        layer: n
        for layer, n in dead.items()
        if layer in RESNET34_STAGES and n and not any(root.startswith(layer + ".") for root in residual_roots)
    }
    assert accounted == zero_channels, f"residual groups whose zero channels were all kept, not reported: {unreported}"


# ---------------------------------------------------------------------------- BN-slimmed ResNet-18, full module


def _realistic_batchnorms(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(c, generator=generator) * 0.5 + 0.75)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.1)


def _slim(c: int) -> tuple[list[int], list[int], list[int]]:
    """bn1 channels: (weight=bias=0, weight=0 and bias<0 (ReLU kills it), weight=0 and bias>0)."""
    zero = list(range(0, c // 8))
    killed = [c // 8, c // 8 + 1]
    constant = list(range(c // 8 + 2, c // 4))
    return zero, killed, constant


@pytest.fixture(scope="module")
def bn_slimmed(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Report, Path]:
    folder = tmp_path_factory.mktemp("bn")
    torch.manual_seed(1)
    model = resnet18().eval()
    _realistic_batchnorms(model, 1)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.startswith("layer") and name.endswith("bn1"):
                zero, killed, constant = _slim(module.num_features)
                module.weight[zero + killed + constant] = 0
                module.bias[zero] = 0
                module.bias[killed] = -0.3
                module.bias[constant] = 0.5
    path = folder / "slimmed.pth"
    torch.save(model, path)
    out = folder / "slimmed.compact.pth"
    return model, analyze(path, input_shape=SHAPE, compact_to=out), out


def test_bn_slimmed_full_module_removes_dead_and_leaves_padded_constants(bn_slimmed) -> None:
    model, report, out = bn_slimmed
    c = report.compaction
    assert c["refused"] is None
    assert c["saved_as"] == "full module"
    assert "weights_only=False" in c["load_code"]
    compacted = torch.load(out, weights_only=False)
    assert type(compacted).__name__ == "ResNet"
    _assert_same_outputs(model, compacted, _inputs(SHAPE))
    _assert_same_outputs(model, _run_load_code(c["load_code"]), _inputs(SHAPE, seed=3, count=1))

    cut_out: dict[str, int] = {}
    cut_in: dict[str, int] = {}
    for layer, (planes, blocks) in RESNET18_STAGES.items():
        for i in range(blocks):
            block = f"{layer}.{i}"
            zero, killed, constant = _slim(planes)
            group = next(g for g in c["groups"] if g["root"] == f"{block}.conv1")
            assert group["removed"] == group["dead"] == len(zero) + len(killed)
            assert group["constants_folded"] == 0
            assert group["left"] == len(constant)
            assert "padded" in group["left_because"] and f"{block}.conv2" in group["left_because"]
            cut_out[f"{block}.conv1"] = cut_out[f"{block}.bn1"] = cut_in[f"{block}.conv2"] = len(zero) + len(killed)
    _check_widths(compacted, resnet18(), cut_out, cut_in, c, SHAPE)


def test_bn_slimmed_result_and_its_analysis_agree(bn_slimmed, tmp_path: Path) -> None:
    # Only the constant channels (which the padded conv2 sees) are left silent in the result.
    # Compacting it again removes nothing, so the analysis of the result must not claim they
    # "can be removed" (and advise --compact) either.
    _, _, out = bn_slimmed
    again = analyze(out, input_shape=SHAPE, compact_to=tmp_path / "twice.pth")
    assert again.compaction["refused"] and "no channel can be removed exactly" in again.compaction["refused"]
    assert "padded" in again.compaction["refused"]
    assert not (tmp_path / "twice.pth").exists()
    zeroed = [f for f in again.findings if f.kind == "zeroed-channels"]
    removable = {root: g["removable"] for f in zeroed for root, g in f.evidence.get("per_group", {}).items() if g["removable"]}
    assert not removable, f"zeroed-channels says these can be removed, --compact says none can: {removable}"


def _sequential(consumer: nn.Conv2d, bn_after: bool) -> nn.Sequential:
    torch.manual_seed(2)
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), consumer]
    layers += [nn.BatchNorm2d(8)] if bn_after else []
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)]
    model = nn.Sequential(*layers).eval()
    _realistic_batchnorms(model, 2)
    with torch.no_grad():
        model[1].weight[[1, 4, 9]] = 0
        model[1].bias[[1, 4, 9]] = 0.7  # constant 0.7 after the ReLU
        model[1].weight[[2, 11]] = 0
        model[1].bias[[2, 11]] = 0  # dead
    return model


SEQ_SHAPE = (1, 3, 16, 16)


@pytest.mark.parametrize(
    "consumer, bn_after",
    [
        (lambda: nn.Conv2d(16, 8, 1), False),  # folds into the 1x1 conv's bias
        (lambda: nn.Conv2d(16, 8, 1, bias=False), True),  # folds into the next BatchNorm's running_mean
    ],
    ids=["bias", "batchnorm"],
)
def test_constants_fold_exactly(tmp_path: Path, consumer, bn_after: bool) -> None:
    model = _sequential(consumer(), bn_after)
    path = tmp_path / "seq.pth"
    torch.save(model, path)
    out = tmp_path / "seq.compact.pth"
    report = analyze(path, input_shape=SEQ_SHAPE, compact_to=out)
    c = report.compaction
    assert c["refused"] is None and c["saved_as"] == "full module"
    (group,) = c["groups"]
    assert (group["removed"], group["dead"], group["constants_folded"], group["left"]) == (5, 2, 3, 0)
    compacted = torch.load(out, weights_only=False)
    assert compacted[0].out_channels == 11 and compacted[3].in_channels == 11
    _assert_same_outputs(model, compacted, _inputs(SEQ_SHAPE, count=3))
    per_channel = 3 * 9 + 1 + 2 + 8  # conv0 filter + bias, bn1, consumer's input column
    assert c["params_before"] - c["params_after"] == 5 * per_channel
    assert "zeroed-channels" not in _kinds(analyze(out, input_shape=SEQ_SHAPE))


def test_constant_into_a_padded_1x1_conv_is_left_not_folded(tmp_path: Path) -> None:
    # A 1x1 conv with padding=1: its border outputs see only padding, so a constant input
    # channel contributes to the interior but not the border; folding it into the bias is not
    # exact. The constant channels must be left; the dead ones still go.
    model = _sequential(nn.Conv2d(16, 8, 1, padding=1), False)
    path = tmp_path / "seq.pth"
    torch.save(model, path)
    out = tmp_path / "seq.compact.pth"
    c = analyze(path, input_shape=SEQ_SHAPE, compact_to=out).compaction
    assert c["refused"] is None, c["refused"]
    (group,) = c["groups"]
    assert (group["removed"], group["dead"], group["constants_folded"], group["left"]) == (2, 2, 0, 3)
    assert "padded" in group["left_because"]
    _assert_same_outputs(model, torch.load(out, weights_only=False), _inputs(SEQ_SHAPE))


# ---------------------------------------------------------------------------- RetinaFace mnet, backbone soft-pruned


RF_BLOCKS = [f"body.stage1.{i}" for i in range(1, 6)] + [f"body.stage2.{i}" for i in range(6)] + [f"body.stage3.{i}" for i in range(2)]
RF_FPN_AFTER = {"body.stage1.5": "fpn.output1.0", "body.stage2.5": "fpn.output2.0", "body.stage3.1": "fpn.output3.0"}


@pytest.fixture(scope="module")
def retinaface(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, dict[str, set[int]], Report, Path]:
    folder = tmp_path_factory.mktemp("rf")
    torch.manual_seed(3)
    model = retinaface_mnet().eval()
    pointwise = {
        n: m
        for n, m in model.named_modules()
        if n.startswith("body.") and isinstance(m, nn.Conv2d) and m.groups == 1 and m.kernel_size == (1, 1)
    }
    assert sorted(pointwise) == sorted(f"{b}.3" for b in RF_BLOCKS)
    for module in pointwise.values():
        prune.ln_structured(module, "weight", amount=0.3, n=2, dim=0)
        prune.remove(module, "weight")
    zero = {n: _zero_filters(m.weight) for n, m in pointwise.items()}
    path = folder / "rf.pth"
    torch.save(model.state_dict(), path)
    out = folder / "rf.compact.pth"
    return model, zero, analyze(path, arch=ARCH_RF, input_shape=RF_SHAPE, compact_to=out), out


def test_retinaface_backbone_compacts_heads_keep_widths(retinaface) -> None:
    model, zero, report, out = retinaface
    c = report.compaction
    assert c["refused"] is None and c["saved_as"] == "state dict + arch"
    compacted = load_pruned(out, ARCH_RF)
    for heads, width in (("ClassHead", 4), ("BboxHead", 8), ("LandmarkHead", 20)):
        for head in getattr(compacted, heads):
            assert (head.conv1x1.in_channels, head.conv1x1.out_channels) == (64, width)
    _assert_same_outputs(model, compacted, _inputs(RF_SHAPE))

    cut_out: dict[str, int] = {}
    cut_in: dict[str, int] = {}
    for j, block in enumerate(RF_BLOCKS):
        k = len(zero[f"{block}.3"])
        assert k == round(0.3 * model.get_submodule(f"{block}.3").out_channels)
        cut_out[f"{block}.3"] = cut_out[f"{block}.4"] = k
        if j + 1 < len(RF_BLOCKS):
            following = RF_BLOCKS[j + 1]
            cut_out[f"{following}.0"] = cut_out[f"{following}.1"] = k  # depthwise conv + its BatchNorm
            cut_in[f"{following}.3"] = k
        if block in RF_FPN_AFTER:
            cut_in[RF_FPN_AFTER[block]] = k
    _check_widths(compacted, retinaface_mnet(), cut_out, cut_in, c, RF_SHAPE)
    assert sum(g["removed"] for g in c["groups"]) == sum(len(z) for z in zero.values())


def test_compacted_retinaface_analyses_clean(retinaface) -> None:
    _, _, _, out = retinaface
    kinds = _kinds(analyze(out, arch=ARCH_RF, input_shape=RF_SHAPE))
    assert "zeroed-channels" not in kinds
    assert "head-shape-mismatch" not in kinds


# ---------------------------------------------------------------------------- unstructured zeros


def test_unstructured_zeros_are_refused_with_the_reason(tmp_path: Path) -> None:
    torch.manual_seed(4)
    model = resnet18().eval()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            prune.l1_unstructured(module, "weight", amount=0.5)
            prune.remove(module, "weight")
    path = tmp_path / "unstructured.pth"
    torch.save(model.state_dict(), path)
    out = tmp_path / "unstructured.compact.pth"
    report = analyze(path, arch=ARCH18, input_shape=SHAPE, compact_to=out)
    c = report.compaction
    assert c["refused"] and "unstructured" in c["refused"]
    sparsity = next(f.evidence["sparsity_overall"] for f in report.findings if f.kind == "unstructured-sparsity")
    assert 0.4 < sparsity <= 0.5
    assert f"{sparsity:.0%}" in c["refused"]
    assert c["output"] is None and c["saved_as"] is None and c["load_code"] is None
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unstructured.pth"]


# ---------------------------------------------------------------------------- safety and the CLI


@pytest.fixture
def small_full(tmp_path: Path) -> Path:
    path = tmp_path / "small.pth"
    torch.save(_sequential(nn.Conv2d(16, 8, 1), False), path)
    return path


def _one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1


def test_cli_compact_onto_the_input_is_refused(run_cli, small_full: Path, unchanged) -> None:
    check = unchanged(small_full)
    result = run_cli(small_full, "--input-shape", "1,3,16,16", "--compact", small_full)
    assert result.code == 2 and _one_line(result.err) and "input" in result.err
    check()
    link = small_full.parent / "link.pth"
    link.symlink_to(small_full)
    result = run_cli(small_full, "--input-shape", "1,3,16,16", "--compact", link)
    assert result.code == 2 and _one_line(result.err)
    check()
    assert link.is_symlink()


def test_api_compact_onto_the_input_raises_usage_error(small_full: Path, unchanged) -> None:
    check = unchanged(small_full)
    with pytest.raises(UsageError, match="input"):
        analyze(small_full, input_shape=SEQ_SHAPE, compact_to=small_full)
    check()


def test_cli_compact_into_a_missing_folder(run_cli, small_full: Path) -> None:
    result = run_cli(small_full, "--input-shape", "1,3,16,16", "--compact", small_full.parent / "nope" / "out.pth")
    assert result.code == 2 and _one_line(result.err) and "does not exist" in result.err
    assert not (small_full.parent / "nope").exists()


def test_cli_compact_onto_a_folder_is_a_usage_error(run_cli, small_full: Path) -> None:
    folder = small_full.parent / "folder"
    folder.mkdir()
    result = run_cli(small_full, "--input-shape", "1,3,16,16", "--compact", folder)
    assert result.code == 2 and _one_line(result.err)
    assert folder.is_dir() and not list(folder.iterdir())
    assert not [p.name for p in small_full.parent.iterdir() if p.name.endswith(".tmp")]


def test_cli_round_to_needs_compact(run_cli, small_full: Path, tmp_path: Path) -> None:
    result = run_cli(small_full, "--round-to", "8")
    assert result.code == 2 and _one_line(result.err) and "--compact" in result.err
    result = run_cli(small_full, "--compact", tmp_path / "o.pth", "--round-to", "0")
    assert result.code == 2 and _one_line(result.err)
    assert not (tmp_path / "o.pth").exists()


def test_cli_state_dict_without_arch_cannot_be_compacted(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "sd.pth"
    torch.save(_sequential(nn.Conv2d(16, 8, 1), False).state_dict(), path)
    out = tmp_path / "out.pth"
    result = run_cli(path, "--compact", out)
    assert result.code == 2 and _one_line(result.err)
    assert "--compact needs a runnable model" in result.err
    assert not out.exists()


def test_cli_replaces_an_existing_output_atomically(run_cli, small_full: Path, unchanged) -> None:
    folder = small_full.parent
    out = folder / "out.pth"
    out.write_bytes(b"old contents " * 100_000)
    mode = out.stat().st_mode & 0o777
    check = unchanged(small_full)
    result = run_cli(small_full, "--input-shape", "1,3,16,16", "--compact", out, "--quiet")
    assert result.code in (0, 1), result.err
    check()
    data = out.read_bytes()
    assert b"old contents" not in data and len(data) < 100_000
    reference = torch.load(small_full, weights_only=False)
    _assert_same_outputs(reference, torch.load(out, weights_only=False), _inputs(SEQ_SHAPE))
    assert sorted(p.name for p in folder.iterdir()) == ["out.pth", "small.pth"]
    assert out.stat().st_mode & 0o777 == mode  # the replaced file keeps its permissions


def test_cli_happy_path_prints_compact_panel(run_cli, r34: Pruned34, unchanged, tmp_path: Path) -> None:
    check = unchanged(r34.masked_path)
    out = tmp_path / "out.pth"
    report = tmp_path / "report.json"
    result = run_cli(r34.masked_path, "--arch", ARCH34, "--input-shape", "1,3,64,64", "--compact", out, "--json", report)
    assert result.code in (0, 1), result.err
    assert "compact" in result.out and "load_pruned" in result.out and "masks folded" in result.out
    assert out.exists()
    check()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pth", "report.json"]
    (saved,) = json.loads(report.read_text())["reports"]  # the one report of the envelope (analyzer-report/2)
    assert saved["compaction"]["saved_as"] == "state dict + arch"
    assert saved["compaction"]["params_after"] < saved["compaction"]["params_before"]
    _assert_same_outputs(r34.masked, load_pruned(out, ARCH34), _inputs(SHAPE, count=1))
