"""load: bytes on disk → a plain `Checkpoint`. Nothing from the file runs unless trusted."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from .checkpoint import Checkpoint, DictTensorStore, MaskPair, TensorStore
from .extract import describe, extract_weights, find_masks
from .folder import is_model_folder, load_folder, notes_beside
from .limits import enforced, limits_for
from .policy import GlobalKind, GlobalPolicy, ResolvedGlobal
from .readers import Raw, read_pickle, read_torch_legacy, read_torch_zip, read_torchscript
from .safetensors_file import open_safetensors
from .sniff import Format, sniff

__all__ = [
    "LoadOptions",
    "load_checkpoint",
    "Checkpoint",
    "MaskPair",
    "TensorStore",
    "Format",
    "GlobalKind",
    "ResolvedGlobal",
]


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
    #: While reading: how far the address space may grow (bytes) and how long it may take
    #: (seconds). None: derived from the file's size (see limits.py).
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
    limits = limits_for(path.stat().st_size, options.memory_limit, options.time_limit)
    with enforced(limits, path):
        if fmt is Format.SAFETENSORS:
            return _load_safetensors(path)
        raw = _read(path, fmt, options)
        return _checkpoint_from_raw(path, fmt, raw, options)


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
    return Checkpoint(
        path=path, format=Format.SAFETENSORS.value, container="state-dict", tensors=store,
        loader="safetensors", file_size=path.stat().st_size, metadata=dict(metadata),
        masks=find_masks(names),
    )
