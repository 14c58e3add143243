"""Shape propagation over the traced graph (torch.fx), op by op.

Module hooks see modules; the adds, cats and views between them are functions. Tracing
with torch.fx and interpreting the graph node by node gives every op's operand shapes
and, when one raises, the exact op, its operands and the modules that produced them.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn as nn

from .inputs import ExampleInput, example_from
from .threads import single_threaded

__all__ = ["OpRecord", "GraphTrace", "trace_graph", "BINARY_OPS", "CAT_OPS", "VIEW_OPS"]

BINARY_OPS = {"add", "sub", "mul", "div", "add_", "mul_", "sub_", "iadd", "imul", "isub"}
CAT_OPS = {"cat", "concat", "concatenate", "stack"}
VIEW_OPS = {"view", "reshape"}
_SHAPE_PRESERVING_DEPTH = 32


@dataclass(frozen=True)
class OpRecord:
    node: str
    #: add, mul, cat, view, ... (or the module type for call_module nodes)
    op: str
    #: The module that ran the op ("" for the model's own forward).
    within: str
    operand_shapes: list[tuple[int, ...]]
    #: For each operand: the module whose output it is (following shape-preserving ops back).
    producers: list[str]
    output_shapes: list[tuple[int, ...]] = field(default_factory=list)
    error: str | None = None
    #: The integer arguments of a view/reshape (the requested shape, -1 included).
    view_shape: tuple[int, ...] | None = None


@dataclass
class GraphTrace:
    records: list[OpRecord] = field(default_factory=list)
    failure: OpRecord | None = None


def trace_graph(model: nn.Module, example: ExampleInput | torch.Tensor) -> GraphTrace | None:
    """The op-by-op trace, or None when the model does not trace symbolically (or takes named inputs)."""
    example = example_from(example)
    if example.kwargs:
        return None  # fx's Interpreter runs positional inputs only
    try:
        graph_module = torch.fx.symbolic_trace(model)
    except Exception:  # data-dependent control flow and the like: fall back to module hooks
        return None
    interpreter = _Recorder(graph_module)
    try:
        with torch.inference_mode(), single_threaded():  # see threads.py
            interpreter.run(*example.args)
    except Exception:  # the model's own failure: run_node recorded the op it happened at
        if interpreter.trace.failure is None:
            return None  # it happened outside every node: no op to name, fall back to module hooks
    return interpreter.trace


class _Recorder(torch.fx.Interpreter):
    def __init__(self, module: torch.fx.GraphModule) -> None:
        super().__init__(module)
        # torch's extra traceback on a failing node imports torch._dynamo (seconds, in every
        # process); the failure is recorded here instead.
        self.extra_traceback = False
        self.trace = GraphTrace()

    def run_node(self, node: torch.fx.Node) -> Any:
        try:
            result = super().run_node(node)
        except Exception as e:
            if self.trace.failure is None:
                self.trace.failure = self._record(node, error=" ".join(str(e).split())[:400])
            raise
        if _op_name(node) in BINARY_OPS | CAT_OPS | VIEW_OPS:
            self.trace.records.append(self._record(node, result=result))
        return result

    def _record(self, node: torch.fx.Node, result: Any = None, error: str | None = None) -> OpRecord:
        operands = [a for a in _flat_args(node) if isinstance(a, torch.fx.Node)]
        shapes = [_shape(self.env.get(a)) for a in operands]
        view_shape = None
        if _op_name(node) in VIEW_OPS:
            values = [self.env.get(a, a) if isinstance(a, torch.fx.Node) else a for a in _flat_args(node)[1:]]
            if all(isinstance(v, int) for v in values):
                view_shape = tuple(values)
        return OpRecord(
            node=node.name,
            op=_op_name(node),
            within=_enclosing_module(node),
            operand_shapes=[s for s in shapes if s is not None],
            producers=[_producer(a) for a, s in zip(operands, shapes) if s is not None],
            output_shapes=[_shape(result)] if _shape(result) is not None else [],
            error=error,
            view_shape=view_shape,
        )


def _op_name(node: torch.fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    if node.op == "call_function":
        target = node.target
        if target in (operator.add, operator.iadd):
            return "add"
        if target in (operator.mul, operator.imul):
            return "mul"
        if target in (operator.sub, operator.isub):
            return "sub"
        return getattr(target, "__name__", str(target))
    if node.op == "call_method":
        return str(node.target)
    return node.op


def _flat_args(node: torch.fx.Node) -> list[Any]:
    flat: list[Any] = []
    for arg in (*node.args, *node.kwargs.values()):
        if isinstance(arg, (list, tuple)):
            flat.extend(arg)
        else:
            flat.append(arg)
    return flat


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _producer(node: torch.fx.Node) -> str:
    """The module whose output `node` is, looking back through shape-preserving ops (relu, ...)."""
    for _ in range(_SHAPE_PRESERVING_DEPTH):
        if node.op == "call_module":
            return str(node.target)
        if node.op == "placeholder":
            return "<input>"
        name = _op_name(node)
        if name in BINARY_OPS | CAT_OPS | VIEW_OPS or node.op == "get_attr":
            return f"<{name} {node.name}>"
        inputs = [a for a in _flat_args(node) if isinstance(a, torch.fx.Node)]
        if not inputs:
            return f"<{node.name}>"
        node = inputs[0]
    return f"<{node.name}>"


def _enclosing_module(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1]
        return path[0] if isinstance(path, tuple) else str(path)
    return ""
