"""Channels coupled across layers, from torch-pruning's DependencyGraph.

A channel of a residual sum exists in every branch that feeds the sum and in every
layer that reads it; it can only be removed from all of them at once. This module
turns the graph of a runnable model into plain groups: which layers produce the
group's channels, which consume them, and the channel index each layer uses.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import torch.nn as nn

from ..load.isolation import BoundedRunFailed, ChildLimits, LimitExceeded, isolation_available, run_bounded
from .inputs import ExampleInput
from .modules import is_depthwise
from .threads import single_threaded

__all__ = ["GroupMember", "ChannelGroup", "GroupingUnfinished", "coupled_groups", "dependency_graph"]


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
    #: A depthwise conv: channel c of its output reads only channel c of its input, so it
    #: carries a channel along rather than producing one.
    channelwise: bool = False


@dataclass
class ChannelGroup:
    size: int
    members: list[GroupMember] = field(default_factory=list)

    @property
    def root(self) -> str:
        return self.members[0].name if self.members else ""

    def producers(self) -> list[GroupMember]:
        """Conv/Linear layers whose output channels are the group's channels (depthwise convs
        only carry them along)."""
        return [
            m for m in self.members
            if m.role == "out" and m.type not in _PER_CHANNEL and m.follows is None and not m.channelwise
        ]

    def followers(self, producer: str) -> list[GroupMember]:
        return self._followers.get(producer, [])

    @cached_property
    def _followers(self) -> dict[str, list[GroupMember]]:
        """Producer name -> the per-channel layers that follow it, indexed once (a group of a
        wide residual stage has hundreds of members, asked about once per producer)."""
        index: dict[str, list[GroupMember]] = {}
        for member in self.members:
            if member.follows is not None:
                index.setdefault(member.follows, []).append(member)
        return index

    def consumers(self) -> list[GroupMember]:
        """Layers that read the group's channels as inputs (depthwise convs only carry them along)."""
        return [m for m in self.members if m.role == "in" and not m.channelwise]


_PER_CHANNEL = {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "GroupNorm", "InstanceNorm2d", "LayerNorm", "PReLU"}


def dependency_graph(model: nn.Module, example: ExampleInput) -> Any:
    """torch-pruning's DependencyGraph of `model` (raises what torch-pruning raises on graphs it cannot trace)."""
    import torch_pruning as tp

    with warnings.catch_warnings(), single_threaded():  # it runs the model: see threads.py
        warnings.simplefilter("ignore")
        return tp.DependencyGraph().build_dependency(model, **example.for_torch_pruning())


class GroupingUnfinished(RuntimeError):
    """torch-pruning's grouping did not finish within its CPU budget (it loops without end on
    some graphs: transformers' Llama in torch-pruning 1.6.1)."""


def coupled_groups(model: nn.Module, example: ExampleInput, graph: Any = None) -> list[ChannelGroup]:
    """The coupled channel groups of `model`, rooted at Conv and Linear layers.

    torch-pruning groups them in a bounded child (forked: the graph built here comes along)
    under a CPU budget scaled by the parameters — a ResNet-50's 38 groups take 0.02 s.
    Raises GroupingUnfinished past the budget, RuntimeError (or what torch-pruning raises)
    when the graph cannot be traced or grouped.
    """
    graph = graph if graph is not None else dependency_graph(model, example)
    on_cuda = any(p.is_cuda for p in model.parameters())
    if not isolation_available() or on_cuda:
        return _groups_of(model, graph)
    params = sum(p.numel() for p in model.parameters())
    limits = ChildLimits(memory_bytes=None, cpu_seconds=20.0 + params / 1e6)
    try:
        rows = run_bounded(lambda: [asdict(g) for g in _groups_of(model, graph)], limits)
    except LimitExceeded as e:
        raise GroupingUnfinished(
            f"torch-pruning's grouping did not finish within {limits.cpu_seconds:.0f} s of CPU time ({e.resource} limit)"
        ) from e
    except BoundedRunFailed as e:
        raise RuntimeError(f"torch-pruning's grouping failed: {e}") from e
    return [ChannelGroup(row["size"], [GroupMember(**m) for m in row["members"]]) for row in rows]


def _groups_of(model: nn.Module, graph: Any) -> list[ChannelGroup]:
    names = {module: name for name, module in model.named_modules()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Every convolution, transposed ones included (their output channels are weight dim 1).
        raw_groups = list(graph.get_all_groups(root_module_types=[nn.modules.conv._ConvNd, nn.Linear]))
    groups = []
    for raw in raw_groups:
        members: list[GroupMember] = []
        seen: set[tuple[str, str]] = set()  # (name, role): the first dependency reaching a layer wins
        for item in raw.items:
            module = item.dep.target.module
            if module not in names:
                continue  # functional ops (add, cat, reshape) carry channels but hold no weights
            role = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
            if (names[module], role) in seen:
                continue
            seen.add((names[module], role))
            source = item.dep.source.module
            follows = names.get(source) if type(module).__name__ in _PER_CHANNEL and source in names and source is not module else None
            idxs = [int(i) for i in item.idxs]
            members.append(GroupMember(names[module], type(module).__name__, role, idxs, follows, is_depthwise(module)))
        if members:
            groups.append(ChannelGroup(size=len(raw.items[0].idxs), members=members))
    return groups

