"""model: a checkpoint (+ `--arch`, `--baseline`) → a runnable model and a dense reference.

The model is the checkpoint's own module tree when it is runnable, or the `--arch`
factory's dense model fitted to the checkpoint (resized to a pruned state dict, or
rebuilt with torch-pruning's `tp.load_state_dict`). A model folder's config.json is the
dense architecture when no `--arch` is given (transformers' own classes, built without
weights; see hf.py), and when its tensors no longer fit it, the config fields that would
are derived and the model is built from the patched config. It is run once on an example
input; a forward pass that fails is recorded with the module where it failed. Nothing
here makes findings: the passes read the `Build`.

The model is run single-threaded (see `threads.py`), and what is derived from running it
— its MACs, torch-pruning's DependencyGraph, the coupled channel groups, what the probe
inputs carry — is computed once per `Model` and shared by every pass and by compaction.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import AnalyzerError, BuildError, UsageError
from ..load import Checkpoint, LoadOptions, load_checkpoint
from ..load.extract import find_masks
from ..load.placeholder import Placeholder
from . import hf
from .coupling import ChannelGroup, coupled_groups, dependency_graph
from .factory import build_dense, load_factory, parse_input_shape, parse_named_input
from .fit import PRUNED, FitReport, compare, resize_to
from .inputs import ExampleInput, model_input, random_input, takes_tokens
from .macs import MacCount, count_macs_or_note
from .modules import tied_names
from .silence import ChannelRange, consumer_ranges, probe_inputs
from .threads import single_threaded
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
    "parse_named_input",
    "run_traced",
    "ExampleInput",
    "CONFIG_SOURCE",
]

#: Reference.source when the dense architecture is a model folder's config.json.
CONFIG_SOURCE = "config.json"


@dataclass(frozen=True)
class BuildOptions:
    #: `pkg.module:factory` of the dense architecture.
    arch: str | None = None
    #: A dense checkpoint to compare with.
    baseline: str | None = None
    #: Example input shape ((batch, sequence) for token models); inferred from the model when None.
    input_shape: tuple[int, ...] | None = None
    #: Inputs by name and shape (`--input input_ids=1,16`), drawn the way the model takes them.
    inputs: Mapping[str, tuple[int, ...]] | None = None
    #: The example input itself (the API's example_input=), used as given.
    example_input: ExampleInput | None = None


@dataclass
class Probed:
    """What the probe inputs showed: each consuming layer's input channel ranges, and the model's outputs."""

    inputs: list[ExampleInput]
    ranges: dict[str, ChannelRange]
    outputs: list[Any]


@dataclass
class Model:
    module: nn.Module
    example_input: ExampleInput
    #: "checkpoint" (the file's own module), "arch" (resized --arch model), "tp.load_state_dict",
    #: "config.json" (the folder's config, patched when it no longer fit the tensors).
    origin: str
    trace: Trace
    #: MACs of one forward pass on example_input (None: the model did not run, or could not be counted).
    macs: MacCount | None = None
    _derived: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def dependency_graph(self) -> Any:
        """torch-pruning's DependencyGraph of `module`, built once (raises what torch-pruning raises)."""
        return self._once("graph", lambda: dependency_graph(self.module, self.example_input))

    def coupled_groups(self) -> list[ChannelGroup]:
        """The coupled channel groups, from the shared graph."""
        return self._once("groups", lambda: coupled_groups(self.module, self.example_input, self.dependency_graph()))

    def probed(self) -> Probed:
        """Every group consumer's input channel ranges on the probe inputs, and the outputs they gave."""

        def probe() -> Probed:
            inputs = probe_inputs(self.example_input)
            outputs: list[Any] = []
            groups = [g for g in self.coupled_groups() if g.consumers()]
            return Probed(inputs, consumer_ranges(self.module, groups, inputs, outputs), outputs)

        return self._once("probed", probe)

    def forget_derived(self, keep: tuple[str, ...] = ()) -> None:
        """Drop the shared graph, groups and probe results (after `module` was changed in place),
        except those named in `keep` ("graph", "groups", "probed") that the change left true."""
        for key in [k for k in self._derived if k not in keep]:
            del self._derived[key]

    def _once(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self._derived:
            try:
                with single_threaded():
                    self._derived[key] = compute()
            except Exception as e:  # remembered: a graph torch-pruning cannot trace fails once, not per pass
                self._derived[key] = e
        value = self._derived[key]
        if isinstance(value, Exception):
            raise value
        return value


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
    #: Groups of names that are one tensor in the model (tied weights).
    tied: list[tuple[str, ...]] = field(default_factory=list)


@dataclass
class Build:
    model: Model | None = None
    reference: Reference | None = None
    #: How the checkpoint fits --arch (None without --arch).
    fit: FitReport | None = None
    #: How the tensors fit a model folder's config.json, when it is the reference.
    config_fit: hf.ConfigFit | None = None
    notes: list[str] = field(default_factory=list)


#: Runs a model once on an example input and records the trace (run_traced, or a bounded check of it).
Runner = Callable[[nn.Module, ExampleInput], Trace]


def build(
    checkpoint: Checkpoint, options: BuildOptions, load_options: LoadOptions = LoadOptions(), run: Runner = run_traced
) -> Build:
    """The runnable model and the dense reference. A transformers reference may rename the
    checkpoint's tensors to the names transformers loads them under (checkpoint.tensors).
    `run` performs the example runs (the caller bounds those of a model whose layers come from the file)."""
    result = Build()
    dense = build_dense(options.arch) if options.arch else _dense_from_config(checkpoint, result)
    dense = _adopt_transformers_names(checkpoint, dense, result)
    source = f"--arch {options.arch}" if options.arch else CONFIG_SOURCE
    result.reference = _reference(options, load_options, dense, source)
    if result.reference is not None:
        _check_reference(checkpoint, result.reference)
    run_on, origin = dense, "arch"
    if dense is not None and not options.arch:
        run_on, origin = _fit_config(checkpoint, dense, result), CONFIG_SOURCE
    try:
        module, origin = _runnable_module(checkpoint, run_on, result, origin, dense_is_ours=origin == CONFIG_SOURCE)
        if module is not None:
            with single_threaded():
                example, trace = _run_example(module, options, checkpoint, run)
                macs = _macs(module, example, trace, result)
            result.model = Model(module, example, origin, trace, macs)
            if options.input_shape is None and not options.inputs and options.example_input is None:
                result.notes.append(_inferred_input_note(example))
    except AnalyzerError:
        raise
    except Exception as e:  # a module tree a pickle left inconsistent: analyse it statically
        result.model = None
        result.notes.append(f"the model could not be run ({type(e).__name__}: {' '.join(str(e).split())[:200]}); checks that need it were skipped")
    return result


def _macs(module: nn.Module, example: ExampleInput, trace: Trace, result: Build) -> MacCount | None:
    return count_macs_or_note(module, example, result.notes) if trace.ok else None


def rebuild_pruned(checkpoint: Checkpoint, factory: str | Callable[[], nn.Module] | None = None) -> nn.Module:
    """The pruned model of `checkpoint` rebuilt on the dense `factory` (a model folder's
    config.json when None); raises BuildError when it cannot."""
    result = Build()
    if factory is not None:
        dense, origin = build_dense(factory), "arch"
        dense = _adopt_transformers_names(checkpoint, dense, result)
    else:
        dense = _adopt_transformers_names(checkpoint, _dense_from_config(checkpoint, result), result)
        if dense is None:
            raise BuildError(f"{checkpoint.path}: give the dense model's factory ({'; '.join(result.notes) or 'no config.json to build it from'})")
        dense, origin = _fit_config(checkpoint, dense, result), CONFIG_SOURCE
    module, _ = _runnable_module(checkpoint, dense, result, origin, dense_is_ours=True)
    if module is None:
        fit = result.fit
        why = f"{fit.explanation}; " if fit and fit.explanation else ""
        if fit is not None and fit.not_resizable:
            raise BuildError(f"{checkpoint.path}: cannot rebuild the model from the factory ({fit.explanation})")
        detail = "; ".join(result.notes) or _first_mismatches(fit)
        raise BuildError(f"{checkpoint.path}: cannot rebuild the model from the factory ({why}{detail})")
    return module


def _dense_from_config(checkpoint: Checkpoint, result: Build) -> nn.Module | None:
    """The dense model of a folder's config.json (transformers' classes, parameters on meta)."""
    if checkpoint.config is None:
        return None
    if not hf.available():
        result.notes.append(
            "config.json was read but transformers is not installed: installing prune-analyzer[transformers] "
            f"({hf.INSTALL_HINT}) builds the dense model from it (stale config fields, removed channels, "
            "running the model); the checks below are those the tensors allow alone"
        )
        return None
    try:
        return hf.dense_from_config(checkpoint.config, tensors=len(checkpoint.tensors))
    except hf.ConfigUnusable as e:
        result.notes.append(f"config.json is not used as the dense architecture: {e}")
        return None


def _adopt_transformers_names(checkpoint: Checkpoint, dense: nn.Module | None, result: Build) -> nn.Module | None:
    """The checkpoint as transformers loads it into `dense`: under the model's names (ViT's
    encoder.layer.N → layers.N), without the tensors it drops (buffers the model computes
    itself, names its class declares ignorable). None when names cannot be matched one to
    one (transformers merges tensors while loading)."""
    if dense is None or not hf.is_transformers_model(dense):
        return dense
    renaming, why = hf.checkpoint_renaming(dense, list(checkpoint.tensors))
    if renaming is None:
        result.notes.append(f"{why}: the dense model is not compared with the tensors name by name")
        return None
    stored = {renaming.get(name, name): name for name in checkpoint.tensors}
    if len(stored) != len(checkpoint.tensors):
        result.notes.append("transformers would load two tensors under one name: the dense model is not compared")
        return None
    dropped = hf.ignored_when_loading(dense, list(stored))
    for name in dropped:
        del stored[name]
    if not renaming and not dropped:
        return dense
    checkpoint.tensors = hf.RenamedTensorStore(checkpoint.tensors, stored)
    checkpoint.masks = find_masks(list(checkpoint.tensors))
    if renaming:
        first = next(iter(renaming.items()))
        result.notes.append(
            f"tensors are named as transformers loads them into {type(dense).__name__}: {len(renaming)} renamed "
            f"(e.g. {first[0]} → {first[1]})"
        )
    if dropped:
        result.notes.append(
            f"{len(dropped)} tensors that transformers ignores when loading {type(dense).__name__} were left out "
            f"(buffers it computes itself, e.g. {dropped[0]})"
        )
    return dense


def _fit_config(checkpoint: Checkpoint, dense: nn.Module, result: Build) -> nn.Module:
    """The model to load the tensors into: config.json's, or the patched config's when the
    tensors need other field values (a pruned model whose config.json was not updated)."""
    assert checkpoint.config is not None
    shapes = _checkpoint_shapes(checkpoint, tied_names(dense))
    try:
        fit = result.config_fit = hf.fit_config(checkpoint.config, shapes)
    except hf.ConfigUnusable as e:
        result.notes.append(f"the config fields the tensors need could not be derived: {e}")
        return dense
    if fit.patch is None:
        return dense
    try:
        return hf.dense_from_config(hf.apply_patch(checkpoint.config, fit.patch))
    except hf.ConfigUnusable as e:
        result.notes.append(f"the patched config.json could not be built: {e}")
        return dense


def _inferred_input_note(example: ExampleInput) -> str:
    if takes_tokens(example):
        return (
            f"example input {example.describe()}: token ids within the vocabulary "
            "(set --input-shape BATCH,SEQUENCE or --input NAME=SHAPE)"
        )
    return f"example input {example.describe()} inferred from the first layer (set --input-shape)"


def _first_mismatches(fit: FitReport | None) -> str:
    if fit is None:
        return "the checkpoint does not fit the architecture"
    parts = [f"{m.key}: {list(m.checkpoint_shape)} vs {list(m.model_shape)}" for m in fit.mismatched[:3]]
    parts += [f"missing {k}" for k in fit.missing[:2]] + [f"unexpected {k}" for k in fit.unexpected[:2]]
    return ", ".join(parts)


def _reference(options: BuildOptions, load_options: LoadOptions, dense: nn.Module | None, source: str) -> Reference | None:
    runnable_dense = dense if dense is not None and not _has_meta_tensors(dense) else None
    if options.baseline:
        baseline = load_checkpoint(Path(options.baseline), load_options)
        shapes = {name: baseline.meta(name)[0] for name in baseline.effective_names()}
        # The reference is only ever read (shapes, graphs, timing): the dense model itself, not a copy.
        module = baseline.module if baseline.runnable else runnable_dense
        return Reference(f"--baseline {options.baseline}", shapes, dict(baseline.module_types), module)
    if dense is not None:
        shapes = {k: tuple(v.shape) for k, v in dense.state_dict().items()}
        types = {name: type(m).__name__ for name, m in dense.named_modules()}
        # A model built from config.json has no weights to run as the dense reference.
        module = runnable_dense
        return Reference(source, shapes, types, module, tied=tied_names(dense))
    return None


def _has_meta_tensors(module: nn.Module) -> bool:
    return any(t.is_meta for t in module.state_dict(keep_vars=True).values())


def _checkpoint_shapes(checkpoint: Checkpoint, tied: list[tuple[str, ...]] = ()) -> dict[str, tuple[int, ...]]:
    """Effective tensor shapes; a tied name the file left out (save_pretrained stores one of
    each group) takes the shape of the one it holds."""
    shapes = {name: checkpoint.meta(name)[0] for name in checkpoint.effective_names()}
    for group in tied:
        held = next((name for name in group if name in shapes), None)
        if held is not None:
            for name in group:
                shapes.setdefault(name, shapes[held])
    return shapes


def _check_reference(checkpoint: Checkpoint, reference: Reference) -> None:
    """A reference only serves for width comparisons when the checkpoint is it, or a pruned copy of it."""
    fit = compare(reference.shapes, _checkpoint_shapes(checkpoint, reference.tied))
    if fit.cause not in (None, PRUNED):
        reference.matches = False
        reference.mismatch = fit.cause


def _runnable_module(
    checkpoint: Checkpoint, dense: nn.Module | None, result: Build, origin: str = "arch", dense_is_ours: bool = False
) -> tuple[nn.Module | None, str]:
    """dense_is_ours: nothing else uses `dense` (load_pruned, a model built from config.json),
    so it is fitted in place rather than copied."""
    if checkpoint.runnable:
        return checkpoint.module.eval(), "checkpoint"  # type: ignore[union-attr]
    if dense is None:
        return None, ""
    if checkpoint.tp_state is not None:
        return _tp_load(dense if dense_is_ours else copy.deepcopy(dense), checkpoint, result)
    model = dense if dense_is_ours else _structure_copy(dense)
    tied = tied_names(model)
    shapes = _checkpoint_shapes(checkpoint, tied)
    fit = result.fit = compare(model, shapes)
    if not fit.fits:
        if fit.cause != PRUNED:
            return None, ""
        resize_to(model, shapes, fit, checkpoint.config)
        if fit.not_resizable:
            result.notes.append("cannot resize " + ", ".join(fit.not_resizable))
            return None, ""
        if fit.narrower_heads:
            listed = ", ".join(f"{name}: {heads}" for name, heads in list(fit.narrower_heads.items())[:3])
            result.notes.append(f"attention rebuilt with a narrower head_dim, its head count kept ({listed})")
        if fit.config_refused:
            refused = "; ".join(f"{name} ({why})" for name, why in fit.config_refused.items())
            result.notes.append(f"the model's config kept its dense value of {refused}")
    try:
        _load_strict(model, checkpoint, tied)
    except (RuntimeError, ValueError) as e:
        result.notes.append(f"load_state_dict failed after resizing: {' '.join(str(e).split())[:300]}")
        return None, ""
    return model.eval(), origin


def _structure_copy(dense: nn.Module) -> nn.Module:
    """A copy of `dense` whose parameters are allocated but not copied: every one is either
    resized or loaded from the checkpoint next (a model missing one is discarded)."""
    memo: dict[int, Any] = {}
    for parameter in dense.parameters():
        memo[id(parameter)] = nn.Parameter(torch.empty_like(parameter), requires_grad=parameter.requires_grad)
    return copy.deepcopy(dense, memo)


def _tp_load(model: nn.Module, checkpoint: Checkpoint, result: Build) -> tuple[nn.Module | None, str]:
    import torch_pruning as tp

    tp.load_state_dict(model, state_dict=checkpoint.tp_state)
    if any(isinstance(m, Placeholder) for m in model.modules()):
        result.notes.append("tp.load_state_dict brought in placeholder modules (classes not loaded): not runnable")
        return None, ""
    return model.eval(), "tp.load_state_dict"


def _load_strict(model: nn.Module, checkpoint: Checkpoint, tied: list[tuple[str, ...]] = ()) -> None:
    """Load every tensor; a model built without weights (meta) takes the checkpoint's tensors
    themselves (assign: nothing is copied). Tied names share the tensor the file holds."""
    expected = model.state_dict(keep_vars=True)
    state = {k: checkpoint.effective(k) for k in checkpoint.effective_names() if k in expected}
    on_meta = any(t.is_meta for t in expected.values())
    outcome = model.load_state_dict(state, strict=False, assign=on_meta)
    shared = _retie(model, tied, state)
    missing = [k for k in outcome.missing_keys if not k.endswith("num_batches_tracked") and k not in shared]
    if missing or outcome.unexpected_keys:
        raise RuntimeError(f"missing {missing[:5]}, unexpected {outcome.unexpected_keys[:5]}")
    if on_meta:
        empty = [k for k, t in model.state_dict(keep_vars=True).items() if t.is_meta]
        if empty:
            raise RuntimeError(f"no values for {empty[:5]}")


def _retie(model: nn.Module, tied: list[tuple[str, ...]], state: Mapping[str, torch.Tensor]) -> set[str]:
    """Point every name of a tied group at the tensor of the name the file held (resizing or
    assigning gave them separate tensors); returns the names so filled."""
    filled: set[str] = set()
    for group in tied:
        held = next((name for name in group if name in state), None)
        if held is None:
            continue
        owner, _, attr = held.rpartition(".")
        source = model.get_submodule(owner)._parameters.get(attr)
        if source is None:
            continue  # tied buffers keep their own copies
        for name in group:
            if name != held:
                module_name, _, local = name.rpartition(".")
                model.get_submodule(module_name)._parameters[local] = source
                filled.add(name)
    return filled


#: Spatial sizes tried, in order, when the input shape is inferred and the first one fails
#: (a Flatten before a Linear fixes the size a model accepts).
_FALLBACK_SIZES = (32, 64, 128, 256, 512, 16, 8, 28, 96, 112, 299, 320, 640)


def _run_example(module: nn.Module, options: BuildOptions, checkpoint: Checkpoint, run: Runner = run_traced) -> tuple[ExampleInput, Trace]:
    """The example input and the model's trace on it. An inferred image input is retried at
    other spatial sizes before a failure counts; the first size that runs wins."""
    if hf.is_transformers_model(module) and getattr(module.config, "use_cache", None):
        module.config.use_cache = False  # one forward pass: no key/value cache to build
    if options.example_input is not None:
        return options.example_input, run(module, options.example_input)
    example = model_input(module, options.input_shape, options.inputs)
    if example is None:
        raise UsageError(f"{checkpoint.path}: cannot infer an example input for this model; pass --input-shape or --input NAME=SHAPE")
    trace = run(module, example)
    given = options.input_shape is not None or bool(options.inputs)
    if trace.ok or given or example.single is None or takes_tokens(example) or len(example.shape) < 3:
        return example, trace
    shape = example.shape
    for size in _FALLBACK_SIZES:
        candidate = random_input(module, (*shape[:-2], size, size) if len(shape) == 4 else (*shape[:-1], size))
        retry = run(module, candidate)
        if retry.ok:
            return candidate, retry
    return example, trace
