"""`state-dict-mismatch`: the checkpoint does not fit the `--arch` architecture.

Pruned checkpoints that only narrow layers are rebuilt (and reported as channel
removal); everything else is explained here: which layers, the likely cause (a prefix,
masks never removed, a pruned checkpoint whose layers cannot be resized, the wrong
architecture or variant), and the exact code that fixes it.
"""

from __future__ import annotations

from ..model.fit import PREFIX, PRUNED, WRONG_ARCH, FitReport, owner_label
from ..report.model import Finding, Severity
from .context import PassContext

KIND = "state-dict-mismatch"
_SHOWN = 12

_PREFIX_CODE = """\
import torch

state_dict = torch.load({path!r}, weights_only=True)
state_dict = {{{expr}: v for k, v in state_dict.items()}}
model.load_state_dict(state_dict)"""

_PREFIX_PRUNED_CODE = """\
import torch
from analyzer import load_pruned

state_dict = torch.load({path!r}, weights_only=True)
torch.save({{{expr}: v for k, v in state_dict.items()}}, "renamed.pth")
model = load_pruned("renamed.pth", {arch!r})  # resizes the pruned layers, loads strictly"""

_PRUNED_CODE = """\
from analyzer import load_pruned

model = load_pruned({path!r}, {arch!r})  # resizes the pruned layers, loads strictly"""


def run(ctx: PassContext) -> list[Finding]:
    fit = ctx.build.fit
    if fit is None or fit.fits or (fit.cause == PRUNED and ctx.model is not None):
        return []
    return [_finding(ctx, fit)]


def _finding(ctx: PassContext, fit: FitReport) -> Finding:
    path = str(ctx.checkpoint.path)
    arch = ctx.reference.source.removeprefix("--arch ") if ctx.reference else "pkg.module:factory"
    by_module: dict[str, dict[str, list[list[int]]]] = {}
    for m in fit.mismatched:  # the model's own tensors (timm's cls_token) by name, never module ''
        by_module.setdefault(owner_label(m.key), {})[m.key.rpartition(".")[2]] = [list(m.checkpoint_shape), list(m.model_shape)]
    evidence = {
        "cause": fit.cause,
        "size_mismatch_by_module": dict(list(by_module.items())[:50]),
        "size_mismatches": len(fit.mismatched),
        "missing": fit.missing[:50],
        "missing_count": len(fit.missing),
        "unexpected": fit.unexpected[:50],
        "unexpected_count": len(fit.unexpected),
        "prefix": fit.prefix,
        "not_resizable": fit.not_resizable,
    }
    modules = list(by_module) or sorted({owner_label(k) for k in fit.missing + fit.unexpected})
    summary = _summary(fit)
    if fit.cause == PREFIX:
        assert fit.prefix is not None
        expr = f"{fit.prefix[1:]!r} + k" if fit.prefix.startswith("-") else f"k.removeprefix({fit.prefix!r})"
        pruned_too = fit.after_prefix is not None and fit.after_prefix.cause == PRUNED
        message = f"The checkpoint's keys carry a prefix the model's do not ({fit.prefix!r}): {summary}."
        fix = "Strip (or add) the prefix before load_state_dict."
        code = _PREFIX_CODE.format(path=path, expr=expr)
        if pruned_too:
            message += " With the prefix fixed, it is a pruned version of the model: its narrowed layers need resizing too."
            fix = "Strip (or add) the prefix, save the renamed state dict, and rebuild it with analyzer.load_pruned."
            code = _PREFIX_PRUNED_CODE.format(path=path, expr=expr, arch=arch)
    elif fit.cause == PRUNED:
        message = (
            f"The checkpoint is a pruned version of {arch} ({summary}), but "
            f"{', '.join(fit.not_resizable) or 'some layers'} cannot be resized to it."
        )
        fix = (
            "Those layers are custom: save the pruned model with torch-pruning's tp.state_dict(model) and load it "
            "with tp.load_state_dict(dense_model, ...), or save the whole module."
        )
        code = None
    else:
        message = f"The checkpoint does not match {arch}: {summary}; this looks like a different architecture or variant."
        fix = (
            "Check the factory and its arguments (depth, width, num_classes) against the ones used for training; "
            "the first mismatching layers below show where they part."
        )
        code = None
    if fit.cause in (PRUNED, PREFIX) or (fit.cause == WRONG_ARCH and _only_narrower(fit)):
        code = code or _PRUNED_CODE.format(path=path, arch=arch)
    return Finding(
        kind=KIND,
        severity=Severity.ERROR,
        modules=modules[:_SHOWN * 4],
        message=message,
        evidence=evidence,
        fix=fix,
        fix_code=code,
    )


def _summary(fit: FitReport) -> str:
    parts = []
    if fit.mismatched:
        first = fit.mismatched[0]
        parts.append(
            f"{len(fit.mismatched)} size mismatches in {len(fit.by_module())} layers "
            f"(first: {first.key} is {list(first.checkpoint_shape)} in the file, {list(first.model_shape)} in the model)"
        )
    if fit.missing:
        parts.append(f"{len(fit.missing)} keys missing (e.g. {fit.missing[0]})")
    if fit.unexpected:
        parts.append(f"{len(fit.unexpected)} unexpected (e.g. {fit.unexpected[0]})")
    return "; ".join(parts)


def _only_narrower(fit: FitReport) -> bool:
    return bool(fit.mismatched) and all(m.narrower for m in fit.mismatched) and not fit.missing and not fit.unexpected
