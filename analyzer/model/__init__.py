"""model: a checkpoint (+ `--arch`, `--baseline`) → a runnable model and a dense reference.

The model is the checkpoint's own module tree when it is runnable, or the `--arch`
factory's dense model fitted to the checkpoint (resized to a pruned state dict, or
rebuilt with torch-pruning's `tp.load_state_dict`). It is run once on an example input;
a forward pass that fails is recorded with the module where it failed. Nothing here
makes findings: the passes read the `Build`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import AnalyzerError, BuildError, UsageError
from ..load import Checkpoint, LoadOptions, load_checkpoint
from ..load.placeholder import Placeholder
from .factory import build_dense, load_factory, parse_input_shape
from .fit import PRUNED, FitReport, compare, resize_to
from .inputs import ExampleInput, default_input_shape, random_input
from .trace import ForwardFailure, ModuleCall, Trace, run_traced

__all__ = [
    "BuildOptions",
    "Build",
    "Model",
    "Reference",
    "build",
    "rebuild_pruned",
    "Trace",
    "ModuleCall",
    "ForwardFailure",
    "FitReport",
    "load_factory",
    "parse_input_shape",
    "run_traced",
    "ExampleInput",
]


@dataclass(frozen=True)
class BuildOptions:
    #: `pkg.module:factory` of the dense architecture.
    arch: str | None = None
    #: A dense checkpoint to compare with.
    baseline: str | None = None
    #: Example input shape; inferred from the first layer when None.
    input_shape: tuple[int, ...] | None = None


@dataclass
class Model:
    module: nn.Module
    example_input: ExampleInput
    #: "checkpoint" (the file's own module), "arch" (resized --arch model), "tp.load_state_dict".
    origin: str
    trace: Trace


@dataclass
class Reference:
    """The dense model the checkpoint is compared with."""

    #: Where it came from, as the user gave it ("--baseline dense.pth", "--arch analyzer.zoo:resnet50").
    source: str
    #: Tensor name -> shape.
    shapes: dict[str, tuple[int, ...]]
    module_types: dict[str, str] = field(default_factory=dict)
    #: A runnable dense model, when there is one (--arch, or a runnable --baseline).
    module: nn.Module | None = None
    #: False when the checkpoint is not a (possibly pruned) version of this reference.
    matches: bool = True
    #: Why it does not match, when it does not.
    mismatch: str | None = None


@dataclass
class Build:
    model: Model | None = None
    reference: Reference | None = None
    #: How the checkpoint fits --arch (None without --arch).
    fit: FitReport | None = None
    notes: list[str] = field(default_factory=list)


#: Runs a model once on an example input and records the trace (run_traced, or a bounded check of it).
Runner = Callable[[nn.Module, ExampleInput], Trace]


def build(
    checkpoint: Checkpoint, options: BuildOptions, load_options: LoadOptions = LoadOptions(), run: Runner = run_traced
) -> Build:
    """`run` performs the example runs (the caller bounds those of a model whose layers come from the file)."""
    result = Build()
    dense = build_dense(options.arch) if options.arch else None
    result.reference = _reference(options, load_options, dense)
    if result.reference is not None:
        _check_reference(checkpoint, result.reference)
    try:
        module, origin = _runnable_module(checkpoint, dense, result)
        if module is not None:
            example, trace = _run_example(module, options, checkpoint, run)
            result.model = Model(module, example, origin, trace)
            if options.input_shape is None:
                result.notes.append(f"example input {example.describe()} inferred from the first layer (set --input-shape)")
    except AnalyzerError:
        raise
    except Exception as e:  # a module tree a pickle left inconsistent: analyse it statically
        result.model = None
        result.notes.append(f"the model could not be run ({type(e).__name__}: {' '.join(str(e).split())[:200]}); checks that need it were skipped")
    return result


def rebuild_pruned(checkpoint: Checkpoint, factory: str | Callable[[], nn.Module]) -> nn.Module:
    """The pruned model of `checkpoint` rebuilt on the dense `factory`; raises BuildError when it cannot."""
    result = Build()
    module, _ = _runnable_module(checkpoint, build_dense(factory), result)
    if module is None:
        fit = result.fit
        why = f"{fit.cause}; " if fit and fit.cause else ""
        detail = "; ".join(result.notes) or _first_mismatches(fit)
        raise BuildError(f"{checkpoint.path}: cannot rebuild the model from the factory ({why}{detail})")
    return module


def _first_mismatches(fit: FitReport | None) -> str:
    if fit is None:
        return "the checkpoint does not fit the architecture"
    parts = [f"{m.key}: {list(m.checkpoint_shape)} vs {list(m.model_shape)}" for m in fit.mismatched[:3]]
    parts += [f"missing {k}" for k in fit.missing[:2]] + [f"unexpected {k}" for k in fit.unexpected[:2]]
    return ", ".join(parts)


def _reference(options: BuildOptions, load_options: LoadOptions, dense: nn.Module | None) -> Reference | None:
    if options.baseline:
        baseline = load_checkpoint(Path(options.baseline), load_options)
        shapes = {name: baseline.meta(name)[0] for name in baseline.effective_names()}
        module = baseline.module if baseline.runnable else (copy.deepcopy(dense) if dense is not None else None)
        return Reference(f"--baseline {options.baseline}", shapes, dict(baseline.module_types), module)
    if dense is not None:
        shapes = {k: tuple(v.shape) for k, v in dense.state_dict().items()}
        types = {name: type(m).__name__ for name, m in dense.named_modules()}
        return Reference(f"--arch {options.arch}", shapes, types, copy.deepcopy(dense))
    return None


def _check_reference(checkpoint: Checkpoint, reference: Reference) -> None:
    """A reference only serves for width comparisons when the checkpoint is it, or a pruned copy of it."""
    fit = compare(reference.shapes, {name: checkpoint.meta(name)[0] for name in checkpoint.effective_names()})
    if fit.cause not in (None, PRUNED):
        reference.matches = False
        reference.mismatch = fit.cause


def _runnable_module(checkpoint: Checkpoint, dense: nn.Module | None, result: Build) -> tuple[nn.Module | None, str]:
    if checkpoint.runnable:
        return checkpoint.module.eval(), "checkpoint"  # type: ignore[union-attr]
    if dense is None:
        return None, ""
    model = copy.deepcopy(dense)
    if checkpoint.tp_state is not None:
        return _tp_load(model, checkpoint, result)
    shapes = {name: checkpoint.meta(name)[0] for name in checkpoint.effective_names()}
    fit = result.fit = compare(model, shapes)
    if not fit.fits:
        if fit.cause != PRUNED:
            return None, ""
        resize_to(model, shapes, fit)
        if fit.not_resizable:
            result.notes.append("cannot resize " + ", ".join(fit.not_resizable))
            return None, ""
    try:
        _load_strict(model, checkpoint)
    except (RuntimeError, ValueError) as e:
        result.notes.append(f"load_state_dict failed after resizing: {' '.join(str(e).split())[:300]}")
        return None, ""
    return model.eval(), "arch"


def _tp_load(model: nn.Module, checkpoint: Checkpoint, result: Build) -> tuple[nn.Module | None, str]:
    import torch_pruning as tp

    tp.load_state_dict(model, state_dict=checkpoint.tp_state)
    if any(isinstance(m, Placeholder) for m in model.modules()):
        result.notes.append("tp.load_state_dict brought in placeholder modules (classes not loaded): not runnable")
        return None, ""
    return model.eval(), "tp.load_state_dict"


def _load_strict(model: nn.Module, checkpoint: Checkpoint) -> None:
    expected = model.state_dict()
    state = {k: checkpoint.effective(k) for k in checkpoint.effective_names() if k in expected}
    outcome = model.load_state_dict(state, strict=False)
    missing = [k for k in outcome.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or outcome.unexpected_keys:
        raise RuntimeError(f"missing {missing[:5]}, unexpected {outcome.unexpected_keys[:5]}")


#: Spatial sizes tried, in order, when the input shape is inferred and the first one fails
#: (a Flatten before a Linear fixes the size a model accepts).
_FALLBACK_SIZES = (32, 64, 128, 256, 512, 16, 8, 28, 96, 112, 299, 320, 640)


def _run_example(module: nn.Module, options: BuildOptions, checkpoint: Checkpoint, run: Runner) -> tuple[ExampleInput, Trace]:
    """The example input and the model's trace on it. An inferred input is retried at other
    spatial sizes before a failure counts; the first size that runs wins."""
    shape = options.input_shape or default_input_shape(module)
    if shape is None:
        raise UsageError(f"{checkpoint.path}: cannot infer an example input for this model; pass --input-shape")
    example = random_input(module, shape)
    trace = run(module, example)
    if trace.ok or options.input_shape is not None or len(shape) < 3:
        return example, trace
    for size in _FALLBACK_SIZES:
        candidate = random_input(module, (*shape[:-2], size, size) if len(shape) == 4 else (*shape[:-1], size))
        retry = run(module, candidate)
        if retry.ok:
            return candidate, retry
    return example, trace
