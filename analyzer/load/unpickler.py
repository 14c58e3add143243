"""A restricted unpickler for what torch's weights_only unpickler cannot read.

torch.load(weights_only=True) reads torch.save files (pickle protocol 2). Plain pickles
(`pickle.dump`, any protocol) and the data.pkl of TorchScript archives need an
unpickler of our own. It is the pure-Python one with every opcode that can call or
mutate something checked against the `GlobalPolicy`: only objects that came out of
`find_class` may be called or instantiated, and only allowed types may be BUILT.
"""

from __future__ import annotations

import pickle
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import IO, Any

import torch

from .placeholder import Placeholder
from .policy import GlobalPolicy

__all__ = ["RestrictedUnpickler", "restricted_load"]

_DICT_TYPES = (dict, OrderedDict, Counter)


class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined,misc]
    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(
        self,
        file: IO[bytes],
        policy: GlobalPolicy,
        persistent_load: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__(file, encoding="latin1")
        self.policy = policy
        self._persistent_load = persistent_load
        # ids of the objects find_class handed out: the only things that may be called.
        self._callables: dict[int, Any] = {}

    # -- globals ---------------------------------------------------------------------
    def find_class(self, module: str, name: str) -> Any:
        obj = self.policy.resolve(module, name).obj
        self._callables[id(obj)] = obj
        return obj

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent_load is None:
            raise pickle.UnpicklingError("persistent ids are only allowed inside torch archives")
        return self._persistent_load(pid)

    # -- opcodes that call or mutate -------------------------------------------------
    def _check_callable(self, func: Any, opcode: str) -> None:
        if id(func) not in self._callables:
            raise pickle.UnpicklingError(f"{opcode} on {type(func).__name__} that did not come from an allowed global")

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if isinstance(func, Placeholder):  # calling what a placeholder returned: record, never run
            self.stack[-1] = func.placeholder_call(*args)
            return
        self._check_callable(func, "REDUCE")
        self.stack[-1] = func(*args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_callable(cls, "NEWOBJ")
        self.append(cls.__new__(cls, *args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_callable(cls, "NEWOBJ_EX")
        self.append(cls.__new__(cls, *args, **kwargs))

    def _instantiate(self, klass: Any, args: Any) -> None:
        self._check_callable(klass, "INST/OBJ")
        self.append(klass(*args))

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        kind = type(inst)
        if kind is torch.Tensor and isinstance(state, tuple):
            inst.set_(*state)
        elif kind is torch.nn.Parameter or isinstance(inst, Placeholder):
            inst.__setstate__(state)
        elif kind is OrderedDict and isinstance(state, dict):
            inst.__dict__.update(state)
        elif kind in self.policy.buildable_types():
            _build_like_pickle(inst, state)
        else:
            raise pickle.UnpicklingError(f"BUILD of {kind.__name__} is not allowed")

    def load_append(self) -> None:
        item = self.stack.pop()
        self._check_container(self.stack[-1], list, "APPEND").append(item)

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._check_container(self.stack[-1], list, "APPENDS").extend(items)

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._check_container(self.stack[-1], _DICT_TYPES, "SETITEM")[key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._check_container(self.stack[-1], _DICT_TYPES, "SETITEMS")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self._check_container(self.stack[-1], set, "ADDITEMS")
        add = target.add if isinstance(target, set) else target.append
        for item in items:
            add(item)

    @staticmethod
    def _check_container(target: Any, allowed: Any, opcode: str) -> Any:
        if type(target) in (allowed if isinstance(allowed, tuple) else (allowed,)) or isinstance(target, Placeholder):
            return target
        raise pickle.UnpicklingError(f"{opcode} into {type(target).__name__} is not allowed")

    for _opcode, _method in {
        pickle.REDUCE: load_reduce,
        pickle.NEWOBJ: load_newobj,
        pickle.NEWOBJ_EX: load_newobj_ex,
        pickle.BUILD: load_build,
        pickle.APPEND: load_append,
        pickle.APPENDS: load_appends,
        pickle.SETITEM: load_setitem,
        pickle.SETITEMS: load_setitems,
        pickle.ADDITEMS: load_additems,
    }.items():
        dispatch[_opcode[0]] = _method
    del _opcode, _method


def _build_like_pickle(inst: Any, state: Any) -> None:
    setstate = getattr(inst, "__setstate__", None)
    if setstate is not None:
        setstate(state)
        return
    slotstate = None
    if isinstance(state, tuple) and len(state) == 2:
        state, slotstate = state
    if state:
        inst.__dict__.update(state)
    if slotstate:
        for key, value in slotstate.items():
            setattr(inst, key, value)


def restricted_load(
    file: IO[bytes], policy: GlobalPolicy, persistent_load: Callable[[Any], Any] | None = None
) -> Any:
    return RestrictedUnpickler(file, policy, persistent_load).load()
