"""Processors: Report → Report, for what CI needs (pyinstrument's processors, ruff's selection).

`select_kinds` keeps or drops findings by kind (`--select`/`--ignore`, or the pyproject.toml
table); `drop_known` drops the findings a saved report already had (`--baseline-report`),
so that a run fails only on what is new. Both recount the summary, recompute the verdict
and say in a note what they left out.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import PurePath

from ..errors import UsageError
from .model import Finding, Report
from .schema_check import known_kinds
from .verdict import verdict

__all__ = ["select_kinds", "drop_known", "finding_key", "check_kinds"]


def check_kinds(values: str | Iterable[str], where: str) -> tuple[str, ...]:
    """Finding kinds from "a,b" or a list, each one this version knows; UsageError naming
    `where` (a flag, a config key) and the closest known kind for a mistyped one."""
    items = values.split(",") if isinstance(values, str) else list(values)
    known = known_kinds()
    kinds = []
    for item in items:
        if not isinstance(item, str):
            raise UsageError(f"{where}: expected finding kinds, got {item!r}")
        kind = item.strip()
        if not kind:
            continue
        if kind not in known:
            close = difflib.get_close_matches(kind, list(known), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]}?" if close else f"; known kinds: {', '.join(known)}"
            raise UsageError(f"{where}: unknown finding kind {kind!r}{hint}")
        kinds.append(kind)
    return tuple(dict.fromkeys(kinds))


def finding_key(finding: Finding) -> tuple[str, tuple[str, ...]]:
    """What makes two findings the same across runs: their kind and modules, not their wording
    (messages carry measurements that change from run to run)."""
    return finding.kind, tuple(sorted(finding.modules))


def select_kinds(reports: list[Report], select: Sequence[str] = (), ignore: Sequence[str] = ()) -> list[Report]:
    """Findings whose kind is in `select` (all when empty) and not in `ignore`."""
    if not select and not ignore:
        return reports
    keep = set(select)
    drop = set(ignore)
    out = []
    for report in reports:
        kept = [f for f in report.findings if (not keep or f.kind in keep) and f.kind not in drop]
        left = Counter(f.kind for f in report.findings) - Counter(f.kind for f in kept)
        note = f"not shown by --select/--ignore: {_counted(left)}" if left else None
        out.append(_with_findings(report, kept, note))
    return out


def drop_known(reports: list[Report], baseline: list[Report], baseline_name: str) -> list[Report]:
    """Each report without the findings its counterpart in `baseline` already had.

    Counterparts: the same path, else the same file name, else the only report on each side.
    A finding is known as many times as the baseline has it (two identical ones, one known:
    one new)."""
    out = []
    for report in reports:
        old = _counterpart(report, baseline)
        if old is None:
            note = f"no report for {report.source.path} in the baseline report {baseline_name}: every finding counts as new"
            out.append(_with_findings(report, list(report.findings), note))
            continue
        known = Counter(finding_key(f) for f in old.findings)
        kept = []
        dropped: Counter[str] = Counter()
        for finding in report.findings:
            key = finding_key(finding)
            if known[key] > 0:
                known[key] -= 1
                dropped[finding.kind] += 1
            else:
                kept.append(finding)
        note = f"also in the baseline report {baseline_name}, not shown: {_counted(dropped)}" if dropped else None
        out.append(_with_findings(report, kept, note))
    return out


def _counterpart(report: Report, baseline: list[Report]) -> Report | None:
    same_path = [r for r in baseline if r.source.path == report.source.path]
    if len(same_path) == 1:
        return same_path[0]
    name = PurePath(report.source.path).name
    same_name = [r for r in baseline if PurePath(r.source.path).name == name]
    if len(same_name) == 1:
        return same_name[0]
    return baseline[0] if len(baseline) == 1 else None


def _with_findings(report: Report, findings: list[Finding], note: str | None) -> Report:
    summary = dataclasses.replace(
        report.summary,
        findings={s: sum(1 for f in findings if f.severity.value == s) for s in ("error", "warning", "info")},
    )
    notes = list(report.notes) + ([note] if note else [])
    return dataclasses.replace(report, findings=findings, summary=summary, verdict=verdict(findings, [f["pass"] for f in report.failures]), notes=notes)


def _counted(kinds: Iterable[tuple[str, int]] | Counter[str]) -> str:
    items = kinds.items() if isinstance(kinds, Counter) else kinds
    return ", ".join(f"{kind} ×{n}" if n > 1 else kind for kind, n in sorted(items))
