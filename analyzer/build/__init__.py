"""build: a checkpoint (+ `--arch`, `--baseline`) → a runnable model and a dense reference.

The model is the checkpoint's own module tree when it is runnable, or the `--arch`
factory's dense model fitted to the checkpoint (resized to a pruned state dict, or
rebuilt with torch-pruning's `tp.load_state_dict`). It is run once on an example input;
a forward pass that fails is recorded with the module where it failed. Nothing here
makes findings: the passes read the `Build`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import BuildError, UsageError
from ..load import Checkpoint, LoadOptions, load_checkpoint
from ..load.placeholder import Placeholder
from .arch import build_dense, load_factory, parse_input_shape
from .fit import PRUNED, FitReport, compare, resize_to
from .trace import ForwardFailure, ModuleCall, Trace, default_input_shape, run_traced

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
    example_input: torch.Tensor
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


@dataclass
class Build:
    model: Model | None = None
    reference: Reference | None = None
    #: How the checkpoint fits --arch (None without --arch).
    fit: FitReport | None = None
    notes: list[str] = field(default_factory=list)


def build(checkpoint: Checkpoint, options: BuildOptions, load_options: LoadOptions = LoadOptions()) -> Build:
    result = Build()
    dense = build_dense(options.arch) if options.arch else None
    result.reference = _reference(options, load_options, dense)
    module, origin = _runnable_module(checkpoint, dense, result)
    if module is not None:
        example = _example_input(module, options, checkpoint)
        result.model = Model(module, example, origin, run_traced(module, example))
        if options.input_shape is None:
            result.notes.append(f"example input {tuple(example.shape)} inferred from the first layer (set --input-shape)")
    return result


def rebuild_pruned(checkpoint: Checkpoint, factory: str) -> nn.Module:
    """The pruned model of `checkpoint` rebuilt on the dense `factory`; raises BuildError when it cannot."""
    result = Build()
    module, _ = _runnable_module(checkpoint, build_dense(factory), result)
    if module is None:
        fit = result.fit
        why = f"{fit.cause}: " if fit and fit.cause else ""
        detail = "; ".join(result.notes) or "the checkpoint does not fit the architecture"
        raise BuildError(f"{checkpoint.path}: cannot rebuild on {factory} ({why}{detail})")
    return module


def _reference(options: BuildOptions, load_options: LoadOptions, dense: nn.Module | None) -> Reference | None:
    if options.baseline:
        baseline = load_checkpoint(Path(options.baseline), load_options)
        shapes = {name: baseline.tensors.meta(baseline.masks[name].orig if name in baseline.masks else name)[0] for name in baseline.effective_names()}
        module = baseline.module if baseline.runnable else (copy.deepcopy(dense) if dense is not None else None)
        return Reference(f"--baseline {options.baseline}", shapes, dict(baseline.module_types), module)
    if dense is not None:
        shapes = {k: tuple(v.shape) for k, v in dense.state_dict().items()}
        types = {name: type(m).__name__ for name, m in dense.named_modules()}
        return Reference(f"--arch {options.arch}", shapes, types, copy.deepcopy(dense))
    return None


def _runnable_module(checkpoint: Checkpoint, dense: nn.Module | None, result: Build) -> tuple[nn.Module | None, str]:
    if checkpoint.runnable:
        return checkpoint.module.eval(), "checkpoint"  # type: ignore[union-attr]
    if dense is None:
        return None, ""
    model = copy.deepcopy(dense)
    if checkpoint.tp_state is not None:
        return _tp_load(model, checkpoint, result)
    shapes = {name: _shape(checkpoint, name) for name in checkpoint.effective_names()}
    fit = result.fit = compare(model, shapes, masked=sorted(checkpoint.masks))
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


def _shape(checkpoint: Checkpoint, name: str) -> tuple[int, ...]:
    source = checkpoint.masks[name].orig if name in checkpoint.masks else name
    return checkpoint.tensors.meta(source)[0]


def _load_strict(model: nn.Module, checkpoint: Checkpoint) -> None:
    expected = model.state_dict()
    state = {k: checkpoint.effective(k) for k in checkpoint.effective_names() if k in expected}
    outcome = model.load_state_dict(state, strict=False)
    missing = [k for k in outcome.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or outcome.unexpected_keys:
        raise RuntimeError(f"missing {missing[:5]}, unexpected {outcome.unexpected_keys[:5]}")


def _example_input(module: nn.Module, options: BuildOptions, checkpoint: Checkpoint) -> torch.Tensor:
    shape = options.input_shape or default_input_shape(module)
    if shape is None:
        raise UsageError(f"{checkpoint.path}: cannot infer an example input for this model; pass --input-shape")
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)

