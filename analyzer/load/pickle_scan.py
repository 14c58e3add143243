"""List the globals a pickle needs, without running it.

A static walk over the opcodes (`pickletools.genops`) that simulates the stack just
enough to know which strings STACK_GLOBAL consumes, memo included: the usual hiding
place of protocol 4+ payloads, which torch's own scanner refuses to parse.
"""

from __future__ import annotations

import copyreg
import pickletools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

__all__ = ["GlobalRef", "scan_globals", "PickleScanError", "DYNAMIC"]

#: Module part of a global whose name the scan cannot know (computed at load time).
DYNAMIC = "<dynamic>"

_STRING_OPS = {
    "STRING", "BINSTRING", "SHORT_BINSTRING",
    "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_EXT_OPS = {"EXT1", "EXT2", "EXT4"}
_MARK = object()
_UNKNOWN = object()


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


def scan_globals(stream: IO[bytes]) -> list[GlobalRef]:
    """Globals named by the one pickle that starts at the stream's position; leaves the stream after STOP."""
    found: dict[GlobalRef, None] = {}
    for ref in _walk(stream):
        found.setdefault(ref)
    return list(found)


def _walk(stream: IO[bytes]) -> Iterator[GlobalRef]:
    stack: list[object] = []
    memo: dict[int, object] = {}
    try:
        for opcode, arg, _pos in pickletools.genops(stream):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                yield GlobalRef(module, attr)
            elif name == "STACK_GLOBAL":
                attr = _pop(stack)
                module = _pop(stack)
                if isinstance(module, str) and isinstance(attr, str):
                    yield GlobalRef(module, attr)
                else:
                    yield GlobalRef(DYNAMIC, DYNAMIC)
                stack.append(_UNKNOWN)
                continue
            elif name in _EXT_OPS:
                key = copyreg._inverted_registry.get(arg)  # type: ignore[attr-defined]
                yield GlobalRef(*key) if key else GlobalRef(DYNAMIC, f"extension code {arg}")
            if name in _PUT_OPS or name == "MEMOIZE":
                if not stack:
                    raise PickleScanError(f"{name} on an empty stack")
                memo[arg if name != "MEMOIZE" else len(memo)] = stack[-1]
                continue
            if name in _GET_OPS:
                stack.append(memo.get(arg, _UNKNOWN))
                continue
            if name == "DUP":
                stack.append(stack[-1] if stack else _UNKNOWN)
                continue
            _apply_stack_effect(stack, opcode)
            if name in _STRING_OPS:
                stack[-1] = arg if isinstance(arg, str) else _UNKNOWN
    except PickleScanError:
        raise
    except (ValueError, EOFError, IndexError, KeyError, UnicodeDecodeError) as e:
        raise PickleScanError(str(e) or type(e).__name__) from e


def _apply_stack_effect(stack: list[object], opcode: pickletools.OpcodeInfo) -> None:
    before = opcode.stack_before
    if pickletools.markobject in before:
        while stack and stack[-1] is not _MARK:
            stack.pop()
        if not stack:
            raise PickleScanError(f"{opcode.name} without a MARK")
        stack.pop()
        for _ in range(before.index(pickletools.markobject)):
            _pop(stack)
    else:
        for _ in before:
            _pop(stack)
    for item in opcode.stack_after:
        stack.append(_MARK if item is pickletools.markobject else _UNKNOWN)


def _pop(stack: list[object]) -> object:
    if not stack:
        raise PickleScanError("stack underflow")
    return stack.pop()
