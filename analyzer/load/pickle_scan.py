"""List the globals a pickle needs, and how it uses each one, without running it.

A static walk over the opcodes (`pickletools.genops`) that simulates the stack just
enough to know which strings STACK_GLOBAL consumes (memo included: the usual hiding place
of protocol 4+ payloads, which torch's own scanner refuses to parse) and what happens to
every global afterwards. The severity of an unknown global comes from that use, never
from its name: only a class instantiated without arguments — `GLOBAL cls; EMPTY_TUPLE;
NEWOBJ` or `copyreg._reconstructor(cls, object, None)`, then filled by BUILD, the shape
of every pickled `nn.Module` — is merely an unknown class. Calling a global, calling what
came out of it, or keeping it as a value are uses that hand it something to run.
"""

from __future__ import annotations

import _compat_pickle
import copyreg
import pickletools
from dataclasses import dataclass, field
from typing import IO

__all__ = ["GlobalRef", "GlobalUse", "scan_pickle", "scan_globals", "PickleScanError", "DYNAMIC", "normalize"]

#: Module part of a global whose name the scan cannot know (computed at load time).
DYNAMIC = "<dynamic>"

_STRING_OPS = {
    "STRING", "BINSTRING", "SHORT_BINSTRING",
    "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_EXT_OPS = {"EXT1", "EXT2", "EXT4"}
_TUPLE_SIZES = {"EMPTY_TUPLE": 0, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
#: Opcodes that add to the object below them (the target stays on the stack).
_FILL_OPS = {"APPEND": 1, "SETITEM": 2}
_FILL_MARK_OPS = {"APPENDS", "SETITEMS", "ADDITEMS"}


class PickleScanError(Exception):
    """The bytes are not a well-formed pickle."""


@dataclass(frozen=True, order=True)
class GlobalRef:
    """A `module.name` global that the pickle imports."""

    module: str
    name: str

    @property
    def full_name(self) -> str:
        return f"{self.module}.{self.name}"

    @property
    def dotted(self) -> bool:
        """A name that walks attributes from its module (`torch` + `os.system`): it can reach
        anything the module imported, so it is never taken for a class of that module."""
        return "." in self.name


@dataclass(frozen=True)
class GlobalUse:
    """How one pickle uses one global."""

    #: Called (REDUCE, INST, OBJ, NEWOBJ with arguments, through a copyreg helper, or
    #: what came out of it called: a chained call, a persistent id that hands it back).
    called: bool = False
    #: Instantiated as a class without arguments (to be filled by BUILD).
    instantiated: bool = False
    #: Kept as a value, mutated, or discarded: any use that is not one of the above.
    referenced: bool = False

    def __or__(self, other: GlobalUse) -> GlobalUse:
        return GlobalUse(
            self.called or other.called,
            self.instantiated or other.instantiated,
            self.referenced or other.referenced,
        )

    @property
    def class_only(self) -> bool:
        """Used purely as a class to instantiate without arguments: the one shape of use
        that is an unknown class rather than code the pickle hands something to run."""
        return self.instantiated and not self.called and not self.referenced


_CALLED = GlobalUse(called=True)
_INSTANTIATED = GlobalUse(instantiated=True)
_REFERENCED = GlobalUse(referenced=True)


def normalize(module: str, name: str) -> tuple[str, str]:
    """Python 2 names (`__builtin__`, `copy_reg`) mapped as pickle's fix_imports does."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def scan_pickle(stream: IO[bytes], *, hands_back_classes: bool = False) -> dict[GlobalRef, GlobalUse]:
    """Globals named by the one pickle that starts at the stream's position, each with how
    the pickle uses it, in the order first seen; leaves the stream after STOP.

    hands_back_classes: torch's legacy readers' persistent_load returns the class saved in
    a tuple id — `("module", cls, file, source)` in the legacy stream, `(cls, file, source)`
    in the .tar format — so `BINPERSID` of such an id is `cls` itself.
    """
    walker = _Walker(hands_back_classes)
    try:
        for opcode, arg, _pos in pickletools.genops(stream):
            walker.step(opcode, arg)
    except PickleScanError:
        raise
    except (ValueError, EOFError, IndexError, KeyError, UnicodeDecodeError) as e:
        raise PickleScanError(str(e) or type(e).__name__) from e
    return walker.uses


def scan_globals(stream: IO[bytes]) -> list[GlobalRef]:
    """Globals named by the one pickle that starts at the stream's position; leaves the stream after STOP."""
    return list(scan_pickle(stream))


# -- the simulated values ----------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Global:
    ref: GlobalRef


@dataclass(frozen=True, eq=False)
class _Instance:
    """An object made from a class without running it; the class counts as called if it is."""

    ref: GlobalRef


@dataclass(frozen=True, eq=False)
class _Tuple:
    items: tuple[object, ...]


@dataclass(eq=False)
class _Dict:
    empty: bool = True


@dataclass(frozen=True, eq=False)
class _Derived:
    """Any other value; `origins` are the globals that calling it would run."""

    origins: frozenset[GlobalRef] = field(default_factory=frozenset)


_MARK = object()
_NONE = object()
_UNKNOWN = _Derived()

_RECONSTRUCTOR = GlobalRef("copyreg", "_reconstructor")
_NEWOBJ = GlobalRef("copyreg", "__newobj__")
_NEWOBJ_EX = GlobalRef("copyreg", "__newobj_ex__")
_REBUILD_FROM_TYPE = GlobalRef("torch._tensor", "_rebuild_from_type_v2")
_OBJECT = GlobalRef("builtins", "object")


class _Walker:
    def __init__(self, hands_back_classes: bool) -> None:
        self.hands_back_classes = hands_back_classes
        self.uses: dict[GlobalRef, GlobalUse] = {}
        self.stack: list[object] = []
        self.memo: dict[int, object] = {}
        self.handlers = {name[len("_op_"):]: getattr(self, name) for name in dir(self) if name.startswith("_op_")}

    # -- bookkeeping ----------------------------------------------------------------------
    def see(self, module: str, name: str) -> GlobalRef:
        ref = GlobalRef(*normalize(module, name))
        self.uses.setdefault(ref, GlobalUse())
        return ref

    def use(self, ref: GlobalRef, how: GlobalUse) -> None:
        self.uses[ref] = self.uses.get(ref, GlobalUse()) | how

    def push(self, value: object) -> None:
        self.stack.append(value)

    def pop(self) -> object:
        if not self.stack or self.stack[-1] is _MARK:
            raise PickleScanError("stack underflow")
        return self.stack.pop()

    def top(self) -> object:
        if not self.stack or self.stack[-1] is _MARK:
            raise PickleScanError("stack underflow")
        return self.stack[-1]

    def pop_mark(self, opcode: str) -> list[object]:
        items: list[object] = []
        while self.stack and self.stack[-1] is not _MARK:
            items.append(self.stack.pop())
        if not self.stack:
            raise PickleScanError(f"{opcode} without a MARK")
        self.stack.pop()
        items.reverse()
        return items

    def consume(self, *values: object) -> None:
        """Values kept, stored or discarded: every global among them is used as a value.
        Iterative with a visited set, so tuples shared through the memo cost once each."""
        pending = list(values)
        seen: set[int] = set()
        while pending:
            value = pending.pop()
            if id(value) in seen:
                continue
            seen.add(id(value))
            if isinstance(value, _Global):
                self.use(value.ref, _REFERENCED)
            elif isinstance(value, _Tuple):
                pending.extend(value.items)

    def call(self, value: object) -> frozenset[GlobalRef]:
        """`value` is called: whatever global it came from runs."""
        if isinstance(value, (_Global, _Instance)):
            origins = frozenset({value.ref})
        elif isinstance(value, _Derived):
            origins = value.origins
        else:
            origins = frozenset()
        for ref in origins:
            self.use(ref, _CALLED)
        return origins

    # -- opcodes --------------------------------------------------------------------------
    def step(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        name = opcode.name
        handler = self.handlers.get(name)
        if handler is not None:
            handler(arg)
        elif name in _STRING_OPS:
            self.push(arg if isinstance(arg, str) else _UNKNOWN)
        elif name in _PUT_OPS or name == "MEMOIZE":
            if not self.stack or self.stack[-1] is _MARK:
                raise PickleScanError(f"{name} on an empty stack")
            self.memo[arg if name != "MEMOIZE" else len(self.memo)] = self.stack[-1]  # type: ignore[index]
        elif name in _GET_OPS:
            self.push(self.memo.get(arg, _UNKNOWN))  # type: ignore[arg-type]
        elif name in _EXT_OPS:
            key = copyreg._inverted_registry.get(arg)  # type: ignore[attr-defined]
            ref = self.see(*key) if key else self.see(DYNAMIC, f"extension code {arg}")
            self.push(_Global(ref))
        elif name in _TUPLE_SIZES:
            count = _TUPLE_SIZES[name]
            items = [self.pop() for _ in range(count)]
            self.push(_Tuple(tuple(reversed(items))))
        elif name in _FILL_OPS:
            items = [self.pop() for _ in range(_FILL_OPS[name])]
            self.fill(self.top(), items)
        elif name in _FILL_MARK_OPS:
            items = self.pop_mark(name)
            self.fill(self.top(), items)
        else:
            self.generic(opcode)

    def generic(self, opcode: pickletools.OpcodeInfo) -> None:
        """Opcodes that build plain values: whatever they take is kept as a value."""
        before = opcode.stack_before
        if pickletools.markobject in before:
            self.consume(*self.pop_mark(opcode.name))
            for _ in range(before.index(pickletools.markobject)):
                self.consume(self.pop())
        else:
            for _ in before:
                self.consume(self.pop())
        for _ in opcode.stack_after:
            self.push(_UNKNOWN)

    def fill(self, target: object, items: list[object]) -> None:
        # APPEND/SETITEM/BUILD into a global itself mutates that module-level object.
        if isinstance(target, _Global):
            self.use(target.ref, _REFERENCED)
        elif isinstance(target, _Dict) and items:
            target.empty = False
        self.consume(*items)

    def _op_GLOBAL(self, arg: object) -> None:
        module, _, attr = str(arg).partition(" ")
        self.push(_Global(self.see(module, attr)))

    def _op_STACK_GLOBAL(self, arg: object) -> None:
        attr = self.pop()
        module = self.pop()
        if isinstance(module, str) and isinstance(attr, str):
            self.push(_Global(self.see(module, attr)))
        else:
            self.consume(module, attr)
            self.push(_Global(self.see(DYNAMIC, DYNAMIC)))

    def _op_INST(self, arg: object) -> None:
        module, _, attr = str(arg).partition(" ")
        ref = self.see(module, attr)
        self.consume(*self.pop_mark("INST"))
        self.use(ref, _CALLED)
        self.push(_Derived(frozenset({ref})))

    def _op_OBJ(self, arg: object) -> None:
        items = self.pop_mark("OBJ")
        if not items:
            raise PickleScanError("OBJ without a class")
        self.push(self.reduce(items[0], _Tuple(tuple(items[1:]))))

    def _op_REDUCE(self, arg: object) -> None:
        args = self.pop()
        func = self.pop()
        self.push(self.reduce(func, args))

    def _op_NEWOBJ(self, arg: object) -> None:
        args = self.pop()
        cls = self.pop()
        self.push(self.new(cls, args, _Dict()))

    def _op_NEWOBJ_EX(self, arg: object) -> None:
        kwargs = self.pop()
        args = self.pop()
        cls = self.pop()
        self.push(self.new(cls, args, kwargs))

    def _op_BUILD(self, arg: object) -> None:
        state = self.pop()
        self.fill(self.top(), [state])

    def _op_BINPERSID(self, arg: object) -> None:
        self.push(self.persistent(self.pop()))

    def _op_PERSID(self, arg: object) -> None:
        self.push(_UNKNOWN)

    def _op_MARK(self, arg: object) -> None:
        self.push(_MARK)

    def _op_POP(self, arg: object) -> None:
        self.consume(self.pop())

    def _op_POP_MARK(self, arg: object) -> None:
        self.consume(*self.pop_mark("POP_MARK"))

    def _op_DUP(self, arg: object) -> None:
        self.push(self.top())

    def _op_TUPLE(self, arg: object) -> None:
        self.push(_Tuple(tuple(self.pop_mark("TUPLE"))))

    def _op_EMPTY_DICT(self, arg: object) -> None:
        self.push(_Dict())

    def _op_DICT(self, arg: object) -> None:
        items = self.pop_mark("DICT")
        self.consume(*items)
        self.push(_Dict(empty=not items))

    def _op_NONE(self, arg: object) -> None:
        self.push(_NONE)

    def _op_STOP(self, arg: object) -> None:
        self.consume(self.pop())

    def _op_PROTO(self, arg: object) -> None:
        pass

    def _op_FRAME(self, arg: object) -> None:
        pass

    # -- calls ----------------------------------------------------------------------------
    def reduce(self, func: object, args: object) -> object:
        """`func(*args)`: copyreg's object-creation helpers instantiate their first
        argument; anything else is a call of whatever `func` came from."""
        if isinstance(func, _Global) and isinstance(args, _Tuple):
            self.use(func.ref, _CALLED)
            made = self.helper(func.ref, args.items)
            if made is not None:
                return made
        origins = self.call(func)
        self.consume(args)
        return _Derived(origins)

    def helper(self, ref: GlobalRef, items: tuple[object, ...]) -> object | None:
        if ref == _RECONSTRUCTOR and len(items) == 3:
            cls, base, state = items
            if isinstance(cls, _Global) and isinstance(base, _Global) and base.ref == _OBJECT and state is _NONE:
                self.use(base.ref, _INSTANTIATED)
                return self.instantiate(cls)
            # Any other base is called with the state: base.__new__(cls, state), base.__init__(obj, state).
            return _Derived(self.call(cls) | self.call(base) | self.kept(state))
        if ref == _NEWOBJ and items:
            return self.new(items[0], _Tuple(items[1:]), _Dict())
        if ref == _NEWOBJ_EX and len(items) == 3:
            return self.new(*items)
        if ref == _REBUILD_FROM_TYPE and len(items) == 4:
            func, new_type, args, state = items
            origins = self.call(func)  # func(*args) is called; new_type only wraps the result
            made = self.instantiate(new_type) if isinstance(new_type, _Global) else _Derived(self.call(new_type))
            self.consume(args, state)
            return _Derived(origins | ({made.ref} if isinstance(made, _Instance) else frozenset()))
        return None

    def new(self, cls: object, args: object, kwargs: object) -> object:
        """`cls.__new__(cls, *args, **kwargs)`: without arguments, a bare instance."""
        if isinstance(cls, _Global) and _is_empty_tuple(args) and isinstance(kwargs, _Dict) and kwargs.empty:
            return self.instantiate(cls)
        origins = self.call(cls)
        self.consume(args, kwargs)
        return _Derived(origins)

    def instantiate(self, cls: _Global) -> _Instance:
        self.use(cls.ref, _INSTANTIATED)
        return _Instance(cls.ref)

    def kept(self, value: object) -> frozenset[GlobalRef]:
        self.consume(value)
        return frozenset()

    def persistent(self, pid: object) -> object:
        if self.hands_back_classes and isinstance(pid, _Tuple):
            items = pid.items
            if items and isinstance(items[0], _Global):
                self.consume(*items[1:])
                return items[0]
            if len(items) > 1 and items[0] == "module" and isinstance(items[1], _Global):
                self.consume(*items[2:])
                return items[1]
        # What persistent_load hands back may be any global inside the id.
        origins = _globals_in(pid)
        self.consume(pid)
        return _Derived(origins)


def _is_empty_tuple(value: object) -> bool:
    return isinstance(value, _Tuple) and not value.items


def _globals_in(value: object) -> frozenset[GlobalRef]:
    found: set[GlobalRef] = set()
    pending, seen = [value], set()
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, (_Global, _Instance)):
            found.add(item.ref)
        elif isinstance(item, _Derived):
            found.update(item.origins)
        elif isinstance(item, _Tuple):
            pending.extend(item.items)
    return frozenset(found)
