"""What the pickle needs beyond tensors, whether it runs code, and how to load it.

`unsafe-pickle`: globals outside the allowlist. Error when the file would execute code
when unpickled — a global it calls, a dotted name, a name it keeps as a value (a function
cannot be told from a class without importing it); warning when its only unknowns are
classes it instantiates without arguments and fills with their state (a pickled model
whose package is not here), or when torch refuses a pickle that calls nothing. The severity comes from what
the pickle does (load/pickle_scan.py), never from a list of names. `full-model-pickle`:
a pickled module whose classes are all nn.Module classes checked by import (torch.nn,
allowed packages) — safe, but `torch.load` refuses it by default since torch 2.6; the
fix is the exact `safe_globals` list.
"""

from __future__ import annotations

import sys

from ..load import ResolvedGlobal
from ..load.extract import tolerant_named_modules
from ..load.placeholder import Placeholder, placeholder_target
from ..load.policy import CALLS, DOTTED, DYNAMIC_NAME, NOT_A_CLASS, PROGRAM_MODULE, REFERENCES, gadget_label
from ..report.model import Finding, Severity
from .context import PassContext

KIND_UNSAFE = "unsafe-pickle"
KIND_FULL_MODEL = "full-model-pickle"

_WEIGHTS_ONLY_NOTE = (
    "torch.load has defaulted to weights_only=True since torch 2.6, and refuses any global outside its allowlist"
)
#: How each reason reads in the message, most serious first; a name is listed under its first.
_CLAUSES = (
    (CALLS, "calls {names}"),
    (DOTTED, "reaches {names} through dotted names that walk attributes out of their module"),
    (DYNAMIC_NAME, "computes the names of {names} while loading"),
    (PROGRAM_MODULE, "imports {names} from module paths no class is defined in (`pkg.__main__` runs a program when imported)"),
    (NOT_A_CLASS, "names {names}, which are not classes"),
    (REFERENCES, "keeps {names} as values rather than classes it instantiates (a function cannot be told from a class without importing it)"),
)
_DO_NOT_LOAD = (
    "Do not open this file with torch.load(weights_only=False), pickle.load or --trust: that runs the code above. "
    "If the file is yours, re-save only the weights from the environment that made it (your own, trusted code): "
    "torch.save(model.state_dict(), 'weights.pth'), then rebuild the model from its class and load those with "
    "torch.load('weights.pth', weights_only=True)."
)


def run(ctx: PassContext) -> list[Finding]:
    checkpoint = ctx.checkpoint
    if checkpoint.loader == "trusted":
        return [_trusted(ctx)] if checkpoint.globals else []
    runs_code = [g for g in checkpoint.globals if g.refusals]
    classes = [g for g in checkpoint.globals if g.needs_placeholder and not g.refusals]
    if runs_code or classes or checkpoint.refused:
        return [_unsafe(ctx, runs_code, classes)]
    if checkpoint.globals:
        return [_full_model(ctx)]
    return []


def _unsafe(ctx: PassContext, runs_code: list[ResolvedGlobal], classes: list[ResolvedGlobal]) -> Finding:
    checkpoint = ctx.checkpoint
    # Severity from the scan alone: torch refusing an opcode or a blocked module's class the
    # restricted unpickler read fine is no code run, and a plain pickle has no torch to refuse.
    error = bool(runs_code)
    recovered = (
        f"its {len(checkpoint.tensors)} tensors were read with placeholders standing in"
        if len(checkpoint.tensors)
        else "no tensors could be read"
    )
    class_names = sorted(g.full_name for g in classes)
    if runs_code:
        message = (
            f"The pickle {_clauses(runs_code)}: under torch.load(weights_only=False) or pickle.load this executes "
            f"code from the file when it is unpickled. Nothing was run here; {recovered}."
        )
    elif checkpoint.refused:
        message = (
            f"torch.load(weights_only=True) refuses the pickle ({checkpoint.refused}), although it calls nothing "
            f"outside the allowlist; nothing was run; {recovered}."
        )
    else:
        one = len(class_names) == 1
        message = (
            f"The pickle instantiates {len(class_names)} class{'' if one else 'es'} outside the allowlist "
            f"({_list(class_names)}) and fills {'it' if one else 'them'} with saved state; {_WEIGHTS_ONLY_NOTE}. "
            f"Placeholders stood in for {'it' if one else 'them'}, so the tensors were read without running any code, "
            "but the model cannot run."
        )
    evidence = {
        "globals": sorted({g.full_name for g in (*runs_code, *classes)}),
        "dangerous": sorted(g.full_name for g in runs_code),
        "calls": _with(runs_code, CALLS),
        "dotted": _with(runs_code, DOTTED),
        "references": _with(runs_code, REFERENCES) + _with(runs_code, NOT_A_CLASS),
        "classes": class_names,
        "importable_here": {g.full_name: g.importable for g in classes},
        "all_globals": sorted(g.full_name for g in checkpoint.globals),
        "refused": checkpoint.refused,
        "tensors_recovered": len(checkpoint.tensors),
    }
    return Finding(
        kind=KIND_UNSAFE,
        severity=Severity.ERROR if error else Severity.WARNING,
        modules=_modules_of(ctx, [*runs_code, *classes]),
        message=message,
        evidence=evidence,
        fix=_DO_NOT_LOAD if error else _classes_fix(ctx, classes),
        fix_code=None if error else _loadable_code(ctx, checked=True),
    )


def _clauses(runs_code: list[ResolvedGlobal]) -> str:
    """'calls posix.system (runs commands) and reaches … through dotted names …'."""
    parts = []
    listed: set[str] = set()
    for reason, template in _CLAUSES:
        names = [g for g in sorted(runs_code, key=lambda g: g.full_name) if reason in g.refusals and g.full_name not in listed]
        if names:
            listed.update(g.full_name for g in names)
            parts.append(template.format(names=_list([_labelled(g) for g in names])))
    return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]


def _labelled(resolved: ResolvedGlobal) -> str:
    label = gadget_label(resolved.ref)
    return f"{resolved.full_name} ({label})" if label else resolved.full_name


def _with(globals_: list[ResolvedGlobal], reason: str) -> list[str]:
    return sorted(g.full_name for g in globals_ if reason in g.refusals)


def _classes_fix(ctx: PassContext, classes: list[ResolvedGlobal]) -> str:
    # The standard library defines no nn.Module class: --allow-module of it would rebuild nothing.
    roots = sorted({g.ref.module.split(".")[0] for g in classes} - set(sys.stdlib_module_names) - {"__main__"})
    parts = []
    if roots:
        parts.append(
            "If you trust the code that defines these classes, `analyze --allow-module "
            + " --allow-module ".join(roots)
            + "` imports it and rebuilds the real model (only nn.Module classes defined in that package)"
        )
    if any(g.ref.module == "__main__" for g in classes):
        parts.append(
            "classes saved from a script's __main__ can only be loaded where that script's classes are "
            "importable under __main__; move them to a module and re-save"
        )
    if ctx.checkpoint.loader == "weights_only":
        parts.append(
            "in your own code, load it with the exact allowlist below (it stops unless every name is an nn.Module "
            "class); better, save model.state_dict() and rebuild the model from its class"
        )
    else:
        parts.append("better, save model.state_dict() and rebuild the model from its class")
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
        fix_code=_loadable_code(ctx, checked=False),
    )


def _trusted(ctx: PassContext) -> Finding:
    names = sorted(g.full_name for g in ctx.checkpoint.globals)
    runs_code = sorted(g.full_name for g in ctx.checkpoint.globals if g.refusals)
    return Finding(
        kind=KIND_UNSAFE,
        severity=Severity.ERROR if runs_code else Severity.INFO,
        modules=[],
        message=(
            "Loaded with --trust: the file's code was allowed to run"
            + (f", including {_list(runs_code)}." if runs_code else ".")
        ),
        evidence={"globals": names, "dangerous": runs_code},
        fix="Use --trust only for files you made yourself; without it nothing in the file runs.",
    )


def _loadable_code(ctx: PassContext, checked: bool) -> str | None:
    """The torch.load call with exactly the file's classes allowlisted — only where torch's
    own weights_only reader read the file with that allowlist, so the snippet is known to
    work. `checked`: some classes were not verified here, so the snippet stops unless each
    is an nn.Module class (never allowlisting a function)."""
    checkpoint = ctx.checkpoint
    if checkpoint.loader != "weights_only":
        return None
    globals_ = [g for g in checkpoint.globals if not g.refusals]
    modules = sorted({g.ref.module for g in globals_})
    names = sorted(g.full_name for g in globals_)
    imports = "\n".join(f"import {m}" for m in modules)
    listed = "".join(f"    {name},\n" for name in names)
    check = (
        "# Only nn.Module classes may be allowlisted: stop if the file named anything else.\n"
        "for cls in allowed:\n"
        "    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):\n"
        "        raise SystemExit(f\"{cls!r} is not an nn.Module class: do not load this file\")\n"
        if checked
        else ""
    )
    return (
        f"import torch\n{imports}\n\n"
        f"allowed = [\n{listed}]\n"
        f"{check}"
        f"with torch.serialization.safe_globals(allowed):\n"
        f"    model = torch.load({str(checkpoint.path)!r}, weights_only=True)"
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
