"""Which globals a pickle may load, what stands in for the others, and how bad each is.

Every loader asks one `GlobalPolicy`. The allowlist is the whole rule:

- torch's own weights_only allowlist (tensors, storages, containers) and the loaders'
  own safe rebuilders are loaded as they are;
- `nn.Module` subclasses *defined in* `torch.nn` (and pruning methods of
  `torch.nn.utils.prune`), in `analyzer.zoo` and in packages the user allowed
  (`--allow-module`), named by a plain attribute of a module inside that package, are
  rebuilt *without running their constructors*;
- everything else becomes a placeholder that only records (see placeholder.py).

How serious an unknown global is comes from how the pickle uses it (pickle_scan.py),
never from its name: see `ResolvedGlobal.refusals`. A short list of well-known gadgets
only labels the plainly dangerous ones in messages.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch.nn as nn
import torch.nn.utils.prune as prune

from ..errors import UsageError
from .pickle_scan import DYNAMIC, GlobalRef, GlobalUse, normalize
from .placeholder import Placeholder, make_placeholder

__all__ = [
    "GlobalKind", "ResolvedGlobal", "GlobalPolicy", "normalize", "gadget_label", "plain_module_path",
    "CALLS", "DOTTED", "DYNAMIC_NAME", "PROGRAM_MODULE", "NOT_A_CLASS", "REFERENCES",
]


class GlobalKind(str, enum.Enum):
    SAFE = "safe"
    TORCH_NN_CLASS = "torch-nn-class"
    ALLOWED_CLASS = "allowed-class"
    UNKNOWN = "unknown"


# Why a global makes the file an error (ResolvedGlobal.refusals).
#: The pickle calls it, or calls what came out of it.
CALLS = "calls"
#: Its name walks attributes out of its module (`torch` + `os.system`).
DOTTED = "dotted"
#: Its name is computed while loading.
DYNAMIC_NAME = "dynamic"
#: Its module is a program that runs when imported (`pkg.__main__`).
PROGRAM_MODULE = "program-module"
#: Importing it showed a function or other non-class.
NOT_A_CLASS = "not-a-class"
#: Kept as a value, mutated or discarded, not instantiated: a function cannot be told
#: from a class without importing it.
REFERENCES = "references"

#: The packages whose nn.Module classes are always rebuilt (they ship with the analyzer).
_BUILTIN_PACKAGES = ("analyzer.zoo",)

#: Labels for the plainly dangerous, matched on any dotted tail of the full name (so
#: `torch.os.system` is labelled too). Only for messages: severity never looks here.
_GADGETS: tuple[tuple[str, str], ...] = (
    ("os.system", "runs commands"), ("os.popen", "runs commands"), ("posix", "runs commands"),
    ("nt", "runs commands"), ("subprocess", "runs commands"), ("_posixsubprocess", "runs commands"),
    ("pty", "runs commands"), ("_osx_support", "runs commands"), ("uuid._get_command_stdout", "runs commands"),
    ("imaplib.IMAP4_stream", "runs commands"), ("torch.utils.collect_env.run", "runs commands"),
    ("builtins.eval", "runs code"), ("builtins.exec", "runs code"), ("builtins.compile", "runs code"),
    ("builtins.__import__", "imports code"), ("builtins.getattr", "reaches any attribute"),
    ("importlib", "imports code"), ("runpy", "runs code"), ("code", "runs code"), ("pickle", "unpickles more"),
    ("_pickle", "unpickles more"), ("marshal", "loads code"), ("torch.load", "unpickles more"),
    ("torch.serialization.load", "unpickles more"), ("torch.jit.unsupported_tensor_ops", "runs code"),
    ("numpy.f2py", "runs code"), ("idlelib", "runs code"), ("numpy.load", "unpickles more"),
    ("numpy.lib._npyio_impl.load", "unpickles more"), ("io", "opens files"), ("_io", "opens files"),
    ("numpy.memmap", "opens files"), ("torch.serialization._open_file", "opens files"),
    ("shutil", "touches files"), ("tempfile", "touches files"), ("pathlib", "touches files"),
    ("socket", "opens connections"), ("ctypes", "calls native code"),
)


@dataclass(frozen=True)
class ResolvedGlobal:
    ref: GlobalRef
    kind: GlobalKind
    #: What an unpickler gets for this global.
    obj: Any
    #: For placeholders: can the top-level package be found here (never imported)?
    importable: bool | None = None
    #: For placeholders the policy imported to check (torch.nn, allowed packages): what
    #: it found instead of an nn.Module class defined there.
    found: str | None = None
    #: Whether importing showed a class (None: not imported).
    is_class: bool | None = None
    #: How the pickles use it; None when only loading saw it (treated as a value).
    use: GlobalUse | None = None

    @property
    def full_name(self) -> str:
        return self.ref.full_name

    @property
    def needs_placeholder(self) -> bool:
        return self.kind is GlobalKind.UNKNOWN

    @property
    def refusals(self) -> tuple[str, ...]:
        """Why this global makes the file an error; empty when it is at most an unknown class
        (used purely as a class to instantiate without arguments, by a plain name)."""
        if self.kind is GlobalKind.SAFE:
            return ()
        use = self.use if self.use is not None else GlobalUse(referenced=True)
        reasons = [CALLS] if use.called else []
        if self.kind is not GlobalKind.UNKNOWN:
            return tuple(reasons)  # an nn.Module class checked by import: naming or instantiating it runs nothing
        if self.ref.module == DYNAMIC:
            reasons.append(DYNAMIC_NAME)
        if self.ref.dotted:
            reasons.append(DOTTED)
        if not plain_module_path(self.ref.module):
            reasons.append(PROGRAM_MODULE)
        if self.is_class is False:
            reasons.append(NOT_A_CLASS)
        if not use.called and not use.class_only:
            reasons.append(REFERENCES)
        return tuple(reasons)


class _ConstructorFree:
    """Base of the stand-ins that rebuild an nn.Module class without calling __init__.

    Pickles of modules only ever create them with `cls.__new__(cls)` and fill them with
    BUILD; a pickle that *calls* the class (REDUCE) gets the same empty instance, so a
    crafted `Conv2d(10**6, 10**6, 99)` allocates nothing.
    """

    target: type

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls.target.__new__(cls.target)


def _constructor_free(cls: type) -> type:
    return type(cls.__name__, (_ConstructorFree,), {"target": cls, "__qualname__": cls.__qualname__})


class GlobalPolicy:
    """Decides, once per global name, what a pickle gets for it. One per load."""

    def __init__(self, allow_modules: tuple[str, ...] = ()) -> None:
        self.allow_modules = tuple(_checked_package(p) for p in allow_modules)
        self._resolved: dict[GlobalRef, ResolvedGlobal] = {}
        self._safe = _torch_allowed_globals()
        # `object` is what copyreg._reconstructor takes as the base of a plain class.
        self._extra_safe: dict[str, Any] = {"builtins.object": object}
        self._uses: dict[GlobalRef, GlobalUse] = {}

    def add_safe(self, full_name: str, obj: Any) -> None:
        """A loader's own safe replacement for a global (e.g. `torch.storage._load_from_bytes`)."""
        self._extra_safe[full_name] = obj
        self._resolved = {r: v for r, v in self._resolved.items() if r.full_name != full_name}

    def record_uses(self, uses: Mapping[GlobalRef, GlobalUse]) -> None:
        """What a scan saw one pickle do with its globals."""
        for ref, use in uses.items():
            self._uses[ref] = self._uses.get(ref, GlobalUse()) | use

    def resolve(self, module: str, name: str) -> ResolvedGlobal:
        ref = GlobalRef(*normalize(module, name))
        if ref not in self._resolved:
            self._resolved[ref] = self._resolve(ref)
        return self._resolved[ref]

    def reported(self) -> list[ResolvedGlobal]:
        """Every global beyond torch's allowlist and the loaders' rebuilders, those the scans
        saw and any resolved while loading, each with how the pickles use it; first seen first."""
        for ref in list(self._uses):
            self.resolve(ref.module, ref.name)
        return [replace(g, use=self._uses.get(g.ref)) for g in self._resolved.values() if g.kind is not GlobalKind.SAFE]

    def torch_safe_globals(self, refs: list[GlobalRef]) -> list[tuple[Any, str]]:
        """Entries for `torch.serialization.safe_globals` that let torch's weights_only
        unpickler load `refs` the way this policy decides."""
        entries: list[tuple[Any, str]] = []
        for ref in refs:
            resolved = self.resolve(ref.module, ref.name)
            if resolved.kind is GlobalKind.SAFE and resolved.full_name in self._safe:
                continue
            entries.append((resolved.obj, resolved.full_name))
            if resolved.kind in (GlobalKind.TORCH_NN_CLASS, GlobalKind.ALLOWED_CLASS):
                # torch checks BUILD targets by type: register the real class too, under a
                # name no GLOBAL opcode can spell (opcodes end names at a newline).
                entries.append((resolved.obj.target, "\n" + resolved.full_name))
        return entries

    def buildable_types(self) -> set[type]:
        """Types whose instances a BUILD opcode may fill in."""
        types: set[type] = set()
        for resolved in self._resolved.values():
            if resolved.kind in (GlobalKind.TORCH_NN_CLASS, GlobalKind.ALLOWED_CLASS):
                types.add(resolved.obj.target)
            elif resolved.kind is GlobalKind.SAFE and isinstance(resolved.obj, type) and resolved.obj is not object:
                types.add(resolved.obj)
        return types

    def _resolve(self, ref: GlobalRef) -> ResolvedGlobal:
        full = ref.full_name
        if full in self._extra_safe:
            return ResolvedGlobal(ref, GlobalKind.SAFE, self._extra_safe[full])
        if full in self._safe:
            return ResolvedGlobal(ref, GlobalKind.SAFE, self._safe[full])
        rules = [("torch.nn", (nn.Module, prune.BasePruningMethod), GlobalKind.TORCH_NN_CLASS)]
        rules += [(pkg, (nn.Module,), GlobalKind.ALLOWED_CLASS) for pkg in (*self.allow_modules, *_BUILTIN_PACKAGES)]
        first_look: _Look | None = None
        for package, bases, kind in rules:
            if not _in_package(ref.module, package):
                continue
            look = _module_class(ref, package, bases)
            if look.cls is not None:
                return ResolvedGlobal(ref, kind, _constructor_free(look.cls))
            first_look = first_look or look
        return ResolvedGlobal(
            ref, GlobalKind.UNKNOWN, make_placeholder(ref.module, ref.name), _importable(ref.module),
            found=first_look.found if first_look else None, is_class=first_look.is_class if first_look else None,
        )


@dataclass(frozen=True)
class _Look:
    cls: type | None
    found: str | None = None
    is_class: bool | None = None


def _module_class(ref: GlobalRef, package: str, bases: tuple[type, ...]) -> _Look:
    """The nn.Module class `ref` names, if it is one defined inside `package`: the module
    part imported (it is inside the package), the plain name looked up in the module's own
    namespace, never an attribute path and never a module's __getattr__ hook."""
    if ref.dotted or not ref.name.isidentifier():
        return _Look(None, "a dotted name, which is never followed")
    if not plain_module_path(ref.module):
        return _Look(None, "a module that runs a program when imported")
    try:
        module = importlib.import_module(ref.module)
    except Exception:  # noqa: BLE001 - importing runs the package's code; any failure means "not here"
        return _Look(None, f"{ref.module} is not importable here")
    obj = vars(module).get(ref.name)
    if obj is None:
        return _Look(None, f"{ref.module} has no {ref.name}")
    if not inspect.isclass(obj):
        return _Look(None, f"a {type(obj).__name__}, not a class", is_class=False)
    try:
        is_module_class = issubclass(obj, bases) and not issubclass(obj, Placeholder)
    except TypeError:
        is_module_class = False
    if not is_module_class:
        return _Look(None, "a class that is not an nn.Module", is_class=True)
    defined_in = getattr(obj, "__module__", None)
    if not isinstance(defined_in, str) or not _in_package(defined_in, package):
        return _Look(None, f"a class defined in {defined_in}, outside {package}", is_class=True)
    return _Look(obj, is_class=True)


def plain_module_path(module: str) -> bool:
    """Dotted identifiers, none of them `__main__` below the top: `pkg.__main__` is a program
    that runs when imported, never where a class lives (classes of a script are `__main__`'s)."""
    parts = module.split(".")
    return all(p.isidentifier() for p in parts) and "__main__" not in parts[1:]


def gadget_label(ref: GlobalRef) -> str | None:
    """A few words for a well-known dangerous global (`runs commands`), for messages only."""
    # The full name, and for a dotted name every attribute path it walks (`torch` + `os.system`).
    parts = ref.name.split(".")
    tails = [ref.full_name, *(".".join(parts[i:]) for i in range(len(parts) - 1))]
    for prefix, label in _GADGETS:
        if any(tail == prefix or tail.startswith(prefix + ".") for tail in tails):
            return label
    return None


def _checked_package(name: str) -> str:
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise UsageError(f"--allow-module {name!r}: expected a package or module name such as mypkg or mypkg.models")
    return name


def _torch_allowed_globals() -> dict[str, Any]:
    # torch's own weights_only allowlist: the audited set of tensor and storage rebuilders.
    from torch import _weights_only_unpickler

    return dict(_weights_only_unpickler._get_allowed_globals())


def _in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _importable(module: str) -> bool | None:
    if module == DYNAMIC:
        return None
    if module == "__main__":
        return False
    root = module.split(".")[0]
    try:
        # find_spec of a top-level name locates it without executing it.
        return importlib.util.find_spec(root) is not None
    except (ImportError, ValueError):
        return False
