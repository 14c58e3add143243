"""The library entry points: `analyze(path, ...) -> Report` and `load_pruned(path, factory)`.

load → layers → passes → report, in one direction. The CLI is a thin layer over this.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.nn as nn

from .model import BuildOptions, build, parse_input_shape, rebuild_pruned
from .compact import compact
from .errors import UsageError
from .tensors.layers import build_layers
from .load import LoadOptions, load_checkpoint
from .load.limits import Limits, enforced, limits_for
from .passes import AnalysisOptions, PassContext, run_passes
from .profile import ProfileOptions, ProfileResult, profile_models
from .progress import NullProgress, Progress
from .report.assemble import build_report
from .compact.result import CompactionResult
from .report.model import Finding, Report

__all__ = ["analyze", "load_pruned"]


def analyze(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    baseline: str | os.PathLike[str] | None = None,
    input_shape: tuple[int, ...] | str | None = None,
    trust: bool = False,
    allow_modules: tuple[str, ...] | list[str] = (),
    key: str | None = None,
    zero_tol: float = 0.0,
    profile: bool = False,
    device: str = "auto",
    batches: tuple[int, ...] = (1,),
    profile_options: ProfileOptions | None = None,
    compact_to: str | os.PathLike[str] | None = None,
    round_to: int | None = None,
    progress: Progress | None = None,
) -> Report:
    """Analyse the checkpoint at `path` and return the report; raises AnalyzerError when it cannot.

    arch: `pkg.module:factory` of the dense architecture (imports that code); baseline: a
    dense checkpoint to compare with; input_shape: example input (e.g. "1,3,640,640"),
    inferred from the first layer when None; trust: unpickle fully (runs code from the
    file); allow_modules: packages whose classes may be imported and rebuilt; key: the
    training-dict entry holding the weights; zero_tol: |x| <= zero_tol counts as zero;
    profile: measure latency, FLOPs, per-layer time (and NVML on a GPU) on `device`
    ("auto", "cpu", "cuda") at each of `batches`, dense and pruned interleaved;
    compact_to: write a copy with zeroed channels really removed (and masks folded) to this
    path, outputs verified equal; round_to: keep widths multiples of this when compacting;
    progress: a listener for long steps (the CLI's progress bar).
    """
    progress = progress or NullProgress()
    load_options = LoadOptions(trust=trust, allow_modules=tuple(allow_modules), key=key)
    if isinstance(input_shape, str):
        input_shape = parse_input_shape(input_shape)
    with progress.stage(f"reading {Path(path).name}"):
        checkpoint = load_checkpoint(Path(path), load_options)
    build_options = BuildOptions(arch=arch, baseline=str(baseline) if baseline else None, input_shape=input_shape)
    with progress.stage("building and running the model"), _memory_bounded(checkpoint.file_size, checkpoint.path):
        built = build(checkpoint, build_options, load_options)
    ctx = PassContext(
        checkpoint=checkpoint,
        layers=build_layers(checkpoint),
        options=AnalysisOptions(zero_tol=zero_tol),
        build=built,
    )
    with progress.stage("scanning layers", total=len(ctx.layers)) as advance:
        for layer in ctx.layers:
            ctx.scan(layer)
            advance(1)
    if profile:
        options = profile_options or ProfileOptions(device=device, batches=tuple(batches))
        with progress.stage("profiling"):
            ctx.profile, ctx.profile_skipped = _profile(ctx, options)
    with progress.stage("checking"), _memory_bounded(checkpoint.file_size, checkpoint.path):
        results = run_passes(ctx)
    findings = results.findings
    report = build_report(ctx, findings, results.not_analysed, [f.to_dict() for f in results.failures])
    report.profile = ctx.profile.to_dict() if ctx.profile else None
    if compact_to is not None:
        with progress.stage("compacting"), _memory_bounded(checkpoint.file_size, checkpoint.path):
            report.compaction = _compact(ctx, Path(compact_to), Path(path), arch, round_to, findings).to_dict()
    return report


def _compact(
    ctx: PassContext, output: Path, input_path: Path, arch: str | None, round_to: int | None, findings: list[Finding]
) -> CompactionResult:
    model = ctx.model
    if model is None:
        raise UsageError("--compact needs a runnable model: a full-model checkpoint, or --arch for a state dict")
    if not model.trace.ok:
        raise UsageError("--compact: the model fails on its example input, so it cannot be verified after compaction")
    unstructured = next((f.evidence.get("sparsity_overall") for f in findings if f.kind == "unstructured-sparsity"), None)
    recipe = arch if model.origin != "checkpoint" else None
    return compact(model, output, input_path, recipe, round_to, ctx.options.zero_tol, unstructured, len(ctx.checkpoint.masks))


def _memory_bounded(file_size: int, path: Path) -> Any:
    """Running a model from a file is bounded like reading it: its layers' attributes come
    from the file too (a crafted Upsample factor or padding must fail, not exhaust memory).
    Memory only: a large model may legitimately take long; CUDA (profiling) is never under it."""
    limits = limits_for(file_size)
    return enforced(Limits(memory_bytes=(limits.memory_bytes or 0) + 2 * _GB, seconds=None), path)


_GB = 1 << 30


def _profile(ctx: PassContext, options: ProfileOptions) -> tuple[ProfileResult | None, str | None]:
    model = ctx.model
    if model is None:
        return None, "no runnable model to time (a full-model checkpoint, or --arch for a state dict)"
    if not model.trace.ok:
        return None, "the model fails on its example input, so it cannot be timed"
    reference = ctx.matching_reference
    dense = reference.module if reference is not None else None
    result = profile_models(model.module, dense, model.example_input, options, _pruned_layers(ctx))
    return result, None


def _pruned_layers(ctx: PassContext) -> set[str] | None:
    """Layers narrower than the reference or holding zeros; None without a reference."""
    reference = ctx.matching_reference
    if reference is None:
        return None
    pruned = set()
    for layer in ctx.layers:
        ref = reference.shapes.get(layer.weight or "")
        pattern = ctx.pattern(layer)
        if (ref is not None and layer.shape is not None and tuple(ref) != tuple(layer.shape)) or (
            pattern is not None and pattern.label != "dense"
        ):
            pruned.add(layer.name)
    return pruned


def load_pruned(
    path: str | os.PathLike[str],
    factory: str | Callable[[], nn.Module],
    *,
    trust: bool = False,
    allow_modules: tuple[str, ...] = (),
    key: str | None = None,
) -> nn.Module:
    """Rebuild a pruned model from its checkpoint and the dense architecture's factory.

    `factory` is a callable returning the dense model, or "pkg.module:factory". The
    layers the checkpoint narrowed are resized to its shapes, the weights are loaded
    strictly, masks are folded in, and the model is returned in eval mode. A
    torch-pruning `tp.state_dict` checkpoint is rebuilt with `tp.load_state_dict`.
    Raises AnalyzerError (BuildError, InputError) when it cannot, saying why.

        model = load_pruned("pruned.pth", torchvision.models.resnet50)
    """
    checkpoint = load_checkpoint(Path(path), LoadOptions(trust=trust, allow_modules=tuple(allow_modules), key=key))
    return rebuild_pruned(checkpoint, factory)
