"""The verdict: in one or two sentences, what is wrong with the checkpoint and what to do first."""

from __future__ import annotations

import re
from collections.abc import Callable
from .model import Finding, Severity

__all__ = ["verdict", "PRIORITY", "first_sentence"]

#: Which finding the verdict leads with: the first kind present, in this order. Widths that
#: no longer agree inside the model, and a model that fails with the file's own shapes, come
#: before a failed load: loading it some other way (load_pruned) gives a model that still
#: cannot run, so the pruning is what to fix first.
PRIORITY = (
    "unsafe-pickle",
    "residual-mismatch",
    "head-shape-mismatch",
    "attention-head-mismatch",
    "forward-failure",
    "state-dict-mismatch",
    "non-finite-weights",
    "invalid-sparse-tensor",
    "zeroed-channels",
    "pruning-masks",
    "unstructured-sparsity",
    "no-speedup",
    "overhead-bound",
    "unaligned-channels",
    "memory-bound",
    "semi-structured-sparsity",
    "full-model-pickle",
    "channel-removal",
)


def verdict(findings: list[Finding], failed_checks: list[str] | None = None) -> str:
    """What to fix first, as data: how many other findings there are is the renderer's to say."""
    if failed_checks:
        listed = ", ".join(failed_checks)
        incomplete = f"The analysis is incomplete: the {listed} check{'s' if len(failed_checks) > 1 else ''} failed (an analyzer bug, see below)."
        return f"{incomplete} {verdict(findings)}" if findings else incomplete
    if not findings:
        return "No problems found."
    rank = {kind: i for i, kind in enumerate(PRIORITY)}
    lead = min(findings, key=lambda f: (-f.severity.rank, rank.get(f.kind, len(PRIORITY))))
    return _HEADLINES.get(lead.kind, _generic)(lead)


_SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Z(])")


def first_sentence(text: str) -> str:
    return _SENTENCE_END.split(text, maxsplit=1)[0].rstrip(".") + "."



def _generic(finding: Finding) -> str:
    fix = f" {first_sentence(finding.fix)}" if finding.fix else ""
    return first_sentence(finding.message) + fix


def _zeroed(finding: Finding) -> str:
    e = finding.evidence
    share = ""
    if e.get("macs_total"):
        share = f": {e['macs_removable'] / e['macs_total']:.0%} of the MACs are still computed on zeros"
    elif e.get("params_removable_at_least"):
        share = f": at least {e['params_removable_at_least']:,} parameters are still computed on zeros"
    how = (
        "Remove them with the torch-pruning call below"
        if finding.fix_code
        else "Run with --arch to get the exact torch-pruning call that removes them"
    )
    return f"Channels were zeroed, not removed{share}. {how}."


def _masks(finding: Finding) -> str:
    fraction = finding.evidence.get("masked_fraction", 0)
    return f"Pruning masks were never folded in ({fraction:.0%} of the masked weights are zero). Run prune.remove before saving."


def _unstructured(finding: Finding) -> str:
    overall = finding.evidence.get("sparsity_overall", 0)
    return (
        f"The zeros are scattered ({overall:.0%} of all weights): dense kernels multiply by them anyway, so the model is "
        "no faster. Prune channels (structured) instead."
    )


def _unsafe(finding: Finding) -> str:
    dangerous = finding.evidence.get("dangerous") or []
    if finding.severity is Severity.ERROR and dangerous:
        return (
            f"This file carries code that runs when it is unpickled ({', '.join(dangerous[:3])}). Do not open it with "
            "torch.load(weights_only=False); nothing was run here."
        )
    names = finding.evidence.get("globals") or []
    return (
        f"torch.load refuses this file: it pickles classes that are not available here ({', '.join(names[:3])}). "
        "Load it with the allowlist below, or save a state dict instead."
    )


def _residual(finding: Finding) -> str:
    operands = finding.evidence.get("operand_channels") or {}
    listed = " and ".join(f"{name} ({width})" for name, width in operands.items())
    where = finding.evidence.get("module") or "the model"
    return f"The model crashes at the {finding.evidence.get('op', 'add')} in {where}: {listed} no longer agree in channels. Prune coupled channels together."


def _heads(finding: Finding) -> str:
    problems = finding.evidence.get("problems") or []
    first = problems[0] if problems else "their widths changed"
    return f"The detection heads were pruned ({first}). Prune again with every head conv in ignored_layers."


def _no_speedup(finding: Finding) -> str:
    e = finding.evidence
    measured = e.get("speedup_measured_by_batch") or {}
    first = next(iter(measured.values()), None)
    return (
        f"FLOPs fell {e.get('flop_cut', 0):.0%} but the model is only {first:.2f}× faster. See where the time goes below."
        if first
        else _generic(finding)
    )


def _unaligned(finding: Finding) -> str:
    widths = finding.evidence.get("widths") or {}
    example = ", ".join(f"{k}: {v}" for k, v in list(widths.items())[:2])
    return (
        f"{len(widths)} layers have widths that are not multiples of 8 ({example}): their kernels run slower than their "
        "FLOPs suggest. Prune with round_to=8."
    )


def _removal(finding: Finding) -> str:
    kept = finding.evidence.get("kept_fraction", 1)
    return f"Channels were really removed ({kept:.0%} of the output channels kept); nothing here blocks a speedup."


_HEADLINES: dict[str, Callable[[Finding], str]] = {
    "zeroed-channels": _zeroed,
    "pruning-masks": _masks,
    "unstructured-sparsity": _unstructured,
    "unsafe-pickle": _unsafe,
    "residual-mismatch": _residual,
    "head-shape-mismatch": _heads,
    "no-speedup": _no_speedup,
    "channel-removal": _removal,
    "unaligned-channels": _unaligned,
}

