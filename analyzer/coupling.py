"""Channels coupled across layers, from torch-pruning's DependencyGraph.

A channel of a residual sum exists in every branch that feeds the sum and in every
layer that reads it; it can only be removed from all of them at once. This module
turns the graph of a runnable model into plain groups: which layers produce the
group's channels, which consume them, and the channel index each layer uses.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn

__all__ = ["GroupMember", "ChannelGroup", "coupled_groups"]


@dataclass(frozen=True)
class GroupMember:
    name: str
    type: str
    #: "out": the group's channels are this layer's outputs; "in": its inputs.
    role: str
    #: Layer channel index for each group channel.
    idxs: list[int]
    #: For a BatchNorm (or other per-channel layer): the layer it directly follows.
    follows: str | None = None


@dataclass
class ChannelGroup:
    size: int
    members: list[GroupMember] = field(default_factory=list)

    @property
    def root(self) -> str:
        return self.members[0].name if self.members else ""

    def producers(self) -> list[GroupMember]:
        """Conv/Linear layers whose output channels are the group's channels."""
        return [m for m in self.members if m.role == "out" and m.type not in _PER_CHANNEL and m.follows is None]

    def followers(self, producer: str) -> list[GroupMember]:
        return [m for m in self.members if m.follows == producer]


_PER_CHANNEL = {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "GroupNorm", "InstanceNorm2d", "LayerNorm", "PReLU"}


def coupled_groups(model: nn.Module, example: torch.Tensor) -> list[ChannelGroup]:
    """The coupled channel groups of `model`, rooted at Conv and Linear layers.

    Raises RuntimeError (or what torch-pruning raises) when the graph cannot be traced.
    """
    import torch_pruning as tp

    names = {module: name for name, module in model.named_modules()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        raw_groups = list(graph.get_all_groups(root_module_types=[nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear]))
    groups = []
    for raw in raw_groups:
        members: list[GroupMember] = []
        for item in raw.items:
            module = item.dep.target.module
            if module not in names:
                continue  # functional ops (add, cat, reshape) carry channels but hold no weights
            source = item.dep.source.module
            role = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
            follows = names.get(source) if type(module).__name__ in _PER_CHANNEL and source in names and source is not module else None
            idxs = [int(i) for i in item.idxs]
            if not any(m.name == names[module] and m.role == role for m in members):
                members.append(GroupMember(names[module], type(module).__name__, role, idxs, follows))
        if members:
            groups.append(ChannelGroup(size=len(raw.items[0].idxs), members=members))
    return groups
