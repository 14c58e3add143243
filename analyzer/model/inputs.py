"""Example inputs: what a model is called with, and how to draw fresh ones like it.

An image model takes one float tensor (N, C, H, W); a language model takes integer token
ids within its vocabulary, often with an attention mask, by name. `ExampleInput` holds
both kinds the same way — positional and named tensors, each with the spec it was drawn
from — so that every consumer (the traced run, torch-pruning's graph, the probes, the
profiler, the fix snippets) calls the model and describes its input one way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn

__all__ = ["InputSpec", "ExampleInput", "example_from", "random_input", "default_input_shape"]


@dataclass(frozen=True)
class InputSpec:
    """One input tensor: its name (None: positional), shape, dtype and, for integer inputs, range."""

    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    name: str | None = None
    #: Integer inputs (token ids, masks) are drawn uniformly from [low, high).
    low: int = 0
    high: int | None = None

    @property
    def is_integer(self) -> bool:
        return not (self.dtype.is_floating_point or self.dtype.is_complex)

    def draw(self, generator: torch.Generator, batch: int | None = None, scale: float = 1.0) -> torch.Tensor:
        shape = (batch, *self.shape[1:]) if batch is not None and self.shape else self.shape
        if self.is_integer:
            high = self.high if self.high is not None else 2
            return torch.randint(self.low, max(high, self.low + 1), shape, generator=generator, dtype=self.dtype)
        return (torch.randn(shape, generator=generator) * scale).to(self.dtype)

    def code(self) -> str:
        """A Python expression that makes a tensor like this one (for fix snippets)."""
        dims = ", ".join(map(str, self.shape))
        if self.is_integer:
            dtype = "" if self.dtype is torch.int64 else f", dtype={self.dtype}"
            return f"torch.randint({self.low}, {self.high if self.high is not None else 2}, ({dims}{',' if len(self.shape) == 1 else ''}){dtype})"
        dtype = "" if self.dtype is torch.float32 else f", dtype={self.dtype}"
        return f"torch.randn({dims}{dtype})"


@dataclass(frozen=True)
class ExampleInput:
    """Tensors to call a model with (positional first, then named), and the specs they came from."""

    specs: tuple[InputSpec, ...]
    tensors: tuple[torch.Tensor, ...]

    @classmethod
    def draw(cls, specs: tuple[InputSpec, ...], seed: int = 0, batch: int | None = None, scale: float = 1.0) -> ExampleInput:
        generator = torch.Generator().manual_seed(seed)
        specs = tuple(replace(s, shape=(batch, *s.shape[1:])) if batch is not None and s.shape else s for s in specs)
        return cls(specs, tuple(s.draw(generator, scale=scale) for s in specs))

    # -- calling ---------------------------------------------------------------------
    @property
    def args(self) -> tuple[torch.Tensor, ...]:
        return tuple(t for s, t in zip(self.specs, self.tensors) if s.name is None)

    @property
    def kwargs(self) -> dict[str, torch.Tensor]:
        return {s.name: t for s, t in zip(self.specs, self.tensors) if s.name is not None}

    def call(self, model: Callable[..., Any]) -> Any:
        return model(*self.args, **self.kwargs)

    def for_torch_pruning(self) -> dict[str, Any]:
        """Keyword arguments for torch-pruning's DependencyGraph.build_dependency / pruners."""
        if not self.kwargs and len(self.args) == 1:
            return {"example_inputs": self.args[0]}
        return {"example_inputs": self, "forward_fn": lambda model, example: example.call(model)}

    # -- deriving --------------------------------------------------------------------
    def fresh(self, seed: int, batch: int | None = None, scale: float = 1.0) -> ExampleInput:
        """New random tensors of the same specs (float inputs times `scale`), optionally another batch."""
        return ExampleInput.draw(self.specs, seed=seed, batch=batch, scale=scale)

    def to(self, device: torch.device | str) -> ExampleInput:
        return ExampleInput(self.specs, tuple(t.to(device) for t in self.tensors))

    @property
    def batch(self) -> int | None:
        first = self.tensors[0] if self.tensors else None
        return int(first.shape[0]) if first is not None and first.dim() else None

    @property
    def single(self) -> torch.Tensor | None:
        """The tensor when the model takes exactly one positional input (image models), else None."""
        return self.tensors[0] if len(self.specs) == 1 and self.specs[0].name is None else None

    # -- describing ------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the first input (the one messages name)."""
        return tuple(self.tensors[0].shape) if self.tensors else ()

    def shapes(self) -> dict[str, list[int]]:
        return {(s.name or f"arg{i}"): list(t.shape) for i, (s, t) in enumerate(zip(self.specs, self.tensors))}

    def describe(self) -> str:
        """'1×3×224×224', or 'input_ids 1×16, attention_mask 1×16'."""
        parts = []
        for spec, tensor in zip(self.specs, self.tensors):
            dims = "×".join(map(str, tensor.shape))
            parts.append(f"{spec.name} {dims}" if spec.name else dims)
        return ", ".join(parts)

    def code(self) -> str:
        """A Python expression for the example input as torch-pruning takes it."""
        if self.single is not None:
            return self.specs[0].code()
        if not self.kwargs:
            return "(" + ", ".join(s.code() for s in self.specs) + ",)"
        return "{" + ", ".join(f"{s.name!r}: {s.code()}" for s in self.specs if s.name) + "}"


def random_input(module: nn.Module, shape: tuple[int, ...], seed: int = 0) -> ExampleInput:
    """One float input of `shape` in the dtype of the model's parameters."""
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    return ExampleInput.draw((InputSpec(tuple(shape), dtype),), seed=seed)


def example_from(value: torch.Tensor | tuple[torch.Tensor, ...] | Mapping[str, torch.Tensor] | ExampleInput) -> ExampleInput:
    """An ExampleInput from what a library user passes: a tensor, a tuple of tensors, or a dict of named ones."""
    if isinstance(value, ExampleInput):
        return value
    if isinstance(value, torch.Tensor):
        items: list[tuple[str | None, torch.Tensor]] = [(None, value)]
    elif isinstance(value, Mapping):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, (tuple, list)):
        items = [(None, v) for v in value]
    else:
        raise TypeError(f"example input must be a tensor, a tuple of tensors or a dict of them, not {type(value).__name__}")
    specs = []
    for name, tensor in items:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"example input {name or 'value'} is a {type(tensor).__name__}, not a tensor")
        integer = not (tensor.dtype.is_floating_point or tensor.dtype.is_complex)
        high = int(tensor.max()) + 1 if integer and tensor.numel() else None
        low = min(int(tensor.min()), 0) if integer and tensor.numel() else 0
        specs.append(InputSpec(tuple(tensor.shape), tensor.dtype, name, low, high))
    return ExampleInput(tuple(specs), tuple(t for _, t in items))


def default_input_shape(model: nn.Module, spatial: int = 224) -> tuple[int, ...] | None:
    """(1, C, spatial, spatial) from the first conv's input channels, (1, F) for an MLP."""
    for module in model.modules():
        if isinstance(module, nn.Conv1d):
            return (1, module.in_channels, spatial)
        if isinstance(module, nn.Conv2d):
            return (1, module.in_channels, spatial, spatial)
        if isinstance(module, nn.Conv3d):
            return (1, module.in_channels, 16, spatial, spatial)
        if isinstance(module, nn.Linear):
            return (1, module.in_features)
    return None
