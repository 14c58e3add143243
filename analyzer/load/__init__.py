"""load: bytes on disk → a plain `Checkpoint`. Nothing from the file runs unless trusted.

Untrusted bytes are first read in a bounded child process (isolation.py, with the
budgets of limits.py): a file that asks for too much memory or CPU time, or crashes a
reader, is refused in one line and the caller's process never noticed. The child's load
is then taken over — rebuilt from its JSON description for plain torch zip files
(manifest.py), or repeated here for the rest, now known to fit — without setting any
process-wide limit, timer or signal handler.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .checkpoint import Checkpoint, DictTensorStore, MaskPair, TensorStore
from .extract import describe, extract_weights, find_masks
from .folder import is_model_folder, load_folder, notes_beside
from .isolation import BoundedRunFailed, ChildLimits, ChildCrashed, ChildRaised, LimitExceeded, isolation_available, run_bounded
from .limits import LIMITS_NOTE, count_records, limits_for
from .manifest import describe_checkpoint, rebuild_checkpoint
from .policy import GlobalKind, GlobalPolicy, ResolvedGlobal
from .readers import Raw, read_pickle, read_torch_legacy, read_torch_zip, read_torchscript
from .safetensors_file import open_safetensors
from .sniff import Format, sniff

__all__ = [
    "LoadOptions",
    "load_checkpoint",
    "bounded",
    "Checkpoint",
    "MaskPair",
    "TensorStore",
    "Format",
    "GlobalKind",
    "ResolvedGlobal",
]

_GB = 1 << 30
#: Values a file's tensors may claim, as a multiple of its size (tied and overlapping views).
_CLAIM_FACTOR = 8


@dataclass(frozen=True)
class LoadOptions:
    #: Full unpickling (torch.load(weights_only=False), torch.jit.load): the user's decision.
    trust: bool = False
    #: Packages whose classes may be imported and rebuilt for real.
    allow_modules: tuple[str, ...] = ()
    #: Entry of a training dict that holds the weights; None picks the first known key.
    key: str | None = None
    #: Memory-map torch zip files so that a checkpoint larger than RAM can be scanned.
    mmap: bool = True
    #: While reading (in the bounded child): how far the address space may grow (bytes) and
    #: how much CPU time it may take (seconds). None: derived from the file's size and
    #: records (see limits.py).
    memory_limit: int | None = None
    time_limit: float | None = None


def load_checkpoint(path: str | os.PathLike[str], options: LoadOptions = LoadOptions(), progress: Any = None) -> Checkpoint:
    """One file, or a save_pretrained folder / shard index (all shards as one checkpoint)."""
    path = Path(path)
    if is_model_folder(path):
        return load_folder(path, lambda shard: _load_file(shard, options), progress)
    checkpoint = _load_file(path, options)
    checkpoint.notes.extend(notes_beside(path))
    return checkpoint


def _load_file(path: Path, options: LoadOptions) -> Checkpoint:
    fmt = sniff(path)
    identity = _identity(path)
    if options.trust:
        # The user runs the file's code on purpose: once, here, as torch.load would.
        checkpoint = _read_checkpoint(path, fmt, options)
        checkpoint.notes.append("read with --trust in this process, without the memory and CPU limits of an untrusted read")
    elif not isolation_available():
        checkpoint = _read_checkpoint(path, fmt, options)
        checkpoint.notes.append(LIMITS_NOTE)
    else:
        limits = limits_for(identity[2], count_records(path, fmt), options.memory_limit, options.time_limit)
        description = bounded(lambda: _read_in_child(path, fmt, options), limits, path)
        _check_unchanged(path, identity)  # what the child proved is about this very file
        checkpoint = rebuild_checkpoint(path, description) if description is not None else None
        if checkpoint is None:
            checkpoint = _read_checkpoint(path, fmt, options)  # the child showed it fits its limits
    _check_unchanged(path, identity)
    return checkpoint


def _check_unchanged(path: Path, identity: tuple[int, int, int, int]) -> None:
    if _identity(path) != identity:
        raise InputError(f"{path}: the file changed while it was being read; refused (analyse it once nothing writes to it)")


def _identity(path: Path) -> tuple[int, int, int, int]:
    """What tells the file read in the child from another one put in its place."""
    stat = path.stat()
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def _read_in_child(path: Path, fmt: Format, options: LoadOptions) -> dict[str, Any] | None:
    return describe_checkpoint(_read_checkpoint(path, fmt, options))


def bounded(step: Callable[[], Any], limits: ChildLimits, path: Path, doing: str = "reading it") -> Any:
    """run_bounded, with its failures in the words of a file that could not be read: one
    line each, `doing` saying what the child was doing with the file ("reading it")."""
    try:
        return run_bounded(step, limits)
    except LimitExceeded as e:
        raise InputError(f"{path}: {_limit_message(e, doing)}; refused (a crafted or damaged file)") from _child_detail(e)
    except ChildCrashed as e:
        raise InputError(f"{path}: the reader crashed while {doing} ({e.signal_name}); refused (a crafted or damaged file)") from _child_detail(e)
    except ChildRaised as e:
        raise InputError(f"{path}: could not finish {doing} ({e.type_name}: {' '.join(e.message.split())[:200]})") from _child_detail(e)


def _limit_message(error: LimitExceeded, doing: str) -> str:
    limits = error.limits
    if error.resource == "memory" and limits.memory_bytes is not None:
        return f"{doing} needs more than {limits.memory_bytes / _GB:.1f} GB of memory beyond what is already in use"
    if error.resource == "cpu" and limits.cpu_seconds is not None:
        return f"{doing} took longer than {limits.cpu_seconds:.3g} s of CPU time"
    return f"{doing} did not finish within {limits.wall_backstop() or 0:.0f} s"


def _child_detail(error: BoundedRunFailed) -> BoundedRunFailed:
    # --debug prints the chain: the child's own traceback or last words on stderr.
    return BoundedRunFailed(str(error) + ("\n" + error.child_stderr if error.child_stderr else ""))


def _read_checkpoint(path: Path, fmt: Format, options: LoadOptions) -> Checkpoint:
    if fmt is Format.SAFETENSORS:
        return _load_safetensors(path)  # safetensors itself checks that tensors cover the file exactly
    raw = _read(path, fmt, options)
    checkpoint = _checkpoint_from_raw(path, fmt, raw, options)
    _check_claimed_values(checkpoint)
    return checkpoint


def _check_claimed_values(checkpoint: Checkpoint) -> None:
    """Tensors read from a file are views of its bytes. Views claiming far more values than
    it holds (a stride-0 view of 2**40 elements over one float) would make every later scan
    of them unbounded: refused here, while the read is still bounded."""
    limit = _CLAIM_FACTOR * checkpoint.file_size + _GB
    claimed = 0
    for tensor in checkpoint.tensors.values():
        if tensor.is_meta or tensor.is_nested:
            continue
        if tensor.layout is not torch.strided:
            values = tensor._values() if tensor.layout is torch.sparse_coo else tensor.values()
            claimed += values.numel() * values.dtype.itemsize
        else:
            claimed += tensor.numel() * tensor.dtype.itemsize
        if claimed > limit:
            raise InputError(
                f"{checkpoint.path}: its tensors claim more than {limit / _GB:.1f} GB of values in a "
                f"{checkpoint.file_size / _GB:.2f} GB file (views repeating the same bytes); refused"
            )


def _read(path: Path, fmt: Format, options: LoadOptions) -> Raw:
    policy = GlobalPolicy(options.allow_modules)
    try:
        if fmt is Format.TORCH_ZIP:
            return read_torch_zip(path, policy, options.trust, options.mmap)
        if fmt is Format.TORCH_LEGACY:
            return read_torch_legacy(path, policy, options.trust)
        if fmt is Format.TORCHSCRIPT:
            return read_torchscript(path, policy, options.trust)
        return read_pickle(path, policy, options.trust)
    except RecursionError as e:
        raise InputError(f"{path}: the pickle nests objects too deeply to read") from e
    except MemoryError as e:
        raise InputError(f"{path}: reading the file needs more memory than is available") from e


def _checkpoint_from_raw(path: Path, fmt: Format, raw: Raw, options: LoadOptions) -> Checkpoint:
    common = dict(
        path=path, format=fmt.value, loader=raw.loader, file_size=path.stat().st_size,
        globals=raw.globals, notes=list(raw.notes),
    )
    if raw.obj is None and raw.refused is not None:
        # Neither unpickler could rebuild the objects of a file with a payload: the findings say why.
        return Checkpoint(container="unreadable", tensors=DictTensorStore({}), refused=raw.refused, **common)
    try:
        extracted = extract_weights(raw.obj, options.key)
    except RecursionError as e:
        raise InputError(f"{path}: the object nests too deeply to walk") from e
    if not extracted.tensors and not raw.globals:
        raise InputError(
            f"{path}: {describe(raw.obj)} that holds no tensors; "
            "expected a state dict, a model, or a training checkpoint with weights"
        )
    container = "torchscript" if fmt is Format.TORCHSCRIPT else extracted.container
    return Checkpoint(
        container=container,
        tensors=DictTensorStore(extracted.tensors),
        module=extracted.module,
        module_types=extracted.module_types,
        buffers=extracted.buffers,
        weights_key=extracted.weights_key,
        other_weight_keys=extracted.other_weight_keys,
        stripped_prefix=extracted.stripped_prefix,
        metadata=extracted.metadata,
        masks=find_masks(list(extracted.tensors)),
        refused=raw.refused,
        tp_state=raw.obj if extracted.container == "tp-state-dict" else None,
        **common,
    )


def _load_safetensors(path: Path) -> Checkpoint:
    store, metadata = open_safetensors(path)
    if len(store) == 0:
        raise InputError(f"{path}: a safetensors file with no tensors")
    names = list(store)
    unreadable = store.unreadable_dtypes()
    notes = []
    if unreadable:
        kinds = ", ".join(sorted(set(unreadable.values())))
        notes.append(f"{len(unreadable)} tensors are of a type torch cannot hold ({kinds}): their shapes are reported, their values not read")
    return Checkpoint(
        path=path, format=Format.SAFETENSORS.value, container="state-dict", tensors=store,
        loader="safetensors", file_size=path.stat().st_size, metadata=dict(metadata),
        masks=find_masks(names), notes=notes,
    )
