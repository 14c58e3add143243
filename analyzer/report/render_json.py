"""JSON: the reports of a run in one envelope (`ReportSet`), whatever their number.

`load_reports` reads that shape and the two shapes of analyzer-report/1 (a bare report for
one checkpoint, `{"schema", "reports"}` for several), upgrades the old ones, and validates
the result against the shipped schema before anything is rendered from it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import InputError
from .model import SCHEMA, Report, ReportSet
from .schema_check import first_error
from .sections import compaction_from_dict, profile_from_dict

__all__ = ["render_json", "load_reports", "load_report_set", "upgrade"]

_V1 = "analyzer-report/1"
#: What analyzer-report/1 appended to the verdict: render text, which version 2 keeps out of the data.
_V1_MORE_FINDINGS = re.compile(r"\s*\(\d+ more findings? below\.\)\s*$")


def render_json(results: ReportSet | list[Report]) -> str:
    if isinstance(results, list):
        results = ReportSet(results)
    return results.to_json()


def load_report_set(text: str, source: str = "report") -> ReportSet:
    """A saved JSON document as a `ReportSet`; InputError (one line) when it is not one."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise InputError(f"{source}: not an analyzer JSON report (not JSON: {e})") from e
    try:
        document = upgrade(data)
    except ValueError as e:
        raise InputError(f"{source}: not an analyzer JSON report ({e})") from e
    problem = first_error(document)
    if problem is not None:
        raise InputError(f"{source}: not a valid analyzer report ({problem})")
    try:
        results = ReportSet.from_dict(document)
        for report in results.reports:
            _check_sections(report)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{source}: not an analyzer JSON report ({type(e).__name__}: {e})") from e
    return results


def load_reports(text: str, source: str = "report") -> list[Report]:
    """The reports of a saved JSON document (any version this tool wrote), for re-rendering."""
    return load_report_set(text, source).reports


def upgrade(data: Any) -> dict[str, Any]:
    """The document in the current shape: analyzer-report/1 files rewrapped and cleaned."""
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, expected an object")
    schema = data.get("schema", "")
    if schema == SCHEMA:
        return data
    if schema != _V1:
        raise ValueError(f"schema {str(schema)[:60]!r} is not an analyzer report")
    if "reports" in data:
        items = data["reports"]
        if not isinstance(items, list):
            raise ValueError("'reports' is not a list")
    else:
        items = [data]
    reports = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("a report is not an object")
        report = {**item, "schema": SCHEMA}
        if isinstance(report.get("verdict"), str):
            report["verdict"] = _V1_MORE_FINDINGS.sub("", report["verdict"])
        reports.append(report)
    return {"schema": SCHEMA, "reports": reports}


def _check_sections(report: Report) -> None:
    """Parse the optional sections now, so that a malformed one fails here, in one line."""
    if report.profile is not None:
        profile_from_dict(report.profile)
    if report.compaction is not None:
        compaction_from_dict(report.compaction)


class JsonRenderer:
    name = "json"
    extension = ".json"

    def render(self, results: ReportSet, options: object = None) -> str:
        return render_json(results) + "\n"
