"""Compact: turn zeroed channels and pruning masks into real channel removal.

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

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from ..model import Model
from ..model.inputs import ExampleInput
from ..model.macs import count_macs
from ..model.coupling import ChannelGroup
from ..model.modules import batchnorm_after
from ..model.silence import ChannelRange, channel_fates, silenced_channels
from ..model.threads import single_threaded
from ..errors import UsageError
from ..outputs import atomic_write
from .result import CompactionResult, GroupCompaction

__all__ = ["CompactionResult", "GroupCompaction", "compact"]


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
    probed = model.probed()  # before anything changes: its outputs are what the result must reproduce
    folded_here = _fold_masks(work)
    if folded_here:
        model.forget_derived(keep=("probed",))  # the graph was traced through the mask hooks
    result = CompactionResult(output=None, masks_folded=folded_here + (masks_in_file if model.origin != "checkpoint" else 0), round_to=round_to)
    result.params_before = _params(work)
    result.macs_before = model.macs.per_sample if model.macs is not None else count_macs(work, example).per_sample
    graph = model.dependency_graph()
    groups = [g for g in model.coupled_groups() if g.consumers()]
    plans = [_plan(work, group, probed.ranges, round_to, zero_tol) for group in groups]
    plans = [(group, plan) for group, plan in zip(groups, plans) if plan.removed or plan.left or plan.summary.kept_for_alignment]
    if not any(plan.removed for _, plan in plans) and not result.masks_folded:
        result.refused = _nothing_to_remove(plans, unstructured_sparsity)
        return result
    for group, plan in plans:
        _fold_constants(work, group, plan)
    for group, plan in plans:
        _prune(work, graph, group, plan)
    model.forget_derived()  # the module changed: graph, groups and probe ranges describe the old one
    result.groups = [plan.summary for _, plan in plans]
    result.params_after = _params(work)
    result.macs_after = count_macs(work, example).per_sample
    result.max_abs_diff, result.tolerance = _difference(probed.outputs, work, probed.inputs)
    if result.max_abs_diff > result.tolerance:
        result.refused = (
            f"verification failed: outputs differ by {result.max_abs_diff:.3g} (tolerance {result.tolerance:.3g}); nothing written"
        )
        return result
    _save(work, output, arch, result)
    return result


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


def _prune(model: nn.Module, graph: Any, group: ChannelGroup, plan: _Plan) -> None:
    import torch_pruning as tp

    if not plan.remove:
        return
    root = group.members[0]
    module = dict(model.named_modules())[root.name]
    prune_fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels
    idxs = sorted(root.idxs[i] for i in plan.remove)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruning_group = graph.get_pruning_group(module, prune_fn, idxs=idxs)
        if graph.check_pruning_group(pruning_group):
            pruning_group.prune()


def _difference(reference_outputs: list[Any], model: nn.Module, probe: list[ExampleInput]) -> tuple[float, float]:
    """Largest difference between `model`'s outputs on the probe inputs and the outputs recorded before compaction."""
    from ..model.trace import tensor_shapes

    worst = 0.0
    scale = 0.0
    with torch.inference_mode():
        for x, reference_output in zip(probe, reference_outputs, strict=True):
            expected, got = _flatten(reference_output), _flatten(x.call(model))
            if tensor_shapes(expected) != tensor_shapes(got):
                return math.inf, 0.0
            for a, b in zip(expected, got):
                worst = max(worst, float((a.float() - b.float()).abs().max()))
                scale = max(scale, float(a.float().abs().max()))
    return worst, 1e-4 * max(1.0, scale)


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
