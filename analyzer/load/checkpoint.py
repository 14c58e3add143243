"""The plain result of loading: named tensors, how they were found, and what was refused."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .policy import ResolvedGlobal

__all__ = ["Checkpoint", "MaskPair", "TensorStore", "DictTensorStore"]


class TensorStore(Mapping[str, torch.Tensor]):
    """Named tensors; `meta` answers shape and dtype without reading the data."""

    #: Whether two names can be views of one storage (tied weights); safetensors forbids it.
    may_share_storage = True

    def meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        tensor = self[name]
        return tuple(tensor.shape), tensor.dtype


class DictTensorStore(TensorStore):
    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self._tensors = dict(tensors)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


@dataclass(frozen=True)
class MaskPair:
    """`torch.nn.utils.prune` leftovers: the effective tensor is `orig * mask`."""

    orig: str
    mask: str


@dataclass
class Checkpoint:
    path: Path
    format: str
    #: What the file holds: state-dict, full-module, training-dict, tp-state-dict, torchscript, tensors.
    container: str
    tensors: TensorStore
    #: How the bytes became objects: weights_only, restricted-unpickler, safetensors, trusted.
    loader: str
    file_size: int
    #: The module tree when the file holds one (with placeholders for classes not loaded).
    module: nn.Module | None = None
    #: Module name -> class name, from the module tree or the pickle's class names.
    module_types: dict[str, str] = field(default_factory=dict)
    #: Names that are buffers (running stats, masks), known from the module tree.
    buffers: set[str] = field(default_factory=set)
    #: Globals the pickle names beyond torch's tensor/storage allowlist.
    globals: list[ResolvedGlobal] = field(default_factory=list)
    #: Why the object graph could not be rebuilt at all (torch refused a payload), if it could not.
    refused: str | None = None
    weights_key: str | None = None
    other_weight_keys: list[str] = field(default_factory=list)
    stripped_prefix: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Effective tensor name (e.g. "conv1.weight") -> its `weight_orig`/`weight_mask` pair.
    masks: dict[str, MaskPair] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: torch-pruning's tp.state_dict object as loaded, for tp.load_state_dict.
    tp_state: dict[str, Any] | None = field(default=None, repr=False)
    #: A model folder's config.json (Hugging Face `save_pretrained`), read as JSON only; None otherwise.
    config: dict[str, Any] | None = None
    #: The shard files of a sharded model folder, in index order; empty for a single file.
    shards: list[str] = field(default_factory=list)

    @property
    def placeholders(self) -> list[str]:
        return sorted(g.full_name for g in self.globals if g.needs_placeholder)

    @property
    def runnable(self) -> bool:
        """A module tree of real classes with every table a module needs: safe to run."""
        from .extract import tolerant_named_modules
        from .placeholder import Placeholder

        if self.module is None:
            return False
        if isinstance(self.module, torch.jit.ScriptModule):
            return True  # loaded with --trust by torch.jit.load
        return all(not isinstance(m, Placeholder) and _has_tables(m) for _, m in tolerant_named_modules(self.module))

    def stored_name(self, name: str) -> str:
        """The tensor in the file behind an effective name (`x.weight` → `x.weight_orig` when masked)."""
        pair = self.masks.get(name)
        return pair.orig if pair is not None else name

    def meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        """Shape and dtype of an effective tensor, without reading it."""
        return self.tensors.meta(self.stored_name(name))

    def effective(self, name: str) -> torch.Tensor:
        """The tensor as the model computes with it: masks applied."""
        pair = self.masks.get(name)
        if pair is None:
            return self.tensors[name]
        return self.tensors[pair.orig] * self.tensors[pair.mask]

    def effective_names(self) -> list[str]:
        """Tensor names with each orig/mask pair replaced by the effective name."""
        effective_of_orig = {pair.orig: name for name, pair in self.masks.items()}
        masks = {pair.mask for pair in self.masks.values()}
        return [effective_of_orig.get(n, n) for n in self.tensors if n not in masks]


_MODULE_TABLES = ("_parameters", "_buffers", "_modules", "_forward_hooks", "_forward_pre_hooks", "_backward_hooks")


def _has_tables(module: nn.Module) -> bool:
    state = module.__dict__
    if not all(isinstance(state.get(table), dict) for table in _MODULE_TABLES):
        return False
    tensors_ok = all(v is None or isinstance(v, torch.Tensor) for v in (*state["_parameters"].values(), *state["_buffers"].values()))
    return tensors_ok and all(isinstance(m, nn.Module) or m is None for m in state["_modules"].values())
