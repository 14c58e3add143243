"""`residual-mismatch`: the operands of an add or a concat no longer agree in channels.

With a runnable model the failing op is found in the traced graph (torch.fx) with the
modules that produced each operand; without FX, from the module that was running and
the PyTorch size error. Without a runnable model, ResNet-style blocks are checked
statically: a block's last layer and its shortcut (downsample, or the block input) must
have the same width.
"""

from __future__ import annotations

import re

from ..model.graph import BINARY_OPS, CAT_OPS, OpRecord
from ..model.coupling import GroupingUnfinished, coupled_groups, dependency_graph
from ..tensors.layers import Layer, adjacent
from ..report.model import Finding, Severity
from .context import PassContext

KIND = "residual-mismatch"

_SIZE_ERROR = re.compile(r"size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\) at non-singleton dimension (\d+)")
_CHANNEL_ERROR = re.compile(r"expected input\[[^\]]*\] to have (\d+) channels, but got (\d+) channels")
_BLOCK_LAYER = re.compile(r"^(conv|bn)(\d+)$")

_FIX_CODE = """\
import torch
import torch_pruning as tp

model = ...  # the dense model, before pruning
graph = tp.DependencyGraph().build_dependency(model, example_inputs={example})
channels = []  # fill in: the {removed} channel indices you removed from {layer}
group = graph.get_pruning_group(model.get_submodule({layer!r}), tp.prune_conv_out_channels, idxs=channels)
print(group)  # every layer that must lose the same channels, the shortcut included
group.prune()"""


def run(ctx: PassContext) -> list[Finding]:
    return ctx.once(KIND, lambda: _run(ctx))


def _run(ctx: PassContext) -> list[Finding]:
    model = ctx.model
    if model is None:
        return _static(ctx)
    if model.trace.ok:
        return []
    graph = ctx.graph()
    if graph is not None and graph.failure is not None:
        finding = _from_graph(ctx, graph.failure, graph.records)
        return [finding] if finding else []
    finding = _from_hooks(ctx)
    return [finding] if finding else []


def explains(ctx: PassContext) -> bool:
    """Whether this pass reports the model's forward failure (so the generic one need not)."""
    return ctx.model is not None and not ctx.model.trace.ok and bool(run(ctx))


def _from_graph(ctx: PassContext, failure: OpRecord, records: list[OpRecord]) -> Finding | None:
    channels = [shape[1] if len(shape) > 1 else None for shape in failure.operand_shapes]
    if failure.op in BINARY_OPS | CAT_OPS and len(set(channels)) > 1:
        operands = dict(zip(failure.producers, channels))
        return _finding(ctx, failure.op, failure.within, operands, failure.error or "", "graph")
    match = _CHANNEL_ERROR.search(failure.error or "")
    if match and failure.producers and failure.producers[0].startswith(("<cat", "<add")):
        expected, got = int(match.group(1)), int(match.group(2))
        source = next((r for r in records if f"<{r.op} {r.node}>" == failure.producers[0]), None)
        operands = dict(zip(source.producers, (s[1] for s in source.operand_shapes))) if source else {failure.producers[0]: got}
        op = f"{source.op} feeding {failure.op}" if source else f"input of {failure.op}"
        note = f"{failure.op} expects {expected} input channels, the {source.op if source else 'input'} gives {got}"
        return _finding(ctx, op, source.within if source else failure.within, operands, note, "graph")
    return None


def _from_hooks(ctx: PassContext) -> Finding | None:
    """Without a graph: the block that was running, and the operands its size error names —
    the shortcut (a downsample child, or the block's own input) and the main path's last layer."""
    trace = ctx.model.trace  # type: ignore[union-attr]
    failure = trace.failure
    match = _SIZE_ERROR.search(failure.message) if failure else None
    if failure is None or match is None or match.group(3) != "1":
        return None
    widths = [int(match.group(1)), int(match.group(2))]
    block = failure.module
    modules = dict(ctx.model.module.named_modules())  # type: ignore[union-attr]
    inside = [c for name, c in trace.calls.items() if name.startswith(block + ".") and c.outputs and len(c.outputs[0]) > 1]
    shortcut = next((c for c in reversed(inside) if _is_shortcut(c.name, block) and c.outputs[0][1] in widths), None)
    if shortcut is not None:
        short_name, short_width = shortcut.name, shortcut.outputs[0][1]
    else:
        block_input = trace.inputs.get(block, [])
        short_width = block_input[0][1] if block_input and len(block_input[0]) > 1 else widths[1]
        short_name = f"{block} input"
    main_width = widths[0] if widths[1] == short_width else widths[1]
    main = next(
        (c.name for c in reversed(inside) if c.outputs[0][1] == main_width and not _is_shortcut(c.name, block) and _has_parameters(modules.get(c.name))),
        f"<operand of {main_width} channels>",
    )
    return _finding(ctx, "add", block, {main: main_width, short_name: short_width}, failure.message, "module hooks")


def _is_shortcut(name: str, block: str) -> bool:
    return name[len(block) + 1 :].split(".")[0] in ("downsample", "shortcut", "skip")


def _has_parameters(module: object) -> bool:
    return module is not None and any(True for _ in module.parameters(recurse=False))  # type: ignore[attr-defined]


def _finding(ctx: PassContext, op: str, within: str, operands: dict[str, int | None], error: str, method: str) -> Finding:
    names = list(operands)
    listed = " vs ".join(f"{name} ({width} channels)" for name, width in operands.items())
    narrow = min((n for n in names if operands[n] is not None), key=lambda n: operands[n] or 0, default=names[0])
    coupled = _coupled_with(ctx, narrow)
    example = ctx.model.example_input.code() if ctx.model else "torch.randn(1, 3, 224, 224)"
    layer = _prunable_layer(ctx, narrow)
    return Finding(
        kind=KIND,
        severity=Severity.ERROR,
        modules=[within or "<model>", *names],
        message=(
            f"The {op} in {within or 'the model'} gets operands that no longer agree in channels: {listed}. "
            "Their channels are coupled and were pruned separately."
        ),
        evidence={
            "op": op,
            "module": within,
            "operand_channels": operands,
            "coupled_layers": coupled,
            "error": error,
            "found_by": method,
        },
        fix=(
            "Prune coupled channels together: torch-pruning's DependencyGraph removes the same channels from "
            "every branch of the sum (shortcut, BatchNorms and the next layers' inputs)."
        ),
        fix_code=_FIX_CODE.format(example=example, layer=layer, removed=_removed_count(operands)),
    )


def _removed_count(operands: dict[str, int | None]) -> int | str:
    widths = [w for w in operands.values() if w is not None]
    return max(widths) - min(widths) if len(widths) > 1 else "the"


def _coupled_with(ctx: PassContext, module: str) -> list[str]:
    """Layers coupled with `module` in the dense reference, when one runs."""
    reference = ctx.reference
    if reference is None or reference.module is None or ctx.model is None:
        return []
    try:
        graph = dependency_graph(reference.module, ctx.model.example_input)
    except Exception:  # torch-pruning may not trace the reference either; the finding stands without it
        return []
    try:
        groups = coupled_groups(reference.module, ctx.model.example_input, graph)
    except GroupingUnfinished:  # as above: the coupled layers are extra evidence, the finding stands
        return []
    for group in groups:
        names = [m.name for m in group.members]
        if module in names or any(module.startswith(n + ".") for n in names):
            return names
    return []


def _prunable_layer(ctx: PassContext, module: str) -> str:
    """The conv that feeds `module` (a BatchNorm usually) — the layer to prune the group from."""
    layers = {layer.name: layer for layer in ctx.layers}
    layer = layers.get(module)
    if layer is not None and layer.is_conv:
        return module
    producer = adjacent(module, False, layers, lambda c: c.is_conv)
    return producer.name if producer is not None else module


# -- static check ----------------------------------------------------------------------


def _static(ctx: PassContext) -> list[Finding]:
    layers = {layer.name: layer for layer in ctx.layers}
    # Grouped once, so each block looks only at its own layers (linear in the layers).
    children = _children(layers)
    shortcuts = _shortcut_layers(layers)
    findings = []
    for block in _blocks(layers):
        main = _last_block_layer(children.get(block, []))
        first = layers.get(f"{block}.conv1")
        if main is None or first is None or first.shape is None or main.shape is None:
            continue
        shortcut = _shortcut_width(shortcuts.get(block, []))
        shortcut_name = f"{block}.downsample" if shortcut is not None else f"{block} input ({block}.conv1 reads it)"
        width_in = shortcut if shortcut is not None else first.shape[1]
        if main.shape[0] != width_in:
            operands = {main.name: main.shape[0], shortcut_name: width_in}
            finding = _finding(ctx, "add", block, operands, "", "static (names and shapes)")
            findings.append(
                Finding(
                    kind=finding.kind,
                    severity=finding.severity,
                    modules=finding.modules,
                    message=finding.message + " (Checked statically from names and shapes: no runnable model; give --arch to run it.)",
                    evidence={**finding.evidence, "static": True},
                    fix=finding.fix,
                    fix_code=finding.fix_code,
                )
            )
    return findings


def _blocks(layers: dict[str, Layer]) -> list[str]:
    """Module names holding conv1/bn1-style children: ResNet-style blocks."""
    blocks: dict[str, None] = {}
    for name in layers:
        parent, _, last = name.rpartition(".")
        if last == "conv1" and parent and f"{parent}.conv2" in layers:
            blocks.setdefault(parent)
    return list(blocks)


def _children(layers: dict[str, Layer]) -> dict[str, list[tuple[str, Layer]]]:
    """Parent module name → (last name component, layer) of its direct children, in order."""
    children: dict[str, list[tuple[str, Layer]]] = {}
    for name, layer in layers.items():
        parent, _, last = name.rpartition(".")
        children.setdefault(parent, []).append((last, layer))
    return children


def _last_block_layer(children: list[tuple[str, Layer]]) -> Layer | None:
    numbered = []
    for last, layer in children:
        match = _BLOCK_LAYER.match(last)
        if match and layer.shape:
            numbered.append((int(match.group(2)), match.group(1) == "bn", layer))
    return max(numbered, key=lambda item: (item[0], item[1]))[2] if numbered else None


def _shortcut_layers(layers: dict[str, Layer]) -> dict[str, list[Layer]]:
    """Block name → the layers under its `downsample.`/`shortcut.` (a layer under several, for each)."""
    found: dict[str, list[Layer]] = {}
    for name, layer in layers.items():
        for marker in (".downsample.", ".shortcut."):
            at = name.find(marker)
            while at > 0:
                found.setdefault(name[:at], []).append(layer)
                at = name.find(marker, at + 1)
    return found


def _shortcut_width(shortcut: list[Layer]) -> int | None:
    shortcut = [layer for layer in shortcut if layer.shape]
    return shortcut[-1].shape[0] if shortcut else None  # type: ignore[index]
