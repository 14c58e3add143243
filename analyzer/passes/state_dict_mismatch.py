"""`state-dict-mismatch`: the checkpoint does not fit the `--arch` architecture (or the
config.json of its model folder).

Pruned checkpoints that only narrow layers are rebuilt (and reported as channel
removal); everything else is explained here: which layers, the likely cause (a prefix,
masks never removed, a pruned checkpoint whose layers cannot be resized, the wrong
architecture or variant), and the exact code that fixes it. A model folder whose tensors
were pruned but whose config.json was not updated cannot be loaded by `from_pretrained`,
even when the analyzer can rebuild it: the finding gives the config fields that fix it.
"""

from __future__ import annotations

import json

from ..model import CONFIG_SOURCE
from ..model.fit import PREFIX, PRUNED, WRONG_ARCH, FitReport, owner_label
from ..model.hf import ConfigFit
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


_CONFIG_PATCH_CODE = """\
import json

path = {path!r}
with open(path) as f:
    config = json.load(f)
{updates}
with open(path, "w") as f:
    json.dump(config, f, indent=2)"""

_CONFIG_LOAD_PRUNED_CODE = """\
from analyzer import load_pruned

model = load_pruned({path!r})  # config.json's dense model, each layer resized to the file's shapes"""

STALE_CONFIG = "pruned, config.json not updated"
CONFIG_MISMATCH = "config.json does not describe the tensors"


def run(ctx: PassContext) -> list[Finding]:
    config_fit = ctx.build.config_fit
    if config_fit is not None and not config_fit.fits:
        finding = _config_finding(ctx, config_fit)
        if finding is not None:
            return [finding]
    if ctx.checkpoint.config is not None and ctx.reference is None:
        return _static_config_check(ctx)
    fit = ctx.build.fit
    if fit is None or fit.fits or (fit.cause == PRUNED and ctx.model is not None):
        return []
    return [_finding(ctx, fit)]


def _config_finding(ctx: PassContext, fit: ConfigFit) -> Finding | None:
    """config.json no longer gives the tensors' shapes: from_pretrained fails on this folder."""
    folder = ctx.checkpoint.path if ctx.checkpoint.path.is_dir() else ctx.checkpoint.path.parent
    config_path = str(folder / "config.json")
    first = fit.first_mismatch
    failure = (
        f"from_pretrained fails ({first[0]} is {list(first[1])} in the file, {list(first[2])} from config.json)"
        if first else "from_pretrained fails"
    )
    evidence: dict[str, object] = {
        "cause": STALE_CONFIG if fit.narrower else CONFIG_MISMATCH,
        "first_mismatch": {"tensor": first[0], "file": list(first[1]), "config": list(first[2])} if first else None,
    }
    modules = _mismatched_modules(ctx)
    if fit.patch is not None:
        changes = ", ".join(f"{name} {old if old is not None else '(not set)'} → {new}" for name, (old, new) in fit.changes.items())
        lead = "Pruned, config.json not updated" if fit.narrower else "config.json does not describe these tensors"
        evidence.update(config_patch=fit.patch, changes={k: [old, new] for k, (old, new) in fit.changes.items()})
        alternative = ""
        if fit.alternative is not None:
            evidence.update(alternative_patch=fit.alternative)
            alternative = (
                " This keeps head_dim, as pruning whole heads does; if head dimensions were pruned instead, "
                f"the shapes fit {json.dumps(fit.alternative)} as well."
            )
        return Finding(
            kind=KIND,
            severity=Severity.ERROR,
            modules=modules,
            message=(
                f"{lead}: the tensors need {changes}, but config.json still gives "
                f"{'the dense widths' if fit.narrower else 'other widths'}, so {failure}.{alternative}"
            ),
            evidence=evidence,
            fix=f"Set these fields in {config_path} (then from_pretrained loads the folder): {json.dumps(fit.patch)}",
            fix_code=_CONFIG_PATCH_CODE.format(path=config_path, updates=_updates(fit.patch)),
        )
    if fit.per_layer:
        shown = "; ".join(
            f"{where}: " + ", ".join(f"{width} in {', '.join(names[:2])}{' …' if len(names) > 2 else ''}" for width, names in widths.items())
            for where, widths in list(fit.per_layer.items())[:2]
        )
        evidence.update(per_layer={k: {str(w): n for w, n in v.items()} for k, v in list(fit.per_layer.items())[:20]})
        return Finding(
            kind=KIND,
            severity=Severity.ERROR,
            modules=modules,
            message=(
                f"Pruned with widths that differ between layers ({shown}): a Hugging Face config.json holds one "
                f"value per field, so no config can express this model and {failure}."
            ),
            evidence=evidence,
            fix=(
                "Rebuild it with analyzer.load_pruned, which resizes every layer to the file's shapes "
                "(or prune with the same ratio in every layer, or save the whole module)."
            ),
            fix_code=_CONFIG_LOAD_PRUNED_CODE.format(path=str(ctx.checkpoint.path)),
        )
    model_fit = ctx.build.fit
    if first is not None and fit.narrower and not (model_fit is not None and model_fit.cause == WRONG_ARCH and not _only_narrower(model_fit)):
        evidence.update(reason=fit.reason)
        return Finding(
            kind=KIND,
            severity=Severity.ERROR,
            modules=modules,
            message=f"Pruned, and no config.json can describe it ({fit.reason}), so {failure}.",
            evidence=evidence,
            fix="Rebuild it with analyzer.load_pruned, which resizes every layer to the file's shapes, or save the whole module.",
            fix_code=_CONFIG_LOAD_PRUNED_CODE.format(path=str(ctx.checkpoint.path)),
        )
    return None  # another architecture altogether: the generic explanation below


def _updates(patch: dict[str, object], target: str = "config") -> str:
    lines = []
    flat = {k: v for k, v in patch.items() if not isinstance(v, dict)}
    if flat:
        lines.append(f"{target}.update({json.dumps(flat)})")
    for key, value in patch.items():
        if isinstance(value, dict):
            lines.append(_updates(value, f"{target}[{key!r}]"))
    return "\n".join(lines)


def _mismatched_modules(ctx: PassContext) -> list[str]:
    reference = ctx.reference
    if reference is None:
        return []
    names = [
        name.rpartition(".")[0] for name in ctx.checkpoint.effective_names()
        if name in reference.shapes and tuple(ctx.checkpoint.meta(name)[0]) != tuple(reference.shapes[name])
    ]
    return list(dict.fromkeys(names))[: _SHOWN * 4]


#: Fields every dense transformer has a tensor dimension of (an experts' width can be absent).
_STATIC_FIELDS = ("hidden_size", "vocab_size", "intermediate_size")


def _static_config_check(ctx: PassContext) -> list[Finding]:
    """Without transformers: a width config.json gives that no tensor has cannot load."""
    config = ctx.checkpoint.config or {}
    dims = {d for name in ctx.checkpoint.effective_names() for d in ctx.checkpoint.meta(name)[0]}
    experts = any("expert" in str(key) for key in config)
    absent = {
        name: config[name] for name in _STATIC_FIELDS
        if isinstance(config.get(name), int) and not isinstance(config[name], bool) and config[name] > 1
        and config[name] not in dims and not (experts and name == "intermediate_size")
    }
    if not absent or not dims:
        return []
    listed = ", ".join(f"{k}={v}" for k, v in absent.items())
    return [
        Finding(
            kind=KIND,
            severity=Severity.ERROR,
            modules=[],
            message=(
                f"config.json gives {listed}, but no tensor has {'that width' if len(absent) == 1 else 'those widths'}: "
                "the model was pruned (or changed) and config.json was not updated, so from_pretrained fails."
            ),
            evidence={"cause": STALE_CONFIG, "absent_widths": absent, "tensor_widths": sorted(d for d in dims if d > 1)[:50]},
            fix=(
                "Update config.json to the pruned widths. Install prune-analyzer[transformers] "
                "(pip install 'prune-analyzer[transformers]') for the exact fields and values."
            ),
        )
    ]


def _finding(ctx: PassContext, fit: FitReport) -> Finding:
    path = str(ctx.checkpoint.path)
    arch = ctx.reference.source.removeprefix("--arch ") if ctx.reference else "pkg.module:factory"
    from_config = ctx.reference is not None and ctx.reference.source == CONFIG_SOURCE
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
        code = code or (_CONFIG_LOAD_PRUNED_CODE.format(path=path) if from_config else _PRUNED_CODE.format(path=path, arch=arch))
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
