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
        if "reports" in data:
            return [Report.from_dict(item) for item in data["reports"]]
        return [Report.from_dict(data)]
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{source}: not an analyzer JSON report ({e})") from e
