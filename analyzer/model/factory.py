"""`--arch pkg.module:factory`: import the user's (or the zoo's) model factory."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

import torch.nn as nn

from ..errors import BuildError, UsageError

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


def parse_input_shape(text: str) -> tuple[int, ...]:
    """"1,3,224,224" (or "1x3x224x224") -> (1, 3, 224, 224)."""
    parts = re.split(r"[,x×]", text.strip())
    try:
        shape = tuple(int(part) for part in parts)
    except ValueError as e:
        raise UsageError(f"--input-shape {text}: expected integers like 1,3,224,224") from e
    if any(d <= 0 for d in shape):
        raise UsageError(f"--input-shape {text}: every dimension must be positive")
    return shape


def parse_named_input(text: str) -> tuple[str, tuple[int, ...]]:
    """"input_ids=1,16" -> ("input_ids", (1, 16)): one named input of the model's forward."""
    name, sep, shape = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise UsageError(f"--input {text}: expected NAME=SHAPE like input_ids=1,16")
    try:
        return name, parse_input_shape(shape)
    except UsageError as e:
        raise UsageError(f"--input {text}: expected NAME=SHAPE like input_ids=1,16 (positive integers)") from e
