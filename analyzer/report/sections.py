"""The profile and compaction sections of a report as their dataclasses, without torch.

`analyzer.profile` and `analyzer.compact` keep their implementations (which import torch)
in their package `__init__`; their `result` modules are plain dataclasses. Re-rendering a
saved report (`analyze --load`) must not import torch, so while neither torch nor the
package is imported, the data module is loaded from its file under its own name; a later
import of the package finds it in `sys.modules` and uses the same classes.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["profile_from_dict", "compaction_from_dict"]

_ROOT = Path(__file__).resolve().parent.parent


def profile_from_dict(data: dict[str, Any]) -> Any:
    """The `ProfileResult` of a report's `profile` section."""
    return _data_module("analyzer.profile.result").ProfileResult.from_dict(data)


def compaction_from_dict(data: dict[str, Any]) -> Any:
    """The `CompactionResult` of a report's `compaction` section."""
    return _data_module("analyzer.compact.result").CompactionResult.from_dict(data)


def _data_module(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    package = name.rpartition(".")[0]
    if "torch" in sys.modules or package in sys.modules:
        return importlib.import_module(name)
    path = _ROOT.joinpath(*name.split(".")[1:]).with_suffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, f"cannot locate {name} at {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
