"""SARIF 2.1.0 (OASIS): the format code-scanning services read (GitHub's upload-sarif).

One run; a rule per finding kind (its description from the report schema), a result per
finding at the checkpoint file with the modules as logical locations, and the evidence
and fix in the result's properties. Paths under the working directory are relative to
%SRCROOT% (what code scanning expects); others are file URIs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from .emit import EmitOptions
from .model import Finding, Report, ReportSet, Severity
from .schema_check import known_kinds

__all__ = ["SarifRenderer", "SARIF_SCHEMA"]

SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


class SarifRenderer:
    name = "sarif"
    extension = ".sarif"

    def render(self, results: ReportSet, options: EmitOptions = EmitOptions()) -> str:
        import json

        return json.dumps(sarif_log(results), indent=2, allow_nan=False, default=str) + "\n"


def sarif_log(results: ReportSet) -> dict[str, Any]:
    described = known_kinds()
    kinds = list(dict.fromkeys(f.kind for r in results.reports for f in r.findings))
    rules = [_rule(kind, described.get(kind, "")) for kind in kinds]
    index = {kind: i for i, kind in enumerate(kinds)}
    root = Path.cwd()
    run_info = results.run
    invocation: dict[str, Any] = {"executionSuccessful": True}
    if run_info.command:
        invocation["commandLine"] = " ".join(run_info.command)
    if run_info.created:
        invocation["startTimeUtc"] = run_info.created
    notes = [line for r in results.reports for line in (*r.not_analysed,)]
    if notes:
        invocation["toolExecutionNotifications"] = [{"level": "note", "message": {"text": line}} for line in notes]
    driver: dict[str, Any] = {"name": run_info.tool or "analyze", "rules": rules}
    if run_info.version:
        driver["version"] = run_info.version
        driver["semanticVersion"] = run_info.version
    if run_info.distribution:
        driver["fullName"] = f"{run_info.distribution} {run_info.version}".strip()
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": driver},
                "originalUriBaseIds": {"%SRCROOT%": {"uri": root.as_uri() + "/"}},
                "invocations": [invocation],
                "results": [_result(r, f, index[f.kind], root) for r in results.reports for f in r.findings],
            }
        ],
    }


def _rule(kind: str, description: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"id": kind, "name": "".join(part.title() for part in kind.split("-"))}
    if description:
        rule["shortDescription"] = {"text": description}
    return rule


def _result(report: Report, finding: Finding, rule_index: int, root: Path) -> dict[str, Any]:
    location: dict[str, Any] = {}
    artifact = _artifact(report.source.path, root)
    if artifact is not None:
        location["physicalLocation"] = {"artifactLocation": artifact}
    if finding.modules:
        location["logicalLocations"] = [{"fullyQualifiedName": m, "kind": "module"} for m in finding.modules]
    text = finding.message + (f" Fix: {finding.fix}" if finding.fix else "")
    result: dict[str, Any] = {
        "ruleId": finding.kind,
        "ruleIndex": rule_index,
        "level": _LEVEL[finding.severity],
        "message": {"text": text},
        "partialFingerprints": {"findingKey/v1": _fingerprint(report, finding)},
        "properties": {"modules": list(finding.modules), "evidence": finding.evidence},
    }
    if location:
        result["locations"] = [location]
    if finding.fix_code:
        result["properties"]["fixCode"] = finding.fix_code
    return result


def _artifact(path: str, root: Path) -> dict[str, Any] | None:
    if path.startswith("<"):  # an in-memory module: no file
        return None
    absolute = Path(os.path.abspath(path))
    try:
        relative = absolute.relative_to(root)
    except ValueError:
        return {"uri": absolute.as_uri()}
    from urllib.parse import quote

    return {"uri": quote(relative.as_posix()), "uriBaseId": "%SRCROOT%"}


def _fingerprint(report: Report, finding: Finding) -> str:
    """Stable across runs for the same finding: file name, kind and modules (not the message)."""
    key = "\0".join([Path(report.source.path).name, finding.kind, *sorted(finding.modules)])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
