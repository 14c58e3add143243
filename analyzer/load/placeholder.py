"""Stand-ins for classes and functions a pickle names but that we refuse to load.

A placeholder records what the pickle gave it (constructor arguments, state, items) and
never calls anything. Placeholders are `nn.Module`s so that a full-model pickle whose
own classes are unknown still yields a module tree with its parameters and buffers.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch.nn as nn

from ..errors import NotRunnableError

__all__ = ["Placeholder", "make_placeholder", "is_placeholder", "placeholder_target"]


class Placeholder(nn.Module):
    """Base of every placeholder class; `_placeholder_for` is the dotted name it stands for."""

    _placeholder_for: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        self = object.__new__(cls)
        nn.Module.__init__(self)
        self.__dict__["_placeholder_args"] = args
        self.__dict__["_placeholder_kwargs"] = kwargs
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Everything was recorded by __new__; a pickle REDUCE must not re-initialise.
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict) and "_modules" in state and "_parameters" in state:
            nn.Module.__setstate__(self, state)
        else:
            self.__dict__["_placeholder_state"] = state

    # The pickle opcodes APPEND(S), SETITEM(S) and ADDITEMS may target an object of an
    # unknown class (a defaultdict, a custom container): keep what they add.
    def append(self, item: Any) -> None:
        self.__dict__.setdefault("_placeholder_items", []).append(item)

    def extend(self, items: Any) -> None:
        self.__dict__.setdefault("_placeholder_items", []).extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("_placeholder_items", []).append((key, value))

    def placeholder_call(self, *args: Any, **kwargs: Any) -> Placeholder:
        """What unpickling gets when the pickle calls this object (a chained payload such as
        getattr(import_module("os"), "system")(...)): another placeholder, nothing run."""
        result = make_placeholder(self._placeholder_for, "()")(*args, **kwargs)
        result.__dict__["_placeholder_callee"] = self
        return result

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotRunnableError(
            f"{self._placeholder_for} was not loaded (a placeholder stands in for it), so the model cannot run"
        )

    def extra_repr(self) -> str:
        return f"placeholder for {self._placeholder_for}"

    @property
    def is_module_like(self) -> bool:
        return "_placeholder_state" not in self.__dict__


def make_placeholder(module: str, name: str) -> type[Placeholder]:
    """A new placeholder class standing for `module.name` (`module()` for a call's result)."""
    qualname = re.sub(r"\W", "_", name.rpartition(".")[2]) or "Unnamed"
    target = f"{module}{name}" if name == "()" else f"{module}.{name}"
    return type(
        qualname if name != "()" else "CallResult",
        (Placeholder,),
        {"_placeholder_for": target, "__module__": "analyzer.placeholders"},
    )


def is_placeholder(obj: Any) -> bool:
    return isinstance(obj, Placeholder)


def placeholder_target(obj: Placeholder) -> str:
    return type(obj)._placeholder_for
