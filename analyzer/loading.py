"""`load_pruned`: the fix people need in their own scripts, as a library call."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch.nn as nn

from .build import rebuild_pruned
from .load import LoadOptions, load_checkpoint

__all__ = ["load_pruned"]


def load_pruned(
    path: str | os.PathLike[str],
    factory: str | Callable[[], nn.Module],
    *,
    trust: bool = False,
    allow_modules: tuple[str, ...] = (),
    key: str | None = None,
) -> nn.Module:
    """Rebuild a pruned model from its checkpoint and the dense architecture's factory.

    `factory` is a callable returning the dense model, or "pkg.module:factory". The
    layers the checkpoint narrowed are resized to its shapes, the weights are loaded
    strictly, masks are folded in, and the model is returned in eval mode. A
    torch-pruning `tp.state_dict` checkpoint is rebuilt with `tp.load_state_dict`.
    Raises AnalyzerError (BuildError, InputError) when it cannot, saying why.

        model = load_pruned("pruned.pth", torchvision.models.resnet50)
    """
    checkpoint = load_checkpoint(Path(path), LoadOptions(trust=trust, allow_modules=tuple(allow_modules), key=key))
    return rebuild_pruned(checkpoint, factory)
