"""`zeroed-channels`: whole filters (or BatchNorm channels) are zero but still computed.

With a runnable model the channels are counted per coupled group (torch-pruning's
DependencyGraph): a channel of a residual sum is removable only if every branch that
feeds it is silenced, and what each consumer really receives on it (zero, or a
constant that can be folded) is observed on probe inputs. Without one, per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn as nn

from ..model.coupling import ChannelGroup, GroupingUnfinished
from ..model.silence import channel_fates, silenced_by_producer
from ..model.modules import is_depthwise
from ..tensors.layers import Layer, adjacent
from ..tensors.patterns import BatchNormPattern, WeightPattern
from ..report.model import Finding, Severity
from .context import PassContext

KIND = "zeroed-channels"


def run(ctx: PassContext) -> list[Finding]:
    per_layer = _zeroed_per_layer(ctx)
    if not per_layer:
        return []
    groups, note = _groups(ctx)
    if groups is not None:
        finding = _zeroed_by_group(ctx, per_layer, groups)
        return [finding] if finding is not None else []
    return [_zeroed_static(ctx, per_layer, note)]


@dataclass(frozen=True)
class _Silenced:
    """Output channels of one layer that carry no signal: zero filters, or a BN that zeroes them."""

    filters: frozenset[int]
    by_batchnorm: frozenset[int]

    @property
    def all(self) -> frozenset[int]:
        return self.filters | self.by_batchnorm


def _zeroed_per_layer(ctx: PassContext) -> dict[str, _Silenced]:
    layers = {layer.name: layer for layer in ctx.layers}
    per_layer: dict[str, _Silenced] = {}
    for layer in ctx.layers:
        pattern = ctx.pattern(layer)
        if isinstance(pattern, WeightPattern) and pattern.zero_out_channels and len(pattern.zero_out_channels) < pattern.out_channels:
            per_layer[layer.name] = _Silenced(frozenset(pattern.zero_out_channels), frozenset())
    # A BatchNorm that zeroes channels silences them for the layer before it (one lookup: its producer).
    for layer in ctx.layers:
        pattern = ctx.pattern(layer)
        if isinstance(pattern, BatchNormPattern) and (pattern.dead or pattern.constant):
            producer = _producer_before(layer, layers)
            key = producer.name if producer else layer.name
            previous = per_layer.get(key, _Silenced(frozenset(), frozenset()))
            per_layer[key] = _Silenced(previous.filters, previous.by_batchnorm | frozenset(pattern.dead + pattern.constant))
    return per_layer


def _producer_before(bn: Layer, layers: dict[str, Layer]) -> Layer | None:
    width = bn.shape[0] if bn.shape else None
    return adjacent(bn.name, False, layers, lambda c: (c.is_conv or c.is_linear) and bool(c.shape) and c.out_width() == width)


def _groups(ctx: PassContext) -> tuple[list[ChannelGroup] | None, str]:
    model = ctx.model
    if model is None:
        return None, "per layer only: no runnable model, so coupling through residual adds was not checked (give --arch)"
    if not model.trace.ok:
        return None, "per layer only: the model's forward pass fails, so coupling was not traced"
    try:
        model.dependency_graph()
    except Exception as e:  # torch-pruning raises many kinds on graphs it cannot trace
        return None, f"per layer only: torch-pruning could not trace the model ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
    try:
        return model.coupled_groups(), ""  # any other failure here is ours, not torch-pruning's: the pass fails
    except GroupingUnfinished as e:
        return None, f"per layer only: {e}, so coupling through residual adds was not checked"


def _zeroed_static(ctx: PassContext, per_layer: dict[str, _Silenced], note: str) -> Finding:
    layers = {layer.name: layer for layer in ctx.layers}
    evidence_layers = {}
    params = 0
    for name, silenced in per_layer.items():
        layer = layers[name]
        per_channel = _out_params_per_channel(ctx, layer)
        count = len(silenced.all)
        params += count * per_channel
        evidence_layers[name] = {"zeroed": count, "of": layer.out_width(), "zero_filters": len(silenced.filters), "silenced_by_batchnorm": len(silenced.by_batchnorm - silenced.filters)}
    total = sum(v["zeroed"] for v in evidence_layers.values())
    return Finding(
        kind=KIND,
        severity=Severity.WARNING,
        modules=list(per_layer),
        message=(
            f"{total} output channels in {len(per_layer)} layers are zeroed but still computed "
            f"(at least {params:,} parameters of their own); {note}."
        ),
        evidence={"per_layer": evidence_layers, "params_removable_at_least": params, "coupling_checked": False},
        fix="Remove the channels rather than zeroing them: with a runnable model (--arch), the analysis lists them per coupled group with the torch-pruning call that removes them.",
    )


def _zeroed_by_group(ctx: PassContext, per_layer: dict[str, _Silenced], groups: list[ChannelGroup]) -> Finding | None:
    """None when no channel can be removed: zeros in some branches of a residual sum only
    cost nothing that channel removal could win back."""
    model = ctx.model
    assert model is not None
    modules = dict(model.module.named_modules())
    groups = [g for g in groups if g.consumers() and g.producers()]  # a group without readers is a model output
    ranges = model.probed().ranges  # shared with --compact
    per_group = {}
    removals: list[tuple[str, list[int]]] = []
    all_cuts: dict[str, _Cut] = {}
    for group in groups:
        by_producer = silenced_by_producer(modules, group, ctx.options.zero_tol)
        somewhere = set().union(*by_producer.values())
        if not somewhere:
            continue
        everywhere = set.intersection(*by_producer.values())
        fates = channel_fates(group, everywhere, ranges, ctx.options.zero_tol)
        dead = sorted(i for i, fate in fates.items() if fate.dead)
        constant = [i for i, fate in fates.items() if fate.constant and fate.blocked_by(modules) is None]
        removable = len(dead) + len(constant)
        cuts = _cuts(group, removable)
        group_params, group_macs = _savings(ctx, modules, cuts)
        _merge(all_cuts, cuts)
        per_group[group.root] = {
            "channels": group.size,
            "removable": removable,
            "dead": len(dead),
            "constant": len(constant),
            "not_removable_exactly": len(everywhere) - removable,
            "zeroed_in_some_branches_only": len(somewhere) - len(everywhere),
            "producers": [p.name for p in group.producers()],
            "params_removable_alone": group_params,
            "macs_removable_alone": group_macs,
        }
        if dead:
            root = group.members[0]
            removals.append((group.root, sorted(root.idxs[i] for i in dead)))
    removable = sum(g["removable"] for g in per_group.values())
    if not removable:
        return None
    params, macs = _savings(ctx, modules, all_cuts)
    total_params = sum(p.numel() for p in model.module.parameters())
    total_macs = _model_macs(ctx)
    constant = sum(g["constant"] for g in per_group.values())
    blocked = sum(g["zeroed_in_some_branches_only"] + g["not_removable_exactly"] for g in per_group.values())
    message = (
        f"{removable + blocked} channels in {len(per_group)} coupled groups are zeroed but still computed; "
        f"{removable} can be removed, saving {params:,} parameters ({params / max(total_params, 1):.1%})"
        + (f" and {macs:,} MACs per sample ({macs / total_macs:.1%})" if total_macs else "")
    )
    if constant:
        message += f"; {constant} of them reach the next layer as a constant (a BatchNorm shift or a bias), which is folded into it when they go"
    if blocked:
        message += (
            f"; {blocked} stay: they are zero in some branches of a residual sum only, or reach a padded layer as a "
            "constant that cannot be folded exactly"
        )
    return Finding(
        kind=KIND,
        severity=Severity.WARNING,
        modules=list(per_layer),
        message=message + ".",
        evidence={
            "per_group": per_group,
            "per_layer": {name: len(s.all) for name, s in per_layer.items()},
            "params_removable": params,
            "macs_removable": macs,
            "macs_total": total_macs,
            "input_shape": list(model.example_input.shape),
            "coupling_checked": True,
        },
        fix=(
            "Remove the dead channels with torch-pruning's dependency graph (every coupled layer at once), or run "
            "`analyze --compact out.pth`, which also folds the constant ones where that is exact and verifies the outputs."
        ),
        fix_code=_removal_code(ctx, removals) if removals else None,
    )


@dataclass
class _Cut:
    """Channels removed from one layer's outputs and inputs."""

    out: int = 0
    inp: int = 0


def _cuts(group: ChannelGroup, channels: int) -> dict[str, _Cut]:
    cuts: dict[str, _Cut] = {}
    for member in group.members:
        cut = cuts.setdefault(member.name, _Cut())
        if member.role == "out":
            cut.out += channels
        else:
            cut.inp += channels
    return cuts


def _merge(total: dict[str, _Cut], cuts: dict[str, _Cut]) -> None:
    for name, cut in cuts.items():
        merged = total.setdefault(name, _Cut())
        merged.out += cut.out
        merged.inp += cut.inp


def _savings(ctx: PassContext, modules: dict[str, nn.Module], cuts: dict[str, _Cut]) -> tuple[int, int]:
    """Parameters and MACs per sample saved by making the cuts (a layer cut twice counted once)."""
    params = macs = 0
    for name, cut in cuts.items():
        module = modules.get(name)
        if module is None:
            continue
        before, after = _cost(ctx, name, module, _Cut()), _cost(ctx, name, module, cut)
        params += before[0] - after[0]
        macs += before[1] - after[1]
    return params, macs


def _cost(ctx: PassContext, name: str, module: nn.Module, cut: _Cut) -> tuple[int, int]:
    """Parameters and MACs per sample of a layer after a cut."""
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = math.prod(module.kernel_size)
        out, inp, groups = module.out_channels - cut.out, module.in_channels - cut.inp, module.groups
        if is_depthwise(module):
            weights = out * kernel  # depthwise: its input and output channels are the same channels
        else:
            weights = out * (inp // groups) * kernel
        # A conv meets each weight once per output position; a transposed one, per input position.
        transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
        spatial = _positions(ctx, name, conv=True, at_input=transposed)
        return weights + (out if module.bias is not None else 0), weights * spatial
    if isinstance(module, nn.Linear):
        out, inp = module.out_features - cut.out, module.in_features - cut.inp
        return out * inp + (out if module.bias is not None else 0), out * inp * _positions(ctx, name, conv=False)
    per_channel = sum(1 for p in module.parameters(recurse=False) if p.dim() == 1)
    channels = next((p.shape[0] for p in module.parameters(recurse=False) if p.dim() == 1), 0)
    return per_channel * (channels - cut.out), 0


def _model_macs(ctx: PassContext) -> int:
    macs = ctx.model.macs  # type: ignore[union-attr]
    return macs.per_sample if macs is not None else 0


def _positions(ctx: PassContext, name: str, conv: bool, at_input: bool = False) -> int:
    """Output (or input) positions per sample: H*W for a 2-d conv, tokens for a Linear on (N, T, F)."""
    call = ctx.model.trace.calls.get(name) if ctx.model else None  # type: ignore[union-attr]
    shapes = (call.inputs if at_input else call.outputs) if call is not None else []
    if not shapes:
        return 1
    shape = shapes[0]
    return math.prod(shape[2:]) if conv else math.prod(shape[1:-1])


def _removal_code(ctx: PassContext, removals: list[tuple[str, list[int]]]) -> str:
    example = ctx.model.example_input.code()  # type: ignore[union-attr]
    listed = "".join(f"    {root!r}: {channels},\n" for root, channels in removals)
    return (
        "import torch\nimport torch_pruning as tp\n\n"
        "# model: the model as saved in this checkpoint (e.g. analyzer.load_pruned(path, factory))\n"
        f"dead_channels = {{  # coupled group (by its first layer) -> channels that output exactly 0\n{listed}}}\n"
        f"graph = tp.DependencyGraph().build_dependency(model, example_inputs={example})\n"
        "for name, idxs in dead_channels.items():\n"
        "    layer = model.get_submodule(name)\n"
        "    prune_fn = tp.prune_linear_out_channels if isinstance(layer, torch.nn.Linear) else tp.prune_conv_out_channels\n"
        "    group = graph.get_pruning_group(layer, prune_fn, idxs=idxs)\n"
        "    if graph.check_pruning_group(group):\n"
        "        group.prune()"
    )


def _out_params_per_channel(ctx: PassContext, layer: Layer) -> int:
    shape = layer.shape or (1,)
    per_channel = math.prod(shape) // max(layer.out_width() or shape[0], 1) if len(shape) > 1 else 1
    return per_channel + (1 if "bias" in layer.params else 0)
