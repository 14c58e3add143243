"""The report: plain data that every renderer reads and JSON serialises.

Passes produce `Finding`s; the API assembles them with the layer table and the
summary into a `Report`. Nothing here formats text for a person.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SCHEMA",
    "Severity",
    "RunInfo",
    "ReportSet",
    "Finding",
    "LayerRow",
    "Source",
    "Summary",
    "Report",
]

#: Bumped when a field changes meaning or disappears; new optional fields do not bump it.
#: 2: every document is the `ReportSet` envelope (1 had a bare report for one input), and
#: the verdict holds no render text.
SCHEMA = "analyzer-report/2"


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "error": 2}[self.value]

    def at_least(self, other: Severity) -> bool:
        return self.rank >= other.rank


@dataclass(frozen=True)
class Finding:
    """One thing the analysis found, with its evidence and what to do about it."""

    kind: str
    severity: Severity
    modules: list[str]
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    fix: str = ""
    #: A Python snippet that applies the fix, shown as code by renderers.
    fix_code: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["severity"] = self.severity.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        return cls(
            kind=data["kind"],
            severity=Severity(data["severity"]),
            modules=list(data.get("modules", [])),
            message=data["message"],
            evidence=dict(data.get("evidence", {})),
            fix=data.get("fix", ""),
            fix_code=data.get("fix_code"),
        )


@dataclass
class LayerRow:
    """One row of the per-layer table."""

    name: str
    type: str
    #: "module" when the type came from a module object, "inferred" when from keys and shapes.
    type_source: str
    shape: list[int] | None
    params: int
    #: None when the tensors hold no data to count (meta tensors).
    nonzero: int | None
    dtype: str
    masked: bool = False
    #: Zero pattern of the weight: dense, unstructured, zeroed-out, 2:4, dead (BatchNorm), ...
    pattern: str | None = None
    #: Output channels now, and in the dense reference when one is known.
    out_channels: int | None = None
    reference_out: int | None = None
    #: Zero fraction of the weight alone (biases and BatchNorm shifts are often zero by design).
    weight_sparsity: float | None = None

    @property
    def zero_fraction(self) -> float | None:
        """None when the tensors hold no data to count (meta tensors)."""
        if self.nonzero is None:
            return None
        return 0.0 if self.params == 0 else 1.0 - self.nonzero / self.params

    def to_dict(self) -> dict[str, Any]:
        # Its fields' values are plain: a copy of them, not dataclasses.asdict's deep copy of
        # every value (most of the JSON's cost for a checkpoint of 50,000 tensors).
        data = dict(self.__dict__)
        data["shape"] = list(self.shape) if self.shape is not None else None
        fraction = self.zero_fraction
        data["zero_fraction"] = None if fraction is None else round(fraction, 6)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerRow:
        return _from_fields(cls, data)


@dataclass
class Source:
    """Where the report came from and how the file was read."""

    path: str
    format: str
    container: str
    file_size: int
    #: How the bytes were turned into objects: weights_only, restricted-unpickler, safetensors, trusted.
    loader: str
    weights_key: str | None = None
    stripped_prefix: str | None = None
    #: Classes the pickle named that were stood in by placeholders (never run).
    placeholders: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: The shard files of a sharded model folder (one checkpoint); empty for a single file.
    shards: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Source:
        return _from_fields(cls, data)


@dataclass
class Summary:
    params: int
    #: Non-zero parameters among those with data (see params_without_data).
    nonzero_params: int
    buffers: int
    layers: int
    tensors: int
    #: Finding counts by severity.
    findings: dict[str, int] = field(default_factory=dict)
    #: Multiply-accumulates per sample of conv/linear layers on the example input (runnable models).
    macs: int | None = None
    macs_input_shape: list[int] | None = None
    #: Intra-op threads the model was run with for the analysis (None: it was not run).
    run_threads: int | None = None
    #: Parameters whose tensors carry no data (meta tensors): not counted as zero or non-zero.
    params_without_data: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        return _from_fields(cls, data)


@dataclass
class Report:
    source: Source
    summary: Summary
    layers: list[LayerRow]
    findings: list[Finding]
    #: Measurements of `--profile` (issue 6); None when not profiled.
    profile: dict[str, Any] | None = None
    #: Things the analysis could not look at, said plainly rather than skipped.
    not_analysed: list[str] = field(default_factory=list)
    #: Checks that raised (an analyzer bug): {"pass", "exception", "message", "traceback"}.
    #: The analysis is incomplete when there are any.
    failures: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: One or two sentences: what is wrong and what to do first.
    verdict: str = ""
    #: What `--compact` did (or why it refused), when asked.
    compaction: dict[str, Any] | None = None
    schema: str = SCHEMA

    def worst_severity(self) -> Severity | None:
        ranked = sorted((f.severity for f in self.findings), key=lambda s: s.rank)
        return ranked[-1] if ranked else None

    def has_findings_at_least(self, threshold: Severity) -> bool:
        return any(f.severity.at_least(threshold) for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "verdict": self.verdict,
            "source": dataclasses.asdict(self.source),
            "summary": dataclasses.asdict(self.summary),
            "layers": [row.to_dict() for row in self.layers],
            "findings": [f.to_dict() for f in self.findings],
            "profile": self.profile,
            "compaction": self.compaction,
            "not_analysed": list(self.not_analysed),
            "failures": [dict(f) for f in self.failures],
            "notes": list(self.notes),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return dumps(self.to_dict(), indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        return cls(
            schema=data.get("schema", SCHEMA),
            source=Source.from_dict(data["source"]),
            summary=Summary.from_dict(data["summary"]),
            layers=[LayerRow.from_dict(row) for row in data.get("layers", [])],
            findings=[Finding.from_dict(f) for f in data.get("findings", [])],
            profile=data.get("profile"),
            not_analysed=list(data.get("not_analysed", [])),
            failures=[dict(f) for f in data.get("failures", [])],
            notes=list(data.get("notes", [])),
            verdict=data.get("verdict", ""),
            compaction=data.get("compaction"),
        )

    @classmethod
    def from_json(cls, text: str) -> Report:
        """One report: a bare report object, or a `ReportSet` document that holds exactly one."""
        data = json.loads(text)
        if isinstance(data, dict) and "reports" in data:
            reports = data["reports"]
            if not isinstance(reports, list) or len(reports) != 1:
                raise ValueError("the document holds several reports: read it with ReportSet.from_json")
            data = reports[0]
        return cls.from_dict(data)


@dataclass
class RunInfo:
    """How the reports of one run were made: for the HTML title block, SARIF and re-rendering."""

    tool: str = "analyze"
    #: The distribution on the package index (the import package is `analyzer`).
    distribution: str = ""
    version: str = ""
    torch: str | None = None
    python: str | None = None
    #: The command line, as a list of arguments (argv[0] = "analyze").
    command: list[str] | None = None
    #: When the analysis ran, ISO 8601 in UTC.
    created: str | None = None
    #: Finding kinds kept and dropped (`--select`/`--ignore`, or the pyproject.toml table).
    select: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    #: The saved report whose findings were taken as known (`--baseline-report`).
    baseline_report: str | None = None
    #: Where the configuration came from (a pyproject.toml), if anywhere.
    config: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunInfo:
        return _from_fields(cls, data)


@dataclass
class ReportSet:
    """The one top-level shape of a JSON document, whatever the number of inputs."""

    reports: list[Report]
    run: RunInfo = field(default_factory=RunInfo)
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "run": dataclasses.asdict(self.run), "reports": [r.to_dict() for r in self.reports]}

    def to_json(self, indent: int | None = 2) -> str:
        return dumps(self.to_dict(), indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReportSet:
        return cls(
            reports=[Report.from_dict(r) for r in data["reports"]],
            run=RunInfo.from_dict(data.get("run") or {}),
            schema=data.get("schema", SCHEMA),
        )

    @classmethod
    def from_json(cls, text: str) -> ReportSet:
        return cls.from_dict(json.loads(text))


def _from_fields(cls: Any, data: dict[str, Any]) -> Any:
    """An instance of dataclass `cls` from a dict; keys it does not know (newer schemas) are ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def _json_default(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(document: dict[str, Any], indent: int | None = 2) -> str:
    """`document` (a report, or an envelope of reports) as JSON; indented, with each layer
    row on one line: the layer table reads as a table, and its rows are encoded by json's C
    encoder (with indent= json falls back to Python's, 5x slower on 50,000 rows)."""
    if indent is None:
        return json.dumps(document, allow_nan=False, default=_json_default)
    token = f"layers-{uuid.uuid4().hex}"
    reports = document["reports"] if "reports" in document else [document]
    held = []
    for number, report in enumerate(reports):
        held.append(report["layers"])
        report["layers"] = f"{token}-{number}"
    try:
        text = json.dumps(document, indent=indent, allow_nan=False, default=_json_default)
    finally:
        for report, rows in zip(reports, held):
            report["layers"] = rows
    for number, rows in enumerate(held):
        placeholder = f'"{token}-{number}"'
        start = text.index(placeholder)
        margin = " " * (start - text.rindex("\n", 0, start) - 1 - len('"layers": '))
        inner = margin + " " * indent
        encode = json.JSONEncoder(allow_nan=False, default=_json_default).encode  # one encoder, not one per row
        encoded = [encode(row) for row in rows]
        block = "[" + ",".join(f"\n{inner}{row}" for row in encoded) + f"\n{margin}]" if encoded else "[]"
        text = text[:start] + block + text[start + len(placeholder) :]
    return text
