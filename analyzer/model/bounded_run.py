"""The first forward run of a model whose layers come from a file, checked in a bounded child.

A full-model pickle (or a torch-pruning state) carries its layers' attributes: a crafted
`Upsample(scale_factor=2000)` or padding asks for tens of GB on the first forward. That
run happens first in a child process under the file's budget plus room for activations
(load/limits.py): when it fails there — out of memory, out of CPU time, a crash, or an
ordinary exception — the trace (and the op-by-op graph the passes would otherwise compute
by running the model again) comes back as JSON and the model is never run here. When it
succeeds, the caller's process runs it for real, now known to fit. CUDA models are not
checked (CUDA cannot be used across fork, and reserves address space by the tens of GB).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch.nn as nn

from ..load.isolation import BoundedRunFailed, ChildCrashed, ChildLimits, ChildRaised, LimitExceeded, isolation_available, run_bounded
from .graph import GraphTrace, OpRecord, trace_graph
from .inputs import ExampleInput
from .trace import ForwardFailure, ModuleCall, Trace, run_traced

__all__ = ["BoundedFirstRun"]

_GB = 1 << 30


class BoundedFirstRun:
    """A `Runner` for model.build: each example run is checked in a bounded child first."""

    def __init__(self, limits: ChildLimits) -> None:
        self.limits = limits
        #: Graph traces computed in the child for runs that failed, by id of their example input.
        self._graphs: dict[int, GraphTrace | None] = {}

    def __call__(self, module: nn.Module, example: ExampleInput) -> Trace:
        if not isolation_available() or _on_cuda(module):
            return run_traced(module, example)
        try:
            outcome = run_bounded(lambda: _run_in_child(module, example), self.limits)
        except BoundedRunFailed as e:
            self._graphs[id(example)] = None
            return Trace(input_shape=example.shape, failure=_failure_of(e, self.limits))
        if outcome is None:
            self._graphs.pop(id(example), None)  # an id may be reused by a newer example
            return run_traced(module, example)  # it ran within the limits: run it here for real
        trace = _trace_from_json(example, outcome["trace"])
        self._graphs[id(example)] = _graph_from_json(outcome["graph"])
        return trace

    def checked_graph(self, example: ExampleInput) -> tuple[bool, GraphTrace | None]:
        """(whether the child computed the graph trace of the failed run on `example`, that trace)."""
        if id(example) not in self._graphs:
            return False, None
        return True, self._graphs[id(example)]


def _on_cuda(module: nn.Module) -> bool:
    return any(p.is_cuda for p in module.parameters()) or any(b.is_cuda for b in module.buffers())


def _run_in_child(module: nn.Module, example: ExampleInput) -> dict[str, Any] | None:
    trace = run_traced(module, example)
    if trace.ok:
        return None
    graph = trace_graph(module, example)
    return {"trace": _trace_to_json(trace), "graph": _graph_to_json(graph)}


def _failure_of(error: BoundedRunFailed, limits: ChildLimits) -> ForwardFailure:
    if isinstance(error, LimitExceeded) and error.resource == "memory":
        budget = (limits.memory_bytes or 0) / _GB
        return ForwardFailure("", [], "MemoryError", f"can't allocate memory: the forward pass needs more than {budget:.1f} GB (checked in a bounded process; not run here)")
    if isinstance(error, LimitExceeded):
        return ForwardFailure("", [], "TimeoutError", f"the forward pass took longer than {limits.cpu_seconds or 0:.3g} s of CPU time (checked in a bounded process; not run here)")
    if isinstance(error, ChildCrashed):
        return ForwardFailure("", [], "Crash", f"the forward pass crashed the process ({error.signal_name}; checked in a bounded process, not run here)")
    assert isinstance(error, ChildRaised)
    return ForwardFailure("", [], error.type_name, " ".join(error.message.split())[:500])


def _shapes(value: list[list[int]]) -> list[tuple[int, ...]]:
    return [tuple(shape) for shape in value]


def _trace_to_json(trace: Trace) -> dict[str, Any]:
    return {
        "calls": [asdict(call) for call in trace.calls.values()],
        "inputs": {name: [list(s) for s in shapes] for name, shapes in trace.inputs.items()},
        "failure": asdict(trace.failure) if trace.failure is not None else None,
    }


def _trace_from_json(example: ExampleInput, data: dict[str, Any]) -> Trace:
    calls = {}
    for call in data["calls"]:
        calls[call["name"]] = ModuleCall(**{**call, "inputs": _shapes(call["inputs"]), "outputs": _shapes(call["outputs"])})
    failure = data["failure"]
    return Trace(
        input_shape=example.shape,
        calls=calls,
        inputs={name: _shapes(shapes) for name, shapes in data["inputs"].items()},
        failure=ForwardFailure(**failure) if failure is not None else None,
    )


def _graph_to_json(graph: GraphTrace | None) -> dict[str, Any] | None:
    if graph is None:
        return None
    return {
        "records": [asdict(record) for record in graph.records],
        "failure": asdict(graph.failure) if graph.failure is not None else None,
    }


def _record(data: dict[str, Any]) -> OpRecord:
    view = data.get("view_shape")
    return OpRecord(**{
        **data,
        "operand_shapes": _shapes(data["operand_shapes"]),
        "output_shapes": _shapes(data.get("output_shapes", [])),
        "view_shape": tuple(view) if view is not None else None,
    })


def _graph_from_json(data: dict[str, Any] | None) -> GraphTrace | None:
    if data is None:
        return None
    failure = data["failure"]
    return GraphTrace(records=[_record(r) for r in data["records"]], failure=_record(failure) if failure is not None else None)
