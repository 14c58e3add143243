"""`forward-failure`: the model does not run on the example input.

Any exception of the forward pass becomes this finding, at the innermost module that
was running when it was raised — never a traceback. Passes that can explain the
failure better (residual, head and attention checks) report their own kind instead, but
only when they do report a finding for it: a failure nothing else explains is always
reported. A reshape into (batch, tokens, heads, head_dim) that fails is attributed to the
attention module that does it, however deep the call that raised.
"""

from __future__ import annotations

import math
import re

from ..model.inputs import ExampleInput
from ..model.trace import ForwardFailure
from ..report.model import Finding, Severity
from . import attention_head_mismatch, head_shape_mismatch, residual_mismatch
from .context import PassContext

KIND = "forward-failure"


def run(ctx: PassContext) -> list[Finding]:
    model = ctx.model
    if model is None or model.trace.ok:
        return []
    failure = model.trace.failure
    assert failure is not None
    if residual_mismatch.explains(ctx) or head_shape_mismatch.explains(ctx, failure.module):
        return []  # reported as residual-mismatch or head-shape-mismatch, which say more
    if attention_head_mismatch.explains(ctx):
        return []  # reported as attention-head-mismatch, with the widths and the fix
    where = _attention_module(ctx, failure) or failure.module or "<model>"
    return [
        Finding(
            kind=KIND,
            severity=Severity.ERROR,
            modules=[where],
            message=(
                f"The model fails on {_input_phrase(model.example_input)} in {where}: "
                f"{failure.exception_type}: {failure.message}"
            ),
            evidence={
                "module": where,
                "module_stack": failure.stack,
                "exception": failure.exception_type,
                "error": failure.message,
                "input_shape": list(model.trace.input_shape),
                "model_from": model.origin,
            },
            fix=(
                "If the input shape is wrong for this model, pass --input-shape; otherwise the layers around "
                f"{where} no longer agree in shape (see the checks below)."
            ),
        )
    ]


def _input_phrase(example: ExampleInput) -> str:
    if example.single is not None:
        return f"an input of shape {list(example.shape)}"
    return f"the inputs {example.describe()}"


_RESHAPE = re.compile(r"shape '\[([-\d, ]+)\]' is invalid for input of size (\d+)")


def _attention_module(ctx: PassContext, failure: ForwardFailure) -> str | None:
    """The attention module a failed reshape into heads belongs to: the failing module, or the
    attention module holding it, else the one inside it whose projection width the reshaped
    size is (batch × tokens × width). None when the failure is no such reshape."""
    sites = ctx.attention_sites()
    names = {site.name for site in sites}
    if failure.module in names:
        return failure.module
    match = _RESHAPE.search(failure.message)
    if match is None:
        return None
    # the attention module holding the failing one (a helper that splits heads)
    parts = failure.module.split(".")
    holding = next((".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1) if ".".join(parts[:i]) in names), None)
    if holding is not None:
        return holding
    # else the reshape ran in a parent (attn.forward() called past its hooks, or heads split
    # in the block): the attention module inside it whose projections are that wide
    dims = [int(d) for d in match.group(1).split(",") if d.strip()]
    size = int(match.group(2))
    leading = math.prod(d for d in dims[:-2] if d > 0) or 1  # (batch, tokens, heads, head_dim)
    if size % leading:
        return None
    width = size // leading
    inside = [s for s in sites if not failure.module or s.name.startswith(failure.module + ".") or s.name == failure.module]
    widths = [s for s in inside if any(p.out == width or p.out == 3 * width for p in s.projections())]
    return widths[0].name if len(widths) == 1 else None

