"""Facts about torch.nn layers that several rooms ask: is a conv depthwise, which
BatchNorm follows a layer. One rule each, here."""

from __future__ import annotations

import torch.nn as nn

from ..tensors.layers import adjacent

__all__ = ["is_depthwise", "batchnorm_after"]


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
