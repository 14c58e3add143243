"""Which globals a pickle may load, and what stands in for the others.

Every loader asks one `GlobalPolicy`: torch's own weights_only allowlist (tensors,
storages, containers) is loaded as is; classes of `torch.nn` and `torch.nn.utils.prune`
are rebuilt *without running their constructors*; classes of packages the user allowed
(`--allow-module`) and of our own zoo are loaded as real classes; everything else —
functions above all — becomes a placeholder that only records (see placeholder.py).
"""

from __future__ import annotations

import _compat_pickle
import enum
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

import torch.nn as nn
import torch.nn.utils.prune as prune

from .pickle_scan import DYNAMIC, GlobalRef
from .placeholder import Placeholder, make_placeholder

__all__ = ["GlobalKind", "ResolvedGlobal", "GlobalPolicy", "normalize"]


class GlobalKind(str, enum.Enum):
    SAFE = "safe"
    TORCH_NN_CLASS = "torch-nn-class"
    ALLOWED_CLASS = "allowed-class"
    UNKNOWN = "unknown"
    DANGEROUS = "dangerous"


#: Modules whose globals execute code, touch the OS, the network or the import system.
DANGEROUS_MODULES = frozenset({
    "os", "posix", "nt", "sys", "subprocess", "_posixsubprocess", "importlib", "pickle",
    "_pickle", "marshal", "shutil", "socket", "runpy", "code", "codeop", "ctypes", "pty",
    "webbrowser", "types", "functools", "operator", "platform", "multiprocessing",
    "threading", "_thread", "asyncio", "http", "urllib", "urllib3", "requests", "ftplib",
    "smtplib", "telnetlib", "tempfile", "pathlib", "io", "_io", "posixpath", "ntpath",
    "signal", "resource", "gc", "inspect", "pdb", "bdb", "timeit", "trace", "cProfile",
    "profile", "zipimport", "pkgutil", "site", "distutils", "setuptools", "pip", "pydoc",
    "ensurepip", "venv", "xmlrpc", "sqlite3", "dill", "cloudpickle", "joblib", "commands",
    "popen2", "builtins", "__builtin__", "copyreg", "copy_reg", "numpy.testing",
    "torch.hub", "torch.package", "torch.utils.cpp_extension", "torch._dynamo",
    "torch.fx.graph_module",
})
#: Builtins that only build plain values; anything else in builtins counts as dangerous.
_PLAIN_BUILTINS = frozenset({
    "set", "frozenset", "complex", "bytearray", "slice", "range", "int", "float", "str",
    "bytes", "bool", "tuple", "list", "dict", "object",
})
#: Single functions that run code even though their module is otherwise harmless.
DANGEROUS_NAMES = frozenset({
    "torch.load", "torch.serialization.load", "torch.jit.load", "torch.jit._serialization.load",
    "torch.storage._load_from_bytes", "numpy.load", "numpy.loadtxt",
})


def normalize(module: str, name: str) -> tuple[str, str]:
    """Python 2 names (`__builtin__`, `copy_reg`) mapped as pickle's fix_imports does."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


@dataclass(frozen=True)
class ResolvedGlobal:
    ref: GlobalRef
    kind: GlobalKind
    #: What an unpickler gets for this global.
    obj: Any
    #: For unknown and dangerous globals: can the top-level package be found here (never imported)?
    importable: bool | None = None

    @property
    def full_name(self) -> str:
        return self.ref.full_name

    @property
    def needs_placeholder(self) -> bool:
        return self.kind in (GlobalKind.UNKNOWN, GlobalKind.DANGEROUS)


class _ConstructorFree:
    """Base of the stand-ins that rebuild a torch.nn class without calling __init__.

    Pickles of modules only ever create them with `cls.__new__(cls)` and fill them with
    BUILD; a pickle that *calls* the class (REDUCE) gets the same empty instance, so a
    crafted `Conv2d(10**6, 10**6, 99)` allocates nothing.
    """

    target: type

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls.target.__new__(cls.target)


class GlobalPolicy:
    """Decides, once per global name, what a pickle gets for it. One per load."""

    def __init__(self, allow_modules: tuple[str, ...] = ()) -> None:
        self.allow_modules = tuple(allow_modules)
        self._resolved: dict[GlobalRef, ResolvedGlobal] = {}
        self._safe = _torch_allowed_globals()
        self._extra_safe: dict[str, Any] = {}

    def add_safe(self, full_name: str, obj: Any) -> None:
        """A loader's own safe replacement for a global (e.g. `torch.storage._load_from_bytes`)."""
        self._extra_safe[full_name] = obj
        self._resolved = {r: v for r, v in self._resolved.items() if r.full_name != full_name}

    def resolve(self, module: str, name: str) -> ResolvedGlobal:
        ref = GlobalRef(*normalize(module, name))
        if ref not in self._resolved:
            self._resolved[ref] = self._resolve(ref)
        return self._resolved[ref]

    def resolved(self) -> list[ResolvedGlobal]:
        """Every global resolved so far, in the order first seen."""
        return list(self._resolved.values())

    def torch_safe_globals(self, refs: list[GlobalRef]) -> list[tuple[Any, str]]:
        """Entries for `torch.serialization.safe_globals` that let torch's weights_only
        unpickler load `refs` the way this policy decides."""
        entries: list[tuple[Any, str]] = []
        for ref in refs:
            resolved = self.resolve(ref.module, ref.name)
            if resolved.kind is GlobalKind.SAFE and resolved.full_name in self._safe:
                continue
            entries.append((resolved.obj, resolved.full_name))
            if resolved.kind is GlobalKind.TORCH_NN_CLASS:
                # torch checks BUILD targets by type: register the real class too, under a
                # name no GLOBAL opcode can spell (opcodes end names at a newline).
                entries.append((resolved.obj.target, "\n" + resolved.full_name))
        return entries

    def buildable_types(self) -> set[type]:
        """Types whose instances a BUILD opcode may fill in."""
        types: set[type] = set()
        for resolved in self._resolved.values():
            if resolved.kind is GlobalKind.TORCH_NN_CLASS:
                types.add(resolved.obj.target)
            elif resolved.kind is GlobalKind.ALLOWED_CLASS or (
                resolved.kind is GlobalKind.SAFE and isinstance(resolved.obj, type)
            ):
                types.add(resolved.obj)
        return types

    def _resolve(self, ref: GlobalRef) -> ResolvedGlobal:
        full = ref.full_name
        if full in self._extra_safe:
            return ResolvedGlobal(ref, GlobalKind.SAFE, self._extra_safe[full])
        if full in self._safe:
            return ResolvedGlobal(ref, GlobalKind.SAFE, self._safe[full])
        if _is_dangerous(ref):
            return self._placeholder(ref, GlobalKind.DANGEROUS)
        if _in_package(ref.module, "torch.nn"):
            cls = _import_attr(ref)
            if isinstance(cls, type) and issubclass(cls, (nn.Module, prune.BasePruningMethod)):
                wrapper = type(cls.__name__, (_ConstructorFree,), {"target": cls})
                return ResolvedGlobal(ref, GlobalKind.TORCH_NN_CLASS, wrapper)
            return self._placeholder(ref, GlobalKind.UNKNOWN)
        if any(_in_package(ref.module, pkg) for pkg in (*self.allow_modules, "analyzer.zoo")):
            cls = _import_attr(ref)
            if isinstance(cls, type) and not issubclass(cls, Placeholder):
                return ResolvedGlobal(ref, GlobalKind.ALLOWED_CLASS, cls)
        return self._placeholder(ref, GlobalKind.UNKNOWN)

    def _placeholder(self, ref: GlobalRef, kind: GlobalKind) -> ResolvedGlobal:
        return ResolvedGlobal(ref, kind, make_placeholder(ref.module, ref.name), _importable(ref.module))


def _torch_allowed_globals() -> dict[str, Any]:
    # torch's own weights_only allowlist: the audited set of tensor and storage rebuilders.
    from torch import _weights_only_unpickler

    return dict(_weights_only_unpickler._get_allowed_globals())


def _in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _is_dangerous(ref: GlobalRef) -> bool:
    if ref.module == DYNAMIC or ref.full_name in DANGEROUS_NAMES:
        return True
    if ref.module == "builtins":
        return ref.name not in _PLAIN_BUILTINS
    return any(_in_package(ref.module, m) for m in DANGEROUS_MODULES)


def _import_attr(ref: GlobalRef) -> Any:
    """`module.name` imported; None when it does not exist. Only called for torch.nn and
    packages the user allowed, never for a name taken blindly from a file."""
    try:
        obj: Any = importlib.import_module(ref.module)
        for part in ref.name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return obj


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

