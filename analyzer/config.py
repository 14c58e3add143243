"""Configuration from the user's project: the `[tool.prune-analyzer]` table of the nearest
pyproject.toml that has one, from the working directory upward (as ruff finds `[tool.ruff]`).

The table is named after the distribution (`prune-analyzer` on the package index), the
convention of PEP 518's `tool` namespace; `[tool.analyzer]` would belong to the unrelated
`analyzer` distribution. It holds what a project's CI wants fixed: which finding kinds
count, the threshold, the output format, and how to build the model. What a checkpoint
may run (`--trust`, `--allow-module`) stays on the command line: a file checked into a
repository must not widen it. Command-line flags override the table.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError

__all__ = ["TABLE", "KEYS", "Config", "find_config", "read_config"]

TABLE = "prune-analyzer"

#: key → (type, what it holds); each is the long flag of the same name.
KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "select": (list, "finding kinds to report (all when absent)"),
    "ignore": (list, "finding kinds never to report"),
    "fail-on": (str, "error, warning, info or never"),
    "output-format": (str, "rich, json, github, sarif, markdown, junit or html"),
    "arch": (str, "pkg.module:factory of the dense architecture"),
    "input-shape": (str, "example input, e.g. 1,3,224,224"),
    "zero-tol": ((int, float), "count |x| <= this as zero"),
    "all-layers": (bool, "show every layer in the module tree"),
}


@dataclass(frozen=True)
class Config:
    #: The pyproject.toml it came from (None: no configuration).
    path: Path | None = None
    values: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


def find_config(start: Path | None = None) -> Config:
    """The table of the nearest pyproject.toml (from `start`, default the working directory, upward) that has one."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            table = _table(candidate)
            if table is not None:
                return Config(candidate, _checked(table, candidate))
    return Config()


def read_config(path: Path) -> Config:
    """`--config FILE`: that pyproject.toml's table (an empty one when it has none)."""
    if not path.is_file():
        raise UsageError(f"--config {path}: no such file")
    table = _table(path)
    return Config(path, _checked(table or {}, path))


def _table(path: Path) -> dict[str, Any] | None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"{path}: cannot read it as TOML ({e})") from e
    table = data.get("tool", {}).get(TABLE) if isinstance(data.get("tool"), dict) else None
    if table is not None and not isinstance(table, dict):
        raise UsageError(f"{path}: [tool.{TABLE}] is not a table")
    return table


def _checked(table: dict[str, Any], path: Path) -> dict[str, Any]:
    values = {}
    for key, value in table.items():
        normal = key.replace("_", "-")
        if normal not in KEYS:
            close = difflib.get_close_matches(normal, list(KEYS), n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; known keys: {', '.join(KEYS)}"
            raise UsageError(f"{path}: [tool.{TABLE}] has an unknown key {key!r}{hint}")
        expected, _ = KEYS[normal]
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            raise UsageError(f"{path}: [tool.{TABLE}] {key} = {value!r}: expected {_type_name(expected)}")
        if expected is list and not all(isinstance(v, str) for v in value):
            raise UsageError(f"{path}: [tool.{TABLE}] {key}: expected a list of strings")
        values[normal] = value
    return values


def _type_name(expected: type | tuple[type, ...]) -> str:
    names = {list: "a list of strings", str: "a string", bool: "true or false", int: "a number", float: "a number"}
    kinds = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(dict.fromkeys(names[k] for k in kinds))
