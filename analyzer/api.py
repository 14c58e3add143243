"""The library entry points: `analyze(path | module, ...) -> Report` and `load_pruned(path, factory)`.

load → layers → passes → report, in one direction. The CLI is a thin layer over this.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from .errors import UsageError
from .load import Checkpoint, LoadOptions, bounded, load_checkpoint
from .load.isolation import isolation_available
from .load.limits import forward_limits, limits_for
from .model import Build, BuildOptions, build, parse_input_shape, rebuild_pruned
from .model.bounded_run import BoundedFirstRun
from .model.graph import GraphTrace
from .model.inputs import ExampleInput
from .model.trace import run_traced
from .passes import AnalysisOptions, PassContext, run_passes
from .progress import NullProgress, Progress
from .report.assemble import build_report
from .report.model import Finding, Report
from .tensors.layers import Layer, build_layers

if TYPE_CHECKING:  # imported where used: a static analysis needs neither
    from .compact.result import CompactionResult
    from .profile import ProfileOptions, ProfileResult

__all__ = ["analyze", "load_pruned"]


def analyze(
    path: str | os.PathLike[str] | nn.Module,
    *,
    arch: str | None = None,
    baseline: str | os.PathLike[str] | None = None,
    input_shape: tuple[int, ...] | str | Mapping[str, tuple[int, ...]] | None = None,
    example_input: torch.Tensor | tuple[torch.Tensor, ...] | Mapping[str, torch.Tensor] | ExampleInput | None = None,
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
    """Analyse the checkpoint at `path` (or an in-memory `nn.Module`) and return the report;
    raises AnalyzerError when it cannot.

    arch: `pkg.module:factory` of the dense architecture (imports that code); baseline: a
    dense checkpoint to compare with (path may be a save_pretrained folder or a shard index:
    all shards are one checkpoint, and its config.json is the dense architecture when arch is
    None); input_shape: example input (e.g. "1,3,640,640"; batch, sequence for token models),
    or {name: shape} for named inputs ({"input_ids": (1, 16), "attention_mask": (1, 16)}),
    inferred from the model when None; example_input: the input itself (a tensor, a tuple of
    them, a dict of named ones, or an ExampleInput); trust: unpickle fully (runs code from the
    file); allow_modules: packages whose classes may be imported and rebuilt; key: the
    training-dict entry holding the weights; zero_tol: |x| <= zero_tol counts as zero;
    profile: measure latency, FLOPs, per-layer time (and NVML on a GPU) on `device`
    ("auto", "cpu", "cuda") at each of `batches`, dense and pruned interleaved;
    compact_to: write a copy with zeroed channels really removed (and masks folded) to this
    path, outputs verified equal; round_to: keep widths multiples of this when compacting;
    progress: a listener for long steps (the CLI's progress bar).

    `path` may be the model itself, as torchinfo, fvcore and torch-pruning take it: the
    same report, read from the module's parameters, with the source shown as
    "<in-memory Module ClassName>". Its train/eval mode is restored afterwards.
    """
    if isinstance(path, nn.Module):
        with _restored_mode(path):
            return _analyze(_module_checkpoint(path), **_arguments(locals()))
    progress = progress or NullProgress()
    load_options = LoadOptions(trust=trust, allow_modules=tuple(allow_modules), key=key)
    with progress.stage(f"reading {Path(path).name}"):
        checkpoint = load_checkpoint(Path(path), load_options, progress)
    return _analyze(checkpoint, **_arguments(locals()))


def _arguments(names: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "arch", "baseline", "input_shape", "trust", "allow_modules", "key", "zero_tol", "profile", "device", "batches",
        "profile_options", "compact_to", "round_to", "progress", "example_input",
    )
    return {k: names[k] for k in keys}


def _analyze(
    checkpoint: Checkpoint,
    *,
    arch: str | None,
    baseline: str | os.PathLike[str] | None,
    input_shape: tuple[int, ...] | str | None,
    trust: bool,
    allow_modules: tuple[str, ...] | list[str],
    key: str | None,
    zero_tol: float,
    profile: bool,
    device: str,
    batches: tuple[int, ...],
    profile_options: ProfileOptions | None,
    compact_to: str | os.PathLike[str] | None,
    round_to: int | None,
    progress: Progress | None,
    example_input: Any,
) -> Report:
    progress = progress or NullProgress()
    path = checkpoint.path
    load_options = LoadOptions(trust=trust, allow_modules=tuple(allow_modules), key=key)
    if isinstance(input_shape, str):
        input_shape = parse_input_shape(input_shape)
    named = {str(k): tuple(v) for k, v in input_shape.items()} if isinstance(input_shape, Mapping) else None
    if named is not None or example_input is not None:
        if example_input is not None and input_shape is not None:
            raise UsageError("give the example input or its shape, not both")
        input_shape = None
    if input_shape is not None:
        check_input_rank(build_layers(checkpoint), tuple(input_shape))
    build_options = BuildOptions(
        arch=arch, baseline=str(baseline) if baseline else None, input_shape=input_shape, inputs=named,
        example_input=_example(example_input),
    )
    first_run = _memory_bounded(checkpoint, trust)
    with progress.stage("building and running the model"):
        built = build(checkpoint, build_options, load_options, first_run or run_traced)
        _check_baseline_runs(built, Path(baseline).stat().st_size if baseline else 0)
    ctx = PassContext(
        checkpoint=checkpoint,
        layers=build_layers(checkpoint),  # after build: it may name the tensors as transformers loads them
        options=AnalysisOptions(zero_tol=zero_tol),
        build=built,
        _graph=_graph_from_the_check(built, first_run),
    )
    with progress.stage("scanning layers"):
        _scan(ctx)
    if profile:
        from .profile import ProfileOptions

        options = profile_options or ProfileOptions(device=device, batches=tuple(batches))
        with progress.stage("profiling"):
            ctx.profile, ctx.profile_skipped = _profile(ctx, options)
    with progress.stage("checking"):
        results = run_passes(ctx)
    report = build_report(ctx, results.findings, results.not_analysed, [f.to_dict() for f in results.failures])
    report.profile = ctx.profile.to_dict() if ctx.profile else None
    if compact_to is not None:
        with progress.stage("compacting"):
            report.compaction = _compact(ctx, Path(compact_to), Path(path), arch, round_to, results.findings).to_dict()
    return report


def _module_checkpoint(module: nn.Module) -> Checkpoint:
    """An in-memory module read as a checkpoint that holds it (no file, nothing unpickled)."""
    from .load.checkpoint import DictTensorStore
    from .load.extract import extract_weights, find_masks

    extracted = extract_weights(module)
    return Checkpoint(
        path=Path(f"<in-memory Module {type(module).__name__}>"),
        format="in-memory",
        container=extracted.container,
        tensors=DictTensorStore(extracted.tensors),
        loader="in-memory",
        file_size=0,
        module=extracted.module,
        module_types=extracted.module_types,
        buffers=extracted.buffers,
        masks=find_masks(list(extracted.tensors)),
    )


@contextlib.contextmanager
def _restored_mode(module: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _example(value: Any) -> Any:
    if value is None:
        return None
    from .model.inputs import example_from

    try:
        return example_from(value)
    except TypeError as e:
        raise UsageError(f"example_input: {e}") from e


def check_input_rank(layers: list[Layer], shape: tuple[int, ...]) -> None:
    """A usage error, before anything runs, when the input cannot feed the model's convolutions.

    Known cheaply from the weights alone: when every convolution of the model has the same
    number of spatial dimensions (all Conv2d, say) and nothing takes token ids, the input
    must be (N, C, *spatial) with C the input channels of the first convolution."""
    convs = [layer for layer in layers if layer.is_conv and not layer.type.startswith("ConvTranspose") and layer.shape]
    if not convs or any(layer.type == "Embedding" for layer in layers):
        return
    ranks = {len(layer.shape or ()) for layer in convs}
    if len(ranks) != 1:
        return
    rank = ranks.pop()
    first = convs[0]
    if len(shape) != rank:
        channels = (first.shape or (0, 0))[1]
        example = ",".join(["1", str(channels), *(["224"] * (rank - 2))])
        spatial = ("L",) if rank == 3 else ("H", "W") if rank == 4 else ("D", "H", "W")
        raise UsageError(
            f"--input-shape {','.join(map(str, shape))}: this model's convolutions ({first.name}: {first.type}) take "
            f"{rank}-d input (N, C, {', '.join(spatial)}), e.g. --input-shape {example}"
        )


def _compact(
    ctx: PassContext, output: Path, input_path: Path, arch: str | None, round_to: int | None, findings: list[Finding]
) -> CompactionResult:
    from .compact import compact

    model = ctx.model
    if model is None:
        raise UsageError("--compact needs a runnable model: a full-model checkpoint, or --arch for a state dict")
    if not model.trace.ok:
        raise UsageError("--compact: the model fails on its example input, so it cannot be verified after compaction")
    unstructured = next((f.evidence.get("sparsity_overall") for f in findings if f.kind == "unstructured-sparsity"), None)
    recipe = arch if model.origin != "checkpoint" else None
    return compact(model, output, input_path, recipe, round_to, ctx.options.zero_tol, unstructured, len(ctx.checkpoint.masks))


def _scan(ctx: PassContext) -> None:
    """Every tensor's statistics and every layer's zero pattern, one pass over each tensor.

    Layers with a tensor large enough for torch to split its kernels across threads are
    scanned by a bounded child, single-threaded (parallel kernels spin-wait on a busy
    machine, costing many times the work in CPU time) and under the limits of reading;
    only the results come back, and this process never pages those bytes in. The small
    rest runs single-threaded anyway: it is scanned here, sparing the round trip."""
    heavy = [layer for layer in ctx.layers if _main_elements(layer) > _PARALLEL_ELEMENTS]
    if heavy and isolation_available():
        scanned = bounded(lambda: _scanned(ctx, heavy), limits_for(ctx.checkpoint.file_size), ctx.checkpoint.path, "scanning its tensors")
        ctx.adopt_scan(scanned)
    ctx.scan_all()  # what the child scanned is cached: this does the rest


def _scanned(ctx: PassContext, layers: list[Layer]) -> dict[str, Any]:
    ctx.scan_all(layers)
    return ctx.scanned()


#: torch's grain size: kernels on fewer elements run on the calling thread alone.
_PARALLEL_ELEMENTS = 1 << 15


def _main_elements(layer: Layer) -> int:
    """Elements of the layer's main tensor (its weight, else its first parameter): its largest
    but in odd layers, which then cost only some CPU time here."""
    return math.prod(layer.shape) if layer.shape is not None else 0


def _memory_bounded(checkpoint: Checkpoint, trust: bool) -> BoundedFirstRun | None:
    """Running a model whose layers come from the file is bounded like reading it (a crafted
    Upsample factor or padding must fail, not exhaust memory): its first run on each example
    input happens in a bounded child (model/bounded_run.py), never under a process-wide limit.
    A model built by the --arch factory from the file's shapes alone needs no such check, and
    a file read with --trust runs its code once, here, as the user asked; an in-memory module
    is the caller's own object, with nothing from a file to bound."""
    if not trust and checkpoint.format != "in-memory" and (checkpoint.runnable or checkpoint.tp_state is not None):
        return BoundedFirstRun(forward_limits(checkpoint.file_size))
    return None


def _graph_from_the_check(built: Build, first_run: BoundedFirstRun | None) -> list[GraphTrace | None]:
    """The op-by-op trace the bounded child computed for a failed first run: the passes use it
    instead of running the failed model again here (an empty list: computed when needed)."""
    if first_run is None or built.model is None or built.model.trace.ok:
        return []
    checked, graph = first_run.checked_graph(built.model.example_input)
    return [graph] if checked else []


def _check_baseline_runs(built: Build, file_size: int) -> None:
    """A runnable --baseline checkpoint's own module comes from a file too: it is only kept
    as the dense reference if its run on the example input stays within the bounds."""
    reference, model = built.reference, built.model
    if reference is None or reference.module is None or model is None or not reference.source.startswith("--baseline"):
        return
    trace = BoundedFirstRun(forward_limits(file_size))(reference.module, model.example_input)
    failure = trace.failure
    if failure is not None and failure.module == "" and failure.exception_type in ("MemoryError", "TimeoutError", "Crash"):
        reference.module = None
        built.notes.append(f"the --baseline model was not run: {failure.message}")


def _profile(ctx: PassContext, options: ProfileOptions) -> tuple[ProfileResult | None, str | None]:
    model = ctx.model
    if model is None:
        return None, "no runnable model to time (a full-model checkpoint, or --arch for a state dict)"
    if not model.trace.ok:
        return None, "the model fails on its example input, so it cannot be timed"
    reference = ctx.matching_reference
    dense = reference.module if reference is not None else None
    from .profile import profile_models

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
    factory: str | Callable[[], nn.Module] | None = None,
    *,
    trust: bool = False,
    allow_modules: tuple[str, ...] = (),
    key: str | None = None,
) -> nn.Module:
    """Rebuild a pruned model from its checkpoint and the dense architecture's factory.

    `factory` is a callable returning the dense model, or "pkg.module:factory"; for a
    save_pretrained folder it may be left out: the folder's config.json is the dense model
    (patched where the pruned tensors need other field values). The
    layers the checkpoint narrowed are resized to its shapes, the weights are loaded
    strictly, masks are folded in, and the model is returned in eval mode. A
    torch-pruning `tp.state_dict` checkpoint is rebuilt with `tp.load_state_dict`.
    Raises AnalyzerError (BuildError, InputError) when it cannot, saying why.

        model = load_pruned("pruned.pth", torchvision.models.resnet50)
    """
    checkpoint = load_checkpoint(Path(path), LoadOptions(trust=trust, allow_modules=tuple(allow_modules), key=key))
    return rebuild_pruned(checkpoint, factory)
