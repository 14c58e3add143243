"""`forward-failure`: the model does not run on the example input.

Any exception of the forward pass becomes this finding, at the innermost module that
was running when it was raised — never a traceback. Passes that can explain the
failure better (residual and head checks) report their own kind instead, but only when
they do report a finding for it: a failure nothing else explains is always reported.
"""

from __future__ import annotations

from ..model.inputs import ExampleInput
from ..report.model import Finding, Severity
from . import head_shape_mismatch, residual_mismatch
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
    where = failure.module or "<model>"
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

