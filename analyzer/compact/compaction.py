"""Turn zeroed channels and pruning masks into real channel removal.

On the runnable model: fold `torch.nn.utils.prune` masks in, find the channels that are
silent in every member of their coupled group (torch-pruning's DependencyGraph), confirm
what each consuming layer really receives on them (exactly 0, or a constant), fold
constants into the next layer's bias or BatchNorm where that is exact, remove the
channels with torch-pruning, verify the outputs are unchanged, and write the result
atomically — never over the input.

The graph, the groups and the probe runs are the ones the zeroed-channels pass already
made (shared through `Model`), and the outputs to verify against are the ones the probe
inputs gave before anything changed, so the dense model is neither copied nor re-traced.
Everything runs single-threaded (see `model/threads.py`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from ..model import Model
from ..model.inputs import ExampleInput
from ..model.macs import count_macs_or_note
from ..model.coupling import ChannelGroup, GroupingUnfinished
from ..model.modules import batchnorm_after
from ..model.silence import ChannelRange, channel_fates, silenced_channels
from ..model.threads import single_threaded
from ..errors import UsageError
from ..outputs import atomic_write
from .result import CompactionResult, GroupCompaction

__all__ = ["compact", "VERIFY_TOLERANCE"]

#: Outputs may differ by this share of their largest magnitude (at least 1) after compaction:
#: float32 reassociation when channels go and constants are folded, far below any real change.
VERIFY_TOLERANCE = 1e-4


def compact(
    model: Model,
    output: Path,
    input_path: Path,
    arch: str | None = None,
    round_to: int | None = None,
    zero_tol: float = 0.0,
    unstructured_sparsity: float | None = None,
    masks_in_file: int = 0,
) -> CompactionResult:
    """Compact `model` into `output`; see the module docstring. Returns what was done (or refused).

    `model.module` is changed in place (masks folded, channels removed): it is the build's
    own model, and compaction is the last thing done with it.

    masks_in_file: prune masks the loader already folded into `model` (a state dict with
    weight_orig/weight_mask rebuilt on --arch); they count as folded."""
    _check_output(output, input_path)
    with single_threaded():
        return _compact(model, output, arch, round_to, zero_tol, unstructured_sparsity, masks_in_file)


def _compact(
    model: Model,
    output: Path,
    arch: str | None,
    round_to: int | None,
    zero_tol: float,
    unstructured_sparsity: float | None,
    masks_in_file: int,
) -> CompactionResult:
    work = model.module.eval()
    example = model.example_input
    result = CompactionResult(output=None, round_to=round_to)
    try:
        model.dependency_graph()
    except Exception as e:  # torch-pruning raises many kinds on graphs it cannot trace
        result.refused = (
            f"torch-pruning cannot trace this model ({type(e).__name__}: {' '.join(str(e).split())[:160]}), so its "
            "coupled channels are unknown and none can be removed safely; nothing written"
        )
        return result
    try:
        model.coupled_groups()
    except GroupingUnfinished as e:
        result.refused = f"{e}, so the coupled channels are unknown and none can be removed safely; nothing written"
        return result
    probed = model.probed()  # before anything changes: its outputs are what the result must reproduce
    folded_here = _fold_masks(work)
    if folded_here:
        model.forget_derived(keep=("probed",))  # the graph was traced through the mask hooks
    result.masks_folded = folded_here + (masks_in_file if model.origin != "checkpoint" else 0)
    result.params_before = _params(work)
    result.macs_before = model.macs.per_sample if model.macs is not None else _macs(work, example, result)
    graph = model.dependency_graph()
    groups = [g for g in model.coupled_groups() if g.consumers()]
    plans = [_plan(work, group, probed.ranges, round_to, zero_tol) for group in groups]
    plans = [(group, plan) for group, plan in zip(groups, plans) if plan.removed or plan.left or plan.summary.kept_for_alignment]
    for group, plan in plans:
        refusal = _refusal(work, graph, _pruning_group(work, graph, group, plan)) if plan.remove else None
        if refusal:
            plan.leave(refusal)
    if not any(plan.removed for _, plan in plans) and not result.masks_folded:
        result.refused = _nothing_to_remove(plans, unstructured_sparsity)
        return result
    # Every constant is folded before any channel goes: a consumer's input indices are the
    # graph's until the first prune shifts them.
    for group, plan in plans:
        _fold_constants(work, group, plan)
    for group, plan in plans:
        refusal = _prune(work, graph, group, plan)
        if refusal:
            plan.leave(refusal)  # its constants are folded already: the verification below refuses the result
    model.forget_derived()  # the module changed: graph, groups and probe ranges describe the old one
    result.groups = [plan.summary for _, plan in plans]
    result.params_after = _params(work)
    result.max_abs_diff, result.tolerance, problem = _difference(probed.outputs, work, probed.inputs)
    if problem is None and result.max_abs_diff is not None and result.max_abs_diff > result.tolerance:
        problem = f"outputs differ by {result.max_abs_diff:.3g} (tolerance {result.tolerance:.3g})"
    if problem is not None:
        result.refused = f"verification failed: {problem}; nothing written"
        return result
    result.macs_after = _macs(work, example, result)  # it runs: the verification just proved it
    _save(work, output, arch, result)
    return result



def _macs(module: nn.Module, example: ExampleInput, result: CompactionResult) -> int | None:
    """MACs per sample, or None with a note: an op the counter cannot run is no reason to
    refuse a compaction whose outputs were verified."""
    count = count_macs_or_note(module, example, result.notes)
    return count.per_sample if count is not None else None

@dataclass
class _Plan:
    summary: GroupCompaction
    #: Group channel index -> (consumer name -> constant it receives); empty dict for dead channels.
    remove: dict[int, dict[str, float]]

    @property
    def removed(self) -> int:
        return self.summary.removed

    @property
    def left(self) -> int:
        return self.summary.left

    def leave(self, reason: str) -> None:
        """None of the group's silent channels go, for `reason`."""
        summary = self.summary
        summary.left += summary.removed + summary.kept_for_alignment
        summary.removed = summary.dead = summary.constants_folded = summary.kept_for_alignment = 0
        summary.left_because = "; ".join(r for r in (reason, summary.left_because) if r)
        self.remove = {}


def _check_output(output: Path, input_path: Path) -> None:
    if output.is_dir():
        raise UsageError(f"--compact {output}: that is a folder; give the file to write (e.g. {output / 'compact.pth'})")
    if output.exists() and input_path.exists() and output.resolve() == input_path.resolve():
        raise UsageError(f"--compact {output}: that is the input file; write the compacted model elsewhere")
    if not output.parent.exists():
        raise UsageError(f"--compact {output}: folder {output.parent} does not exist")


def _fold_masks(model: nn.Module) -> int:
    folded = 0
    for module in model.modules():
        for name in [k[: -len("_orig")] for k in list(module._parameters) if k.endswith("_orig")]:
            if hasattr(module, name + "_mask"):
                prune.remove(module, name)
                folded += 1
    return folded


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _plan(model: nn.Module, group: ChannelGroup, seen: dict[str, ChannelRange], round_to: int | None, zero_tol: float) -> _Plan:
    modules = dict(model.named_modules())
    fates = channel_fates(group, silenced_channels(modules, group, zero_tol), seen, zero_tol)
    remove: dict[int, dict[str, float]] = {}
    left_reasons: dict[int, str] = {}
    for index, fate in fates.items():
        blocked = fate.blocked_by(modules)
        if blocked:
            left_reasons[index] = blocked
        else:
            remove[index] = {name: value for name, value in fate.constants.items() if value}
    kept_for_alignment = 0
    if round_to and remove:
        width = group.size - len(remove)
        keep = (-width) % round_to
        if keep:
            # Keep constant channels first (no folding needed), then dead ones.
            order = sorted(remove, key=lambda i: (not remove[i], i))
            for index in order[:keep]:
                del remove[index]
            kept_for_alignment = min(keep, len(order))
    reasons = sorted(set(left_reasons.values()))
    summary = GroupCompaction(
        root=group.root,
        channels=group.size,
        removed=len(remove),
        dead=sum(1 for c in remove.values() if not c),
        constants_folded=sum(1 for c in remove.values() if c),
        kept_for_alignment=kept_for_alignment,
        left=len(left_reasons),
        left_because="; ".join(reasons[:3]) or None,
    )
    return _Plan(summary, remove)


def _fold_constants(model: nn.Module, group: ChannelGroup, plan: _Plan) -> None:
    modules = dict(model.named_modules())
    consumers = {m.name: m for m in group.consumers()}
    with torch.no_grad():
        for index, constants in plan.remove.items():
            for name, value in constants.items():
                module = modules[name]
                channel = consumers[name].idxs[index]
                weight = module.weight[:, channel]
                delta = value * (weight.flatten(1).sum(1) if weight.dim() > 1 else weight)
                if module.bias is not None:
                    module.bias += delta
                else:
                    bn = batchnorm_after(modules, name)
                    bn.running_mean -= delta  # type: ignore[union-attr, operator]


def _pruning_group(model: nn.Module, graph: Any, group: ChannelGroup, plan: _Plan) -> Any:
    """torch-pruning's group for removing the plan's channels (from the group's first layer)."""
    import torch_pruning as tp

    root = group.members[0]
    module = dict(model.named_modules())[root.name]
    prune_fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels
    idxs = sorted(root.idxs[i] for i in plan.remove)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return graph.get_pruning_group(module, prune_fn, idxs=idxs)


def _refusal(model: nn.Module, graph: Any, pruning_group: Any) -> str | None:
    """Why torch-pruning will not prune `pruning_group` (its check_pruning_group), or None."""
    if graph.check_pruning_group(pruning_group):
        return None
    names = {module: name for name, module in model.named_modules()}
    for dep, idxs in pruning_group:
        module = dep.target.module
        if graph.is_out_channel_pruning_fn(dep.handler):
            channels = graph.get_out_channels(module)
        elif graph.is_in_channel_pruning_fn(dep.handler):
            channels = graph.get_in_channels(module)
        else:
            continue
        if channels is not None and channels <= len(idxs) and module in names:
            return f"torch-pruning refuses to remove them: {names[module]!r} would be left with no channel"
    return "torch-pruning refuses to remove them (check_pruning_group failed)"


def _prune(model: nn.Module, graph: Any, group: ChannelGroup, plan: _Plan) -> str | None:
    """Remove the plan's channels; why not, when torch-pruning refuses."""
    if not plan.remove:
        return None
    pruning_group = _pruning_group(model, graph, group, plan)
    refusal = _refusal(model, graph, pruning_group)
    if refusal is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruning_group.prune()
    return refusal


def _difference(reference_outputs: list[Any], model: nn.Module, probe: list[ExampleInput]) -> tuple[float | None, float, str | None]:
    """The largest difference between `model`'s outputs on the probe inputs and the outputs
    recorded before compaction, the tolerance it must stay under, and why the outputs cannot
    be compared at all (None when they can)."""
    from ..model.trace import tensor_shapes

    worst = 0.0
    scale = 0.0
    with torch.inference_mode():
        for x, reference_output in zip(probe, reference_outputs, strict=True):
            expected = _flatten(reference_output)
            try:
                got = _flatten(x.call(model))
            except Exception as e:  # the compacted model no longer runs: that is the verification's answer
                return None, 0.0, f"the compacted model fails on the probe inputs ({type(e).__name__}: {' '.join(str(e).split())[:160]})"
            if tensor_shapes(expected) != tensor_shapes(got):
                return None, 0.0, f"output shapes changed from {tensor_shapes(expected)} to {tensor_shapes(got)}"
            for a, b in zip(expected, got):
                worst = max(worst, float((a.float() - b.float()).abs().max()))
                scale = max(scale, float(a.float().abs().max()))
    return worst, VERIFY_TOLERANCE * max(1.0, scale), None


def _flatten(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flatten(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flatten(v)]
    return []


def _save(model: nn.Module, output: Path, arch: str | None, result: CompactionResult) -> None:
    if arch is not None:
        payload: Any = {
            "state_dict": model.state_dict(),
            "arch": arch,
            "analyzer": {"compacted": True, "params": result.params_after},
        }
        result.saved_as = "state dict + arch"
        result.load_code = f"from analyzer import load_pruned\n\nmodel = load_pruned({str(output)!r}, {arch!r})"
    else:
        payload = model
        result.saved_as = "full module"
        result.load_code = (
            "import torch\n\n"
            f"model = torch.load({str(output)!r}, weights_only=False)  # the model's classes must be importable; "
            "analyze prints the safe_globals list"
        )
    atomic_write(output, lambda f: torch.save(payload, f))
    result.output = str(output)


def _nothing_to_remove(plans: list[tuple[ChannelGroup, _Plan]], unstructured: float | None) -> str:
    aligned = sum(plan.summary.kept_for_alignment for _, plan in plans)
    if aligned:
        round_to = next(plan.summary for _, plan in plans if plan.summary.kept_for_alignment)
        return (
            f"all {aligned} removable channels are kept so that widths stay multiples of --round-to "
            f"(e.g. in the group of {round_to.root}); nothing written"
        )
    left = [plan.summary for _, plan in plans if plan.left]
    if left:
        first = left[0]
        return (
            f"no channel can be removed exactly: {sum(p.left for p in left)} silent channels stay "
            f"(e.g. in the group of {first.root}: {first.left_because}); nothing written"
        )
    if unstructured:
        return (
            f"the zeros are unstructured ({unstructured:.0%} of the weights, scattered): no channel is entirely zero, so "
            "nothing can be removed. Structured pruning (torch-pruning) at a similar ratio is what removes work; "
            "nothing written"
        )
    return "no channel is zeroed in every layer of its coupled group: nothing to remove; nothing written"
