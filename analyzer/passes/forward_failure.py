"""`forward-failure`: the model does not run on the example input.

Any exception of the forward pass becomes this finding, at the innermost module that
was running when it was raised — never a traceback. Passes that can explain the
failure better (residual and head checks) report their own kind for the same module.
"""

from __future__ import annotations

from ..model.inputs import ExampleInput
from ..report.model import Finding, Severity
from . import residual_mismatch
from .context import PassContext

KIND = "forward-failure"


def run(ctx: PassContext) -> list[Finding]:
    model = ctx.model
    if model is None or model.trace.ok:
        return []
    failure = model.trace.failure
    assert failure is not None
    if _in_a_head(ctx, failure.module) or residual_mismatch.explains(ctx):
        return []  # the head and residual checks explain this one
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


def _in_a_head(ctx: PassContext, module: str) -> bool:
    from .head_shape_mismatch import detected_heads

    return any(module == head.conv or head.conv.startswith(module + ".") for head in detected_heads(ctx) if module)
