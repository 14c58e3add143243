"""Benign payloads and the containers that carry them, for tests/test_payloads.py.

Each payload is a few pickle opcodes that push one value and, if any unpickler ran them,
would create a sentinel file (or, for the one that cannot, run torch's dynamo code). The
opcodes are written by hand, without memo opcodes, so that they splice into any pickle:
a plain pickle, the data.pkl of a torch zip (also named `pytorch_model.bin`), the object
pickle of a legacy torch stream, the `pickle` member of a legacy .tar checkpoint, and the
data.pkl of a TorchScript archive. The pickles that carry them say protocol 4, so that
`pickle.load` follows dotted names as it does for any protocol-4 file.

This module is also the test's own package of model classes for `--allow-module`.
"""

from __future__ import annotations

import io
import os  # noqa: F401 - reachable as tests.payloads.os: the dotted-name payload uses it
import pickle
import pickletools
import struct
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn import Linear as ReExported  # noqa: F401 - a class of torch.nn re-exported here

PACKAGE = __name__


class TinyNet(nn.Module):
    """A real model class of this package, to be rebuilt under --allow-module."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = Head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Gadget:
    """Not an nn.Module: creating or filling one touches the path it is given."""

    def __init__(self, path: str) -> None:
        open(path, "w").close()

    def __setstate__(self, state: dict[str, str]) -> None:
        open(state["path"], "w").close()


# -- opcodes --------------------------------------------------------------------------------


def text(value: str) -> bytes:
    raw = value.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def integer(value: int) -> bytes:
    return pickle.BININT + struct.pack("<i", value)


def glob(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def tup(*items: bytes) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def call(func: bytes, *args: bytes) -> bytes:
    return func + tup(*args) + pickle.REDUCE


def items(*values: bytes) -> bytes:
    return pickle.EMPTY_LIST + pickle.MARK + b"".join(values) + pickle.APPENDS


def state(**values: str) -> bytes:
    return pickle.EMPTY_DICT + pickle.MARK + b"".join(text(k) + text(v) for k, v in values.items()) + pickle.SETITEMS


def bare(cls: bytes, filled: bytes) -> bytes:
    """`cls.__new__(cls)` filled by BUILD: how every pickled object of a class looks."""
    return cls + pickle.EMPTY_TUPLE + pickle.NEWOBJ + filled + pickle.BUILD


def touch(sentinel: Path) -> str:
    return f"touch {sentinel}"


def python_touch(sentinel: Path) -> str:
    return f"__import__('os').system({touch(sentinel)!r})"


# -- payloads -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    name: str
    #: (sentinel, scratch folder) -> opcodes pushing one value.
    ops: Callable[[Path, Path], bytes]
    #: Globals that run code: the finding is an error naming each (evidence.dangerous).
    runs: tuple[str, ...] = ()
    #: Unknown classes the pickle only instantiates: a warning naming each.
    classes: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    #: Plain pickle.load creates the sentinel (the dynamo and bare-class ones cannot).
    live: bool = True


def _numpy_load(sentinel: Path, scratch: Path) -> bytes:
    nested = scratch / f"{sentinel.name}.nested.pkl"
    nested.write_bytes(pickle.PROTO + b"\x02" + call(glob("os", "system"), text(touch(sentinel))) + pickle.STOP)
    return call(glob("numpy.lib._npyio_impl", "load"), text(str(nested)), pickle.NONE, pickle.NEWTRUE)


def _persistent_id_call(sentinel: Path, scratch: Path) -> bytes:
    storage_id = tup(text("storage"), call(glob("os", "system"), text(touch(sentinel))), text("0"), text("cpu"), integer(1))
    return storage_id + pickle.BINPERSID


ALLOW_NUMPY = ("--allow-module", "numpy")
ALLOW_TORCH = ("--allow-module", "torch")
ALLOW_OWN = ("--allow-module", PACKAGE)
_DYNAMO = "torch._dynamo.eval_frame.OptimizedModule"

PAYLOADS = [
    # Names followed through module attributes: out of the always-allowed zoo, out of torch, out of allowed packages.
    Payload("zoo-dotted-fileio", lambda s, d: call(glob("analyzer.zoo.resnet", "torch.serialization.io.FileIO"), text(str(s)), text("w")),
            runs=("analyzer.zoo.resnet.torch.serialization.io.FileIO",)),
    Payload("torch-dotted-os-system", lambda s, d: call(glob("torch", "os.system"), text(touch(s))), runs=("torch.os.system",)),
    Payload("numpy-f2py-dotted-popen", lambda s, d: call(glob("numpy.f2py", "subprocess.Popen"), items(text("touch"), text(str(s)))),
            runs=("numpy.f2py.subprocess.Popen",), flags=ALLOW_NUMPY),
    Payload("collect-env-dotted-popen", lambda s, d: call(glob("torch.utils.collect_env", "subprocess.Popen"), items(text("touch"), text(str(s)))),
            runs=("torch.utils.collect_env.subprocess.Popen",), flags=ALLOW_TORCH),
    Payload("own-package-dotted-os-system", lambda s, d: call(glob(PACKAGE, "os.system"), text(touch(s))),
            runs=(f"{PACKAGE}.os.system",), flags=ALLOW_OWN),
    # Functions of torch, numpy and the standard library that run commands or code.
    Payload("exec-wrapper", lambda s, d: call(glob("torch.jit.unsupported_tensor_ops", "execWrapper"),
                                             text(f"open({str(s)!r}, 'w').close()"), pickle.EMPTY_DICT, pickle.EMPTY_DICT),
            runs=("torch.jit.unsupported_tensor_ops.execWrapper",)),
    Payload("collect-env-run", lambda s, d: call(glob("torch.utils.collect_env", "run"), text(touch(s))),
            runs=("torch.utils.collect_env.run",), flags=ALLOW_TORCH),
    Payload("f2py-myeval", lambda s, d: call(glob("numpy.f2py.crackfortran", "myeval"), text(python_touch(s))),
            runs=("numpy.f2py.crackfortran.myeval",), flags=ALLOW_NUMPY),
    Payload("idlelib-get-entity", lambda s, d: call(glob("idlelib.calltip", "get_entity"), text(python_touch(s))),
            runs=("idlelib.calltip.get_entity",)),
    Payload("osx-support-read-output", lambda s, d: call(glob("_osx_support", "_read_output"), text(touch(s))),
            runs=("_osx_support._read_output",)),
    Payload("uuid-command-stdout", lambda s, d: call(glob("uuid", "_get_command_stdout"), text("touch"), text(str(s))),
            runs=("uuid._get_command_stdout",)),
    Payload("imaplib-stream", lambda s, d: call(glob("imaplib", "IMAP4_stream"), text(touch(s))), runs=("imaplib.IMAP4_stream",)),
    Payload("numpy-load-impl", _numpy_load, runs=("numpy.lib._npyio_impl.load",), flags=ALLOW_NUMPY),
    # Classes that create or truncate any file they are given.
    Payload("numpy-memmap", lambda s, d: call(glob("numpy", "memmap"), text(str(s)), text("uint8"), text("w+"), integer(0), tup(integer(1))),
            runs=("numpy.memmap",), flags=ALLOW_NUMPY),
    Payload("io-fileio", lambda s, d: call(glob("io", "FileIO"), text(str(s)), text("w")), runs=("io.FileIO",)),
    Payload("torch-open-file", lambda s, d: call(glob("torch.serialization", "_open_file"), text(str(s)), text("w")),
            runs=("torch.serialization._open_file",), flags=ALLOW_TORCH),
    Payload("own-package-gadget-called", lambda s, d: call(glob(PACKAGE, "Gadget"), text(str(s))),
            runs=(f"{PACKAGE}.Gadget",), flags=ALLOW_OWN),
    # Calls hidden in copyreg's and torch's rebuild helpers, and in a persistent id.
    Payload("reconstructor-popen", lambda s, d: call(glob("copyreg", "_reconstructor"), glob("subprocess", "Popen"),
                                                    glob("subprocess", "Popen"), items(text("touch"), text(str(s)))),
            runs=("subprocess.Popen",)),
    Payload("rebuild-from-type-os-system", lambda s, d: call(glob("torch._tensor", "_rebuild_from_type_v2"), glob("os", "system"),
                                                            glob("torch", "Tensor"), tup(text(touch(s))), pickle.EMPTY_DICT),
            runs=("os.system",)),
    Payload("persistent-id-call", _persistent_id_call, runs=("os.system",)),
    # dynamo's OptimizedModule reached through torch.nn: its __setstate__ would run dynamo.
    Payload("dynamo-under-torch-nn", lambda s, d: bare(glob("torch.nn.modules.module", _DYNAMO), state(_orig_mod="x")),
            runs=(f"torch.nn.modules.module.{_DYNAMO}",), live=False),
    # Bare classes filled by BUILD: unknown classes (a warning), whatever their name says.
    Payload("popen-bare-class", lambda s, d: bare(glob("subprocess", "Popen"), state(args=str(s))),
            classes=("subprocess.Popen",), live=False),
    Payload("own-package-gadget-bare", lambda s, d: bare(glob(PACKAGE, "Gadget"), state(path=str(s))),
            classes=(f"{PACKAGE}.Gadget",), flags=ALLOW_OWN),
    Payload("own-package-reexported-class", lambda s, d: bare(glob(PACKAGE, "ReExported"), pickle.EMPTY_DICT),
            classes=(f"{PACKAGE}.ReExported",), flags=ALLOW_OWN, live=False),
]


# -- containers -----------------------------------------------------------------------------

#: What sits next to the payload: a small state dict.
def base_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"fc.weight": torch.randn(4, 4, generator=generator), "fc.bias": torch.randn(4, generator=generator)}


def as_protocol_4(data: bytes) -> bytes:
    assert data[:2] == pickle.PROTO + b"\x02", data[:2]
    return pickle.PROTO + b"\x04" + data[2:]


def add_item(data: bytes, value: bytes, key: str = "x") -> bytes:
    """`key: value` added to the pickled top-level dict, just before STOP; protocol 4."""
    assert data.endswith(pickle.STOP)
    return as_protocol_4(data[:-1] + text(key) + value + pickle.SETITEM + pickle.STOP)


def rezip(original: bytes, data_pkl: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(original)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            body = data_pkl if info.filename.endswith("data.pkl") else zin.read(info)
            zout.writestr(zipfile.ZipInfo(info.filename, date_time=info.date_time), body)
    return out.getvalue()


def data_pkl(archive: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(archive)) as zin:
        [name] = [n for n in zin.namelist() if n.endswith("data.pkl")]
        return zin.read(name)


def pickle_bounds(data: bytes, index: int) -> tuple[int, int]:
    """(start, STOP position) of the index-th pickle in a stream of pickles."""
    stream = io.BytesIO(data)
    for _ in range(index):
        for _op in pickletools.genops(stream):
            pass
    start = stream.tell()
    stop = [pos for op, _arg, pos in pickletools.genops(stream) if op.name == "STOP"][-1]
    return start, stop


@dataclass(frozen=True)
class Container:
    name: str
    filename: str
    #: The base bytes (built once) -> a writer: payload opcodes -> file bytes.
    prepare: Callable[[Path], Callable[[bytes], bytes]]


def _plain(scratch: Path) -> Callable[[bytes], bytes]:
    base = pickle.dumps(base_state(), protocol=2)
    return lambda value: add_item(base, value)


def _torch_zip(name: str) -> Callable[[Path], Callable[[bytes], bytes]]:
    def prepare(scratch: Path) -> Callable[[bytes], bytes]:
        path = scratch / name
        torch.save(base_state(), path)
        original = path.read_bytes()
        return lambda value: rezip(original, add_item(data_pkl(original), value))

    return prepare


def _legacy(scratch: Path) -> Callable[[bytes], bytes]:
    path = scratch / "legacy.pth"
    torch.save(base_state(), path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    start, stop = pickle_bounds(data, 3)  # the object: the 4th of the stream's five pickles

    def write(value: bytes) -> bytes:
        obj = add_item(data[start : stop + 1], value)
        return data[:start] + obj + data[stop + 1 :]

    return write


def _torchscript(scratch: Path) -> Callable[[bytes], bytes]:
    path = scratch / "scripted.pt"
    torch.jit.script(nn.Linear(4, 4)).save(str(path))
    original = path.read_bytes()
    pkl = data_pkl(original)
    ops = list(pickletools.genops(pkl))
    names = [op.name for op, _, _ in ops[:7]]
    # PROTO, GLOBAL (the module's class), BINPUT, EMPTY_TUPLE, NEWOBJ, EMPTY_DICT, MARK: the module's state items follow.
    assert names == ["PROTO", "GLOBAL", "BINPUT", "EMPTY_TUPLE", "NEWOBJ", "EMPTY_DICT", "MARK"], names
    at = ops[7][2]
    return lambda value: rezip(original, as_protocol_4(pkl[:at] + text("x") + value + pkl[at:]))


def _legacy_tar(scratch: Path) -> Callable[[bytes], bytes]:
    return lambda value: legacy_tar(base_state(), extra=value)


CONTAINERS = [
    Container("pickle", "payload.pkl", _plain),
    Container("torch-zip", "payload.pth", _torch_zip("payload.pth")),
    Container("hf-bin", "pytorch_model.bin", _torch_zip("pytorch_model.bin")),
    Container("torch-legacy", "payload.pt", _legacy),
    Container("legacy-tar", "payload.tar.pth", _legacy_tar),
    Container("torchscript", "scripted.pt", _torchscript),
]


# -- torch's legacy .tar format, written member by member -------------------------------------

_STORAGE_TYPES = {torch.float32: (torch.FloatStorage, torch.FloatTensor), torch.int64: (torch.LongStorage, torch.LongTensor)}


class _TarPickler(pickle.Pickler):
    """Pickles the object with every tensor replaced by its key (a persistent id), as torch < 0.4 did."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=2)
        self.tensors: list[torch.Tensor] = []

    def persistent_id(self, obj: Any) -> str | None:
        if isinstance(obj, torch.Tensor) and type(obj) is torch.Tensor:
            self.tensors.append(obj.detach().contiguous())
            return str(len(self.tensors) - 1)
        return None


def legacy_tar(obj: Any, extra: bytes | None = None, first_name: str | None = None) -> bytes:
    """torch's legacy .tar checkpoint of `obj` (members sys_info, pickle, tensors, storages, as
    torch.serialization's legacy_load reads them); `extra` opcodes added as key "x" of a dict
    `obj`; `first_name`: a first member of that name (a polyglot's header)."""
    buffer = io.BytesIO()
    pickler = _TarPickler(buffer)
    pickler.dump(obj)
    main = buffer.getvalue() if extra is None else add_item(buffer.getvalue(), extra)
    storages = io.BytesIO()
    tensors = io.BytesIO()
    pickle.dump(len(pickler.tensors), storages, protocol=2)
    pickle.dump(len(pickler.tensors), tensors, protocol=2)
    for key, tensor in enumerate(pickler.tensors):
        storage_type, tensor_type = _STORAGE_TYPES[tensor.dtype]
        # Each tensor has a storage of its own, under key 1000 + its key.
        pickle.dump((1000 + key, "cpu", storage_type), storages, protocol=2)
        storages.write(struct.pack("<q", tensor.numel()) + tensor.numpy().tobytes())
        pickle.dump((key, 1000 + key, tensor_type), tensors, protocol=2)
        ndim = tensor.dim()
        tensors.write(struct.pack("<ii", ndim, 0) + struct.pack(f"<{ndim}q", *tensor.shape))
        tensors.write(struct.pack(f"<{ndim}q", *tensor.stride()) + struct.pack("<q", 0))
    pickle.dump([], storages, protocol=2)  # no storage views
    sys_info = pickle.dumps({"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        members = [("sys_info", sys_info), ("pickle", main), ("tensors", tensors.getvalue()), ("storages", storages.getvalue())]
        if first_name is not None:
            members.insert(0, (first_name, b""))
        for name, body in members:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()
