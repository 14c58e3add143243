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
import functools
import io
import mmap
import pickletools
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, NamedTuple

__all__ = ["GlobalRef", "GlobalUse", "PickleShape", "scan_pickle", "scan_globals", "PickleScanError", "DYNAMIC", "normalize"]

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


class GlobalRef(NamedTuple):
    """A `module.name` global that the pickle imports (a tuple: hashed in C, the walk's hot path)."""

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


class GlobalUse(NamedTuple):
    """How one pickle uses one global."""

    #: Called (REDUCE, INST, OBJ, NEWOBJ with arguments, through a copyreg helper, or
    #: what came out of it called: a chained call, a persistent id that hands it back).
    called: bool = False
    #: Instantiated as a class without arguments (to be filled by BUILD).
    instantiated: bool = False
    #: Kept as a value, mutated, or discarded: any use that is not one of the above.
    referenced: bool = False

    def __or__(self, other: GlobalUse) -> GlobalUse:  # type: ignore[override]
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


@dataclass
class PickleShape:
    """What a walk saw besides the globals, for a reader that takes only pickles of one shape:
    the opcodes used, and what each opcode that fills an object filled — (opcode, the
    target's kind, the state's kind for BUILD), kinds being "dict", "list", "made by
    <global>" (what calling that one global returned), "global" or "value"."""

    opcodes: set[str] = field(default_factory=set)
    fills: set[tuple[str, str, str]] = field(default_factory=set)


_UNUSED = GlobalUse()
_CALLED = GlobalUse(called=True)
_INSTANTIATED = GlobalUse(instantiated=True)
_REFERENCED = GlobalUse(referenced=True)


def normalize(module: str, name: str) -> tuple[str, str]:
    """Python 2 names (`__builtin__`, `copy_reg`) mapped as pickle's fix_imports does."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def scan_pickle(
    stream: IO[bytes], *, hands_back_classes: bool = False, shape: PickleShape | None = None
) -> dict[GlobalRef, GlobalUse]:
    """Globals named by the one pickle that starts at the stream's position, each with how
    the pickle uses it, in the order first seen; leaves the stream after STOP.

    hands_back_classes: torch's legacy readers' persistent_load returns the class saved in
    a tuple id — `("module", cls, file, source)` in the legacy stream, `(cls, file, source)`
    in the .tar format — so `BINPERSID` of such an id is `cls` itself.
    shape: filled with what the walk saw besides the globals (PickleShape).
    """
    walker = _Walker(hands_back_classes, shape)
    handlers = [walker.dispatch.get(info.name, walker.generic) if info else None for info, *_ in _OPCODES]
    if shape is not None:
        _record_opcodes(handlers, shape.opcodes)
    try:
        _walk(stream, handlers)
    except PickleScanError:
        raise
    except (ValueError, EOFError, IndexError, KeyError, UnicodeDecodeError, struct.error) as e:
        raise PickleScanError(str(e) or type(e).__name__) from e
    finally:
        walker.dispatch.clear()  # its bound methods hold the walker: no cycle left for the collector
        handlers.clear()
    return walker.uses


def _record_opcodes(handlers: list[Callable[[pickletools.OpcodeInfo, object], None] | None], seen: set[str]) -> None:
    """Each handler wrapped so that its opcode's first use is recorded in `seen`, the wrapper
    then putting the handler back: the walk's loop pays once per distinct opcode."""
    for code, handler in enumerate(handlers):
        if handler is None:
            continue

        def first(opcode: pickletools.OpcodeInfo, arg: object, code: int = code, handler: Callable = handler) -> None:  # type: ignore[type-arg]
            seen.add(opcode.name)
            handlers[code] = handler
            handler(opcode, arg)

        handlers[code] = first


# -- the opcodes, read from the bytes (pickletools' readers are the reference) -----------------

#: How an opcode's argument is laid out: none, fixed-size, length-prefixed, or a text line.
_NO_ARG, _FIXED, _SIZED, _LINES = range(4)
_STRUCTS = {
    "uint1": struct.Struct("<B"), "uint2": struct.Struct("<H"), "int4": struct.Struct("<i"),
    "uint4": struct.Struct("<I"), "uint8": struct.Struct("<Q"), "float8": struct.Struct(">d"),  # BINFLOAT is big-endian
}
#: Length-prefixed arguments: the length's layout, and how the bytes become the value.
_SIZED_ARGS: dict[str, tuple[str, Callable[[bytes], object]]] = {
    "string1": ("uint1", lambda b: b.decode("latin-1")),
    "string4": ("int4", lambda b: b.decode("latin-1")),
    "bytes1": ("uint1", bytes),
    "bytes4": ("uint4", bytes),
    "bytes8": ("uint8", bytes),
    "bytearray8": ("uint8", bytearray),
    "unicodestring1": ("uint1", lambda b: str(b, "utf-8", "surrogatepass")),
    "unicodestring4": ("uint4", lambda b: str(b, "utf-8", "surrogatepass")),
    "unicodestring8": ("uint8", lambda b: str(b, "utf-8", "surrogatepass")),
    "long1": ("uint1", pickletools.decode_long),
    "long4": ("int4", pickletools.decode_long),
}
_STOP = ord(".")


def _opcode_table() -> list[tuple[pickletools.OpcodeInfo | None, int, int, object, object]]:
    """Per opcode byte: (info, layout, size of the fixed part, its struct, decoder or reader)."""
    table: list[tuple[pickletools.OpcodeInfo | None, int, int, object, object]] = [(None, _NO_ARG, 0, None, None)] * 256
    for info in pickletools.opcodes:
        arg = info.arg
        if arg is None:
            entry = (info, _NO_ARG, 0, None, None)
        elif arg.name in _STRUCTS:
            entry = (info, _FIXED, arg.n, _STRUCTS[arg.name], None)
        elif arg.name in _SIZED_ARGS:
            length, decode = _SIZED_ARGS[arg.name]
            entry = (info, _SIZED, _STRUCTS[length].size, _STRUCTS[length], decode)
        else:  # newline-terminated text (protocol 0): pickletools' own reader
            entry = (info, _LINES, 2 if arg.name == "stringnl_noescape_pair" else 1, None, arg.reader)
        table[ord(info.code)] = entry
    return table


_OPCODES = _opcode_table()


def _walk(stream: IO[bytes], handlers: list[Callable[[pickletools.OpcodeInfo, object], None]]) -> None:
    """Hand every opcode of the pickle at the stream's position, with its argument decoded as
    pickletools.genops decodes it, to its handler; leave the stream after STOP. One loop over
    the bytes: genops' per-opcode reads were most of the scan of a large state dict."""
    start = stream.tell()
    buf, at = _readable(stream, start)
    end = len(buf)
    offset = start - at
    while True:
        if at >= end:
            raise ValueError("pickle exhausted before seeing STOP")
        code = buf[at]
        info, layout, size, unpack, decode = _OPCODES[code]
        if info is None:
            raise ValueError(f"at position {at + offset}, opcode {bytes([code])!r} unknown")
        at += 1
        if layout == _NO_ARG:
            arg = None
        elif layout == _FIXED:
            if at + size > end:
                raise ValueError(f"{info.name} at position {at - 1 + offset}: its argument is cut off")
            arg = unpack.unpack_from(buf, at)[0]  # type: ignore[attr-defined]
            at += size
        elif layout == _SIZED:
            if at + size > end:
                raise ValueError(f"{info.name} at position {at - 1 + offset}: its length is cut off")
            length = unpack.unpack_from(buf, at)[0]  # type: ignore[attr-defined]
            at += size
            if length < 0 or at + length > end:
                raise ValueError(f"{info.name} at position {at - 1 - size + offset}: {length} bytes claimed, {end - at} remain")
            arg = decode(buf[at : at + length])  # type: ignore[operator]
            at += length
        else:
            arg, at = _text_argument(buf, at, size, decode)  # type: ignore[arg-type]
        handlers[code](info, arg)
        if code == _STOP:
            stream.seek(at + offset)
            return


def _readable(stream: IO[bytes], start: int) -> tuple[bytes | mmap.mmap, int]:
    """The bytes from `start` on, and where `start` is in them: a mapped file as it is (never
    copied: a legacy file's pickles come before gigabytes of storages), other streams read."""
    if isinstance(stream, mmap.mmap):
        return stream, start
    if isinstance(stream, io.BytesIO):
        return stream.getvalue(), start
    return stream.read(), 0


def _text_argument(buf: bytes | mmap.mmap, at: int, lines: int, reader: Callable[[IO[bytes]], object]) -> tuple[object, int]:
    """A protocol-0 argument (one or two newline-terminated lines), read by pickletools."""
    stop = at
    for _ in range(lines):
        newline = buf.find(b"\n", stop)
        stop = len(buf) if newline < 0 else newline + 1
    text = io.BytesIO(buf[at:stop])
    return reader(text), at + text.tell()


def scan_globals(stream: IO[bytes]) -> list[GlobalRef]:
    """Globals named by the one pickle that starts at the stream's position; leaves the stream after STOP."""
    return list(scan_pickle(stream))


# -- the simulated values (plain slotted classes: a large pickle makes millions) ---------------


class _Global:
    __slots__ = ("ref",)

    def __init__(self, ref: GlobalRef) -> None:
        self.ref = ref


class _Instance:
    """An object made from a class without running it; the class counts as called if it is."""

    __slots__ = ("ref",)

    def __init__(self, ref: GlobalRef) -> None:
        self.ref = ref


class _Tuple:
    """A tuple that holds a global, or something that calling would run, somewhere inside."""

    __slots__ = ("items", "holds_globals", "holds_origins")

    def __init__(self, items: tuple[object, ...], holds_globals: bool = False, holds_origins: bool = False) -> None:
        self.items = items
        self.holds_globals = holds_globals
        self.holds_origins = holds_origins


class _Dict:
    __slots__ = ("empty",)

    def __init__(self, empty: bool = True) -> None:
        self.empty = empty


class _List:
    __slots__ = ()


class _Derived:
    """Any other value; `origins` are the globals that calling it would run."""

    __slots__ = ("origins",)

    def __init__(self, origins: frozenset[GlobalRef] = frozenset()) -> None:
        self.origins = origins


_NONE = object()
_UNKNOWN = _Derived()
# Tuples of plain data (the sizes, strides and arguments of every tensor) are never looked
# into again: two shared stand-ins, so that a large pickle allocates nothing for them.
_EMPTY_TUPLE = _Tuple(())
_DATA_TUPLE = _Tuple(())


def _tuple(items: tuple[object, ...]) -> _Tuple:
    holds_globals = holds_origins = False
    for item in items:
        kind = type(item)  # the simulated values are final classes: identity, not isinstance
        if kind is _Global:
            holds_globals = holds_origins = True
        elif kind is _Tuple:
            holds_globals = holds_globals or item.holds_globals  # type: ignore[attr-defined]
            holds_origins = holds_origins or item.holds_origins  # type: ignore[attr-defined]
        elif kind is _Instance or (kind is _Derived and item.origins):  # type: ignore[attr-defined]
            holds_origins = True
    if holds_globals or holds_origins:
        return _Tuple(items, holds_globals, holds_origins)
    return _DATA_TUPLE if items else _EMPTY_TUPLE


@functools.lru_cache(maxsize=4096)
def _global(ref: GlobalRef) -> _Global:
    return _Global(ref)


@functools.lru_cache(maxsize=4096)
def _instance(ref: GlobalRef) -> _Instance:
    return _Instance(ref)


@functools.lru_cache(maxsize=4096)
def _derived(origins: frozenset[GlobalRef]) -> _Derived:
    return _Derived(origins) if origins else _UNKNOWN


_RECONSTRUCTOR = GlobalRef("copyreg", "_reconstructor")
_NEWOBJ = GlobalRef("copyreg", "__newobj__")
_NEWOBJ_EX = GlobalRef("copyreg", "__newobj_ex__")
_REBUILD_FROM_TYPE = GlobalRef("torch._tensor", "_rebuild_from_type_v2")
_OBJECT = GlobalRef("builtins", "object")
_HELPERS = frozenset({_RECONSTRUCTOR, _NEWOBJ, _NEWOBJ_EX, _REBUILD_FROM_TYPE})


@functools.lru_cache(maxsize=None)
def _or(current: GlobalUse, how: GlobalUse) -> GlobalUse:
    return current | how


class _Walker:
    def __init__(self, hands_back_classes: bool, shape: PickleShape | None = None) -> None:
        self.hands_back_classes = hands_back_classes
        self.shape = shape
        self.uses: dict[GlobalRef, GlobalUse] = {}
        self.stack: list[object] = []
        #: Where each open MARK stands in the stack.
        self.marks: list[int] = []
        self.memo: dict[int, object] = {}
        self.refs: dict[tuple[str, str], GlobalRef] = {}
        self.dispatch: dict[str, Callable[[pickletools.OpcodeInfo, object], None]] = {
            name[len("_op_"):]: getattr(self, name) for name in dir(self) if name.startswith("_op_")
        }
        self.dispatch.update(dict.fromkeys(_STRING_OPS, self.string))
        self.dispatch.update(dict.fromkeys(_PUT_OPS, self.put))
        self.dispatch.update(dict.fromkeys(_GET_OPS, self.get))
        self.dispatch.update(dict.fromkeys(_EXT_OPS, self.extension))
        self.dispatch.update(dict.fromkeys(_TUPLE_SIZES, self.small_tuple))
        self.dispatch.update(dict.fromkeys(_FILL_OPS, self.fill_one))
        self.dispatch.update(dict.fromkeys(_FILL_MARK_OPS, self.fill_many))
        for info in pickletools.opcodes:
            if info.name not in self.dispatch and not info.stack_before and len(info.stack_after) == 1:
                self.dispatch[info.name] = self.push_value

    # -- bookkeeping ----------------------------------------------------------------------
    def see(self, module: str, name: str) -> GlobalRef:
        ref = self.refs.get((module, name))
        if ref is None:
            ref = self.refs[module, name] = GlobalRef(*normalize(module, name))
            self.uses.setdefault(ref, _UNUSED)
        return ref

    def use(self, ref: GlobalRef, how: GlobalUse) -> None:
        current = self.uses.get(ref)
        if current is None or current is _UNUSED:
            self.uses[ref] = how
        elif current != how:
            self.uses[ref] = _or(current, how)

    def floor(self) -> int:
        """Stack index below which the current MARK hides everything (pickle's metastack)."""
        return self.marks[-1] if self.marks else 0

    def pop(self) -> object:
        stack = self.stack
        if len(stack) <= (self.marks[-1] if self.marks else 0):
            raise PickleScanError("stack underflow")
        return stack.pop()

    def top(self) -> object:
        if len(self.stack) <= self.floor():
            raise PickleScanError("stack underflow")
        return self.stack[-1]

    def pop_mark(self, opcode: str) -> list[object]:
        if not self.marks:
            raise PickleScanError(f"{opcode} without a MARK")
        at = self.marks.pop()
        items = self.stack[at:]
        del self.stack[at:]
        return items

    def consume(self, *values: object) -> None:
        """Values kept, stored or discarded: every global among them is used as a value."""
        for value in values:
            if isinstance(value, _Global):
                self.use(value.ref, _REFERENCED)
            elif isinstance(value, _Tuple) and value.holds_globals:
                self.visit(value, collect=False)

    def visit(self, value: object, collect: bool) -> frozenset[GlobalRef]:
        """Every global in a tuple used as a value; with `collect`, also the globals that
        calling whatever it holds would run. Iterative with a visited set, so tuples shared
        through the memo cost once each."""
        pending, seen, found = [value], set(), set()
        while pending:
            item = pending.pop()
            kind = type(item)
            if kind is _Global:
                self.use(item.ref, _REFERENCED)  # type: ignore[attr-defined]
                found.add(item.ref)  # type: ignore[attr-defined]
            elif kind is _Tuple:
                if (item.holds_globals or (collect and item.holds_origins)) and id(item) not in seen:  # type: ignore[attr-defined]
                    seen.add(id(item))
                    pending.extend(item.items)  # type: ignore[attr-defined]
            elif collect and kind is _Instance:
                found.add(item.ref)  # type: ignore[attr-defined]
            elif collect and kind is _Derived:
                found.update(item.origins)  # type: ignore[attr-defined]
        return frozenset(found) if collect else frozenset()

    def call(self, value: object) -> frozenset[GlobalRef]:
        """`value` is called: whatever global it came from runs."""
        origins = _origins_of(value)
        for ref in origins:
            self.use(ref, _CALLED)
        return origins

    # -- opcodes --------------------------------------------------------------------------
    def string(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        self.stack.append(arg if isinstance(arg, str) else _UNKNOWN)

    def put(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        stack = self.stack
        if len(stack) <= (self.marks[-1] if self.marks else 0):
            raise PickleScanError(f"{opcode.name} on an empty stack")
        self.memo[arg] = stack[-1]  # type: ignore[index]

    def _op_MEMOIZE(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        self.memo[len(self.memo)] = self.top()

    def get(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        self.stack.append(self.memo.get(arg, _UNKNOWN))  # type: ignore[arg-type]

    def extension(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        key = copyreg._inverted_registry.get(arg)  # type: ignore[attr-defined]
        ref = self.see(*key) if key else self.see(DYNAMIC, f"extension code {arg}")
        self.stack.append(_global(ref))

    def small_tuple(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        size, stack = _TUPLE_SIZES[opcode.name], self.stack
        if len(stack) - size < (self.marks[-1] if self.marks else 0):
            raise PickleScanError("stack underflow")
        if size:
            items = tuple(stack[-size:])
            del stack[-size:]
            stack.append(_tuple(items))
        else:
            stack.append(_EMPTY_TUPLE)

    def fill_one(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        items = [self.pop() for _ in range(_FILL_OPS[opcode.name])]
        self.fill(self.top(), items, opcode.name)

    def fill_many(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        items = self.pop_mark(opcode.name)
        self.fill(self.top(), items, opcode.name)

    def push_value(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        """An opcode that takes nothing and pushes a plain value (an int, a float, a bool)."""
        self.stack.append(_UNKNOWN)

    def generic(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
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
            self.stack.append(_UNKNOWN)

    def fill(self, target: object, items: list[object], opcode: str, state: object = None) -> None:
        if self.shape is not None:
            self.shape.fills.add((opcode, _kind(target), "" if state is None else _kind(state)))
        # APPEND/SETITEM/BUILD into a global itself mutates that module-level object.
        if isinstance(target, _Global):
            self.use(target.ref, _REFERENCED)
        elif isinstance(target, _Dict) and items:
            target.empty = False
        self.consume(*items)

    def _op_GLOBAL(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        module, _, attr = str(arg).partition(" ")
        self.stack.append(_global(self.see(module, attr)))

    def _op_STACK_GLOBAL(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        attr = self.pop()
        module = self.pop()
        if isinstance(module, str) and isinstance(attr, str):
            self.stack.append(_global(self.see(module, attr)))
        else:
            self.consume(module, attr)
            self.stack.append(_global(self.see(DYNAMIC, DYNAMIC)))

    def _op_INST(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        module, _, attr = str(arg).partition(" ")
        ref = self.see(module, attr)
        self.consume(*self.pop_mark("INST"))
        self.use(ref, _CALLED)
        self.stack.append(_derived(_single(ref)))

    def _op_OBJ(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        items = self.pop_mark("OBJ")
        if not items:
            raise PickleScanError("OBJ without a class")
        self.stack.append(self.reduce(items[0], _tuple(tuple(items[1:]))))

    def _op_REDUCE(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        args = self.pop()
        func = self.pop()
        self.stack.append(self.reduce(func, args))

    def _op_NEWOBJ(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        args = self.pop()
        cls = self.pop()
        self.stack.append(self.new(cls, args, _Dict()))

    def _op_NEWOBJ_EX(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        kwargs = self.pop()
        args = self.pop()
        cls = self.pop()
        self.stack.append(self.new(cls, args, kwargs))

    def _op_BUILD(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        state = self.pop()
        self.fill(self.top(), [state], "BUILD", state)

    def _op_BINPERSID(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        self.stack.append(self.persistent(self.pop()))

    def _op_PERSID(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        self.stack.append(_UNKNOWN)

    def _op_MARK(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        self.marks.append(len(self.stack))

    def _op_POP(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        self.consume(self.pop())

    def _op_POP_MARK(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        self.consume(*self.pop_mark("POP_MARK"))

    def _op_DUP(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        self.stack.append(self.top())

    def _op_TUPLE(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        self.stack.append(_tuple(tuple(self.pop_mark("TUPLE"))))

    def _op_EMPTY_DICT(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        self.stack.append(_Dict())

    def _op_EMPTY_LIST(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        self.stack.append(_List())

    def _op_DICT(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        items = self.pop_mark("DICT")
        self.consume(*items)
        self.stack.append(_Dict(empty=not items))

    def _op_NONE(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        self.stack.append(_NONE)

    def _op_STOP(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        self.consume(self.pop())

    def _op_PROTO(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        pass

    def _op_FRAME(self, opcode: pickletools.OpcodeInfo, arg: object) -> None:
        pass

    # -- calls ----------------------------------------------------------------------------
    def reduce(self, func: object, args: object) -> object:
        """`func(*args)`: copyreg's object-creation helpers instantiate their first
        argument; anything else is a call of whatever `func` came from."""
        if isinstance(func, _Global) and func.ref in _HELPERS and isinstance(args, _Tuple):
            self.use(func.ref, _CALLED)
            made = self.helper(func.ref, args.items)
            if made is not None:
                return made
        origins = self.call(func)
        self.consume(args)
        return _derived(origins)

    def helper(self, ref: GlobalRef, items: tuple[object, ...]) -> object | None:
        if ref == _RECONSTRUCTOR and len(items) == 3:
            cls, base, state = items
            if isinstance(cls, _Global) and isinstance(base, _Global) and base.ref == _OBJECT and state is _NONE:
                self.use(base.ref, _INSTANTIATED)
                return self.instantiate(cls)
            # Any other base is called with the state: base.__new__(cls, state), base.__init__(obj, state).
            origins = self.call(cls) | self.call(base)
            self.consume(state)
            return _derived(origins)
        if ref == _NEWOBJ and items:
            return self.new(items[0], _tuple(items[1:]), _Dict())
        if ref == _NEWOBJ_EX and len(items) == 3:
            return self.new(*items)
        if ref == _REBUILD_FROM_TYPE and len(items) == 4:
            func, new_type, args, state = items
            origins = self.call(func)  # func(*args) is called; new_type only wraps the result
            made = self.instantiate(new_type) if isinstance(new_type, _Global) else _derived(self.call(new_type))
            self.consume(args, state)
            return _derived(origins | ({made.ref} if isinstance(made, _Instance) else frozenset()))
        return None

    def new(self, cls: object, args: object, kwargs: object) -> object:
        """`cls.__new__(cls, *args, **kwargs)`: without arguments, a bare instance."""
        if isinstance(cls, _Global) and _is_empty_tuple(args) and isinstance(kwargs, _Dict) and kwargs.empty:
            return self.instantiate(cls)
        origins = self.call(cls)
        self.consume(args, kwargs)
        return _derived(origins)

    def instantiate(self, cls: _Global) -> _Instance:
        self.use(cls.ref, _INSTANTIATED)
        return _instance(cls.ref)

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
        if isinstance(pid, _Tuple):
            return _derived(self.visit(pid, collect=True))
        origins = _origins_of(pid)
        self.consume(pid)
        return _derived(origins)


def _kind(value: object) -> str:
    """What a simulated value is, in PickleShape's words."""
    kind = type(value)
    if kind is _Dict:
        return "dict"
    if kind is _List:
        return "list"
    if kind is _Global:
        return "global"
    if kind is _Derived and len(value.origins) == 1:  # type: ignore[attr-defined]
        return "made by " + next(iter(value.origins)).full_name  # type: ignore[attr-defined]
    return "value"


def _is_empty_tuple(value: object) -> bool:
    return value is _EMPTY_TUPLE


def _origins_of(value: object) -> frozenset[GlobalRef]:
    if isinstance(value, (_Global, _Instance)):
        return _single(value.ref)
    if isinstance(value, _Derived):
        return value.origins
    return frozenset()


@functools.lru_cache(maxsize=4096)
def _single(ref: GlobalRef) -> frozenset[GlobalRef]:
    return frozenset({ref})
