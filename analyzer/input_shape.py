"""`--input-shape` / `--input NAME=SHAPE` text → shapes. Kept free of torch so that a typo is a usage error
before anything heavy is imported."""

from __future__ import annotations

import re

from .errors import UsageError

__all__ = ["parse_input_shape", "parse_named_input"]


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
