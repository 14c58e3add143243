"""JSON: the report serialised. One report per file; several under `reports`."""

from __future__ import annotations

import json

from ..errors import InputError
from .model import SCHEMA, Report

__all__ = ["render_json", "load_reports"]


def render_json(reports: list[Report]) -> str:
    if len(reports) == 1:
        return reports[0].to_json()
    return json.dumps({"schema": SCHEMA, "reports": [r.to_dict() for r in reports]}, indent=2, allow_nan=False)


def load_reports(text: str, source: str = "report") -> list[Report]:
    """Reports from a saved JSON document (one report or several), for re-rendering."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        schema = data.get("schema", "")
        if not str(schema).startswith("analyzer-report/"):
            raise ValueError(f"schema {schema!r} is not an analyzer report")
        items = data["reports"] if "reports" in data else [data]
        reports = [Report.from_dict(item) for item in items]
        for report in reports:
            _check_sections(report)
        return reports
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{source}: not an analyzer JSON report ({type(e).__name__}: {e})") from e


def _check_sections(report: Report) -> None:
    """Parse the optional sections now, so that a malformed one fails here, in one line."""
    from ..profile.result import ProfileResult
    from ..compact.result import CompactionResult

    if report.profile is not None:
        ProfileResult.from_dict(report.profile)
    if report.compaction is not None:
        CompactionResult.from_dict(report.compaction)
