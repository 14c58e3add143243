"""Facts about torch.nn layers that several rooms ask: is a conv depthwise, which
BatchNorm follows a layer, which axis of its input a layer reads as channels. One rule
each, here."""

from __future__ import annotations

import sys

import torch.nn as nn

from ..tensors.layers import adjacent

__all__ = ["is_depthwise", "batchnorm_after", "tied_names", "input_channel_axis", "output_channel_axis"]

#: Layers whose weight reads the last axis of the input: (N, *, features).
_FEATURES_LAST = (nn.Linear, nn.Bilinear, nn.LayerNorm, nn.MultiheadAttention)
#: Layers whose weight reads axis 1: (N, C, *spatial).
_CHANNELS_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.PReLU)


def is_depthwise(module: nn.Module) -> bool:
    """Channel c of the output reads only channel c of the input (groups == in == out > 1)."""
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def batchnorm_after(modules: dict[str, nn.Module], name: str) -> nn.Module | None:
    """The BatchNorm (with running statistics) that directly follows layer `name` (conv1 → bn1, seq.0 → seq.1)."""
    return adjacent(
        name, True, modules, lambda m: isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None
    )


def tied_names(module: nn.Module) -> list[tuple[str, ...]]:
    """Groups of state-dict names that are one tensor (tied weights: lm_head.weight is
    embed_tokens.weight); a checkpoint saved without duplicates holds one name of each group."""
    groups: dict[int, list[str]] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    return [tuple(names) for names in groups.values() if len(names) > 1]


def output_channel_axis(module: nn.Module) -> int | None:
    """The axis of `module`'s weight that indexes its output channels: 0 for convolutions
    and Linear, 1 for transposed convolutions (weight (in, out, ...)), Embedding ((count,
    dim)) and transformers' Conv1D ((in, out)); None for a weight whose layout is not known
    here (its channels are not guessed)."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return 1
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        return 0
    if isinstance(module, nn.Embedding) or _is_transformers_conv1d(module):
        return 1
    return None


def _is_transformers_conv1d(module: nn.Module) -> bool:
    conv1d = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    return isinstance(conv1d, type) and isinstance(module, conv1d)


def input_channel_axis(module: nn.Module) -> int | None:
    """The axis of `module`'s input that its weight reads as channels: the last for a
    Linear (fed (N, F) or (N, T, F) alike), 1 for convolutions and norms over (N, C, ...);
    None for a layer whose weight layout is not known here (its channels are not guessed)."""
    if isinstance(module, _FEATURES_LAST):
        return -1
    if isinstance(module, _CHANNELS_FIRST):
        return 1
    if _is_transformers_conv1d(module):
        return -1  # transformers' Conv1D (GPT-2): a Linear whose weight is stored (in, out)
    return None
