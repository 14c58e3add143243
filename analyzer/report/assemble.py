"""Findings + layers + what the loader said → the Report."""

from __future__ import annotations

import math

import torch

from ..tensors.layers import Layer
from ..passes.context import PassContext
from ..profile.diagnose import withheld
from ..model.threads import ANALYSIS_THREADS
from .model import Finding, LayerRow, Report, Source, Summary
from .verdict import verdict

__all__ = ["build_report"]


def build_report(
    ctx: PassContext, findings: list[Finding], not_analysed: list[str], failures: list[dict[str, str]] | None = None
) -> Report:
    checkpoint = ctx.checkpoint
    rows = [_row(ctx, layer) for layer in ctx.layers]
    shared_notes, duplicate_params = _shared_storage(ctx)
    findings = sorted(findings, key=lambda f: -f.severity.rank)
    summary = Summary(
        params=sum(r.params for r in rows if r.params) - duplicate_params,
        nonzero_params=sum(r.nonzero or 0 for r in rows),
        params_without_data=sum(r.params for r in rows if r.nonzero is None),
        buffers=sum(_numel(ctx, name) for layer in ctx.layers for name in layer.buffers.values()),
        layers=len(rows),
        tensors=len(checkpoint.tensors),
        findings={s: sum(1 for f in findings if f.severity.value == s) for s in ("error", "warning", "info")},
    )
    model = ctx.model
    if model is not None and model.trace.ok and model.macs is not None:
        summary.macs = model.macs.per_sample  # the one count (model/macs.py) the profile and the plugin use too
        summary.macs_input_shape = list(model.example_input.shape)
    if model is not None:
        summary.run_threads = ANALYSIS_THREADS
    source = Source(
        path=str(checkpoint.path),
        format=checkpoint.format,
        container=checkpoint.container,
        file_size=checkpoint.file_size,
        loader=checkpoint.loader,
        weights_key=checkpoint.weights_key,
        stripped_prefix=checkpoint.stripped_prefix,
        placeholders=checkpoint.placeholders,
        metadata=dict(checkpoint.metadata),
        shards=list(checkpoint.shards),
    )
    if ctx.profile is not None:  # a rule that drew no conclusion from the measurements says why
        not_analysed = list(not_analysed) + [f"profile diagnosis: {kind} not decided: {why}" for kind, why in withheld(ctx.profile).items()]
    notes = list(checkpoint.notes) + list(ctx.build.notes) + shared_notes
    if checkpoint.other_weight_keys:
        notes.append(
            f"weights read from '{checkpoint.weights_key}'; the file also holds "
            + ", ".join(f"'{k}'" for k in checkpoint.other_weight_keys)
            + " (choose with --key)"
        )
    if checkpoint.stripped_prefix:
        notes.append(f"prefix '{checkpoint.stripped_prefix}' stripped from every tensor name")
    return Report(
        source=source,
        summary=summary,
        layers=rows,
        findings=findings,
        not_analysed=not_analysed,
        failures=list(failures or []),
        notes=notes,
        verdict=verdict(findings, [f["pass"] for f in failures or []]),
    )


def _row(ctx: PassContext, layer: Layer) -> LayerRow:
    stats = [ctx.stats(name) for name in layer.params.values()]
    known = all(s.nonzero is not None for s in stats)
    pattern = ctx.pattern(layer)
    reference = ctx.matching_reference
    reference_shape = reference.shapes.get(layer.weight) if reference and layer.weight else None
    weight_stats = ctx.stats(layer.weight) if layer.weight else None
    return LayerRow(
        name=layer.name or "<root>",
        type=layer.type,
        type_source=layer.type_source,
        shape=list(layer.shape) if layer.shape is not None else None,
        params=sum(s.numel for s in stats),
        nonzero=sum(s.nonzero or 0 for s in stats) if known else None,
        dtype=str(layer.dtype).removeprefix("torch.") if layer.dtype is not None else "-",
        masked=layer.masked,
        pattern=pattern.label if pattern is not None else None,
        out_channels=layer.out_width(),
        reference_out=layer.out_width(reference_shape) if reference_shape else None,
        weight_sparsity=weight_stats.zero_fraction if weight_stats else None,
    )


def _numel(ctx: PassContext, name: str) -> int:
    return math.prod(ctx.checkpoint.tensors.meta(name)[0])


def _shared_storage(ctx: PassContext) -> tuple[list[str], int]:
    """Parameters that are views of the same storage (tied weights): noted, counted once."""
    first_name: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], str] = {}
    notes: list[str] = []
    duplicates = 0
    checkpoint = ctx.checkpoint
    if not checkpoint.tensors.may_share_storage:
        return notes, duplicates
    for layer in ctx.layers:
        for name in layer.params.values():
            tensor = checkpoint.tensors[checkpoint.stored_name(name)]
            if not isinstance(tensor, torch.Tensor) or tensor.is_meta or tensor.layout is not torch.strided or tensor.is_nested or tensor.is_quantized:
                continue
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))
            if key[0] == 0 or tensor.numel() == 0:
                continue
            if key in first_name:
                notes.append(f"{name} shares its storage with {first_name[key]} (tied weights; counted once)")
                duplicates += tensor.numel()
            else:
                first_name[key] = name
    return notes, duplicates
