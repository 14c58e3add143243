"""What the pickle needs beyond tensors, whether it is dangerous, and how to load it.

`unsafe-pickle`: globals outside the allowlist (unknown classes: warning; code
execution or a payload torch refused: error). `full-model-pickle`: the file is a
pickled module whose classes are all torch.nn (or allowed) — safe, but `torch.load`
refuses it by default since torch 2.6; the fix is the exact `safe_globals` list.
"""

from __future__ import annotations

from ..load import GlobalKind, ResolvedGlobal
from ..load.extract import tolerant_named_modules
from ..load.placeholder import Placeholder, placeholder_target
from ..report.model import Finding, Severity
from .context import PassContext

KIND_UNSAFE = "unsafe-pickle"
KIND_FULL_MODEL = "full-model-pickle"

_WEIGHTS_ONLY_NOTE = (
    "torch.load has defaulted to weights_only=True since torch 2.6, and refuses any global outside its allowlist"
)


def run(ctx: PassContext) -> list[Finding]:
    checkpoint = ctx.checkpoint
    if checkpoint.loader == "trusted":
        return [_trusted(ctx)] if checkpoint.globals else []
    unknown = [g for g in checkpoint.globals if g.needs_placeholder]
    if unknown or checkpoint.refused:
        return [_unsafe(ctx, unknown)]
    if checkpoint.globals:
        return [_full_model(ctx)]
    return []


def _unsafe(ctx: PassContext, unknown: list[ResolvedGlobal]) -> Finding:
    checkpoint = ctx.checkpoint
    dangerous = sorted(g.full_name for g in unknown if g.kind is GlobalKind.DANGEROUS)
    names = sorted(g.full_name for g in unknown)
    importable = {g.full_name: g.importable for g in unknown if g.kind is not GlobalKind.DANGEROUS}
    error = bool(dangerous) or checkpoint.refused is not None
    recovered = (
        f"its {len(checkpoint.tensors)} tensors were read with placeholders standing in"
        if len(checkpoint.tensors)
        else "no tensors could be read"
    )
    if dangerous:
        message = (
            f"The pickle calls {_list(dangerous)}: code that would run on torch.load(weights_only=False) "
            f"or pickle.load. Nothing was run; {recovered}."
        )
    elif checkpoint.refused:
        message = f"torch.load(weights_only=True) refuses the pickle ({checkpoint.refused}); nothing was run; {recovered}."
    else:
        message = (
            f"The pickle needs {len(names)} class{'es' if len(names) != 1 else ''} outside the allowlist "
            f"({_list(names)}); {_WEIGHTS_ONLY_NOTE}. Placeholders stood in for them, so the tensors were "
            "read without running any code, but the model cannot run."
        )
    evidence = {
        "globals": names,
        "dangerous": dangerous,
        "importable_here": importable,
        "all_globals": sorted(g.full_name for g in checkpoint.globals),
        "refused": checkpoint.refused,
        "tensors_recovered": len(checkpoint.tensors),
    }
    return Finding(
        kind=KIND_UNSAFE,
        severity=Severity.ERROR if error else Severity.WARNING,
        modules=_modules_of(ctx, unknown),
        message=message,
        evidence=evidence,
        fix=_unsafe_fix(dangerous, unknown),
        fix_code=None if error else _safe_globals_code(ctx.checkpoint.globals, str(checkpoint.path)),
    )


def _unsafe_fix(dangerous: list[str], unknown: list[ResolvedGlobal]) -> str:
    if dangerous:
        return (
            "Do not open this file with torch.load(weights_only=False), pickle or --trust. If it is yours, "
            "re-save only the weights from a trusted environment: torch.save(model.state_dict(), path)."
        )
    roots = sorted({g.ref.module.split(".")[0] for g in unknown if g.ref.module != "__main__"})
    parts = []
    if roots:
        parts.append(
            "If you trust the code that defines these classes, `analyze --allow-module "
            + " --allow-module ".join(roots)
            + "` imports it and rebuilds the real model"
        )
    if any(g.ref.module == "__main__" for g in unknown):
        parts.append(
            "classes saved from a script's __main__ can only be loaded where that script's classes are "
            "importable under __main__; move them to a module and re-save"
        )
    parts.append(
        "in your own code, load it with the exact allowlist below; better, save model.state_dict() and rebuild "
        "the model from its class"
    )
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def _full_model(ctx: PassContext) -> Finding:
    checkpoint = ctx.checkpoint
    names = sorted(g.full_name for g in checkpoint.globals)
    return Finding(
        kind=KIND_FULL_MODEL,
        severity=Severity.INFO,
        modules=[],
        message=(
            f"The file is a pickled model ({checkpoint.container}); plain torch.load refuses it because "
            f"{_WEIGHTS_ONLY_NOTE}. Its {len(names)} classes are all torch.nn or allowed classes, safe to allowlist."
        ),
        evidence={"globals": names},
        fix="Load it with exactly these classes allowlisted, or save model.state_dict() instead of the model.",
        fix_code=_safe_globals_code(checkpoint.globals, str(checkpoint.path)),
    )


def _trusted(ctx: PassContext) -> Finding:
    names = sorted(g.full_name for g in ctx.checkpoint.globals)
    dangerous = sorted(g.full_name for g in ctx.checkpoint.globals if g.kind is GlobalKind.DANGEROUS)
    return Finding(
        kind=KIND_UNSAFE,
        severity=Severity.ERROR if dangerous else Severity.INFO,
        modules=[],
        message=(
            "Loaded with --trust: the file's code was allowed to run"
            + (f", including {_list(dangerous)}." if dangerous else ".")
        ),
        evidence={"globals": names, "dangerous": dangerous},
        fix="Use --trust only for files you made yourself; without it nothing in the file runs.",
    )


def _safe_globals_code(globals_: list[ResolvedGlobal], path: str) -> str:
    modules = sorted({g.ref.module for g in globals_})
    names = sorted(g.full_name for g in globals_)
    imports = "\n".join(f"import {m}" for m in modules)
    listed = "".join(f"    {name},\n" for name in names)
    return (
        f"import torch\n{imports}\n\n"
        f"allowed = [\n{listed}]\n"
        f"with torch.serialization.safe_globals(allowed):\n"
        f"    model = torch.load({path!r}, weights_only=True)"
    )


def _modules_of(ctx: PassContext, unknown: list[ResolvedGlobal]) -> list[str]:
    """Names of the modules that placeholders stand in for ('<root>' for the model itself)."""
    if ctx.checkpoint.module is None:
        return []
    targets = {g.full_name for g in unknown}
    return [
        name or "<root>"
        for name, module in tolerant_named_modules(ctx.checkpoint.module)  # a tree the pickle may have left broken
        if isinstance(module, Placeholder) and placeholder_target(module) in targets
    ]


def _list(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
