"""Packages whose implementation imports torch but whose data modules must not.

`analyzer.profile` and `analyzer.compact` name their public objects here and import the
module that defines one only when it is asked for: `analyze --load` reads their `result`
dataclasses without importing torch, and the CLI's start stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: name -> the attribute of the submodule `homes[name]`."""

    def attribute(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{home}"), name)

    return attribute
