"""Fit a checkpoint's tensors to a dense architecture: compare, explain, rebuild.

`compare` says how the checkpoint differs from the model built by `--arch` (prefixes,
masks, missing and unexpected keys, shape mismatches grouped by layer) and what the
likely cause is. When the differences are those of pruning — every mismatched tensor
narrower than the model's — `resize_to` makes each mismatched module the checkpoint's
size so that the state dict loads strictly: Conv (incl. depthwise groups), ConvTranspose,
Linear and transformers' Conv1D, BatchNorm, GroupNorm, LayerNorm, RMSNorm, Embedding,
nn.MultiheadAttention, and any other module's own parameters and buffers (cls_token,
pos_embed, layer scales, a custom RMSNorm's weight). The attributes forward reads are
derived from the new shapes: in_features, num_features, ... per layer, and the heads of
every attention module (model/attention.py) and of a transformers model's config.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from . import attention
from ..tensors.layers import weight_axes
from .modules import is_depthwise, tied_names

__all__ = [
    "ShapeMismatch", "FitReport", "compare", "resize_to", "owner_label", "tied_keys",
    "PRUNED", "PREFIX", "WRONG_ARCH", "NOT_RESIZABLE", "ROOT",
]

PRUNED = "pruned checkpoint into a dense class"
PREFIX = "key prefix"
WRONG_ARCH = "wrong architecture or variant"
NOT_RESIZABLE = "pruned, but these layers cannot be resized"
# Masks never removed are not a cause here: the loader folds weight_orig * weight_mask
# into the effective weight before comparing (and the pruning-masks finding says so).
#: How messages name the model itself (a tensor of the root module, e.g. timm's cls_token).
ROOT = "<root>"


def owner_label(key: str) -> str:
    """The module a tensor belongs to, for people: its module, or the tensor's own name
    when it belongs to the model itself (`cls_token`, never '')."""
    module = key.rpartition(".")[0]
    return module or key


@dataclass(frozen=True)
class ShapeMismatch:
    key: str
    model_shape: tuple[int, ...]
    checkpoint_shape: tuple[int, ...]

    @property
    def module(self) -> str:
        return self.key.rpartition(".")[0]

    @property
    def narrower(self) -> bool:
        """Same rank, no dimension larger than the model's: what channel pruning leaves."""
        return len(self.model_shape) == len(self.checkpoint_shape) and all(
            c <= m for c, m in zip(self.checkpoint_shape, self.model_shape)
        )


@dataclass
class FitReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[ShapeMismatch] = field(default_factory=list)
    #: Prefix the checkpoint has that the model does not (or the other way, with a leading '-').
    prefix: str | None = None
    #: How the checkpoint fits once the prefix is fixed (a pruned checkpoint may also carry one).
    after_prefix: FitReport | None = None
    #: The most likely explanation, one of PRUNED, PREFIX, WRONG_ARCH; None when it fits.
    cause: str | None = None
    #: Layers that could not be resized, each with why ("blocks.0.norm (GroupNorm: 30 channels in 4 groups)").
    not_resizable: list[str] = field(default_factory=list)
    #: Attention modules resized to widths that hold no whole heads (their attributes were left).
    unfit_heads: list[str] = field(default_factory=list)
    #: Fields set on a transformers model's config after resizing (num_attention_heads, ...).
    config_updates: dict[str, int] = field(default_factory=dict)
    #: Fields the config would not take (a frozen or validating config): name -> why.
    config_refused: dict[str, str] = field(default_factory=dict)
    #: Attention modules rebuilt with a head_dim other than the dense one: name -> "4 heads of 6 (dense: 4 of 8)".
    narrower_heads: dict[str, str] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def explanation(self) -> str | None:
        """The cause, as a sentence part: 'pruned, but these layers cannot be resized: a (why)'."""
        if self.cause == PRUNED and self.not_resizable:
            return f"{NOT_RESIZABLE}: {', '.join(self.not_resizable)}"
        return self.cause

    def by_module(self) -> dict[str, list[ShapeMismatch]]:
        grouped: dict[str, list[ShapeMismatch]] = {}
        for mismatch in self.mismatched:
            grouped.setdefault(mismatch.module, []).append(mismatch)
        return grouped


def compare(expected: Mapping[str, tuple[int, ...]] | nn.Module, shapes: Mapping[str, tuple[int, ...]]) -> FitReport:
    """How the checkpoint's tensor `shapes` (masks already folded) differ from a model's
    state dict (or from a reference's shapes: then every layer counts as resizable)."""
    model = expected if isinstance(expected, nn.Module) else None
    if model is not None:
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    report = FitReport()
    # A missing BatchNorm step counter is harmless: load_state_dict keeps the model's; so is
    # a tied weight whose twin is there (save_pretrained stores lm_head/embeddings once).
    tied = tied_keys(model) if model is not None else {}
    report.missing = [
        k for k in expected
        if k not in shapes and not k.endswith("num_batches_tracked") and not (tied.get(k, set()) & set(shapes))
    ]
    report.unexpected = [k for k in shapes if k not in expected]
    report.mismatched = [
        ShapeMismatch(k, expected[k], tuple(shapes[k])) for k in expected if k in shapes and tuple(shapes[k]) != expected[k]
    ]
    if report.missing and report.unexpected:
        report.prefix = _prefix_between(report.missing, report.unexpected)
        if report.prefix is not None:
            report.after_prefix = compare(model if model is not None else expected, _renamed(shapes, report.prefix))
    report.cause = _cause(report)
    return report


def _renamed(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> dict[str, tuple[int, ...]]:
    if prefix.startswith("-"):
        return {prefix[1:] + k: v for k, v in shapes.items()}
    return {k.removeprefix(prefix): v for k, v in shapes.items()}


def _prefix_between(missing: list[str], unexpected: list[str]) -> str | None:
    """A prefix the checkpoint's names have and the model's lack ('-' + prefix: the other way)."""
    for have, want, sign in ((unexpected, set(missing), ""), (missing, set(unexpected), "-")):
        counts: Counter[str] = Counter()
        for name in have:
            parts = name.split(".")
            for i in range(1, len(parts)):
                if ".".join(parts[i:]) in want:
                    counts[".".join(parts[:i]) + "."] += 1
                    break
        if counts:
            prefix, hits = counts.most_common(1)[0]
            if hits >= len(want) / 2:
                return sign + prefix
    return None


def _cause(report: FitReport) -> str | None:
    if report.fits:
        return None
    if report.prefix is not None:
        return PREFIX
    if report.missing or report.unexpected:
        return WRONG_ARCH  # layers added or removed, not narrowed
    # Every narrower tensor is pruning: any parameter or buffer can be replaced by one of the
    # checkpoint's size; resize_to names the layers that still cannot follow.
    return PRUNED if all(m.narrower for m in report.mismatched) else WRONG_ARCH


def resize_to(
    model: nn.Module,
    shapes: Mapping[str, tuple[int, ...]],
    report: FitReport,
    config: Mapping[str, Any] | None = None,
) -> None:
    """Make every mismatched module the checkpoint's size, in place (values are loaded
    after), then set the attention heads and config fields forward reads. `config` (a
    config.json) settles, where it says so, which of heads and head_dim were pruned."""
    modules = dict(model.named_modules())
    dense_heads = attention.dense_heads(model)
    dense_config = _config_widths(model)
    dense_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name, mismatches in report.by_module().items():
        module = modules.get(name)
        if module is None:
            report.not_resizable.append(f"{owner_label(mismatches[0].key)} (no such module in the model)")
            continue
        local = {m.key.rpartition(".")[2]: m.checkpoint_shape for m in mismatches}
        prefix = f"{name}." if name else ""
        full = {k: tuple(shapes[prefix + k]) for k in _tensor_names(module) if prefix + k in shapes}
        why = _resize_module(module, {**full, **local}, set(local))
        if why is not None:
            report.not_resizable.append(f"{owner_label(mismatches[0].key)} ({why})")
    if report.not_resizable:
        return
    hint = attention.config_heads(config)
    report.unfit_heads, fitted = attention.fit_heads(model, dense_heads, hint)
    for name, heads in fitted.items():
        before = dense_heads[name].heads
        if heads.head_dim != before.head_dim:
            report.narrower_heads[name] = f"{heads.heads} heads of {heads.head_dim} (dense: {before.heads} of {before.head_dim})"
    widths = _new_config_widths(dense_config, dense_shapes, shapes)
    report.config_updates, report.config_refused = attention.update_config(model, fitted, len(dense_heads), widths)


def tied_keys(model: nn.Module) -> dict[str, set[str]]:
    """State-dict keys that name one shared tensor (tied weights): key -> the others."""
    return {key: set(group) - {key} for group in tied_names(model) for key in group}


def _tensor_names(module: nn.Module) -> list[str]:
    return [k for k, v in {**module._parameters, **module._buffers}.items() if v is not None]


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
#: Size attributes of other modules, updated where their own tensors change that size.
_SIZE_ATTRS = (
    "hidden_size", "hidden_dim", "dim", "normalized_shape", "num_features", "num_channels", "channels", "d_model",
    "embed_dim", "width",
)


def _resize_module(module: nn.Module, shapes: dict[str, tuple[int, ...]], mismatched: set[str]) -> str | None:
    """Resize one module to `shapes` (its local tensor names); why not, when it cannot."""
    owned = set(_tensor_names(module))
    foreign = sorted(mismatched - owned)
    if foreign:
        return f"{', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'} not a parameter or buffer of {type(module).__name__}"
    why = _set_layer_attributes(module, shapes)
    if why is not None:
        return why
    _replace_tensors(module, shapes)
    return None


def _set_layer_attributes(module: nn.Module, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The size attributes of a known layer type, from its new weight; None when done."""
    weight = shapes.get("weight")
    if isinstance(module, _CONVS) and weight:
        depthwise = is_depthwise(module)
        module.out_channels = weight[0]
        if depthwise:
            module.groups = module.in_channels = weight[0]
        else:
            module.in_channels = weight[1] * module.groups
        if module.out_channels % module.groups:
            return f"{module.out_channels} output channels do not split into {module.groups} groups"
    elif isinstance(module, _CONV_TRANSPOSES) and weight:
        depthwise = is_depthwise(module)
        module.in_channels = weight[0]
        if depthwise:
            module.groups = module.out_channels = weight[0]
        else:
            module.out_channels = weight[1] * module.groups
    elif isinstance(module, nn.Linear) and weight:
        module.out_features, module.in_features = weight
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        module.num_features = _first_dim(shapes, "weight", "running_mean")
    elif isinstance(module, nn.GroupNorm):
        module.num_channels = _first_dim(shapes, "weight", "bias")
        if module.num_channels % module.num_groups:
            return f"GroupNorm: {module.num_channels} channels do not split into {module.num_groups} groups"
    elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and weight:
        module.normalized_shape = tuple(weight)
    elif isinstance(module, nn.Embedding) and weight:
        module.num_embeddings, module.embedding_dim = weight
        if module.padding_idx is not None and module.padding_idx >= module.num_embeddings:
            return f"Embedding: padding_idx {module.padding_idx} is outside the {module.num_embeddings} rows kept"
    elif isinstance(module, nn.MultiheadAttention):
        return _set_mha_attributes(module, shapes)
    elif weight and len(weight) == 2 and weight_axes(type(module).__name__) == (1, 0):
        _set_if_int(module, "nf", weight[1])  # transformers' Conv1D: (in, out) storage, nf outputs
        _set_if_int(module, "nx", weight[0])
    else:
        _set_size_attributes(module, shapes)
    return None


def _set_mha_attributes(module: nn.MultiheadAttention, shapes: dict[str, tuple[int, ...]]) -> str | None:
    if "in_proj_weight" in shapes:
        rows, cols = shapes["in_proj_weight"]
        if rows % 3:
            return f"nn.MultiheadAttention: in_proj_weight has {rows} rows, not 3 equal parts (q, k, v)"
        module.embed_dim = rows // 3
    elif "q_proj_weight" in shapes:
        module.embed_dim = shapes["q_proj_weight"][0]
    return None  # heads, head_dim, kdim and vdim follow in attention.fit_heads


def _set_size_attributes(module: nn.Module, shapes: dict[str, tuple[int, ...]]) -> None:
    """Any other module (a custom RMSNorm, a layer scale, torchvision's VisionTransformer
    holding class_token and the hidden_dim its forward reshapes by): the size attributes it
    keeps of a dimension its own tensors changed follow that dimension, where the change is
    one (every tensor narrowed from that size to the same new size)."""
    changes: dict[int, set[int]] = {}
    for name, new in shapes.items():
        old = module._parameters.get(name, module._buffers.get(name))
        if old is None or old.dim() != len(new):
            continue
        for before, after in zip(old.shape, new):
            if before != after:
                changes.setdefault(before, set()).add(after)
    for before, after in changes.items():
        if len(after) != 1:
            continue
        (new_size,) = after
        for name in _SIZE_ATTRS:
            value = getattr(module, name, None)
            if value == before and isinstance(value, int) and not isinstance(value, bool):
                setattr(module, name, new_size)
            elif value == (before,):
                setattr(module, name, (new_size,))


def _set_if_int(module: nn.Module, name: str, value: int) -> None:
    if isinstance(getattr(module, name, None), int):
        setattr(module, name, value)


def _first_dim(shapes: dict[str, tuple[int, ...]], *keys: str) -> int:
    return next(shapes[k][0] for k in keys if k in shapes)


def _replace_tensors(module: nn.Module, shapes: dict[str, tuple[int, ...]]) -> None:
    for name, shape in shapes.items():
        if name in module._parameters and module._parameters[name] is not None:
            old = module._parameters[name]
            module._parameters[name] = nn.Parameter(
                torch.zeros(shape, dtype=old.dtype, device=old.device), requires_grad=old.requires_grad
            )
        elif name in module._buffers and module._buffers[name] is not None:
            old = module._buffers[name]
            module._buffers[name] = torch.zeros(shape, dtype=old.dtype, device=old.device)


# -- a transformers config's widths ----------------------------------------------------------

_CONFIG_WIDTHS = ("hidden_size", "intermediate_size")


def _config_widths(model: nn.Module) -> dict[str, int]:
    config = getattr(model, "config", None)
    return {
        name: value
        for name in _CONFIG_WIDTHS
        if isinstance(value := getattr(config, name, None), int) and not isinstance(value, bool)
    }


def _new_config_widths(
    dense: Mapping[str, int], dense_shapes: Mapping[str, tuple[int, ...]], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, int]:
    """hidden_size: the one new length of every 1-d norm weight that had the dense hidden size;
    intermediate_size: the one new output width of every linear weight that was (intermediate,
    hidden). A field whose layers now differ is left out (a config cannot say it)."""
    hidden, intermediate = dense.get("hidden_size"), dense.get("intermediate_size")
    found: dict[str, set[int]] = {"hidden_size": set(), "intermediate_size": set()}
    for key, old in dense_shapes.items():
        new = shapes.get(key)
        if new is None or not key.endswith("weight"):
            continue
        if hidden and len(old) == 1 and old[0] == hidden:
            found["hidden_size"].add(new[0])
        elif intermediate and hidden and len(old) == 2 and old == (intermediate, hidden):
            found["intermediate_size"].add(new[0])
    return {
        name: values.pop()
        for name, values in found.items()
        if len(values) == 1 and next(iter(values)) != dense.get(name)
    }
