"""`head-shape-mismatch`: detection heads whose output channels no longer hold whole anchors.

Pruning a head's last conv changes how many anchors per location it predicts: the
heads then disagree with each other and with the prior boxes, and training or decoding
fails far from the cause (RetinaFace: `Target sizes: [10, 5376, 4]. Tensor sizes:
[10, 10752, 1]`). This pass names the heads, the anchor counts, and the
`ignored_layers` that keep torch-pruning away from them.
"""

from __future__ import annotations

from collections import defaultdict

from ..model.heads import Head, find_heads
from ..report.model import Finding, Severity
from .context import PassContext

KIND = "head-shape-mismatch"

_FIX_CODE = """\
import torch
import torch_pruning as tp

model = ...  # the dense model, before pruning
ignored_layers = [model.get_submodule(name) for name in [
{names}]]
pruner = tp.pruner.MetaPruner(
    model,
    {example},
    importance=tp.importance.MagnitudeImportance(p=2),
    pruning_ratio={ratio},
    ignored_layers=ignored_layers,  # the heads keep their output channels
)
pruner.step()"""


def run(ctx: PassContext) -> list[Finding]:
    heads = detected_heads(ctx)
    if not heads:
        return []
    problems = _problems(heads)
    output_problem = _output_shapes_differ(ctx)
    if output_problem:
        problems.append(output_problem)
    if not problems:
        return []
    return [_finding(ctx, heads, problems)]


def explains(ctx: PassContext, module: str) -> bool:
    """Whether this pass reports a problem with the head that `module` (where the forward
    pass failed) is or holds — the failure is then a consequence of that problem."""
    if not module:
        return False
    return any(conv == module or conv.startswith(module + ".") for conv in _at_fault(detected_heads(ctx)))


def _at_fault(heads: list[Head]) -> list[str]:
    """The head convs a problem of `_problems` is about."""
    if _anchors_disagree(heads):
        return [h.conv for h in heads]
    return [h.conv for h in heads if _problem(h)]


def detected_heads(ctx: PassContext) -> list[Head]:
    model = ctx.model
    reference = ctx.matching_reference
    module = model.module if model is not None else ctx.checkpoint.module
    conv_outputs = {name: call.outputs[0] for name, call in model.trace.calls.items() if call.outputs} if model else {}
    return find_heads(
        ctx.layers,
        ctx.checkpoint.module_types,
        reference.shapes if reference else None,
        module,
        ctx.graph(),
        conv_outputs,
    )


def _problems(heads: list[Head]) -> list[str]:
    problems = []
    families: dict[str, list[Head]] = defaultdict(list)
    for head in heads:
        families[head.family].append(head)
    for family, members in families.items():
        if len({(h.width, h.values_per_anchor, h.expected_anchors, h.reference_width) for h in members}) == 1:
            problem = _problem(members[0])
            if problem:
                levels = f" ({len(members)} levels)" if len(members) > 1 else ""
                problems.append(f"{family}{levels}: {problem}")
        else:
            problems += [f"{h.conv}: {p}" for h in members if (p := _problem(h))]
    if _anchors_disagree(heads):
        listed = ", ".join(f"{family}: {count:g}" for family, count in _anchors_by_family(heads).items() if count is not None)
        problems.append(f"the heads disagree on anchors per location ({listed})")
    return problems


def _anchors_disagree(heads: list[Head]) -> bool:
    """Without an expected anchor count, the families must at least agree with each other."""
    return not any(h.expected_anchors for h in heads) and len(set(_anchors_by_family(heads).values()) - {None}) > 1


def _problem(head: Head) -> str | None:
    k = head.values_per_anchor
    if k and head.width % k:
        return f"{head.width} channels, not a multiple of {k} values per anchor, so view(N, -1, {k}) fails"
    if k and head.expected_anchors and head.width // k != head.expected_anchors:
        anchors = head.width // k
        return (
            f"{head.width} output channels, that is {anchors} anchor{'s' if anchors != 1 else ''} × {k} values per "
            f"location, where the model expects {head.expected_anchors} anchors"
        )
    if head.reference_width and head.reference_width != head.width:
        return f"{head.width} output channels where the reference has {head.reference_width}"
    return None


def _anchors_by_family(heads: list[Head]) -> dict[str, float | None]:
    families: dict[str, set[float | None]] = defaultdict(set)
    for head in heads:
        families[head.family].add(head.anchors)
    return {family: (counts.pop() if len(counts) == 1 else None) for family, counts in families.items()}


def _output_shapes_differ(ctx: PassContext) -> str | None:
    model, reference = ctx.model, ctx.reference
    if model is None or reference is None or reference.module is None or not model.trace.ok or not reference.matches:
        return None
    from ..model import run_traced
    from ..model.trace import tensor_shapes

    dense = run_traced(reference.module, model.example_input)
    ours, theirs = tensor_shapes(model.trace.output), tensor_shapes(dense.output)
    if not dense.ok or ours == theirs:
        return None
    return f"outputs on {model.example_input.describe()} are {ours} where {reference.source} gives {theirs}"


def _finding(ctx: PassContext, heads: list[Head], problems: list[str]) -> Finding:
    evidence_heads = {
        h.conv: {
            "out_channels": h.width,
            "values_per_anchor": h.values_per_anchor,
            "anchors_per_location": h.anchors,
            "expected_anchors": h.expected_anchors,
            "reference_out_channels": h.reference_width,
        }
        for h in heads
    }
    loss_line = _loss_failure(heads)
    message = "Detection heads no longer hold whole anchors: " + "; ".join(problems[:6])
    message += "." if not loss_line else f". {loss_line}"
    example = ctx.model.example_input.code() if ctx.model else "torch.randn(1, 3, 640, 640)"
    names = "".join(f"    {h.conv!r},\n" for h in heads)
    return Finding(
        kind=KIND,
        severity=Severity.ERROR,
        modules=[h.conv for h in heads],
        message=message,
        evidence={"heads": evidence_heads, "problems": problems, "expected_from": sorted({h.expected_source for h in heads if h.expected_source})},
        fix=(
            "Prune again from the dense model with every head conv in ignored_layers: torch-pruning must never "
            "change a detection head's output channels."
        ),
        fix_code=_FIX_CODE.format(names=names, example=example, ratio=_ratio(ctx)),
    )


def _loss_failure(heads: list[Head]) -> str | None:
    """The error the user sees when boxes and priors disagree, with this input's numbers."""
    for family in ("BboxHead",):
        members = [h for h in heads if h.family.rpartition(".")[2] == family and h.positions and h.anchors and h.expected_anchors]
        if not members:
            continue
        boxes = sum(int(h.positions * h.anchors) for h in members)  # type: ignore[operator]
        priors = sum(h.positions * h.expected_anchors for h in members)  # type: ignore[operator]
        if boxes != priors and all(float(h.anchors).is_integer() for h in members):  # type: ignore[arg-type]
            return (
                f"On this input the box head emits {boxes} boxes per image against {priors} priors, so a "
                f"multibox loss fails with 'Target sizes: [N, {boxes}, 4]. Tensor sizes: [N, {priors}, 1]'"
            )
    return None


def _ratio(ctx: PassContext) -> float:
    """The channel ratio the checkpoint was pruned at, estimated from the reference; 0.5 without one."""
    reference = ctx.matching_reference
    if reference is None:
        return 0.5
    kept = total = 0
    for layer in ctx.layers:
        ref = reference.shapes.get(layer.weight or "")
        if layer.is_conv and layer.shape and ref:
            kept += layer.shape[0]
            total += ref[0]
    return round(1 - kept / total, 2) if total else 0.5
