"""What a silenced channel really carries to the layers that read it.

A channel whose every producing branch is a zero filter (or a BatchNorm of scale 0)
does not always arrive as zero: a BatchNorm shift, a bias or an activation can turn it
into a constant, and a padded depthwise conv makes that constant vary at the borders.
Rather than model every op in between, the model is run on a few random inputs and each
consuming layer's input channels are watched: exactly zero (dead), constant, or varying.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .coupling import ChannelGroup
from .inputs import ExampleInput
from ..tensors.patterns import zero_mask
from .modules import batchnorm_after, input_channel_axis, is_depthwise, output_channel_axis

__all__ = [
    "ChannelRange",
    "ChannelFate",
    "silenced_by_producer",
    "silenced_channels",
    "probe_inputs",
    "consumer_ranges",
    "channel_fates",
    "constant_unfoldable",
]

_PROBE_BATCHES = 3
_PROBE_BATCH_SIZE = 4


@dataclass(frozen=True)
class ChannelRange:
    low: torch.Tensor
    high: torch.Tensor


@dataclass
class ChannelFate:
    #: Consumer name -> the constant it receives on this channel (0.0 for dead).
    constants: dict[str, float] = field(default_factory=dict)
    #: The first consumer that receives a varying signal, if any.
    varying_at: str | None = None
    #: The first consumer whose input was not observed on the probes (it did not run on
    #: them, or its input has no channel axis known here): nothing can be vouched for it.
    unobserved_at: str | None = None

    @property
    def observed(self) -> bool:
        return self.varying_at is None and self.unobserved_at is None

    @property
    def dead(self) -> bool:
        return self.observed and not any(self.constants.values())

    @property
    def constant(self) -> bool:
        return self.observed and any(self.constants.values())

    def blocked_by(self, modules: dict[str, nn.Module]) -> str | None:
        """Why this channel cannot be removed exactly, or None when it can."""
        if self.unobserved_at is not None:
            return f"what {self.unobserved_at} receives on it was not observed (it did not run on the probe inputs)"
        if self.varying_at is not None:
            return f"{self.varying_at} receives a varying signal on it (a padded depthwise conv or the like in between)"
        for name, value in self.constants.items():
            if _grouped(modules.get(name)):
                return f"it reaches {name}, a grouped conv, whose groups cannot lose single channels"
            why = constant_unfoldable(modules, name) if value else None
            if why:
                return f"it carries a constant into {name}, which {why}"
        return None


def silenced_by_producer(modules: dict[str, nn.Module], group: ChannelGroup, zero_tol: float = 0.0) -> dict[str, set[int]]:
    """For each producing branch: the group channels it silences (a zero filter, or a BatchNorm of scale 0)."""
    by_producer: dict[str, set[int]] = {}
    for producer in group.producers():
        module = modules.get(producer.name)
        weight = getattr(module, "weight", None)
        axis = output_channel_axis(module) if module is not None else None
        if not isinstance(weight, torch.Tensor) or axis is None or weight.dim() < 2:
            by_producer[producer.name] = set()  # no known output axis: it silences nothing we can vouch for
            continue
        silent = zero_mask(weight.detach().movedim(axis, 0).flatten(1), zero_tol).all(1)
        for follower in group.followers(producer.name):
            bn = modules.get(follower.name)
            if isinstance(bn, nn.modules.batchnorm._NormBase) and bn.weight is not None and bn.weight.numel() == silent.numel():
                silent = silent | zero_mask(bn.weight.detach(), zero_tol)
        by_producer[producer.name] = {i for i in range(group.size) if bool(silent[producer.idxs[i]])}
    return by_producer


def silenced_channels(modules: dict[str, nn.Module], group: ChannelGroup, zero_tol: float = 0.0) -> set[int]:
    """Group channels that every producing branch silences."""
    by_producer = silenced_by_producer(modules, group, zero_tol)
    if not by_producer:
        return set()
    return set.intersection(*by_producer.values())


def probe_inputs(example: ExampleInput) -> list[ExampleInput]:
    """A few random batches like the example, at growing scales (integer inputs stay in range)."""
    return [example.fresh(seed=1234 + i, batch=_PROBE_BATCH_SIZE, scale=1 + i) for i in range(_PROBE_BATCHES)]


def consumer_ranges(
    model: nn.Module, groups: list[ChannelGroup], probe: list[ExampleInput], outputs: list[Any] | None = None
) -> dict[str, ChannelRange]:
    """Per consuming layer: each input channel's min and max over all probe inputs and positions.
    A channel is an index along the axis the layer's weight reads (input_channel_axis).

    outputs: when given, the model's output on each probe input is appended to it (so that
    a later check against these outputs need not run the model again)."""
    modules = dict(model.named_modules())
    wanted = {m.name for g in groups for m in g.consumers() if m.name in modules}
    ranges: dict[str, ChannelRange] = {}

    def hook(name: str) -> Any:
        axis = input_channel_axis(modules[name])

        def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            first = args[0] if args else next(iter(kwargs.values()), None)
            x = first if isinstance(first, torch.Tensor) else None
            if x is None or axis is None or x.dim() < 2 or not x.is_floating_point():
                return  # not observed: channel_fates cannot vouch for this consumer
            per_channel = x.detach().movedim(axis, 0).reshape(x.shape[axis], -1)
            low, high = per_channel.min(1).values, per_channel.max(1).values
            if name in ranges:
                low, high = torch.minimum(ranges[name].low, low), torch.maximum(ranges[name].high, high)
            ranges[name] = ChannelRange(low, high)

        return record

    handles = [modules[name].register_forward_pre_hook(hook(name), with_kwargs=True) for name in wanted]
    try:
        with torch.inference_mode():
            for x in probe:
                output = x.call(model)
                if outputs is not None:
                    outputs.append(output)
    finally:
        for handle in handles:
            handle.remove()
    return ranges


def channel_fates(group: ChannelGroup, channels: set[int], ranges: dict[str, ChannelRange], zero_tol: float) -> dict[int, ChannelFate]:
    fates = {}
    for index in sorted(channels):
        fate = ChannelFate()
        for consumer in group.consumers():
            seen = ranges.get(consumer.name)
            if seen is None or consumer.idxs[index] >= seen.low.numel():
                fate.unobserved_at = consumer.name
                break
            low, high = float(seen.low[consumer.idxs[index]]), float(seen.high[consumer.idxs[index]])
            if high - low > zero_tol:
                fate.varying_at = consumer.name
                break
            value = (low + high) / 2
            fate.constants[consumer.name] = 0.0 if abs(value) <= zero_tol else value
        fates[index] = fate
    return fates


def constant_unfoldable(modules: dict[str, nn.Module], name: str) -> str | None:
    """Why a constant arriving on an input channel of `name` cannot be folded into it exactly
    (None: it can — into its bias, or into the BatchNorm right after it)."""
    module = modules.get(name)
    if isinstance(module, nn.Linear):
        return None if module.bias is not None or batchnorm_after(modules, name) else "has no bias and no BatchNorm to absorb it"
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return "is a transposed conv (its outputs overlap a varying number of taps, so the constant is not uniform)"
    if isinstance(module, nn.modules.conv._ConvNd):
        padding = module.padding  # torch keeps it as a tuple, or as "same"/"valid"
        if padding != "valid" and (isinstance(padding, str) or any(p != 0 for p in padding)):
            return "is a padded conv (its borders see padding, not the constant)"
        return None if module.bias is not None or batchnorm_after(modules, name) else "has no bias and no BatchNorm to absorb it"
    return f"is a {type(module).__name__}"


def _grouped(module: nn.Module | None) -> bool:
    """A grouped conv that is not depthwise: removing one input channel unbalances its groups."""
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and not is_depthwise(module)
