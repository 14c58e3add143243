"""Tiny transformers models (random init, nothing downloaded) and the ways their users prune them.

The factories double as `--arch tests.hf_models:llama` etc.: each builds the dense model of
the same tiny config the tests save with `save_pretrained`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

VOCAB = 100


def llama_config():  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=VOCAB, max_position_embeddings=64,
    )


def qwen2_config():  # type: ignore[no-untyped-def]
    from transformers import Qwen2Config

    # Qwen2's config.json has no head_dim: the model derives hidden_size // num_attention_heads.
    return Qwen2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=VOCAB, max_position_embeddings=64,
    )


def bert_config():  # type: ignore[no-untyped-def]
    from transformers import BertConfig

    return BertConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB,
        max_position_embeddings=64,
    )


def vit_config():  # type: ignore[no-untyped-def]
    from transformers import ViTConfig

    return ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8, num_labels=10)


def convnext_config():  # type: ignore[no-untyped-def]
    from transformers import ConvNextConfig

    return ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, image_size=32, num_labels=10)


def llama() -> nn.Module:
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(llama_config()).eval()


def qwen2() -> nn.Module:
    from transformers import Qwen2ForCausalLM

    return Qwen2ForCausalLM(qwen2_config()).eval()


def bert() -> nn.Module:
    from transformers import BertForMaskedLM

    return BertForMaskedLM(bert_config()).eval()  # its decoder is tied to the word embeddings


def vit() -> nn.Module:
    from transformers import ViTForImageClassification

    return ViTForImageClassification(vit_config()).eval()


def convnext() -> nn.Module:
    from transformers import ConvNextForImageClassification

    return ConvNextForImageClassification(convnext_config()).eval()


# -- saving -----------------------------------------------------------------------------------


def save_bin(model: nn.Module, folder: Path, max_shard_size: str | int | None = None) -> None:
    """The `.bin` layout transformers 4 wrote with safe_serialization=False (transformers 5
    writes only safetensors): torch.save shards named and indexed by huggingface_hub's own
    splitter, pytorch_model.bin alone when one shard holds everything."""
    from huggingface_hub import split_torch_state_dict_into_shards

    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    split = split_torch_state_dict_into_shards(
        state, filename_pattern="pytorch_model{suffix}.bin", **({"max_shard_size": max_shard_size} if max_shard_size else {})
    )
    for filename, names in split.filename_to_tensors.items():
        torch.save({name: state[name] for name in names}, folder / filename)
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))


# -- pruning as users do it -----------------------------------------------------------------------


def _rows(linear: nn.Linear, keep: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.data[keep].clone())
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.data[keep].clone())
    linear.out_features = len(keep)


def _cols(linear: nn.Linear, keep: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.data[:, keep].clone())
    linear.in_features = len(keep)


def _head_rows(head_dim: int, kept_heads: list[int]) -> torch.Tensor:
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in kept_heads])


def prune_decoder(model: nn.Module, hidden: int | None = None, intermediate: list[int] | int | None = None, keep_kv_groups: list[int] | None = None) -> nn.Module:
    """Remove channels from a Llama/Qwen2 consistently, in place, the way torch-pruning's LLM
    recipe does (hidden channels everywhere, MLP channels per layer, whole key/value groups
    with their query heads) — and, as in torch-pruning issue #512, leave model.config alone."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    groups = config.num_attention_heads // config.num_key_value_heads
    generator = torch.Generator().manual_seed(1)
    if hidden is not None:
        keep = torch.randperm(config.hidden_size, generator=generator)[:hidden].sort().values
        embed = model.model.embed_tokens
        embed.weight = nn.Parameter(embed.weight.data[:, keep].clone())
        embed.embedding_dim = hidden
        _cols(model.lm_head, keep)
        for norm in [model.model.norm] + [n for layer in model.model.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]:
            norm.weight = nn.Parameter(norm.weight.data[keep].clone())
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for linear in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
                _cols(linear, keep)
            _rows(attn.o_proj, keep)
            _rows(mlp.down_proj, keep)
    widths = intermediate if isinstance(intermediate, list) else [intermediate] * len(model.model.layers)
    for layer, width in zip(model.model.layers, widths):
        if width is not None:
            keep = torch.randperm(config.intermediate_size, generator=generator)[:width].sort().values
            _rows(layer.mlp.gate_proj, keep)
            _rows(layer.mlp.up_proj, keep)
            _cols(layer.mlp.down_proj, keep)
    if keep_kv_groups is not None:
        kept_q = [g * groups + i for g in keep_kv_groups for i in range(groups)]
        for layer in model.model.layers:
            attn = layer.self_attn
            _rows(attn.q_proj, _head_rows(head_dim, kept_q))
            _rows(attn.k_proj, _head_rows(head_dim, keep_kv_groups))
            _rows(attn.v_proj, _head_rows(head_dim, keep_kv_groups))
            _cols(attn.o_proj, _head_rows(head_dim, kept_q))
    return model


def wanda_rows(model: nn.Module, within: str = "model.layers") -> list[str]:
    """Wanda-style unstructured pruning: in every Linear under `within`, zero the smallest-magnitude
    half of each output row (per-output comparison group). Returns the pruned layers' names."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.startswith(within):
            weight = module.weight.data
            cut = weight.shape[1] // 2
            smallest = weight.abs().argsort(dim=1)[:, :cut]
            weight.scatter_(1, smallest, 0.0)
            names.append(name)
    return names


def two_four(model: nn.Module, within: str = "model.layers") -> list[str]:
    """2:4 semi-structured pruning (SparseGPT/Wanda's 2:4 mode): of every 4 consecutive inputs
    of each row, the 2 smallest are zero."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.startswith(within):
            weight = module.weight.data
            groups = weight.view(weight.shape[0], -1, 4)
            smallest = groups.abs().argsort(dim=2)[:, :, :2]
            groups.scatter_(2, smallest, 0.0)
            names.append(name)
    return names


class TokenNet(nn.Module):
    """A plain (non-transformers) language model: its first layer is an nn.Embedding."""

    VOCAB = 50

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(self.VOCAB, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(ids).mean(1))
