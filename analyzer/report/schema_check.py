"""The shipped JSON Schema (analyzer/report_schema.json), and a checker for the part of JSON
Schema it uses, so that `analyze --load` validates a saved report without a dependency.

Why not `jsonschema` at run time: it is a test extra, and it pulls in `referencing`,
`rpds-py` (compiled) and `attrs` for the dozen keywords our schema needs. The tests check
that the schema uses only the keywords below and that this checker agrees with
`jsonschema` on valid and damaged documents.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

__all__ = ["SUPPORTED_KEYWORDS", "schema_document", "schema_errors", "first_error", "known_kinds"]

#: Keywords that constrain; annotations (title, description, $schema, $id, examples) are ignored.
SUPPORTED_KEYWORDS = frozenset(
    {
        "type", "enum", "const", "required", "properties", "additionalProperties", "items",
        "minItems", "minimum", "maximum", "minLength", "pattern", "anyOf", "oneOf", "$ref", "$defs",
    }
)
ANNOTATIONS = frozenset({"title", "description", "$schema", "$id", "examples"})

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def schema_document() -> dict[str, Any]:
    """report_schema.json as shipped in the package."""
    text = resources.files("analyzer").joinpath("report_schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def known_kinds(schema: dict[str, Any] | None = None) -> dict[str, str]:
    """The finding kinds this version emits, with what each means: the schema's list, the one
    place they are written down."""
    kind = (schema or schema_document())["$defs"]["kind"]
    return {branch["const"]: branch.get("description", "") for branch in kind["anyOf"] if "const" in branch}


def schema_errors(document: Any, schema: dict[str, Any] | None = None, limit: int = 20) -> list[str]:
    """Violations of `schema` (default: the shipped one) as "at /json/pointer: what" lines."""
    root = schema or schema_document()
    errors: list[str] = []
    _check(document, root, root, "", errors, limit)
    return errors


def first_error(document: Any, schema: dict[str, Any] | None = None) -> str | None:
    errors = schema_errors(document, schema, limit=1)
    return errors[0] if errors else None


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    expected = _TYPES[name]
    return isinstance(value, expected) and (name == "boolean" or not isinstance(value, bool))


def _resolve(root: dict[str, Any], ref: str) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise ValueError(f"only local references are supported: {ref}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _check(value: Any, schema: dict[str, Any], root: dict[str, Any], where: str, errors: list[str], limit: int) -> None:
    if len(errors) >= limit:
        return
    here = where or "/"

    def fail(message: str) -> None:
        errors.append(f"at {here}: {message}")

    if "$ref" in schema:
        _check(value, _resolve(root, schema["$ref"]), root, where, errors, limit)
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, n) for n in names):
            fail(f"{_short(value)} is not of type {' or '.join(names)}")
            return
    if "const" in schema and not _equal(value, schema["const"]):
        fail(f"{_short(value)} is not {schema['const']!r}")
    if "enum" in schema and not any(_equal(value, option) for option in schema["enum"]):
        fail(f"{_short(value)} is not one of {', '.join(map(str, schema['enum']))}")
    for keyword in ("anyOf", "oneOf"):
        if keyword in schema:
            reasons = [_errors_in(value, branch, root, where) for branch in schema[keyword]]
            matches = sum(1 for r in reasons if not r)
            if matches == 0 or (keyword == "oneOf" and matches > 1):
                detail = _deepest(reasons) if matches == 0 else ""
                fail(f"{_short(value)} matches {'none' if matches == 0 else matches} of the {keyword} branches{detail}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            fail(f"{_short(value)} is shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            fail(f"{_short(value)} does not match {schema['pattern']}")
    if _is_type(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            fail(f"{value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            fail(f"{value} is above the maximum {schema['maximum']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            fail(f"has {len(value)} items, fewer than {schema['minItems']}")
        if "items" in schema:
            for i, item in enumerate(value):
                _check(item, schema["items"], root, f"{where}/{i}", errors, limit)
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                fail(f"{name!r} is a required property")
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            pointer = f"{where}/{str(name).replace('~', '~0').replace('/', '~1')}"
            if name in properties:
                _check(item, properties[name], root, pointer, errors, limit)
            elif extra is False:
                fail(f"additional property {name!r} is not allowed")
            elif isinstance(extra, dict):
                _check(item, extra, root, pointer, errors, limit)


def _errors_in(value: Any, schema: dict[str, Any], root: dict[str, Any], where: str) -> list[str]:
    errors: list[str] = []
    _check(value, schema, root, where, errors, 1)
    return errors


def _deepest(reasons: list[list[str]]) -> str:
    """The innermost reason of the branch that got furthest, so that the one line says what is wrong."""
    deepest = max((r[0] for r in reasons if r), key=lambda line: line.split(":", 1)[0].count("/"), default=None)
    return f" ({deepest})" if deepest else ""


def _equal(a: Any, b: Any) -> bool:
    # JSON Schema equality: 1 and True differ, 1 and 1.0 do not.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
