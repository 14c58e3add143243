"""Attention modules: where they are, how wide their projections are, and their heads.

An attention module is found by what it holds, from tensor names alone or from a module
tree: query/key/value projections side by side (Llama's q_proj/k_proj/v_proj/o_proj,
BERT's query/key/value with the output in the sibling output.dense, T5's q/k/v/o), one
fused projection (timm's qkv, GPT-2's c_attn, Falcon's query_key_value) or
`nn.MultiheadAttention`'s in_proj_weight. Its heads — head_dim, query heads, key/value
heads — come from the module's own attributes (what its forward reshapes by), from a
Hugging Face config, or from the dense reference; head_dim is what stays fixed when
torch-pruning removes whole heads.

`fit_heads` is the rebuild side: after the fit resized the projections, it sets the
attributes forward reads (num_heads, head_dim, num_key_value_groups, all_head_size, ...)
from the new widths, on each module and on a transformers model's shared config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch.nn as nn

from ..tensors.layers import Layer, weight_axes

__all__ = [
    "Projection",
    "AttentionSite",
    "Heads",
    "sites_from_layers",
    "sites_from_module",
    "module_heads",
    "config_heads",
    "config_dict",
    "dense_heads",
    "fit_heads",
    "update_config",
    "HEAD_DIM_ATTRS",
    "HEADS_ATTRS",
    "KV_HEADS_ATTRS",
    "GROUPS_ATTRS",
    "WIDTH_ATTRS",
]

# Projection names, in the order they are tried. An output projection only counts next
# to query/key/value (or a fused projection): "dense" or "proj" alone is any layer.
_QUERY = ("q_proj", "query", "q", "wq", "q_lin", "to_q", "linear_q", "q_attn")
_KEY = ("k_proj", "key", "k", "wk", "k_lin", "to_k", "linear_k")
_VALUE = ("v_proj", "value", "v", "wv", "v_lin", "to_v", "linear_v")
_OUTPUT = ("o_proj", "out_proj", "o", "wo", "out_lin", "c_proj", "proj", "dense", "to_out", "linear_out", "dense_proj")
_FUSED = ("qkv", "qkv_proj", "Wqkv", "c_attn", "query_key_value", "in_proj", "to_qkv")
#: BERT, RoBERTa, ViT (old), DeiT: attention.self.{query,key,value} and attention.output.dense.
_SIBLING_OUTPUT = "output.dense"

#: Attributes forward reshapes by, per kind (transformers, timm, torch, lucidrains' names).
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size", "d_kv", "dim_head", "key_value_proj_dim")
HEADS_ATTRS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "heads")
KV_HEADS_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_head_kv", "num_kv")
GROUPS_ATTRS = ("num_key_value_groups", "n_rep", "num_queries_per_kv")
#: Widths a module keeps of its query projection (or of its input): all_head_size, split_size...
WIDTH_ATTRS = ("all_head_size", "inner_dim", "attn_dim", "split_size", "embed_dim", "hidden_size", "hidden_dim", "inner_attn_dim")
_SCALE_ATTRS = ("scaling", "scale")

# config.json field names (transformers' attribute_map aliases included).
_CONFIG_HEADS = ("num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads")
_CONFIG_KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_head_kv", "num_kv")
_CONFIG_HEAD_DIM = ("head_dim", "d_kv", "kv_channels", "attention_head_dim")
_CONFIG_HIDDEN = ("hidden_size", "n_embd", "d_model", "dim", "embed_dim")


@dataclass(frozen=True)
class Projection:
    #: The layer's name ("model.layers.0.self_attn.q_proj"); for in_proj, the module's.
    name: str
    #: Output and input width of the projection.
    out: int
    inp: int

    @property
    def leaf(self) -> str:
        return self.name.rpartition(".")[2]


@dataclass(frozen=True)
class AttentionSite:
    #: The attention module ("model.layers.0.self_attn").
    name: str
    #: "separate" (q, k, v), "fused" (one qkv projection) or "in_proj" (nn.MultiheadAttention).
    kind: str
    q: Projection | None = None
    k: Projection | None = None
    v: Projection | None = None
    o: Projection | None = None
    fused: Projection | None = None
    #: Parts a fused projection holds: 3 (q, k, v), 2 (k, v next to a separate q_attn).
    parts: int = 3

    @property
    def query_width(self) -> int | None:
        """Width of the queries: q's rows, or a fused projection's share of them (equal parts)."""
        if self.q is not None:
            return self.q.out
        if self.fused is not None and self.fused.out % self.parts == 0:
            return self.fused.out // self.parts
        return None

    @property
    def input_width(self) -> int | None:
        first = self.q or self.fused
        return first.inp if first is not None else None

    def projections(self) -> list[Projection]:
        return [p for p in (self.q, self.k, self.v, self.fused, self.o) if p is not None]


@dataclass(frozen=True)
class Heads:
    """What is known of a module's heads; any field may be unknown."""

    head_dim: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    #: Where they came from, as a phrase ("config.json", "the attributes of ...").
    source: str = ""
    #: Attribute values as found (name -> value), for messages and fixes.
    attributes: dict[str, int] = field(default_factory=dict)


# -- finding the modules ----------------------------------------------------------------


def sites_from_layers(layers: Iterable[Layer], shape_of: Callable[[str], tuple[int, ...]]) -> list[AttentionSite]:
    """Attention modules from a checkpoint's layers (names and shapes, no module needed)."""
    linears: dict[str, tuple[int, int]] = {}
    in_proj: dict[str, tuple[int, int]] = {}
    for layer in layers:
        if layer.is_linear and layer.shape is not None and len(layer.shape) == 2:
            linears[layer.name] = (layer.out_width(), layer.in_width())  # type: ignore[assignment]
        elif layer.type != "Embedding" and layer.shape is not None and len(layer.shape) == 2 and layer.weight and not layer.is_conv:
            linears[layer.name] = (layer.shape[0], layer.shape[1])  # an inferred 2-d weight reads as (out, in)
        if "in_proj_weight" in layer.params:
            shape = tuple(shape_of(layer.params["in_proj_weight"]))
            if len(shape) == 2:
                in_proj[layer.name] = (shape[0], shape[1])
    return _find_sites(linears, in_proj)


def sites_from_module(model: nn.Module) -> list[AttentionSite]:
    """Attention modules of a module tree, with their projections' current widths."""
    linears: dict[str, tuple[int, int]] = {}
    in_proj: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            if module.in_proj_weight is not None:
                in_proj[name] = tuple(module.in_proj_weight.shape)  # type: ignore[assignment]
            else:
                for local in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                    weight = getattr(module, local)
                    linears[f"{name}.{local.removesuffix('_weight')}"] = tuple(weight.shape)  # type: ignore[assignment]
            continue
        weight = module._parameters.get("weight")
        if weight is None or weight.dim() != 2 or isinstance(module, nn.Embedding):
            continue
        out_axis, in_axis = weight_axes(type(module).__name__)
        linears[name] = (weight.shape[out_axis], weight.shape[in_axis])
    return _find_sites(linears, in_proj)


def _find_sites(linears: Mapping[str, tuple[int, int]], in_proj: Mapping[str, tuple[int, int]]) -> list[AttentionSite]:
    children: dict[str, dict[str, Projection]] = {}
    for name, (out, inp) in linears.items():
        parent, _, leaf = name.rpartition(".")
        children.setdefault(parent, {})[leaf] = Projection(name, out, inp)
    sites = []
    for parent, projections in children.items():
        site = _site(parent, projections, linears)
        if site is not None:
            sites.append(site)
    for name, (rows, cols) in in_proj.items():
        out_proj = linears.get(f"{name}.out_proj")
        sites.append(
            AttentionSite(
                name=name,
                kind="in_proj",
                fused=Projection(name, rows, cols),
                o=Projection(f"{name}.out_proj", *out_proj) if out_proj else None,
            )
        )
    order = {name: i for i, name in enumerate([*linears, *in_proj])}
    return sorted(sites, key=lambda site: min(order.get(p.name, len(order)) for p in site.projections()))


def _site(parent: str, projections: dict[str, Projection], linears: Mapping[str, tuple[int, int]]) -> AttentionSite | None:
    q, k, v = (_first(projections, names) for names in (_QUERY, _KEY, _VALUE))
    fused = _first(projections, _FUSED)
    taken = {p.leaf for p in (q, k, v, fused) if p is not None}
    output = _first({leaf: p for leaf, p in projections.items() if leaf not in taken}, _OUTPUT)
    if output is None:
        grandparent = parent.rpartition(".")[0]
        sibling = f"{grandparent}.{_SIBLING_OUTPUT}" if grandparent else _SIBLING_OUTPUT
        if sibling in linears and (q and k and v):
            output = Projection(sibling, *linears[sibling])
    if q is not None and k is not None and v is not None:
        return AttentionSite(parent, "separate", q=q, k=k, v=v, o=output)
    if fused is not None and k is None and v is None:
        # GPT-2 cross-attention: q_attn alone, c_attn holds keys and values.
        return AttentionSite(parent, "fused", q=q, fused=fused, o=output, parts=2 if q is not None else 3)
    return None


def _first(projections: Mapping[str, Projection], names: tuple[str, ...]) -> Projection | None:
    return next((projections[n] for n in names if n in projections), None)


# -- heads ------------------------------------------------------------------------------


def module_heads(module: nn.Module | None, source: str = "") -> Heads:
    """Heads as a module's attributes say (what its forward reshapes by)."""
    if module is None:
        return Heads()
    attributes = {
        name: value
        for name in (*HEAD_DIM_ATTRS, *HEADS_ATTRS, *KV_HEADS_ATTRS, *GROUPS_ATTRS, *WIDTH_ATTRS)
        if isinstance(value := getattr(module, name, None), int) and not isinstance(value, bool) and value > 0
    }
    head_dim = _first_value(attributes, HEAD_DIM_ATTRS)
    heads = _first_value(attributes, HEADS_ATTRS)
    kv_heads = _first_value(attributes, KV_HEADS_ATTRS)
    if kv_heads is None and heads is not None and (groups := _first_value(attributes, GROUPS_ATTRS)):
        kv_heads = heads // groups if heads % groups == 0 else None
    if not attributes:
        return Heads()
    return Heads(head_dim, heads, kv_heads, source or f"the attributes of {type(module).__name__}", attributes)


def config_heads(config: Mapping[str, Any] | None, source: str = "config.json") -> Heads:
    """Heads from a Hugging Face config: num_attention_heads, num_key_value_heads, head_dim
    (or hidden_size / num_attention_heads). A config with one nested model config (a
    vision or text tower) is read from there."""
    if not config:
        return Heads()
    if _first_value(config, _CONFIG_HEADS) is None:
        nested = [v for v in config.values() if isinstance(v, Mapping) and _first_value(v, _CONFIG_HEADS) is not None]
        if len(nested) != 1:
            return Heads()
        config = nested[0]
    heads = _first_value(config, _CONFIG_HEADS)
    kv_heads = _first_value(config, _CONFIG_KV_HEADS)
    if kv_heads is None and config.get("multi_query") is True:
        kv_heads = 1
    head_dim = _first_value(config, _CONFIG_HEAD_DIM)
    hidden = _first_value(config, _CONFIG_HIDDEN)
    if head_dim is None and heads and hidden and hidden % heads == 0:
        head_dim = hidden // heads
    return Heads(head_dim, heads, kv_heads if kv_heads is not None else heads, source)


def config_dict(model: nn.Module | None) -> dict[str, Any] | None:
    """A transformers model's config as a plain dict (None for other models)."""
    config = getattr(model, "config", None)
    to_dict = getattr(config, "to_dict", None)
    if not callable(to_dict):
        return None
    try:
        value = to_dict()
    except Exception:  # a config object of some other library
        return None
    return value if isinstance(value, dict) else None


def _first_value(values: Mapping[str, Any], names: tuple[str, ...]) -> int | None:
    for name in names:
        value = values.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


# -- rebuilding -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dense:
    """A site as the dense model has it, before the fit resizes its projections."""

    site: AttentionSite
    heads: Heads


def dense_heads(model: nn.Module) -> dict[str, _Dense]:
    """Each attention module's dense geometry, taken before resizing."""
    modules = dict(model.named_modules())
    dense = {}
    for site in sites_from_module(model):
        heads = module_heads(modules.get(site.name))
        if site.kind == "in_proj":
            mha = modules[site.name]
            heads = Heads(mha.head_dim, mha.num_heads, mha.num_heads, "nn.MultiheadAttention", heads.attributes)
        dense[site.name] = _Dense(site, _completed(heads, site))
    return dense


def _completed(heads: Heads, site: AttentionSite) -> Heads:
    """Fill head_dim or heads from the other and the query width."""
    width = site.query_width
    if width is None:
        return heads
    if heads.head_dim is None and heads.heads and width % heads.heads == 0:
        heads = replace(heads, head_dim=width // heads.heads)
    if heads.heads is None and heads.head_dim and width % heads.head_dim == 0:
        heads = replace(heads, heads=width // heads.head_dim)
    if heads.kv_heads is None and heads.head_dim and site.k is not None and site.k.out % heads.head_dim == 0:
        heads = replace(heads, kv_heads=site.k.out // heads.head_dim)
    if heads.kv_heads is None:
        heads = replace(heads, kv_heads=heads.heads)
    return heads


def fit_heads(model: nn.Module, dense: Mapping[str, _Dense], hint: Heads = Heads()) -> tuple[list[str], dict[str, Heads]]:
    """Set the head attributes of every resized attention module of `model` from its new
    widths; `hint` (a config.json's heads) settles which of heads and head_dim changed.
    Returns the modules whose widths hold no whole heads (left as they were), and the
    heads of those that were fitted."""
    modules = dict(model.named_modules())
    unfit = []
    fitted: dict[str, Heads] = {}
    for site in sites_from_module(model):
        before = dense.get(site.name)
        if before is None or before.site == site:
            continue
        new = _new_heads(site, before, hint)
        if new is None:
            unfit.append(site.name)
            continue
        _set_attributes(modules[site.name], site, before, new)
        fitted[site.name] = new
    return unfit, fitted


def _new_heads(site: AttentionSite, before: _Dense, hint: Heads) -> Heads | None:
    """The geometry the new widths hold: whole heads of the dense head_dim (torch-pruning's
    head pruning), or the dense head count with narrower heads (its head-dim pruning, and
    what its nn.MultiheadAttention pruner does). A config hint that fits wins."""
    width, keys = site.query_width, _key_width(site)
    dense = before.heads
    if width is None or keys is None or not dense.head_dim or not dense.heads:
        return None
    kv = dense.kv_heads or dense.heads
    whole_heads = _geometry(width, keys, dense.head_dim)
    narrower_heads = None
    if width % dense.heads == 0 and keys % kv == 0 and width // dense.heads == keys // kv:
        narrower_heads = Heads(width // dense.heads, dense.heads, kv)
    hinted = None
    if hint.head_dim and hint.head_dim != dense.head_dim:
        hinted = _geometry(width, keys, hint.head_dim)
    elif hint.heads and hint.heads != dense.heads and width % hint.heads == 0:
        hinted = _geometry(width, keys, width // hint.heads)
    order = (hinted, narrower_heads, whole_heads) if site.kind == "in_proj" else (hinted, whole_heads, narrower_heads)
    return next((g for g in order if g is not None), None)


def _geometry(width: int, keys: int, head_dim: int) -> Heads | None:
    if head_dim <= 0 or width % head_dim or keys % head_dim:
        return None
    heads, kv = width // head_dim, keys // head_dim
    if not kv or heads % kv:
        return None
    return Heads(head_dim, heads, kv)


def _key_width(site: AttentionSite) -> int | None:
    if site.k is not None:
        return site.k.out
    if site.fused is not None and site.fused.out % site.parts == 0:
        return site.fused.out // site.parts
    return None


def _set_attributes(module: nn.Module, site: AttentionSite, before: _Dense, new: Heads) -> None:
    dense, width = before.heads, site.query_width
    dense_width, dense_input = before.site.query_width, before.site.input_width
    values: dict[str, int | float] = {}
    for name in HEAD_DIM_ATTRS:
        values[name] = new.head_dim  # type: ignore[assignment]
    for name in HEADS_ATTRS:
        values[name] = new.heads  # type: ignore[assignment]
    for name in KV_HEADS_ATTRS:
        values[name] = new.kv_heads  # type: ignore[assignment]
    for name in GROUPS_ATTRS:
        values[name] = new.heads // new.kv_heads  # type: ignore[operator]
    for name in WIDTH_ATTRS:
        old = getattr(module, name, None)
        if isinstance(old, int) and old == dense_width and width is not None:
            values[name] = width
        elif isinstance(old, int) and old == dense_input and site.input_width is not None:
            values[name] = site.input_width
    if isinstance(module, nn.MultiheadAttention):
        values["embed_dim"] = width  # type: ignore[assignment]
        values["kdim"] = values["vdim"] = width if module._qkv_same_embed_dim else None  # type: ignore[assignment]
        if not module._qkv_same_embed_dim:
            values["kdim"] = module.k_proj_weight.shape[1]
            values["vdim"] = module.v_proj_weight.shape[1]
    if dense.head_dim and new.head_dim != dense.head_dim:
        for name in _SCALE_ATTRS:  # a scale derived from head_dim follows it
            old = getattr(module, name, None)
            if isinstance(old, float) and abs(old - dense.head_dim**-0.5) < 1e-9:
                values[name] = new.head_dim**-0.5  # type: ignore[operator]
    for name, value in values.items():
        old = getattr(module, name, None)
        if value is not None and isinstance(old, (int, float)) and not isinstance(old, bool):
            setattr(module, name, type(old)(value) if isinstance(old, int) and isinstance(value, int) else value)


def update_config(
    model: nn.Module, fitted: Mapping[str, Heads], sites: int, widths: Mapping[str, int]
) -> tuple[dict[str, int], dict[str, str]]:
    """Keep a transformers model's config in step with its resized modules (forward and
    save_pretrained read it): head counts where every one of the `sites` attention modules
    was fitted alike, and the `widths` given (hidden_size, intermediate_size) where the
    config has them. Returns what was set, and the fields the config refused (name -> why)."""
    config = getattr(model, "config", None)
    if config is None:
        return {}, {}
    updates = {name: value for name, value in widths.items() if _is_int(getattr(config, name, None))}
    if fitted and len(fitted) == sites:
        heads = {h.heads for h in fitted.values()}
        kv_heads = {h.kv_heads for h in fitted.values()}
        head_dims = {h.head_dim for h in fitted.values()}
        if len(heads) == 1 and _is_int(getattr(config, "num_attention_heads", None)):
            updates["num_attention_heads"] = heads.pop()  # type: ignore[assignment]
        if len(kv_heads) == 1 and _is_int(getattr(config, "num_key_value_heads", None)):
            updates["num_key_value_heads"] = kv_heads.pop()  # type: ignore[assignment]
        if len(head_dims) == 1:
            head_dim = head_dims.pop()
            hidden = updates.get("hidden_size", getattr(config, "hidden_size", None))
            count = updates.get("num_attention_heads", getattr(config, "num_attention_heads", None))
            implied = hidden // count if _is_int(hidden) and _is_int(count) else None
            if _is_int(getattr(config, "head_dim", None)) or implied != head_dim:
                updates["head_dim"] = head_dim  # type: ignore[assignment]
    applied: dict[str, int] = {}
    refused: dict[str, str] = {}
    for name, value in updates.items():
        try:
            setattr(config, name, value)
        except Exception as e:  # a frozen or validating config keeps its value: the caller says so
            refused[name] = f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"
        else:
            applied[name] = value
    return applied, refused


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
