"""`attention-head-mismatch`, and failed reshapes into heads attributed to their attention module.

Real transformers models (Llama, Qwen2 with grouped-query attention, GPT-2, BERT) and
pure-PyTorch ones (a timm-style fused qkv, nn.MultiheadAttention) from tiny configs,
cut by hand or pruned by torch-pruning without its head recipe. The oracles: the widths
the cut leaves (counted here), and the error the pruned model in memory raises.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from analyzer import api
from analyzer.load import load_checkpoint
from analyzer.model import Build, Model, Reference, rebuild_pruned, run_traced
from analyzer.model.attention import sites_from_layers
from analyzer.model.fit import compare
from analyzer.model.inputs import ExampleInput
from analyzer.passes import PassContext, run_passes
from analyzer.report.model import Finding, Severity
from analyzer.report.verdict import verdict
from analyzer.tensors.layers import build_layers

from . import transformers_models as tm

KIND = "attention-head-mismatch"
ATTN0 = "model.layers.0.self_attn"


def _kinds(findings: list[Finding]) -> list[str]:
    return [f.kind for f in findings]


def _one(findings: list[Finding], kind: str = KIND) -> Finding:
    found = [f for f in findings if f.kind == kind]
    assert len(found) == 1, f"expected one {kind}, got {_kinds(findings)}"
    return found[0]


def _static(path: Path, config: dict | None) -> list[Finding]:
    """The passes on the file alone, with the config.json a model folder would carry."""
    checkpoint = load_checkpoint(path)
    checkpoint.config = config
    results = run_passes(PassContext(checkpoint, build_layers(checkpoint)))
    assert not results.failures, results.failures
    findings = results.findings
    return findings


def _with_arch(path: Path, factory, example: ExampleInput) -> list[Finding]:
    """The passes with the dense factory as --arch, the rebuilt model run on `example` (token ids)."""
    checkpoint = load_checkpoint(path)
    dense = factory()
    module = rebuild_pruned(checkpoint, factory)
    shapes = {name: checkpoint.meta(name)[0] for name in checkpoint.effective_names()}
    reference = Reference(
        f"--arch tests.transformers_models:{factory.__name__}",
        {k: tuple(v.shape) for k, v in dense.state_dict().items()},
        {name: type(m).__name__ for name, m in dense.named_modules()},
        copy.deepcopy(dense),
    )
    build = Build(model=Model(module, example, "arch", run_traced(module, example)), reference=reference, fit=compare(dense, shapes))
    results = run_passes(PassContext(checkpoint, build_layers(checkpoint), build=build))
    assert not results.failures, results.failures
    findings = results.findings
    return findings


def _save(state: dict[str, torch.Tensor], folder: Path, name: str) -> Path:
    path = folder / f"{name}.pth"
    torch.save(state, path)
    return path


def _error_of(model: nn.Module, *args: object) -> str:
    with pytest.raises(RuntimeError) as info, torch.no_grad():
        model(*args)
    return str(info.value)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("attention")


# -- q_proj cut to 240 rows: 4 heads × 64 no longer holds ------------------------------------


@pytest.fixture(scope="module")
def cut_240(folder: Path) -> tuple[nn.Module, Path]:
    """llama_wide_heads with layer 0's q_proj (and o_proj's inputs) cut to 240 by hand."""
    model = tm.llama_wide_heads()
    attn = model.model.layers[0].self_attn
    attn.q_proj.weight = nn.Parameter(attn.q_proj.weight.data[:240].clone())
    attn.o_proj.weight = nn.Parameter(attn.o_proj.weight.data[:, :240].clone())
    return model, _save(model.state_dict(), folder, "llama_240")


def test_q_proj_cut_is_found_from_config_json(cut_240) -> None:
    _, path = cut_240
    finding = _one(_static(path, tm.llama_wide_heads().config.to_dict()))
    assert finding.modules == [ATTN0]
    assert "q_proj has 240 rows: not a multiple of head_dim 64 — 3.75 heads" in finding.message
    evidence = finding.evidence["modules"][ATTN0]
    assert evidence["rows"] == {"q_proj": 240, "k_proj": 256, "v_proj": 256, "o_proj (inputs)": 240}
    assert (evidence["head_dim"], evidence["num_heads"], evidence["heads_from"]) == (64, 4, "config.json")
    assert "prune_num_heads=True" in finding.fix_code and "prune_head_dims=False" in finding.fix_code
    compile(finding.fix_code, "<fix>", "exec")


def test_q_proj_cut_is_found_from_the_tensors_alone(cut_240) -> None:
    """No config, no --arch: queries and keys share head_dim, so q's rows must be a multiple of k's."""
    _, path = cut_240
    report = api.analyze(path)
    assert report.verdict != "No problems found."
    finding = _one(report.findings)
    assert finding.modules == [ATTN0]
    assert "q_proj has 240 rows: not a whole multiple of k_proj's 256" in finding.message


def test_q_proj_cut_with_the_dense_architecture_explains_the_crash(cut_240) -> None:
    model, path = cut_240
    example = tm.tokens()
    expected_error = _error_of(model, example.tensors[0])
    assert "shape '[1, 16, -1, 64]' is invalid for input of size 3840" in expected_error
    findings = _with_arch(path, tm.llama_wide_heads, example)
    finding = _one(findings)
    assert finding.modules == [ATTN0]
    assert "q_proj has 240 rows: not a multiple of head_dim 64 — 3.75 heads" in finding.message
    assert expected_error in finding.evidence["modules"][ATTN0]["error"]
    assert "forward-failure" not in _kinds(findings)  # explained by this finding
    removal = _one(findings, "channel-removal")
    assert removal.evidence["kept_of_original"] == {f"{ATTN0}.q_proj": [240, 256]}
    assert not removal.fix.startswith("Nothing to fix") and ATTN0 in removal.fix
    assert verdict(findings).startswith(f"{ATTN0} no longer holds whole attention heads")
    assert "attn.num_key_value_groups = " in finding.fix_code  # what LlamaAttention's forward reads
    compile(finding.fix_code, "<fix>", "exec")


# -- whole heads removed consistently: no finding ---------------------------------------------


@pytest.mark.parametrize(
    "factory, keep_query, keep_kv",
    [(tm.llama, [1, 3], [1, 3]), (tm.qwen2, [0, 1], [0]), (tm.qwen2, [0, 2], [0, 1])],
)
def test_consistently_head_pruned_models_get_no_finding(folder: Path, factory, keep_query, keep_kv) -> None:
    model = factory()
    tm.remove_heads(model, 0, keep_query, keep_kv)
    path = _save(model.state_dict(), folder, f"consistent_{factory.__name__}_{len(keep_kv)}")
    dense_config = factory().config.to_dict()
    updated = {**dense_config, "num_attention_heads": len(keep_query), "num_key_value_heads": len(keep_kv), "head_dim": 16}
    for config in (None, dense_config, updated):
        assert KIND not in _kinds(_static(path, config)), config
    findings = _with_arch(path, factory, tm.tokens())
    assert KIND not in _kinds(findings) and "forward-failure" not in _kinds(findings)


# -- grouped-query attention ------------------------------------------------------------------


def test_query_heads_that_do_not_split_over_key_value_heads(folder: Path) -> None:
    model = tm.qwen2()  # 4 query heads over 2 key/value heads of 16
    tm.remove_heads(model, 0, [0, 1, 2], [0, 1])
    path = _save(model.state_dict(), folder, "qwen2_3_over_2")
    finding = _one(_static(path, tm.qwen2().config.to_dict()))
    assert finding.modules == [ATTN0]
    assert "3 query heads do not split into groups over 2 key/value heads" in finding.message
    assert finding.evidence["modules"][ATTN0]["rows"]["q_proj"] == 48


def test_keys_and_values_with_different_heads(folder: Path) -> None:
    state = {k: v.clone() for k, v in tm.qwen2().state_dict().items()}
    for name in ("weight", "bias"):
        key = f"{ATTN0}.v_proj.{name}"
        state[key] = state[key][:16].clone()  # one value head of two
    path = _save(state, folder, "qwen2_v_cut")
    finding = _one(_static(path, tm.qwen2().config.to_dict()))
    assert "k_proj holds 2 heads but v_proj 1" in finding.message


def test_output_projection_that_no_longer_reads_the_heads(folder: Path) -> None:
    state = {k: v.clone() for k, v in tm.llama().state_dict().items()}
    key = f"{ATTN0}.o_proj.weight"
    state[key] = state[key][:, :48].clone()  # reads 3 heads; q_proj still gives 4
    finding = _one(_static(_save(state, folder, "llama_o_cut"), tm.llama().config.to_dict()))
    assert finding.modules == [ATTN0]
    assert "o_proj reads 48 inputs but q_proj gives 64" in finding.message


# -- fused projections --------------------------------------------------------------------------


def test_torch_pruning_without_the_head_recipe_breaks_a_fused_qkv(folder: Path) -> None:
    """MetaPruner without num_heads cuts a timm-style qkv inside heads; the full model, saved
    whole, fails as the model in memory does, and the finding says why."""
    model = tm.tiny_vit()
    tm.metaprune(model, torch.randn(tm.IMAGE), 0.25, ignored_layers=[model.head])
    model.hidden_dim = model.patch_embed.out_channels
    rows = model.attn.qkv.out_features
    assert rows % (3 * 8)  # the cut went inside heads of 8
    expected_error = _error_of(model, torch.randn(tm.IMAGE))
    path = folder / "tiny_vit_full.pth"
    torch.save(model, path)
    report = api.analyze(path, allow_modules=("tests",), input_shape=tm.IMAGE)
    finding = _one(report.findings)
    assert finding.modules == ["attn"]
    assert f"qkv has {rows} rows: not 3 equal parts of whole heads of head_dim 8" in finding.message
    assert expected_error in finding.message
    assert "forward-failure" not in _kinds(report.findings)
    assert "num_heads[attn.qkv] = 4" in finding.fix_code and "attn.num_heads = " in finding.fix_code
    # the recipe, run on the dense model, leaves whole heads and a model that runs
    dense = tm.tiny_vit()
    exec(compile(finding.fix_code.replace("model = ...", "model = dense"), "<fix>", "exec"), {"dense": dense})  # noqa: S102
    assert dense.attn.qkv.out_features == 3 * dense.attn.num_heads * 8 and dense.attn.num_heads == 2
    with torch.no_grad():
        assert dense(torch.randn(tm.IMAGE)).shape == (1, 5)


def test_head_recipe_without_the_attribute_update_names_the_stale_attribute(folder: Path) -> None:
    """Whole heads removed (qkv 96 -> 48 rows, head_dim 8 kept), num_heads left at 4: the model
    saved whole fails as in memory, and the finding names the attribute to update."""
    model = tm.tiny_vit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tp.pruner.MetaPruner(
            model, torch.randn(tm.IMAGE), importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5,
            ignored_layers=[model.head], num_heads={model.attn.qkv: 4}, prune_num_heads=True, prune_head_dims=False,
            head_pruning_ratio=0.5,
        ).step()
    assert model.attn.qkv.out_features == 48 and model.attn.num_heads == 4  # the recipe's update not done
    expected_error = _error_of(model, torch.randn(tm.IMAGE))
    path = folder / "tiny_vit_stale.pth"
    torch.save(model, path)
    report = api.analyze(path, allow_modules=("tests",), input_shape=tm.IMAGE)
    finding = _one(report.findings)
    assert finding.modules == ["attn"]
    assert "num_heads attribute is 4 but qkv holds 2 heads of 8" in finding.message
    assert expected_error in finding.message
    assert "attn.num_heads = attn.qkv.out_features // 3 // 8" in finding.fix_code


def test_head_dim_from_the_dense_baseline(folder: Path) -> None:
    """A state dict with no config and no --arch, against a dense model saved whole: head_dim
    comes from the baseline's attention module."""
    dense_path = folder / "tiny_vit_dense_full.pth"
    torch.save(tm.tiny_vit(), dense_path)
    state = {k: v.clone() for k, v in tm.tiny_vit().state_dict().items()}
    state["attn.qkv.weight"], state["attn.qkv.bias"] = state["attn.qkv.weight"][:90].clone(), state["attn.qkv.bias"][:90].clone()
    state["attn.proj.weight"] = state["attn.proj.weight"][:, :30].clone()
    path = _save(state, folder, "tiny_vit_qkv_90")
    report = api.analyze(path, baseline=dense_path, allow_modules=("tests",))
    finding = _one(report.findings)
    assert finding.modules == ["attn"]
    assert "qkv has 90 rows: not 3 equal parts of whole heads of head_dim 8 (3.75 heads each; head_dim from the dense reference)" in finding.message


def test_gpt2_fused_c_attn_cut_inside_a_head(folder: Path) -> None:
    state = {k: v.clone() for k, v in tm.gpt2().state_dict().items()}
    name = "transformer.h.1.attn.c_attn"
    state[f"{name}.weight"] = state[f"{name}.weight"][:, :92].clone()  # Conv1D: (in 32, out 96)
    state[f"{name}.bias"] = state[f"{name}.bias"][:92].clone()
    path = _save(state, folder, "gpt2_c_attn")
    finding = _one(_static(path, tm.gpt2().config.to_dict()))
    assert finding.modules == ["transformer.h.1.attn"]
    assert "c_attn has 92 rows: not 3 equal parts of whole heads of head_dim 8" in finding.message


def test_multihead_attention_embed_dim_off_its_heads(folder: Path) -> None:
    """embed_dim 26 with 4 heads: neither whole heads of 8 nor 4 equal heads."""
    dense = tm.mha_net().state_dict()
    keep = torch.arange(26)
    thirds = torch.cat([keep, keep + 32, keep + 64])
    state = {
        "inp.weight": dense["inp.weight"][keep], "inp.bias": dense["inp.bias"][keep],
        "attn.in_proj_weight": dense["attn.in_proj_weight"][thirds][:, keep], "attn.in_proj_bias": dense["attn.in_proj_bias"][thirds],
        "attn.out_proj.weight": dense["attn.out_proj.weight"][keep][:, keep], "attn.out_proj.bias": dense["attn.out_proj.bias"][keep],
        "norm.weight": dense["norm.weight"][keep], "norm.bias": dense["norm.bias"][keep],
        "out.weight": dense["out.weight"][:, keep], "out.bias": dense["out.bias"],
    }
    path = _save({k: v.clone() for k, v in state.items()}, folder, "mha_26")
    report = api.analyze(path, arch="tests.transformers_models:mha_net", input_shape=(1, 6, 10))
    finding = _one(report.findings)
    assert finding.modules == ["attn"]
    assert "embed_dim 26 is not a multiple of num_heads 4" in finding.message
    assert "forward-failure" not in _kinds(report.findings)


# -- dense models, and where the modules are found ----------------------------------------------


@pytest.mark.parametrize("factory", [tm.llama, tm.qwen2, tm.gpt2])
def test_dense_models_get_no_finding(folder: Path, factory) -> None:
    path = _save(factory().state_dict(), folder, f"dense_{factory.__name__}")
    findings = _static(path, factory().config.to_dict())
    assert KIND not in _kinds(findings)


def test_attention_modules_are_found_by_their_projections(folder: Path) -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100))
    found = {}
    for name, model in (("bert", bert), ("gpt2", tm.gpt2()), ("mha", tm.mha_net())):
        checkpoint = load_checkpoint(_save(model.state_dict(), folder, f"sites_{name}"))
        sites = sites_from_layers(build_layers(checkpoint), lambda key: checkpoint.meta(key)[0])
        found[name] = {s.name: (s.kind, s.o.name if s.o else None) for s in sites}
    assert found["bert"] == {
        f"encoder.layer.{i}.attention.self": ("separate", f"encoder.layer.{i}.attention.output.dense") for i in range(2)
    }
    assert found["gpt2"] == {f"transformer.h.{i}.attn": ("fused", f"transformer.h.{i}.attn.c_proj") for i in range(2)}
    assert found["mha"] == {"attn": ("in_proj", "attn.out_proj")}


# -- a failed reshape into heads is the attention module's -------------------------------------


class SplitHeads(nn.Module):
    """(B, T, F) -> (B, heads, T, head_dim) by a fixed head_dim: the reshape runs in here."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.head_dim = head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], -1, self.head_dim).transpose(1, 2)


class HandAttention(nn.Module):
    """Heads of 16 split by a helper module (nested: inside a container), or (inline) in its own forward."""

    def __init__(self, inline: bool, dim: int = 32, nested: bool = False) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        self.split = nn.Sequential(SplitHeads(16)) if nested else SplitHeads(16)
        self.inline = inline

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], -1, 16).transpose(1, 2) if self.inline else self.split(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        out = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
        return self.o_proj(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class Block(nn.Module):
    def __init__(self, direct: bool, nested: bool = False) -> None:
        super().__init__()
        self.attn = HandAttention(inline=direct, nested=nested)
        self.direct = direct

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.attn.forward(x) if self.direct else self.attn(x))  # forward(): no module hooks


class HandModel(nn.Module):
    def __init__(self, direct: bool = False, nested: bool = False) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.blocks = nn.ModuleList([Block(direct, nested)])
        self.head = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def hand_model() -> HandModel:
    torch.manual_seed(0)
    return HandModel().eval()


def hand_model_direct() -> HandModel:
    torch.manual_seed(0)
    return HandModel(direct=True).eval()


def hand_model_nested() -> HandModel:
    torch.manual_seed(0)
    return HandModel(nested=True).eval()


@pytest.mark.parametrize("arch", ["hand_model", "hand_model_direct", "hand_model_nested"])
def test_a_failed_reshape_into_heads_names_its_attention_module(folder: Path, arch: str) -> None:
    """q, k and v cut alike to 24 where heads are 16 wide: nothing says head_dim statically, so
    forward-failure reports it — at the attention module, whether the reshape ran in a child
    of it (hand_model), two levels down (hand_model_nested: attn.split.0) or in its own
    forward called past its hooks (hand_model_direct: the innermost module hooks saw is the
    block)."""
    state = {k: v.clone() for k, v in hand_model().state_dict().items()}
    for projection in ("q_proj", "k_proj", "v_proj"):
        state[f"blocks.0.attn.{projection}.weight"] = state[f"blocks.0.attn.{projection}.weight"][:24].clone()
        state[f"blocks.0.attn.{projection}.bias"] = state[f"blocks.0.attn.{projection}.bias"][:24].clone()
    state["blocks.0.attn.o_proj.weight"] = state["blocks.0.attn.o_proj.weight"][:, :24].clone()
    path = _save(state, folder, f"hand_{arch}")
    report = api.analyze(path, arch=f"tests.test_attention:{arch}", input_shape=(1, 6, 8))
    failure = _one(report.findings, "forward-failure")
    assert failure.modules == ["blocks.0.attn"]
    assert "shape '[1, 6, -1, 16]' is invalid for input of size 144" in failure.message


def test_a_saved_folder_cut_inside_a_head_leads_with_the_heads_not_the_load(tmp_path: Path) -> None:
    """A save_pretrained folder whose q_proj lost 4 rows in one layer: config.json cannot
    describe it (a state-dict mismatch), but loading it another way would still give a model
    that fails — the verdict leads with the heads, the thing to fix."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    model = LlamaForCausalLM(config)
    q_proj = model.model.layers[1].self_attn.q_proj
    q_proj.weight = nn.Parameter(q_proj.weight[:60].detach().clone())
    q_proj.out_features = 60
    with pytest.raises(RuntimeError, match=r"shape '\[1, 16, -1, 16\]' is invalid"):  # the oracle: transformers' own forward
        model(torch.randint(0, 256, (1, 16)))
    model.save_pretrained(tmp_path / "cut")
    report = api.analyze(tmp_path / "cut")
    assert {f.kind for f in report.findings if f.severity is Severity.ERROR} == {"state-dict-mismatch", "attention-head-mismatch"}
    assert report.verdict.startswith("model.layers.1.self_attn no longer holds whole attention heads: q_proj has 60 rows")


def test_whole_heads_removed_from_a_multihead_attention_state_dict_are_fine(tmp_path: Path) -> None:
    """nn.MultiheadAttention(48, 3) with head 1 removed everywhere (in and out): 32 = 2 whole
    heads of 16. Checked against the dense module (--baseline): by its head_dim, 16, not by
    its head count, which whole-head pruning changed."""
    torch.manual_seed(0)
    dense = nn.Sequential(nn.MultiheadAttention(48, 3))
    torch.save(dense, tmp_path / "dense.pth")
    state = dense.state_dict()
    kept = torch.cat([torch.arange(part * 48 + head * 16, part * 48 + head * 16 + 16) for part in range(3) for head in (0, 2)])
    columns = torch.cat([torch.arange(0, 16), torch.arange(32, 48)])
    pruned = {
        "0.in_proj_weight": state["0.in_proj_weight"][kept][:, columns].clone(),
        "0.in_proj_bias": state["0.in_proj_bias"][kept].clone(),
        "0.out_proj.weight": state["0.out_proj.weight"][columns][:, columns].clone(),
        "0.out_proj.bias": state["0.out_proj.bias"][columns].clone(),
    }
    # the oracle: torch's own module of 2 heads over 32 loads these tensors strictly and runs
    rebuilt = nn.Sequential(nn.MultiheadAttention(32, 2))
    rebuilt.load_state_dict(pruned)
    x = torch.randn(5, 1, 32)
    assert rebuilt[0](x, x, x)[0].shape == (5, 1, 32)
    torch.save(pruned, tmp_path / "pruned.pth")
    report = api.analyze(tmp_path / "pruned.pth", baseline=tmp_path / "dense.pth")
    assert "attention-head-mismatch" not in {f.kind for f in report.findings}
    assert "channel-removal" in {f.kind for f in report.findings}  # the reference was used


class FusedAttention(nn.Module):
    """timm's layout: one qkv projection, split by (3, heads, head_dim) in forward."""

    def __init__(self, dim: int = 64, num_heads: int = 4, head_dim: int = 16) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim)
        self.proj = nn.Linear(num_heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim))


class FusedBlock(nn.Module):
    def __init__(self, head_dim: int = 16) -> None:
        super().__init__()
        self.attn = FusedAttention(head_dim=head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x)


def test_head_dims_pruned_in_a_fused_qkv_are_fine_against_the_dense_heads(tmp_path: Path) -> None:
    """Every head keeps 10 of its 16 dims (qkv 192 → 120 rows, proj reads 40): no longer
    whole heads of the dense head_dim, but 3 × 4 heads of 10 — what per-head-dim pruning
    makes. Checked against the dense module (--baseline), whose attributes give 4 × 16."""
    torch.manual_seed(0)
    dense = FusedBlock().eval()
    torch.save(dense, tmp_path / "dense.pth")
    state = dense.state_dict()
    rows = torch.tensor([p * 64 + h * 16 + d for p in range(3) for h in range(4) for d in range(10)])
    columns = torch.tensor([h * 16 + d for h in range(4) for d in range(10)])
    pruned = {
        "attn.qkv.weight": state["attn.qkv.weight"][rows].clone(),
        "attn.qkv.bias": state["attn.qkv.bias"][rows].clone(),
        "attn.proj.weight": state["attn.proj.weight"][:, columns].clone(),
        "attn.proj.bias": state["attn.proj.bias"].clone(),
    }
    # the oracle: the same module with head_dim 10 loads these tensors strictly and runs
    rebuilt = FusedBlock(head_dim=10).eval()
    rebuilt.load_state_dict(pruned)
    assert rebuilt(torch.randn(2, 5, 64)).shape == (2, 5, 64)
    torch.save(pruned, tmp_path / "pruned.pth")
    report = api.analyze(tmp_path / "pruned.pth", baseline=tmp_path / "dense.pth", allow_modules=("tests",))
    assert "attention-head-mismatch" not in {f.kind for f in report.findings}
    assert "channel-removal" in {f.kind for f in report.findings}  # the reference was used


def test_config_fields_a_frozen_config_refuses_are_returned_not_dropped() -> None:
    import dataclasses

    from analyzer.model.attention import update_config

    @dataclasses.dataclass(frozen=True)
    class FrozenConfig:
        hidden_size: int = 64

    model = nn.Linear(2, 2)
    model.config = FrozenConfig()  # type: ignore[assignment]
    applied, refused = update_config(model, {}, 0, {"hidden_size": 48})
    assert applied == {} and model.config.hidden_size == 64
    assert list(refused) == ["hidden_size"] and refused["hidden_size"].startswith("FrozenInstanceError")
