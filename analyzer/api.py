"""The library entry point: `analyze(path, ...) -> Report`.

load → layers → passes → report, in one direction. The CLI is a thin layer over this.
"""

from __future__ import annotations

import os
from pathlib import Path

from .layers import build_layers
from .load import LoadOptions, load_checkpoint
from .passes import AnalysisOptions, PassContext, run_passes
from .report.assemble import build_report
from .report.model import Report

__all__ = ["analyze"]


def analyze(
    path: str | os.PathLike[str],
    *,
    trust: bool = False,
    allow_modules: tuple[str, ...] | list[str] = (),
    key: str | None = None,
    zero_tol: float = 0.0,
) -> Report:
    """Analyse the checkpoint at `path` and return the report; raises AnalyzerError when it cannot.

    trust: unpickle fully (runs code from the file); allow_modules: packages whose classes
    may be imported and rebuilt; key: the training-dict entry holding the weights;
    zero_tol: |x| <= zero_tol counts as zero.
    """
    load_options = LoadOptions(trust=trust, allow_modules=tuple(allow_modules), key=key)
    checkpoint = load_checkpoint(Path(path), load_options)
    ctx = PassContext(
        checkpoint=checkpoint,
        layers=build_layers(checkpoint),
        options=AnalysisOptions(zero_tol=zero_tol),
    )
    findings, not_analysed = run_passes(ctx)
    return build_report(ctx, findings, not_analysed)
