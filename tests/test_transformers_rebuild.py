"""Rebuilding what torch-pruning prunes beyond Conv/Linear/Norm, on real transformers models.

ViT pruned with torch-pruning's head recipe, ConvNeXt with MetaPruner, a timm-style ViT
whose cls_token and pos_embed sit on the model itself, nn.MultiheadAttention, and Llama,
Qwen2 (grouped-query) and GPT-2 (transformers' Conv1D) pruned by hand: with `--arch` of
the dense factory they are channel removal, not a wrong architecture, and
`load_pruned` gives the pruned model back — outputs equal to the one in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from analyzer import api
from analyzer.api import load_pruned
from analyzer.errors import BuildError
from analyzer.model.fit import PRUNED, WRONG_ARCH
from analyzer.report.model import Finding, Report
from analyzer.tensors.layers import build_layers
from analyzer.load import load_checkpoint
from analyzer.model import rebuild_pruned

from . import transformers_models as tm

ARCH = "tests.transformers_models:"


def _kinds(report: Report) -> list[str]:
    return [f.kind for f in report.findings]


def _one(report: Report, kind: str) -> Finding:
    found = [f for f in report.findings if f.kind == kind]
    assert len(found) == 1, f"expected one {kind}, got {_kinds(report)}"
    return found[0]


def _saved(model: nn.Module, folder: Path, name: str) -> Path:
    path = folder / f"{name}.pth"
    torch.save(model.state_dict(), path)
    return path


def _narrower(pruned: nn.Module, dense: nn.Module) -> dict[str, list[int]]:
    """Every Conv/Linear whose output width the pruning cut, counted on the modules themselves."""
    dense_modules = dict(dense.named_modules())
    narrower = {}
    for name, module in pruned.named_modules():
        width = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features if isinstance(module, nn.Linear) else None
        original = dense_modules[name]
        original_width = original.out_channels if isinstance(original, nn.Conv2d) else getattr(original, "out_features", None)
        if width is not None and width < original_width:
            narrower[name] = [width, original_width]
    return narrower


def _assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5), f"max abs diff {float((got - want).abs().max())}"


# -- fixtures: each model built and pruned once ------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("transformers")


@pytest.fixture(scope="module")
def vit_pruned(folder: Path) -> tuple[nn.Module, Path]:
    model = tm.prune_vit_heads(tm.vit())
    return model, _saved(model, folder, "vit")


@pytest.fixture(scope="module")
def convnext_pruned(folder: Path) -> tuple[nn.Module, Path]:
    model = tm.metaprune(tm.convnext(), torch.randn(tm.IMAGE), 0.3, output_transform=lambda out: out.pooler_output)
    return model, _saved(model, folder, "convnext")


@pytest.fixture(scope="module")
def tiny_vit_pruned(folder: Path) -> tuple[nn.Module, Path]:
    model = tm.prune_tiny_vit_heads(tm.tiny_vit())
    return model, _saved(model, folder, "tiny_vit")


# -- ViT: torch-pruning's head recipe ----------------------------------------------------


@pytest.fixture(scope="module")
def vit_report(vit_pruned: tuple[nn.Module, Path]) -> Report:
    return api.analyze(vit_pruned[1], arch=ARCH + "vit", input_shape=tm.IMAGE)


def test_head_pruned_vit_is_channel_removal_not_a_wrong_architecture(vit_pruned, vit_report: Report) -> None:
    model, _ = vit_pruned
    kinds = _kinds(vit_report)
    for wrong in ("state-dict-mismatch", "forward-failure", "attention-head-mismatch"):
        assert wrong not in kinds, vit_report.findings
    removal = _one(vit_report, "channel-removal")
    expected = _narrower(model, tm.vit())
    assert expected["vit.layers.0.attention.q_proj"] == [16, 32]  # 2 of 4 heads of 8 kept
    assert removal.evidence["kept_of_original"] == expected
    assert vit_report.verdict.startswith("Channels were really removed")


def test_load_pruned_vit_gives_the_pruned_model_back(vit_pruned) -> None:
    model, path = vit_pruned
    rebuilt = load_pruned(path, tm.vit)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _assert_close(rebuilt(x).logits, model(x).logits)
    for name, attn in rebuilt.named_modules():
        if hasattr(attn, "q_proj"):
            assert (attn.num_attention_heads, attn.head_dim) == (2, 8), name
    assert (rebuilt.config.num_attention_heads, rebuilt.config.hidden_size) == (2, 16)
    assert rebuilt.config.intermediate_size == model.vit.layers[0].mlp.fc1.out_features == 32


def test_head_dim_pruned_vit_is_rebuilt_as_its_config_json_says(folder: Path) -> None:
    """4 heads of 6 or 3 heads of 8? The widths (24) hold both; an updated config.json says which."""
    model = tm.prune_vit_head_dims(tm.vit())
    attn = model.vit.layers[0].attention
    assert (attn.q_proj.out_features, attn.num_attention_heads, attn.head_dim) == (24, 4, 6)
    path = _saved(model, folder, "vit_head_dims")
    checkpoint = load_checkpoint(path)
    checkpoint.config = model.config.to_dict()  # as read from the model folder's config.json
    rebuilt = rebuild_pruned(checkpoint, tm.vit)
    rebuilt_attn = rebuilt.vit.layers[0].attention
    assert (rebuilt_attn.num_attention_heads, rebuilt_attn.head_dim, rebuilt_attn.scaling) == (4, 6, 6**-0.5)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _assert_close(rebuilt(x).logits, model(x).logits)


# -- ConvNeXt: layer scales, channels-first LayerNorms, depthwise convs --------------------


def test_metapruned_convnext_is_rebuilt_with_its_layer_scales(convnext_pruned) -> None:
    model, path = convnext_pruned
    report = api.analyze(path, arch=ARCH + "convnext", input_shape=tm.IMAGE)
    assert "state-dict-mismatch" not in _kinds(report) and "forward-failure" not in _kinds(report)
    assert _one(report, "channel-removal").evidence["kept_of_original"] == _narrower(model, tm.convnext())
    rebuilt = load_pruned(path, tm.convnext)
    width = model.encoder.stages[0].layers[0].dwconv.out_channels
    assert width < 16 and rebuilt.encoder.stages[0].layers[0].layer_scale_parameter.shape == (width,)
    x = torch.randn(tm.IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _assert_close(rebuilt(x).pooler_output, model(x).pooler_output)


# -- parameters of the model itself, fused qkv -----------------------------------------------


def test_root_level_parameters_and_fused_qkv_heads_are_rebuilt(tiny_vit_pruned) -> None:
    model, path = tiny_vit_pruned
    assert model.attn.num_heads == 2 and model.cls_token.shape[-1] == 24
    rebuilt = load_pruned(path, tm.tiny_vit)
    assert rebuilt.cls_token.shape == model.cls_token.shape and rebuilt.pos_embed.shape == model.pos_embed.shape
    assert (rebuilt.attn.num_heads, rebuilt.attn.head_dim) == (2, 8)
    assert rebuilt.ls1.gamma.shape == model.ls1.gamma.shape
    assert rebuilt.hidden_dim == 24  # the model's own attribute, read by its forward
    x = torch.randn(tm.IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _assert_close(rebuilt(x), model(x))


def test_root_level_parameters_are_named_not_the_empty_module(tiny_vit_pruned, folder: Path) -> None:
    """A checkpoint that is not a pruned version (pos_embed wider than the model's) names the
    parameter: never module ''."""
    model, _ = tiny_vit_pruned
    state = {k: v.clone() for k, v in tm.tiny_vit().state_dict().items()}
    state["pos_embed"] = torch.zeros(1, 50, 32)  # another image size: more positions
    path = folder / "other_positions.pth"
    torch.save(state, path)
    report = api.analyze(path, arch=ARCH + "tiny_vit", input_shape=tm.IMAGE)
    finding = _one(report, "state-dict-mismatch")
    assert finding.evidence["cause"] == WRONG_ARCH
    assert "" not in finding.modules and finding.modules == ["pos_embed"]


# -- a layer that really cannot be resized ----------------------------------------------


class _GroupNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3)
        self.norm = nn.GroupNorm(4, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


def group_norm_net() -> _GroupNormNet:
    torch.manual_seed(0)
    return _GroupNormNet().eval()


def test_a_layer_that_cannot_be_resized_is_named_as_such(folder: Path) -> None:
    state = {k: v[:30].clone() for k, v in group_norm_net().state_dict().items()}  # 30 channels, 4 groups
    path = folder / "groupnorm.pth"
    torch.save(state, path)
    report = api.analyze(path, arch="tests.test_transformers_rebuild:group_norm_net", input_shape=(1, 3, 8, 8))
    finding = _one(report, "state-dict-mismatch")
    assert finding.evidence["cause"] == PRUNED
    assert finding.evidence["not_resizable"] == ["norm (GroupNorm: 30 channels do not split into 4 groups)"]
    assert "norm" in finding.message and "different architecture" not in finding.message
    with pytest.raises(BuildError, match=r"pruned, but these layers cannot be resized: norm \(GroupNorm: 30"):
        load_pruned(path, group_norm_net)


# -- nn.MultiheadAttention pruned by torch-pruning -------------------------------------------


def test_metapruned_multihead_attention_is_rebuilt(folder: Path) -> None:
    model = tm.mha_net()
    tm.metaprune(model, torch.randn(1, 6, 10), 0.25, ignored_layers=[model.out])
    assert (model.attn.embed_dim, model.attn.num_heads, model.attn.head_dim) == (24, 4, 6)  # torch-pruning keeps heads
    path = _saved(model, folder, "mha")
    rebuilt = load_pruned(path, tm.mha_net)
    assert (rebuilt.attn.embed_dim, rebuilt.attn.num_heads, rebuilt.attn.head_dim) == (24, 4, 6)
    assert rebuilt.attn.kdim == rebuilt.attn.vdim == 24
    x = torch.randn(2, 6, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _assert_close(rebuilt(x), model(x))


# -- Llama and Qwen2 pruned by hand, run on token ids ------------------------------------


def _run_lm(model: nn.Module, seed: int = 1) -> torch.Tensor:
    with torch.no_grad():
        return tm.tokens(seed, batch=2).call(model).logits


@pytest.mark.parametrize(
    "factory, keep_query, keep_kv",
    [
        (tm.llama, [0, 2], [0, 2]),  # half the heads, no grouping
        (tm.qwen2, [0, 1], [0]),  # one key/value head and its group: 2 query heads over 1
        (tm.qwen2, [1, 3], [0, 1]),  # one query head from each group: groups of 1
    ],
)
def test_head_pruned_language_models_are_rebuilt_and_run_on_token_ids(
    folder: Path, factory: Callable[[], nn.Module], keep_query: list[int], keep_kv: list[int]
) -> None:
    model = factory()
    tm.remove_heads(model, 0, keep_query, keep_kv)
    tm.cut_mlp(model, 1, 40)
    path = _saved(model, folder, f"{factory.__name__}_{len(keep_query)}_{len(keep_kv)}")
    rebuilt = load_pruned(path, factory)
    attn = rebuilt.model.layers[0].self_attn
    assert attn.q_proj.out_features == 16 * len(keep_query) and attn.head_dim == 16
    assert attn.num_key_value_groups == len(keep_query) // len(keep_kv)
    assert rebuilt.model.layers[1].mlp.gate_proj.out_features == 40
    assert rebuilt.config.num_attention_heads == model.config.num_attention_heads  # layers differ: left alone
    _assert_close(_run_lm(rebuilt), _run_lm(model))


def test_hidden_width_cut_resizes_rms_norms_embeddings_and_the_config(folder: Path) -> None:
    model = tm.llama()
    tm.remove_heads(model, 0, [0, 2], [0, 2])
    tm.cut_hidden(model, torch.tensor([c for c in range(64) if c % 4]))  # 48 of 64
    path = _saved(model, folder, "llama_hidden_48")
    rebuilt = load_pruned(path, tm.llama)
    norm = rebuilt.model.layers[1].input_layernorm
    assert type(norm).__name__ == "LlamaRMSNorm" and norm.weight.shape == (48,)
    assert rebuilt.model.embed_tokens.embedding_dim == 48 and rebuilt.lm_head.in_features == 48
    assert rebuilt.config.hidden_size == 48  # one width in every layer: the config says it
    assert rebuilt.config.num_attention_heads == 4 and rebuilt.config.head_dim == 16  # heads differ per layer
    _assert_close(_run_lm(rebuilt), _run_lm(model))


# -- GPT-2: transformers' Conv1D stores (in, out) ----------------------------------------------


def test_zeroed_output_column_of_a_conv1d_is_a_zeroed_output_channel(folder: Path) -> None:
    model = tm.gpt2()
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[:, [5, 77]] = 0  # (in 32, out 128): two outputs
        model.transformer.h[0].mlp.c_fc.bias[[5, 77]] = 0
    path = _saved(model, folder, "gpt2_zeroed")
    checkpoint = load_checkpoint(path)
    layers = {layer.name: layer for layer in build_layers(checkpoint)}
    c_fc, attn_proj = layers["transformer.h.0.mlp.c_fc"], layers["transformer.h.0.attn.c_proj"]
    assert c_fc.is_linear and not c_fc.is_conv and (c_fc.out_width(), c_fc.in_width()) == (128, 32)
    assert attn_proj.type == c_fc.type == "Conv1D"  # square: stored like the other c_proj
    report = api.analyze(path)
    finding = _one(report, "zeroed-channels")
    assert finding.modules == ["transformer.h.0.mlp.c_fc"]
    assert finding.evidence["per_layer"]["transformer.h.0.mlp.c_fc"]["zeroed"] == 2
    assert finding.evidence["per_layer"]["transformer.h.0.mlp.c_fc"]["of"] == 128
    assert finding.evidence["params_removable_at_least"] == 2 * (32 + 1)  # a column of 32 inputs and its bias


def test_conv1d_layers_are_rebuilt_narrower(folder: Path) -> None:
    model = tm.gpt2()
    mlp = model.transformer.h[1].mlp
    keep = torch.arange(0, 128, 2)  # every other intermediate channel
    mlp.c_fc.weight = nn.Parameter(mlp.c_fc.weight.data[:, keep].clone())
    mlp.c_fc.bias = nn.Parameter(mlp.c_fc.bias.data[keep].clone())
    mlp.c_fc.nf = len(keep)
    mlp.c_proj.weight = nn.Parameter(mlp.c_proj.weight.data[keep].clone())
    mlp.c_proj.nx = len(keep)
    path = _saved(model, folder, "gpt2_mlp")
    report = api.analyze(path, arch=ARCH + "gpt2", input_shape=(1, 8))
    removal = _one(report, "channel-removal")
    assert removal.evidence["kept_of_original"] == {"transformer.h.1.mlp.c_fc": [64, 128]}
    rebuilt = load_pruned(path, tm.gpt2)
    assert (rebuilt.transformer.h[1].mlp.c_fc.nf, rebuilt.transformer.h[1].mlp.c_proj.nx) == (64, 64)
    _assert_close(_run_lm(rebuilt), _run_lm(model))


# -- tied weights stored once (save_pretrained keeps the embedding, drops lm_head) -------------


class _TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(tm.VOCAB, 32)
        self.mix = nn.Linear(32, 32)
        self.lm_head = nn.Linear(32, tm.VOCAB, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(torch.tanh(self.mix(self.embed(ids))))


def tied_lm() -> _TiedLM:
    torch.manual_seed(0)
    return _TiedLM().eval()


def test_tied_embedding_stored_once_is_rebuilt_and_tied_again(folder: Path) -> None:
    model = tied_lm()
    keep = torch.tensor([c for c in range(32) if c % 4 != 3])  # 24 of 32 hidden channels
    state = {
        "embed.weight": model.embed.weight.data[:, keep].clone(),
        "mix.weight": model.mix.weight.data[keep][:, keep].clone(),
        "mix.bias": model.mix.bias.data[keep].clone(),
    }  # no lm_head.weight: it is the embedding
    path = folder / "tied.pth"
    torch.save(state, path)
    rebuilt = load_pruned(path, tied_lm)
    assert rebuilt.lm_head.weight is rebuilt.embed.weight and rebuilt.lm_head.in_features == 24
    assert rebuilt.embed.embedding_dim == 24
    ids = tm.tokens(seed=2).tensors[0]
    pruned = tied_lm()
    pruned.embed.weight = nn.Parameter(state["embed.weight"])
    pruned.lm_head.weight = pruned.embed.weight
    pruned.mix.weight, pruned.mix.bias = nn.Parameter(state["mix.weight"]), nn.Parameter(state["mix.bias"])
    with torch.no_grad():
        _assert_close(rebuilt(ids), pruned(ids))
