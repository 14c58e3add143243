"""Run a model once on an example input and record every module's input and output shapes.

When the forward pass raises, the innermost module that was still running is where it
failed: that, not a traceback, is what the report names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .inputs import ExampleInput

__all__ = ["ModuleCall", "ForwardFailure", "Trace", "run_traced", "tensor_shapes"]


@dataclass(frozen=True)
class ModuleCall:
    name: str
    type: str
    inputs: list[tuple[int, ...]]
    outputs: list[tuple[int, ...]]


@dataclass(frozen=True)
class ForwardFailure:
    #: Innermost module running when the exception was raised ("" is the model itself).
    module: str
    #: Enclosing modules, outermost first.
    stack: list[str]
    exception_type: str
    message: str


@dataclass
class Trace:
    input_shape: tuple[int, ...]
    #: First call of each module, in the order the calls finished.
    calls: dict[str, ModuleCall] = field(default_factory=dict)
    #: Input shapes of each module's first call, recorded as it starts (so also for a call that failed).
    inputs: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)
    output: Any = None
    failure: ForwardFailure | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


def tensor_shapes(value: Any) -> list[tuple[int, ...]]:
    """Shapes of every tensor in a (nested) value, in order."""
    if isinstance(value, torch.Tensor):
        return [tuple(value.shape)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in tensor_shapes(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in tensor_shapes(v)]
    return []


def run_traced(model: nn.Module, example: ExampleInput) -> Trace:
    trace = Trace(input_shape=example.shape)
    running: list[str] = []
    names = {module: name for name, module in model.named_modules()}
    handles = []

    def before(module: nn.Module, args: Any) -> None:
        name = names.get(module, "?")
        running.append(name)
        trace.inputs.setdefault(name, tensor_shapes(args))

    def after(module: nn.Module, args: Any, output: Any) -> None:
        name = running.pop() if running else names.get(module, "?")
        if name not in trace.calls:
            trace.calls[name] = ModuleCall(name, type(module).__name__, tensor_shapes(args), tensor_shapes(output))

    for module in names:
        handles.append(module.register_forward_pre_hook(before))
        handles.append(module.register_forward_hook(after))
    try:
        with torch.inference_mode():
            trace.output = example.call(model)
    except Exception as e:  # whatever the model raises is the finding, never a crash
        message = " ".join(str(e).split())[:500]
        trace.failure = ForwardFailure(
            module=running[-1] if running else "",
            stack=list(running),
            exception_type=type(e).__name__,
            message=message,
        )
    finally:
        for handle in handles:
            handle.remove()
    return trace
