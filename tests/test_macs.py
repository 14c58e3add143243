"""One MAC counter (analyzer/model/macs.py) for the whole report: published figures, exact
counts of pruned models written out from their layer shapes, attention in all its forms,
and the same number in the header, the profile and the pytest plugin's extra_info.

ResNet-50 and ViT-B/16 are built once each (ViT-B/16 with transformers' default config,
random init, no torchvision: about 350 MB); everything else is small.
"""

from __future__ import annotations

import json
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from analyzer import analyze
from analyzer.model.macs import count_macs
from analyzer.profile import MeasureOptions, ProfileOptions
from analyzer.zoo import resnet50

from .models import AttentionNet, attention_net_macs

ROOT = Path(__file__).resolve().parents[1]


def _within(value: int, published: float, tolerance: float = 0.01) -> bool:
    return abs(value / published - 1) <= tolerance


@pytest.fixture(scope="module")
def pruned_resnet50() -> nn.Module:
    """torch-pruning's MetaPruner at 50%, channels rounded to 8, as users call it."""
    import torch_pruning as tp

    torch.manual_seed(0)
    model = resnet50().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tp.pruner.MetaPruner(
            model, torch.randn(1, 3, 64, 64), importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=0.5, ignored_layers=[model.fc], round_to=8,
        ).step()
    return model


def _resnet_by_hand(model: nn.Module, size: int = 224) -> int:
    """MACs per sample of a (pruned) zoo ResNet from its weight shapes and the stage sizes:
    224 → 112 (stem conv) → 56 (max pool) → 56, 28, 14, 7 (stages; stride on each stage's
    first 3×3 conv and on its downsample). Independent of any forward pass."""
    stem, pooled = size // 2, size // 4
    before = {1: pooled, 2: pooled, 3: pooled // 2, 4: pooled // 4}
    after = {1: pooled, 2: pooled // 2, 3: pooled // 4, 4: pooled // 8}
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parts = name.split(".")
            if name == "conv1":
                size_in = size
            else:
                stage, block, layer = int(parts[0][-1]), int(parts[1]), parts[2]
                first = block == 0
                size_in = before[stage] if first and layer in ("conv1", "conv2", "downsample") else after[stage]
            k, s, p = module.kernel_size[0], module.stride[0], module.padding[0]
            size_out = (size_in + 2 * p - k) // s + 1
            out_channels, in_per_group = module.weight.shape[:2]
            total += out_channels * in_per_group * k * k * size_out * size_out
        elif isinstance(module, nn.Linear):
            total += module.weight.shape[0] * module.weight.shape[1]
    assert stem == 112 and after[4] == 7
    return total


def test_resnet50_matches_the_published_figure() -> None:
    model = resnet50().eval()
    count = count_macs(model, torch.randn(1, 3, 224, 224))
    assert _within(count.per_sample, 4.09e9), count.per_sample
    assert count.per_sample == _resnet_by_hand(model)
    assert set(count.by_op) == {"aten::convolution", "aten::addmm"}
    assert count.uncounted_ops["aten::add"] == 16  # the residual adds: listed, not counted
    assert count.by_module[""] == count.total and count.own_by_module["fc"] == 2048 * 1000


def test_torch_pruned_resnet50_is_counted_exactly(pruned_resnet50: nn.Module) -> None:
    expected = _resnet_by_hand(pruned_resnet50)
    count = count_macs(pruned_resnet50, torch.randn(1, 3, 224, 224))
    assert count.per_sample == count.total == expected
    assert expected < 0.35 * 4.09e9  # half the channels: about a quarter of the MACs


def test_vit_b16_matches_the_published_figure() -> None:
    import transformers  # a test dependency (the test extra): missing is a failure, not a skip
    torch.manual_seed(0)
    model = transformers.ViTModel(transformers.ViTConfig()).eval()  # ViT-B/16: 224², patch 16, 12 × 768
    count = count_macs(model, torch.randn(1, 3, 224, 224))
    assert _within(count.per_sample, 17.56e9), count.per_sample
    attention = sum(v for op, v in count.by_op.items() if "scaled_dot_product" in op)
    tokens, width = 197, 768
    assert attention == 12 * 2 * tokens * tokens * width  # QKᵀ and AV of every layer
    assert not any("scaled_dot_product" in op for op in count.uncounted_ops)


@pytest.mark.parametrize("training", [False, True], ids=["fast path", "python path"])
def test_attention_is_counted_in_every_form(training: bool) -> None:
    torch.manual_seed(0)
    model = AttentionNet().train(training)
    count = count_macs(model, torch.randn(3, 3, 16, 16))
    assert count.per_sample == attention_net_macs(16, 16)
    fused = "aten::_native_multi_head_attention" in count.by_op
    assert fused is (not training)  # eval without grad takes MultiheadAttention's fused kernel
    assert count.own_by_module[""] == 3 * 2 * 2 * 64 * 64 * 16  # the root's own matmuls (softmax(xxᵀ)x)


def test_encoder_layer_fast_path_is_counted() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    x = torch.randn(2, 10, 32)
    fused, python = count_macs(layer.eval(), x), count_macs(layer.train(), x)
    tokens, width, hidden = 10, 32, 64
    expected = 4 * tokens * width * width + 2 * tokens * tokens * width + 2 * tokens * width * hidden
    assert "aten::_transformer_encoder_layer_fwd" in fused.by_op or "aten::_native_multi_head_attention" in fused.by_op
    assert fused.per_sample == python.per_sample == expected


def test_counting_does_not_wrap_itself_in_dynamo() -> None:
    # torch wraps a dispatch mode's __torch_dispatch__ in dynamo.disable unless the mode says
    # not to, and that wrapper imports torch._dynamo (about a second of every --arch run).
    from analyzer.model.macs import _Counter

    assert _Counter._should_skip_dynamo() is False
    raw = _Counter.__dict__["__torch_dispatch__"]
    assert raw.__qualname__ == "_Counter.__torch_dispatch__" and not hasattr(raw, "__wrapped__")


PLUGIN_TEST = """
    import sys

    import torch

    sys.path.insert(0, {root!r})
    from tests.models import AttentionNet


    def test_attention_net(model_benchmark):
        torch.manual_seed(0)
        model_benchmark(AttentionNet(), torch.randn(1, 3, 16, 16))
"""


def test_one_number_in_header_profile_and_plugin(tmp_path: Path, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    path = tmp_path / "attention.pth"
    torch.save(AttentionNet().state_dict(), path)
    options = ProfileOptions(device="cpu", measure=MeasureOptions(min_time_s=0.02, max_time_s=2), layer_profile_s=0.01)
    report = analyze(path, arch="tests.models:AttentionNet", input_shape=(1, 3, 16, 16), profile=True, profile_options=options)
    header = report.summary.macs
    profiled = report.profile["flops"]["pruned"]
    assert profiled["input_shape"] == [1, 3, 16, 16]

    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the subprocess loads this checkout's plugin, not an installed one
    pytester.makepyfile(test_plugin=textwrap.dedent(PLUGIN_TEST.format(root=str(ROOT))))
    result = pytester.runpytest_subprocess("--benchmark-json=out.json", "--benchmark-max-time=0.05", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    plugin = json.loads((pytester.path / "out.json").read_text(encoding="utf-8"))["benchmarks"][0]["extra_info"]["macs"]

    assert header == profiled["macs"] == profiled["macs_per_sample"] == plugin == attention_net_macs(16, 16)
