"""Structure checks end to end: broken detection heads, broken residual adds and concats.

RetinaFace (analyzer.zoo) pruned by torch-pruning without ignoring its heads reproduces
the user's real crash; the analyzer must name the heads and the anchor counts, and its
ignored_layers fix, applied, must give a model with correct outputs. ResNets with a
residual branch narrowed by hand must report the add with both operands; correctly
pruned models must report nothing. Inputs stay small: the suite runs on 2 CPU cores.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

from analyzer import api
from analyzer.model.graph import trace_graph
from analyzer.report.model import Finding, Report, Severity
from analyzer.zoo import multibox_loss, prior_boxes, resnet18, retinaface_mnet

from .models import magnitude_prune

RETINA_ARCH = "analyzer.zoo:retinaface_mnet"
RESNET_ARCH = "analyzer.zoo:resnet18"
RETINA_SHAPE = (1, 3, 128, 128)
RESNET_SHAPE = (1, 3, 32, 32)
FAMILIES = ("ClassHead", "BboxHead", "LandmarkHead")
HEAD_CONVS = [f"{family}.{level}.conv1x1" for family in FAMILIES for level in range(3)]
VALUES_PER_ANCHOR = {"ClassHead": 2, "BboxHead": 4, "LandmarkHead": 10}

#: case -> (pruning ratio, ignored modules, head widths after pruning per family)
CASES: dict[str, tuple[float, tuple[str, ...], dict[str, int]]] = {
    "0.5": (0.5, (), {"ClassHead": 2, "BboxHead": 4, "LandmarkHead": 10}),
    "0.3": (0.3, (), {"ClassHead": 2, "BboxHead": 5, "LandmarkHead": 14}),
    "0.5-landmark-ignored": (0.5, ("LandmarkHead",), {"ClassHead": 2, "BboxHead": 4, "LandmarkHead": 20}),
}


# -- helpers ---------------------------------------------------------------------------


def _findings(report: Report, kind: str) -> list[Finding]:
    return [f for f in report.findings if f.kind == kind]


def _one(report: Report, kind: str) -> Finding:
    found = _findings(report, kind)
    assert len(found) == 1, f"expected one {kind} finding, got {[f.kind for f in report.findings]}"
    return found[0]


def _kinds(report: Report) -> list[str]:
    return [f.kind for f in report.findings]


def _family(conv: str) -> str:
    return conv.split(".")[0]


def _head_widths(model: nn.Module) -> dict[str, int]:
    return {conv: model.get_submodule(conv).out_channels for conv in HEAD_CONVS}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _targets(batch: int) -> list[torch.Tensor]:
    """Two faces per image, (x1, y1, x2, y2, label) relative to the image."""
    faces = torch.tensor([[0.10, 0.10, 0.30, 0.32, 1.0], [0.55, 0.50, 0.80, 0.90, 1.0]])
    return [faces.clone() for _ in range(batch)]


_metaprune = magnitude_prune


def _pruned_retinaface(case: str) -> nn.Module:
    ratio, ignored, _ = CASES[case]
    torch.manual_seed(0)
    model = retinaface_mnet(phase="train").eval()
    return _metaprune(model, torch.randn(1, 3, 64, 64), ratio, [model.get_submodule(name) for name in ignored])


def _save(model: nn.Module, folder: Path, name: str) -> dict[str, Path]:
    full, state = folder / f"{name}-model.pth", folder / f"{name}-state.pth"
    torch.save(model, full)
    torch.save(model.state_dict(), state)
    return {"full": full, "state": state}


def _narrowed_resnet18() -> nn.Module:
    """resnet18 with layer2.0's main branch cut to 100 channels by hand; nothing else adjusted."""
    torch.manual_seed(0)
    model = resnet18().eval()
    model.layer2[0].conv2 = nn.Conv2d(128, 100, kernel_size=3, stride=1, padding=1, bias=False)
    model.layer2[0].bn2 = nn.BatchNorm2d(100)
    return model.eval()


@pytest.fixture(scope="module")
def analyzed() -> Callable[..., Report]:
    """analyze() memoised over the module: several tests read the same report."""
    cache: dict[tuple[Any, ...], Report] = {}

    def run(path: Path, **kwargs: Any) -> Report:
        key = (str(path), tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = api.analyze(path, **kwargs)
        return cache[key]

    return run


# -- RetinaFace: the pruned models, built once -----------------------------------------


@pytest.fixture(scope="module")
def retina_models() -> dict[str, nn.Module]:
    models = {case: _pruned_retinaface(case) for case in CASES}
    for case, model in models.items():
        widths = CASES[case][2]
        assert _head_widths(model) == {conv: widths[_family(conv)] for conv in HEAD_CONVS}, case
    return models


@pytest.fixture(scope="module")
def retina_files(retina_models: dict[str, nn.Module], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("retinaface")
    files = {case: _save(model, folder, case.replace(".", "")) for case, model in retina_models.items()}
    torch.manual_seed(0)
    files["dense"] = _save(retinaface_mnet(phase="train").eval(), folder, "dense")
    return files


# 1. the user's real errors ------------------------------------------------------------


@pytest.mark.parametrize("case", ["0.5", "0.5-landmark-ignored"])
def test_pruned_retinaface_reproduces_the_multibox_loss_error(retina_models: dict[str, nn.Module], case: str) -> None:
    model = retina_models[case]
    torch.manual_seed(1)
    with torch.no_grad():
        boxes, classes, landmarks = model(torch.randn(10, 3, 512, 512))
    # One anchor per location: half the 10752 priors of a 512x512 image.
    assert boxes.shape == (10, 5376, 4)
    assert classes.shape == (10, 5376, 2)
    assert landmarks.shape == (10, 10752 if case == "0.5-landmark-ignored" else 5376, 10)
    priors = prior_boxes((512, 512))
    assert priors.shape == (10752, 4)
    with pytest.raises(RuntimeError) as raised:
        multibox_loss((boxes, classes, landmarks), priors, _targets(10))
    assert "Target sizes: [10, 5376, 4]" in str(raised.value)
    assert "Tensor sizes: [10, 10752, 1]" in str(raised.value)


def test_pruned_retinaface_at_03_fails_in_its_own_forward(retina_models: dict[str, nn.Module]) -> None:
    # BboxHead has 5 channels: 5 * H * W is still a multiple of 4, so its view "succeeds"
    # with garbage; LandmarkHead's 14 channels are the first view that raises.
    torch.manual_seed(1)
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"shape '\[10, -1, 10\]' is invalid"):
        retina_models["0.3"](torch.randn(10, 3, 512, 512))


# 2. the analyzer's finding -------------------------------------------------------------


def _check_head_finding(report: Report, case: str) -> Finding:
    finding = _one(report, "head-shape-mismatch")
    assert finding.severity is Severity.ERROR
    assert set(finding.modules) == set(HEAD_CONVS)
    heads = finding.evidence["heads"]
    assert set(heads) == set(HEAD_CONVS)
    widths = CASES[case][2]
    for conv in HEAD_CONVS:
        family = _family(conv)
        entry = heads[conv]
        assert entry["out_channels"] == widths[family], conv
        assert entry["values_per_anchor"] == VALUES_PER_ANCHOR[family], conv
        assert entry["expected_anchors"] == 2, conv
        assert entry["anchors_per_location"] == pytest.approx(widths[family] / VALUES_PER_ANCHOR[family]), conv
    problems = finding.evidence["problems"]
    if case == "0.5":
        assert all(heads[conv]["anchors_per_location"] == 1 for conv in HEAD_CONVS)
        for family in FAMILIES:
            assert any(p.startswith(family) and "1 anchor × " in p and "the model expects 2 anchors" in p for p in problems), problems
    elif case == "0.5-landmark-ignored":
        for conv in HEAD_CONVS:
            assert heads[conv]["anchors_per_location"] == (2 if _family(conv) == "LandmarkHead" else 1), conv
        assert not any(p.startswith("LandmarkHead") for p in problems), problems
        for family in ("ClassHead", "BboxHead"):
            assert any(p.startswith(family) and "1 anchor × " in p for p in problems), problems
    else:
        assert any(p.startswith("BboxHead") and "5 channels, not a multiple of 4" in p for p in problems), problems
        assert any(p.startswith("LandmarkHead") and "14 channels, not a multiple of 10" in p for p in problems), problems
        assert any(p.startswith("ClassHead") and "1 anchor × " in p for p in problems), problems
    assert "BboxHead" in finding.message and "ClassHead" in finding.message
    assert ("LandmarkHead" in finding.message) == (case != "0.5-landmark-ignored")
    assert "forward-failure" not in _kinds(report)
    assert "residual-mismatch" not in _kinds(report)
    return finding


@pytest.mark.parametrize("case", list(CASES))
def test_full_model_finding_names_the_heads_and_anchor_counts(
    retina_files: dict[str, dict[str, Path]], analyzed: Callable[..., Report], case: str
) -> None:
    report = analyzed(retina_files[case]["full"], input_shape=RETINA_SHAPE)
    finding = _check_head_finding(report, case)
    assert finding.evidence["expected_from"] == ["attribute"]
    if case != "0.3":
        # 128x128: 16*16 + 8*8 + 4*4 = 336 positions, one box each, against 672 priors.
        assert "Target sizes: [N, 336, 4]. Tensor sizes: [N, 672, 1]" in finding.message


@pytest.mark.parametrize("case", list(CASES))
def test_state_dict_with_arch_finding_names_the_heads_and_anchor_counts(
    retina_files: dict[str, dict[str, Path]], analyzed: Callable[..., Report], case: str
) -> None:
    report = analyzed(retina_files[case]["state"], arch=RETINA_ARCH, input_shape=RETINA_SHAPE)
    finding = _check_head_finding(report, case)
    reference = {"ClassHead": 4, "BboxHead": 8, "LandmarkHead": 20}
    assert {conv: entry["reference_out_channels"] for conv, entry in finding.evidence["heads"].items()} == {
        conv: reference[_family(conv)] for conv in HEAD_CONVS
    }
    if case != "0.3":
        assert "Target sizes: [N, 336, 4]. Tensor sizes: [N, 672, 1]" in finding.message


@pytest.mark.parametrize("case", list(CASES))
def test_state_dict_without_arch_reports_the_heads_statically(
    retina_files: dict[str, dict[str, Path]], analyzed: Callable[..., Report], case: str
) -> None:
    report = analyzed(retina_files[case]["state"], input_shape=RETINA_SHAPE)
    finding = _check_head_finding(report, case)
    # No model to run: values per anchor from RetinaFace's head names, 2 anchors from its layout.
    assert finding.evidence["expected_from"] == ["retinaface-layout"]
    assert all(entry["reference_out_channels"] is None for entry in finding.evidence["heads"].values())


def test_finding_gives_the_users_numbers_on_the_users_input_size(
    retina_files: dict[str, dict[str, Path]], analyzed: Callable[..., Report]
) -> None:
    report = analyzed(retina_files["0.5"]["full"], input_shape=(1, 3, 512, 512))
    finding = _one(report, "head-shape-mismatch")
    assert "Target sizes: [N, 5376, 4]. Tensor sizes: [N, 10752, 1]" in finding.message


# 3. the fix, applied -------------------------------------------------------------------


def _apply_fix(fix_code: str, dense: nn.Module) -> nn.Module:
    """Run the snippet as written, with its `model = ...` placeholder bound to `dense`."""
    placeholder = [line for line in fix_code.splitlines() if line.startswith("model = ...")]
    assert len(placeholder) == 1, fix_code
    code = fix_code.replace(placeholder[0], "model = dense  # the dense model, before pruning", 1)
    namespace: dict[str, Any] = {"dense": dense}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, "<fix_code>", "exec"), namespace)  # noqa: S102 - the analyzer's own snippet
    model = namespace["model"]
    assert isinstance(model, nn.Module)
    return model


@pytest.mark.parametrize(("case", "source"), [("0.5", "full"), ("0.3", "state"), ("0.5-landmark-ignored", "full")])
def test_suggested_ignored_layers_fix_gives_correct_outputs(
    retina_files: dict[str, dict[str, Path]], analyzed: Callable[..., Report], case: str, source: str
) -> None:
    arch = RETINA_ARCH if source == "state" else None
    finding = _one(analyzed(retina_files[case][source], arch=arch, input_shape=RETINA_SHAPE), "head-shape-mismatch")
    assert finding.fix_code and "ignored_layers" in finding.fix_code
    for conv in HEAD_CONVS:
        assert repr(conv) in finding.fix_code
    torch.manual_seed(2)
    dense = retinaface_mnet(phase="train").eval()
    dense_params = _params(dense)
    model = _apply_fix(finding.fix_code, dense).eval()
    assert _params(model) < dense_params * 0.9, "the fix must still prune the model"
    assert _head_widths(model) == {conv: 2 * VALUES_PER_ANCHOR[_family(conv)] for conv in HEAD_CONVS}
    with torch.no_grad():
        boxes, classes, landmarks = model(torch.randn(1, 3, 512, 512))
    assert boxes.shape == (1, 10752, 4)
    assert classes.shape == (1, 10752, 2)
    assert landmarks.shape == (1, 10752, 10)
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 512, 512))
    loss = multibox_loss(outputs, prior_boxes((512, 512)), _targets(2))
    assert torch.isfinite(loss)


# 4. a dense RetinaFace -----------------------------------------------------------------


@pytest.mark.parametrize(("source", "arch"), [("full", None), ("full", RETINA_ARCH), ("state", None), ("state", RETINA_ARCH)])
def test_dense_retinaface_reports_no_head_or_residual_problem(
    retina_files: dict[str, dict[str, Path]], analyzed: Callable[..., Report], source: str, arch: str | None
) -> None:
    report = analyzed(retina_files["dense"][source], arch=arch, input_shape=RETINA_SHAPE)
    kinds = _kinds(report)
    assert "head-shape-mismatch" not in kinds
    assert "residual-mismatch" not in kinds
    assert "forward-failure" not in kinds


# 5. a ResNet with one residual branch narrowed by hand -----------------------------------


@pytest.fixture(scope="module")
def narrowed_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _save(_narrowed_resnet18(), tmp_path_factory.mktemp("narrowed"), "resnet18")


def test_narrowed_branch_full_model_reports_the_add_with_both_operands(
    narrowed_files: dict[str, Path], analyzed: Callable[..., Report]
) -> None:
    report = analyzed(narrowed_files["full"], input_shape=RESNET_SHAPE)
    finding = _one(report, "residual-mismatch")
    assert finding.severity is Severity.ERROR
    assert {"layer2.0", "layer2.0.bn2", "layer2.0.downsample.1"} <= set(finding.modules)
    assert finding.modules[0] == "layer2.0"
    assert finding.evidence["op"] == "add"
    assert finding.evidence["module"] == "layer2.0"
    assert finding.evidence["operand_channels"] == {"layer2.0.bn2": 100, "layer2.0.downsample.1": 128}
    assert finding.evidence["found_by"] == "graph"
    assert "layer2.0.bn2 (100 channels)" in finding.message and "layer2.0.downsample.1 (128 channels)" in finding.message
    assert "forward-failure" not in _kinds(report)
    assert "head-shape-mismatch" not in _kinds(report)


def test_narrowed_branch_state_dict_without_arch_is_found_statically(
    narrowed_files: dict[str, Path], analyzed: Callable[..., Report]
) -> None:
    report = analyzed(narrowed_files["state"], input_shape=RESNET_SHAPE)
    finding = _one(report, "residual-mismatch")
    assert finding.modules[0] == "layer2.0"
    assert "layer2.0.bn2" in finding.modules
    assert finding.evidence["static"] is True
    assert finding.evidence["module"] == "layer2.0"
    assert finding.evidence["operand_channels"]["layer2.0.bn2"] == 100
    assert sorted(finding.evidence["operand_channels"].values()) == [100, 128]
    assert "statically" in finding.message
    assert "forward-failure" not in _kinds(report)


def test_narrowed_branch_state_dict_with_arch_lists_the_coupled_layers(
    narrowed_files: dict[str, Path], analyzed: Callable[..., Report]
) -> None:
    report = analyzed(narrowed_files["state"], arch=RESNET_ARCH, input_shape=RESNET_SHAPE)
    finding = _one(report, "residual-mismatch")
    assert finding.evidence["found_by"] == "graph"
    assert finding.evidence["operand_channels"] == {"layer2.0.bn2": 100, "layer2.0.downsample.1": 128}
    coupled = finding.evidence["coupled_layers"]
    assert {"layer2.0.downsample.0", "layer2.1.conv1", "layer2.0.conv2", "layer2.0.bn2"} <= set(coupled), coupled
    assert "forward-failure" not in _kinds(report)


def test_narrowed_branch_cli_reports_it_without_a_traceback(narrowed_files: dict[str, Path], run_cli: Any) -> None:
    result = run_cli(narrowed_files["full"], "--input-shape", "1,3,32,32")
    assert result.code == 1, result.err
    assert "residual-mismatch" in result.out
    assert "layer2.0.bn2" in result.out
    assert "Traceback" not in result.out + result.err


def test_residual_fix_code_is_valid_python(narrowed_files: dict[str, Path], analyzed: Callable[..., Report]) -> None:
    """The snippet is shown as code to run: it must at least parse (graph and static findings alike)."""
    for path, arch in ((narrowed_files["full"], None), (narrowed_files["state"], None)):
        finding = _one(analyzed(path, arch=arch, input_shape=RESNET_SHAPE), "residual-mismatch")
        assert finding.fix_code and "get_pruning_group" in finding.fix_code
        assert "'layer2.0.conv2'" in finding.fix_code
        # The idxs comment must not swallow the call's closing ')'.
        compile(finding.fix_code, f"<fix_code {finding.evidence['found_by']}>", "exec")


# 6. a correctly pruned ResNet -----------------------------------------------------------


@pytest.fixture(scope="module")
def pruned_resnet_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    model = resnet18().eval()
    _metaprune(model, torch.randn(RESNET_SHAPE), 0.4, [model.fc])
    assert model.layer2[0].conv2.out_channels == model.layer2[0].downsample[0].out_channels < 128
    return _save(model, tmp_path_factory.mktemp("pruned-resnet"), "resnet18")


@pytest.mark.parametrize(("source", "arch"), [("full", None), ("state", RESNET_ARCH), ("state", None)])
def test_correctly_pruned_resnet_reports_no_mismatch(
    pruned_resnet_files: dict[str, Path], analyzed: Callable[..., Report], source: str, arch: str | None
) -> None:
    report = analyzed(pruned_resnet_files[source], arch=arch, input_shape=RESNET_SHAPE)
    kinds = _kinds(report)
    assert "residual-mismatch" not in kinds
    assert "forward-failure" not in kinds
    assert "head-shape-mismatch" not in kinds


# 7. a concat feeding a fixed-width layer -----------------------------------------------


class ConcatNet(nn.Module):
    """Two conv branches concatenated, then a 1x1 conv that expects their dense sum (16)."""

    def __init__(self, right: int = 8) -> None:
        super().__init__()
        self.left = nn.Conv2d(3, 8, 3, padding=1)
        self.right = nn.Conv2d(3, right, 3, padding=1)
        self.fuse = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.left(x), self.right(x)], dim=1))


def test_narrowed_concat_branch_reports_the_cat_and_both_branches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "concat.pth"
    torch.save(ConcatNet(right=6).eval(), path)
    report = api.analyze(path, allow_modules=("tests",), input_shape=(1, 3, 16, 16))
    finding = _one(report, "residual-mismatch")
    assert finding.severity is Severity.ERROR
    assert {"left", "right"} <= set(finding.modules)
    assert finding.evidence["op"].startswith("cat")
    assert "fuse" in finding.evidence["op"]
    assert finding.evidence["operand_channels"] == {"left": 8, "right": 6}
    assert finding.evidence["found_by"] == "graph"
    assert "cat" in finding.message
    assert "left (8 channels)" in finding.message and "right (6 channels)" in finding.message
    assert "16" in finding.evidence["error"] and "14" in finding.evidence["error"]
    assert "forward-failure" not in _kinds(report)


def test_dense_concat_reports_nothing(tmp_path: Path) -> None:
    path = tmp_path / "concat.pth"
    torch.save(ConcatNet().eval(), path)
    report = api.analyze(path, allow_modules=("tests",), input_shape=(1, 3, 16, 16))
    assert not {"residual-mismatch", "forward-failure"} & set(_kinds(report))


# 8. no torch.fx: module hooks -----------------------------------------------------------


class GatedBlock(nn.Module):
    """A residual block with data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self, width: int = 8, out: int | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, out or width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out or width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        if x.sum() > 0:
            out = out * 2
        out = self.bn2(self.conv2(out))
        return torch.relu(out + x)


class GatedNet(nn.Module):
    def __init__(self, out: int | None = None) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = GatedBlock(8, out)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(self.stem(x)).mean((2, 3)))


class GatedResNet(nn.Module):
    """The zoo's narrowed resnet18 behind a data-dependent branch: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _narrowed_resnet18()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = x * 1.0
        return self.net(x)


def test_untraceable_model_residual_mismatch_found_by_module_hooks(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GatedNet(out=6).eval()
    assert trace_graph(model, torch.randn(1, 3, 16, 16)) is None  # the fallback is what is tested
    path = tmp_path / "gated.pth"
    torch.save(model, path)
    report = api.analyze(path, allow_modules=("tests",), input_shape=(1, 3, 16, 16))
    finding = _one(report, "residual-mismatch")
    assert finding.evidence["found_by"] == "module hooks"
    assert finding.modules[0] == "block"
    assert finding.evidence["module"] == "block"
    assert finding.evidence["op"] == "add"
    assert finding.evidence["operand_channels"]["block.bn2"] == 6
    assert sorted(finding.evidence["operand_channels"].values()) == [6, 8]
    assert "must match" in finding.evidence["error"]
    assert "forward-failure" not in _kinds(report)


def test_untraceable_dense_model_reports_nothing(tmp_path: Path) -> None:
    path = tmp_path / "gated.pth"
    torch.save(GatedNet().eval(), path)
    report = api.analyze(path, allow_modules=("tests",), input_shape=(1, 3, 16, 16))
    assert not {"residual-mismatch", "forward-failure"} & set(_kinds(report))


def test_module_hooks_name_the_shortcut_not_an_unrelated_module(tmp_path: Path) -> None:
    """Without torch.fx the 128-channel operand of layer2.0's add is the downsample's output."""
    model = GatedResNet().eval()
    path = tmp_path / "gated-resnet.pth"
    torch.save(model, path)
    report = api.analyze(path, allow_modules=("tests",), input_shape=RESNET_SHAPE)
    finding = _one(report, "residual-mismatch")
    assert finding.evidence["found_by"] == "module hooks"
    assert finding.evidence["module"] == "net.layer2.0"
    operands = finding.evidence["operand_channels"]
    assert operands.get("net.layer2.0.bn2") == 100
    wide = [name for name, width in operands.items() if width == 128]
    # layer2.0.relu (or bn1/conv1) ran inside the block with 128 channels but is not an
    # operand of the add: the shortcut is layer2.0.downsample.
    assert wide and wide[0] in ("net.layer2.0.downsample", "net.layer2.0.downsample.1"), operands



# -- a YOLO-style head: found by its type, one conv per level in a ModuleList ------------


class Detect(nn.Module):
    """YOLOv5's head, as ultralytics writes it: one 1x1 conv per pyramid level in the
    ModuleList `m`, anchors × (5 + classes) outputs each, decoded as (N, -1, 5 + classes)."""

    def __init__(self, channels: tuple[int, ...] = (8, 16, 32), classes: int = 2, anchors: int = 3) -> None:
        super().__init__()
        self.no, self.num_anchors = classes + 5, anchors
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * anchors, 1) for c in channels)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        outputs = []
        for conv, x in zip(self.m, features):
            y = conv(x)
            n, _, h, w = y.shape
            outputs.append(y.view(n, self.num_anchors, self.no, h, w).permute(0, 1, 3, 4, 2).reshape(n, -1, self.no))
        return torch.cat(outputs, 1)


class TinyYolo(nn.Module):
    """Layers in one list as YOLOv5's `model.model`: no module on the head's path is named
    like a head, so only its type says what it is (model.3.m.0 … model.3.m.2)."""

    def __init__(self, levels: int = 3) -> None:
        super().__init__()
        widths = (3, 8, 16, 32)[: levels + 1]
        self.model = nn.ModuleList([
            *(nn.Conv2d(a, b, 3, 2, 1) for a, b in zip(widths, widths[1:])), Detect(channels=widths[1:]),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = []
        for layer in self.model[:-1]:
            x = layer(x)
            features.append(x)
        return self.model[-1](features)


YOLO_LEVELS = ["model.3.m.0", "model.3.m.1", "model.3.m.2"]


def test_every_level_of_a_head_found_by_its_type_is_checked(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dense = TinyYolo().eval()
    torch.save(dense.state_dict(), tmp_path / "dense.pth")
    pruned = TinyYolo().eval()
    pruned.model[3].m[1] = nn.Conv2d(16, 14, 1)  # the middle level cut to 2 anchors of 7 values
    torch.save(pruned, tmp_path / "pruned.pth")
    report = api.analyze(tmp_path / "pruned.pth", allow_modules=("tests",), input_shape=(1, 3, 32, 32), baseline=tmp_path / "dense.pth")
    finding = _one(report, "head-shape-mismatch")
    assert list(finding.evidence["heads"]) == YOLO_LEVELS  # each level's conv, not only the last one
    assert finding.evidence["heads"]["model.3.m.1"]["out_channels"] == 14
    assert finding.evidence["heads"]["model.3.m.1"]["reference_out_channels"] == 21
    assert "model.3.m.1" in finding.message and "14" in finding.message
    assert all(finding.evidence["heads"][level]["out_channels"] == 21 for level in ("model.3.m.0", "model.3.m.2"))


def test_a_head_of_two_levels_found_by_its_type_is_checked_at_both(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(TinyYolo(levels=2).eval().state_dict(), tmp_path / "dense.pth")
    pruned = TinyYolo(levels=2).eval()
    pruned.model[2].m[0] = nn.Conv2d(8, 14, 1)
    torch.save(pruned, tmp_path / "pruned.pth")
    report = api.analyze(tmp_path / "pruned.pth", allow_modules=("tests",), input_shape=(1, 3, 32, 32), baseline=tmp_path / "dense.pth")
    assert list(_one(report, "head-shape-mismatch").evidence["heads"]) == ["model.2.m.0", "model.2.m.1"]


def test_a_dense_head_found_by_its_type_reports_nothing(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(TinyYolo().eval(), tmp_path / "dense.pth")
    report = api.analyze(tmp_path / "dense.pth", allow_modules=("tests",), input_shape=(1, 3, 32, 32))
    assert report.findings == [] or "head-shape-mismatch" not in _kinds(report)
    assert report.failures == []


class OneLevelYolo(nn.Module):
    """A one-level detector whose head, typed Detect, sits at the top as `out` with its conv
    directly inside (out.conv): found by type at the first level of the module tree."""

    def __init__(self, outputs: int = 21) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.out = Detect(channels=(8,))
        del self.out.m
        self.out.conv = nn.Conv2d(8, outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out.conv(self.stem(x))


def test_a_head_found_by_its_type_at_the_top_of_the_model_is_checked(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(OneLevelYolo().eval().state_dict(), tmp_path / "dense.pth")
    torch.save(OneLevelYolo(outputs=14).eval(), tmp_path / "pruned.pth")
    report = api.analyze(tmp_path / "pruned.pth", allow_modules=("tests",), input_shape=(1, 3, 32, 32), baseline=tmp_path / "dense.pth")
    finding = _one(report, "head-shape-mismatch")
    assert finding.evidence["heads"] == {
        "out.conv": {
            "out_channels": 14, "values_per_anchor": None, "anchors_per_location": None,
            "expected_anchors": 3, "reference_out_channels": 21,  # Detect's num_anchors
        }
    }


def _rpn_state(deltas: int) -> dict[str, torch.Tensor]:
    """Detectron2's names for a region-proposal head two levels down, as a bare state dict
    (no module types): 3 anchors, an objectness logit and 4 box deltas each."""
    torch.manual_seed(0)
    state = {"backbone.stem.conv1.weight": torch.randn(8, 3, 3, 3)}
    for name, outputs in (("conv", 8), ("objectness_logits", 3), ("anchor_deltas", deltas)):
        kernel = 3 if name == "conv" else 1
        state[f"proposal_generator.rpn_head.{name}.weight"] = torch.randn(outputs, 8, kernel, kernel)
        state[f"proposal_generator.rpn_head.{name}.bias"] = torch.randn(outputs)
    return state


def test_a_head_named_below_the_top_of_a_state_dict_is_checked_against_the_reference(tmp_path: Path) -> None:
    torch.save(_rpn_state(deltas=12), tmp_path / "dense.pth")
    torch.save(_rpn_state(deltas=10), tmp_path / "pruned.pth")
    report = api.analyze(tmp_path / "pruned.pth", baseline=tmp_path / "dense.pth")
    finding = _one(report, "head-shape-mismatch")
    assert list(finding.evidence["heads"]) == ["proposal_generator.rpn_head.anchor_deltas"]  # the head's last conv
    assert finding.evidence["heads"]["proposal_generator.rpn_head.anchor_deltas"]["out_channels"] == 10
    assert finding.evidence["heads"]["proposal_generator.rpn_head.anchor_deltas"]["reference_out_channels"] == 12


def _retina_head_state(tower: int, boxes_out: int = 36, steps: int = 4) -> dict[str, torch.Tensor]:
    """mmdetection's RetinaHead names, as a bare state dict: two towers of stacked convs in
    ModuleLists (cls_convs.N, reg_convs.N), then the outputs retina_cls (9 anchors × 2
    classes) and retina_reg (9 × 4)."""
    torch.manual_seed(0)
    state = {"backbone.conv1.weight": torch.randn(16, 3, 3, 3)}
    for stack in ("cls_convs", "reg_convs"):
        width = 16
        for step in range(steps):
            state[f"bbox_head.{stack}.{step}.conv.weight"] = torch.randn(tower, width, 3, 3)
            width = tower
    state["bbox_head.retina_cls.weight"] = torch.randn(18, tower, 3, 3)
    state["bbox_head.retina_reg.weight"] = torch.randn(boxes_out, tower, 3, 3)
    return state


@pytest.mark.parametrize("steps", [1, 2, 4])  # mmdetection's stacked_convs: 4 by default
def test_the_towers_of_a_head_are_not_its_outputs(tmp_path: Path, steps: int) -> None:
    torch.save(_retina_head_state(tower=16, steps=steps), tmp_path / "dense.pth")
    torch.save(_retina_head_state(tower=12, steps=steps), tmp_path / "towers-pruned.pth")
    torch.save(_retina_head_state(tower=12, boxes_out=30, steps=steps), tmp_path / "output-pruned.pth")
    towers = api.analyze(tmp_path / "towers-pruned.pth", baseline=tmp_path / "dense.pth")
    assert "head-shape-mismatch" not in _kinds(towers)  # narrower towers are correct pruning
    broken = _one(api.analyze(tmp_path / "output-pruned.pth", baseline=tmp_path / "dense.pth"), "head-shape-mismatch")
    assert list(broken.evidence["heads"]) == ["bbox_head.retina_reg"]  # the head's last conv, no tower step
    assert broken.evidence["heads"]["bbox_head.retina_reg"]["reference_out_channels"] == 36


class YoloxHead(nn.Module):
    """YOLOX's decoupled head: per level a stem, then class and box predictions, each kind in
    its own ModuleList. Every level has the FPN's width, so the stems' widths chain as a
    tower's would; the prediction lists are the outputs."""

    def __init__(self, width: int = 16, classes: int = 2, boxes: int = 4, levels: int = 3) -> None:
        super().__init__()
        self.stems = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(levels))
        self.cls_preds = nn.ModuleList(nn.Conv2d(width, classes, 1) for _ in range(levels))
        self.reg_preds = nn.ModuleList(nn.Conv2d(width, boxes, 1) for _ in range(levels))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        for stem, cls, reg, x in zip(self.stems, self.cls_preds, self.reg_preds, features):
            x = stem(x)
            outputs.append(torch.cat([reg(x), cls(x)], 1).flatten(2))
        return outputs


class TinyYolox(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fpn = nn.ModuleList(nn.Conv2d(3, 16, 3, 2 ** (i + 1), 1) for i in range(3))
        self.head = YoloxHead()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.head([conv(x) for conv in self.fpn])


def test_prediction_lists_beside_a_chain_of_stems_are_each_checked(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(TinyYolox().eval().state_dict(), tmp_path / "dense.pth")
    pruned = TinyYolox().eval()
    pruned.head.cls_preds[1] = nn.Conv2d(16, 1, 1)  # one level's class outputs cut
    torch.save(pruned, tmp_path / "pruned.pth")
    report = api.analyze(tmp_path / "pruned.pth", allow_modules=("tests",), input_shape=(1, 3, 32, 32), baseline=tmp_path / "dense.pth")
    finding = _one(report, "head-shape-mismatch")
    levels = [f"head.{kind}.{level}" for level in range(3) for kind in ("cls_preds", "reg_preds")]
    assert sorted(finding.evidence["heads"]) == sorted(levels)  # every prediction, no stem
    assert finding.evidence["heads"]["head.cls_preds.1"]["out_channels"] == 1
    assert finding.evidence["heads"]["head.cls_preds.1"]["reference_out_channels"] == 2
