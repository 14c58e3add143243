"""Fit a checkpoint's tensors to a dense architecture: compare, explain, rebuild.

`compare` says how the checkpoint differs from the model built by `--arch` (prefixes,
masks, missing and unexpected keys, shape mismatches grouped by layer) and what the
likely cause is. When the differences are those of channel pruning, `resize_to` makes
each mismatched layer the checkpoint's size (Conv incl. depthwise groups, ConvTranspose,
Linear, BatchNorm, GroupNorm, LayerNorm) so that the state dict loads strictly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .modules import is_depthwise

__all__ = ["ShapeMismatch", "FitReport", "compare", "resize_to", "PRUNED", "PREFIX", "WRONG_ARCH"]

PRUNED = "pruned checkpoint into a dense class"
PREFIX = "key prefix"
WRONG_ARCH = "wrong architecture or variant"
# Masks never removed are not a cause here: the loader folds weight_orig * weight_mask
# into the effective weight before comparing (and the pruning-masks finding says so).

_RESIZABLE = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.Linear, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm,
)


@dataclass(frozen=True)
class ShapeMismatch:
    key: str
    model_shape: tuple[int, ...]
    checkpoint_shape: tuple[int, ...]

    @property
    def module(self) -> str:
        return self.key.rpartition(".")[0]

    @property
    def narrower(self) -> bool:
        """Same rank, no dimension larger than the model's: what channel pruning leaves."""
        return len(self.model_shape) == len(self.checkpoint_shape) and all(
            c <= m for c, m in zip(self.checkpoint_shape, self.model_shape)
        )


@dataclass
class FitReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[ShapeMismatch] = field(default_factory=list)
    #: Prefix the checkpoint has that the model does not (or the other way, with a leading '-').
    prefix: str | None = None
    #: How the checkpoint fits once the prefix is fixed (a pruned checkpoint may also carry one).
    after_prefix: FitReport | None = None
    #: The most likely explanation, one of PRUNED, PREFIX, WRONG_ARCH; None when it fits.
    cause: str | None = None
    #: Modules whose parameters could not be resized (custom layers).
    not_resizable: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def by_module(self) -> dict[str, list[ShapeMismatch]]:
        grouped: dict[str, list[ShapeMismatch]] = {}
        for mismatch in self.mismatched:
            grouped.setdefault(mismatch.module, []).append(mismatch)
        return grouped


def compare(expected: Mapping[str, tuple[int, ...]] | nn.Module, shapes: Mapping[str, tuple[int, ...]]) -> FitReport:
    """How the checkpoint's tensor `shapes` (masks already folded) differ from a model's
    state dict (or from a reference's shapes: then every layer counts as resizable)."""
    model = expected if isinstance(expected, nn.Module) else None
    if model is not None:
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    report = FitReport()
    # A missing BatchNorm step counter is harmless: load_state_dict keeps the model's.
    report.missing = [k for k in expected if k not in shapes and not k.endswith("num_batches_tracked")]
    report.unexpected = [k for k in shapes if k not in expected]
    report.mismatched = [
        ShapeMismatch(k, expected[k], tuple(shapes[k])) for k in expected if k in shapes and tuple(shapes[k]) != expected[k]
    ]
    if report.missing and report.unexpected:
        report.prefix = _prefix_between(report.missing, report.unexpected)
        if report.prefix is not None:
            report.after_prefix = compare(model if model is not None else expected, _renamed(shapes, report.prefix))
    report.cause = _cause(report, model)
    return report


def _renamed(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> dict[str, tuple[int, ...]]:
    if prefix.startswith("-"):
        return {prefix[1:] + k: v for k, v in shapes.items()}
    return {k.removeprefix(prefix): v for k, v in shapes.items()}


def _prefix_between(missing: list[str], unexpected: list[str]) -> str | None:
    """A prefix the checkpoint's names have and the model's lack ('-' + prefix: the other way)."""
    for have, want, sign in ((unexpected, set(missing), ""), (missing, set(unexpected), "-")):
        counts: Counter[str] = Counter()
        for name in have:
            parts = name.split(".")
            for i in range(1, len(parts)):
                if ".".join(parts[i:]) in want:
                    counts[".".join(parts[:i]) + "."] += 1
                    break
        if counts:
            prefix, hits = counts.most_common(1)[0]
            if hits >= len(want) / 2:
                return sign + prefix
    return None


def _cause(report: FitReport, model: nn.Module | None) -> str | None:
    if report.fits:
        return None
    if report.prefix is not None:
        return PREFIX
    if report.missing or report.unexpected:
        return WRONG_ARCH  # layers added or removed, not narrowed
    modules = dict(model.named_modules()) if model is not None else {}
    resizable = all(
        m.narrower and (model is None or isinstance(modules.get(m.module), _RESIZABLE)) for m in report.mismatched
    )
    return PRUNED if resizable else WRONG_ARCH


def resize_to(model: nn.Module, shapes: Mapping[str, tuple[int, ...]], report: FitReport) -> None:
    """Make every mismatched module the checkpoint's size, in place (values are loaded after)."""
    modules = dict(model.named_modules())
    for name, mismatches in report.by_module().items():
        module = modules[name]
        local = {m.key.rpartition(".")[2]: m.checkpoint_shape for m in mismatches}
        full = {k: tuple(shapes[f"{name}.{k}"]) for k in _tensor_names(module) if f"{name}.{k}" in shapes}
        if not _resize_module(module, {**full, **local}):
            report.not_resizable.append(name)


def _tensor_names(module: nn.Module) -> list[str]:
    return [k for k, v in {**module._parameters, **module._buffers}.items() if v is not None]


def _resize_module(module: nn.Module, shapes: dict[str, tuple[int, ...]]) -> bool:
    weight = shapes.get("weight")
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and weight:
        depthwise = is_depthwise(module)
        module.out_channels = weight[0]
        if depthwise:
            module.groups = module.in_channels = weight[0]
        else:
            module.in_channels = weight[1] * module.groups
    elif isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) and weight:
        depthwise = is_depthwise(module)
        module.in_channels = weight[0]
        if depthwise:
            module.groups = module.out_channels = weight[0]
        else:
            module.out_channels = weight[1] * module.groups
    elif isinstance(module, nn.Linear) and weight:
        module.out_features, module.in_features = weight
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        module.num_features = _first_dim(shapes, "weight", "running_mean")
    elif isinstance(module, nn.GroupNorm):
        module.num_channels = _first_dim(shapes, "weight", "bias")
        if module.num_channels % module.num_groups:
            return False
    elif isinstance(module, nn.LayerNorm) and weight:
        module.normalized_shape = tuple(weight)
    else:
        return False
    _replace_tensors(module, shapes)
    return True


def _first_dim(shapes: dict[str, tuple[int, ...]], *keys: str) -> int:
    return next(shapes[k][0] for k in keys if k in shapes)


def _replace_tensors(module: nn.Module, shapes: dict[str, tuple[int, ...]]) -> None:
    for name, shape in shapes.items():
        if name in module._parameters and module._parameters[name] is not None:
            old = module._parameters[name]
            module._parameters[name] = nn.Parameter(torch.zeros(shape, dtype=old.dtype), requires_grad=old.requires_grad)
        elif name in module._buffers and module._buffers[name] is not None:
            old = module._buffers[name]
            module._buffers[name] = torch.zeros(shape, dtype=old.dtype)
