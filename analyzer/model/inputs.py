"""Example inputs: what a model is called with, and how to draw fresh ones like it.

An image model takes one float tensor (N, C, H, W); a language model takes integer token
ids within its vocabulary, often with an attention mask, by name. `ExampleInput` holds
both kinds the same way — positional and named tensors, each with the spec it was drawn
from — so that every consumer (the traced run, torch-pruning's graph, the probes, the
profiler, the fix snippets) calls the model and describes its input one way.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "InputSpec", "ExampleInput", "example_from", "random_input", "default_input_shape", "model_input", "takes_tokens",
    "DEFAULT_SEQUENCE",
]

#: Tokens in an inferred language-model input (batch 1).
DEFAULT_SEQUENCE = 16


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
    return ExampleInput.draw((InputSpec(tuple(shape), _float_dtype(module)),), seed=seed)


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


# -- inputs a model takes ---------------------------------------------------------------------
#
# Hugging Face models name their inputs (`main_input_name`, the forward's keywords); other
# models take one positional tensor. Token models take integer ids within their vocabulary.

#: Keyword inputs that are integers, by the convention transformers' models share, and the
#: range they are drawn from: the vocabulary, a mask of ones, one segment, positions.
_IDS, _MASK, _SEGMENT, _POSITION = "ids", "mask", "segment", "position"
_INTEGER_INPUTS = {
    "input_ids": _IDS, "decoder_input_ids": _IDS, "labels": _IDS,
    "attention_mask": _MASK, "decoder_attention_mask": _MASK,
    "token_type_ids": _SEGMENT, "position_ids": _POSITION,
}


def model_input(
    module: nn.Module,
    shape: tuple[int, ...] | None = None,
    named: Mapping[str, tuple[int, ...]] | None = None,
    seed: int = 0,
) -> ExampleInput | None:
    """The example a model is called with: token ids (with an attention mask where its forward
    takes one) for a language model, `pixel_values` for a transformers vision model, one float
    tensor otherwise. `shape` is (batch, sequence) for token models; `named` gives each input
    by name. None when nothing says what the model takes."""
    if named:
        return ExampleInput.draw(tuple(_named_spec(module, name, tuple(dims)) for name, dims in named.items()), seed=seed)
    main = _main_input_name(module)
    vocab = _vocabulary(module)
    if main == "input_ids" or (main is None and vocab is not None):
        tokens = tuple(shape) if shape is not None else (1, DEFAULT_SEQUENCE)
        if main is None:  # a plain module: its ids are the one positional input
            return ExampleInput.draw((InputSpec(tokens, torch.int64, None, 0, vocab or 2),), seed=seed)
        specs = [_named_spec(module, "input_ids", tokens)]
        if "attention_mask" in _forward_keywords(module):
            specs.append(_named_spec(module, "attention_mask", tokens))
        return ExampleInput.draw(tuple(specs), seed=seed)
    if main is not None:
        dims = tuple(shape) if shape is not None else _configured_shape(module, main)
        return ExampleInput.draw((_named_spec(module, main, dims),), seed=seed) if dims is not None else None
    shape = shape or default_input_shape(module)
    return random_input(module, shape, seed) if shape is not None else None


def takes_tokens(example: ExampleInput) -> bool:
    """Whether the example is token ids (its first input is an integer tensor)."""
    return bool(example.specs) and example.specs[0].is_integer


def _named_spec(module: nn.Module, name: str, shape: tuple[int, ...]) -> InputSpec:
    role = _INTEGER_INPUTS.get(name)
    if role is None:
        return InputSpec(shape, _float_dtype(module), name)
    config = getattr(module, "config", None)
    if role == _IDS:
        return InputSpec(shape, torch.int64, name, 0, _vocabulary(module) or 2)
    if role == _MASK:
        return InputSpec(shape, torch.int64, name, 1, 2)  # attend to every token
    if role == _SEGMENT:
        return InputSpec(shape, torch.int64, name, 0, 1)
    positions = shape[-1] if shape else 1
    limit = getattr(config, "max_position_embeddings", None)
    return InputSpec(shape, torch.int64, name, 0, min(positions, limit) if isinstance(limit, int) and limit > 0 else positions)


def _main_input_name(module: nn.Module) -> str | None:
    """transformers' name for a model's first input (input_ids, pixel_values, ...); None for other modules."""
    name = getattr(type(module), "main_input_name", None)
    return name if isinstance(name, str) and getattr(module, "config", None) is not None else None


def _vocabulary(module: nn.Module) -> int | None:
    """Vocabulary size of a model that starts with an embedding (its input embeddings, for transformers)."""
    getter = getattr(module, "get_input_embeddings", None)
    if callable(getter) and _main_input_name(module) is not None:
        try:
            embedding = getter()
        except Exception:  # models without token inputs raise NotImplementedError
            embedding = None
        if isinstance(embedding, nn.Embedding):
            return embedding.num_embeddings
    first = next((m for m in module.modules() if isinstance(m, (nn.Embedding, *_FIRST_LAYERS))), None)
    return first.num_embeddings if isinstance(first, nn.Embedding) else None


def _forward_keywords(module: nn.Module) -> set[str]:
    try:
        return set(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _configured_shape(module: nn.Module, name: str) -> tuple[int, ...] | None:
    """(1, channels, size, size) for pixel inputs, from the model's config when it has one."""
    if name != "pixel_values":
        return None
    config = getattr(module, "config", None)
    channels = getattr(config, "num_channels", None)
    size = getattr(config, "image_size", None)
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) for s in size):
        height, width = size
    elif isinstance(size, int):
        height = width = size
    else:
        return default_input_shape(module)
    return (1, channels if isinstance(channels, int) and channels > 0 else 3, height, width)


def _float_dtype(module: nn.Module) -> torch.dtype:
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


_FIRST_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)
