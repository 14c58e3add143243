"""`--arch pkg.module:factory`: import the user's (or the zoo's) model factory."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch.nn as nn

from ..errors import BuildError, UsageError
from ..input_shape import parse_input_shape, parse_named_input

__all__ = ["load_factory", "build_dense", "parse_input_shape", "parse_named_input"]


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """`pkg.module:factory` (or `pkg.module.factory`) → the callable. Imports the user's code."""
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise UsageError(f"--arch {spec}: expected pkg.module:factory (e.g. analyzer.zoo:resnet50)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UsageError(f"--arch {spec}: cannot import {module_name} ({e})") from e
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise UsageError(f"--arch {spec}: {module_name} has no attribute {attr}")
    if not callable(factory):
        raise UsageError(f"--arch {spec}: {attr} is not callable")
    return factory  # type: ignore[return-value]


def build_dense(spec: str | Callable[[], nn.Module]) -> nn.Module:
    """The dense model from `pkg.module:factory` or from a factory callable."""
    factory = load_factory(spec) if isinstance(spec, str) else spec
    label = spec if isinstance(spec, str) else getattr(spec, "__qualname__", repr(spec))
    try:
        model = factory()
    except Exception as e:  # the user's factory may fail any way it likes
        raise BuildError(f"--arch {label}: the factory raised {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise BuildError(f"--arch {label}: the factory returned {type(model).__name__}, not an nn.Module")
    return model.eval()
