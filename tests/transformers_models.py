"""Small real transformers models (tiny configs, random init) and the ways people prune them.

Factories are importable as `--arch tests.transformers_models:NAME`; each builds the same
weights every call (seeded). The pruning helpers do what torch-pruning's head recipes
do, or remove whole heads by hand, and update the attributes forward reads as those
recipes tell their users to.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch_pruning as tp
from transformers import (
    ConvNextConfig,
    ConvNextModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    ViTConfig,
    ViTForImageClassification,
)

from analyzer.model.inputs import ExampleInput, InputSpec

VOCAB = 100
TOKENS = 16
IMAGE = (1, 3, 32, 32)


def tokens(seed: int = 0, batch: int = 1) -> ExampleInput:
    """Token ids (batch, 16) within the vocabulary."""
    return ExampleInput.draw((InputSpec((batch, TOKENS), torch.int64, None, 0, VOCAB),), seed=seed)


def vit() -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        image_size=32, patch_size=8, num_labels=5,
    )
    return ViTForImageClassification(config).eval()


def convnext() -> ConvNextModel:
    torch.manual_seed(0)
    return ConvNextModel(ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, image_size=32)).eval()


def llama() -> LlamaForCausalLM:
    """4 heads of 16, no grouping."""
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def llama_wide_heads() -> LlamaForCausalLM:
    """4 heads of 64 (hidden 256): the issue's q_proj-cut-to-240 case."""
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=256, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def qwen2() -> Qwen2ForCausalLM:
    """Grouped-query attention: 4 query heads over 2 key/value heads of 16."""
    torch.manual_seed(0)
    config = Qwen2Config(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
    )
    return Qwen2ForCausalLM(config).eval()


def gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=32, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


class MhaNet(nn.Module):
    """A token mixer on nn.MultiheadAttention (4 heads of 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(10, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.norm = nn.LayerNorm(32)
        self.out = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        mixed, _ = self.attn(h, h, h, need_weights=False)
        return self.out(self.norm(h + mixed)).mean(1)


def mha_net() -> MhaNet:
    torch.manual_seed(0)
    return MhaNet().eval()


class FusedAttention(nn.Module):
    """timm's ViT attention in shape: one qkv Linear, reshaped by num_heads and head_dim."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(batch, tokens, -1))


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class TinyViT(nn.Module):
    """timm's VisionTransformer layout: cls_token and pos_embed on the model itself; and, as
    torchvision's, a hidden_dim its forward reshapes by."""

    def __init__(self, dim: int = 32, heads: int = 4, classes: int = 5) -> None:
        super().__init__()
        self.hidden_dim = dim
        self.patch_embed = nn.Conv2d(3, dim, 8, 8)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = FusedAttention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).reshape(x.shape[0], self.hidden_dim, -1).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = x + self.ls1(self.attn(self.norm1(x)))
        return self.head(self.norm(x)[:, 0])


def tiny_vit() -> TinyViT:
    torch.manual_seed(0)
    return TinyViT().eval()


# -- pruning -----------------------------------------------------------------------------


def prune_vit_heads(model: ViTForImageClassification, ratio: float = 0.5) -> ViTForImageClassification:
    """torch-pruning's ViT head recipe: whole heads (head_dim kept), then the attributes."""
    attentions = [m for m in model.modules() if hasattr(m, "q_proj") and hasattr(m, "num_attention_heads")]
    num_heads = {}
    for m in attentions:
        for projection in (m.q_proj, m.k_proj, m.v_proj):
            num_heads[projection] = m.num_attention_heads
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(
            model,
            torch.randn(IMAGE),
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=[model.classifier],
            output_transform=lambda out: out.logits.sum(),
            num_heads=num_heads,
            prune_num_heads=True,
            prune_head_dims=False,
            head_pruning_ratio=ratio,
        )
        pruner.step()
    for m in attentions:
        m.num_attention_heads = pruner.num_heads[m.q_proj]
        m.head_dim = m.q_proj.out_features // m.num_attention_heads
    return model


def prune_vit_head_dims(model: ViTForImageClassification, ratio: float = 0.25) -> ViTForImageClassification:
    """torch-pruning's ViT recipe with its default head-dim pruning: every head kept, the same
    dims removed from each; then the attributes, and config.json, as from_pretrained reads them."""
    attentions = [m for m in model.modules() if hasattr(m, "q_proj") and hasattr(m, "num_attention_heads")]
    num_heads = {p: m.num_attention_heads for m in attentions for p in (m.q_proj, m.k_proj, m.v_proj)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tp.pruner.MetaPruner(
            model,
            torch.randn(IMAGE),
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=[model.classifier],
            output_transform=lambda out: out.logits.sum(),
            num_heads=num_heads,
            prune_num_heads=False,
            prune_head_dims=True,
        ).step()
    for m in attentions:
        m.head_dim = m.q_proj.out_features // m.num_attention_heads
        m.scaling = m.head_dim**-0.5  # what from_pretrained computes from the updated config
    model.config.hidden_size = model.classifier.in_features
    model.config.intermediate_size = model.vit.layers[0].mlp.fc1.out_features
    return model


def prune_tiny_vit_heads(model: TinyViT, ratio: float = 0.5) -> TinyViT:
    """torch-pruning's timm ViT recipe on a fused qkv: num_heads={qkv: heads}, then the attributes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(
            model,
            torch.randn(IMAGE),
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=[model.head],
            num_heads={model.attn.qkv: model.attn.num_heads},
            prune_num_heads=True,
            prune_head_dims=False,
            head_pruning_ratio=ratio,
        )
        pruner.step()
    model.attn.num_heads = pruner.num_heads[model.attn.qkv]
    model.attn.head_dim = model.attn.qkv.out_features // (3 * model.attn.num_heads)
    # then the embedding width (cls_token, pos_embed, norms, layer scale), heads left alone
    metaprune(model, torch.randn(IMAGE), 0.25, ignored_layers=[model.head, model.attn.qkv])
    model.hidden_dim = model.patch_embed.out_channels  # as torch-pruning's torchvision ViT recipe does
    return model


def metaprune(model: nn.Module, example: torch.Tensor, ratio: float, **kwargs: object) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio, **kwargs).step()
    return model


def _keep_rows(linear: nn.Linear, rows: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.data[rows].clone())
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.data[rows].clone())
    linear.out_features = len(rows)


def _keep_columns(linear: nn.Linear, columns: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.data[:, columns].clone())
    linear.in_features = len(columns)


def _head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])


def remove_heads(model: nn.Module, layer: int, keep_query: list[int], keep_kv: list[int]) -> None:
    """Remove attention heads of one decoder layer by hand, consistently: the kept query
    heads' rows of q_proj and columns of o_proj, the kept key/value heads' rows of k_proj
    and v_proj; then the attributes forward reads (as torch-pruning's LLM recipe does)."""
    attn = model.model.layers[layer].self_attn
    d = attn.head_dim
    _keep_rows(attn.q_proj, _head_rows(keep_query, d))
    _keep_columns(attn.o_proj, _head_rows(keep_query, d))
    for projection in (attn.k_proj, attn.v_proj):
        _keep_rows(projection, _head_rows(keep_kv, d))
    attn.num_key_value_groups = len(keep_query) // len(keep_kv)


def cut_mlp(model: nn.Module, layer: int, keep: int) -> None:
    """Keep the first `keep` intermediate channels of one decoder layer's MLP."""
    mlp = model.model.layers[layer].mlp
    rows = torch.arange(keep)
    _keep_rows(mlp.gate_proj, rows)
    _keep_rows(mlp.up_proj, rows)
    _keep_columns(mlp.down_proj, rows)


def cut_hidden(model: nn.Module, keep: torch.Tensor) -> None:
    """Keep the hidden (residual) channels `keep` everywhere in a Llama-style model, by hand."""
    inner = model.model
    inner.embed_tokens.weight = nn.Parameter(inner.embed_tokens.weight.data[:, keep].clone())
    inner.embed_tokens.embedding_dim = len(keep)
    norms = [inner.norm]
    for layer in inner.layers:
        norms += [layer.input_layernorm, layer.post_attention_layernorm]
        attn, mlp = layer.self_attn, layer.mlp
        for linear in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            _keep_columns(linear, keep)
        for linear in (attn.o_proj, mlp.down_proj):
            _keep_rows(linear, keep)
    for norm in norms:
        norm.weight = nn.Parameter(norm.weight.data[keep].clone())
    _keep_columns(model.lm_head, keep)
