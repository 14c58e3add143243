"""`--input-shape` text → a shape. Kept free of torch so that a typo is a usage error
before anything heavy is imported."""

from __future__ import annotations

import re

from .errors import UsageError

__all__ = ["parse_input_shape"]


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
