"""The library entry point: `analyze(path, ...) -> Report`.

load → layers → passes → report, in one direction. The CLI is a thin layer over this.
"""

from __future__ import annotations

import os
from pathlib import Path

from .build import BuildOptions, build, parse_input_shape
from .layers import build_layers
from .load import LoadOptions, load_checkpoint
from .passes import AnalysisOptions, PassContext, run_passes
from .report.assemble import build_report
from .report.model import Report

__all__ = ["analyze"]


def analyze(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    baseline: str | os.PathLike[str] | None = None,
    input_shape: tuple[int, ...] | str | None = None,
    trust: bool = False,
    allow_modules: tuple[str, ...] | list[str] = (),
    key: str | None = None,
    zero_tol: float = 0.0,
) -> Report:
    """Analyse the checkpoint at `path` and return the report; raises AnalyzerError when it cannot.

    arch: `pkg.module:factory` of the dense architecture (imports that code); baseline: a
    dense checkpoint to compare with; input_shape: example input (e.g. "1,3,640,640"),
    inferred from the first layer when None; trust: unpickle fully (runs code from the
    file); allow_modules: packages whose classes may be imported and rebuilt; key: the
    training-dict entry holding the weights; zero_tol: |x| <= zero_tol counts as zero.
    """
    load_options = LoadOptions(trust=trust, allow_modules=tuple(allow_modules), key=key)
    checkpoint = load_checkpoint(Path(path), load_options)
    if isinstance(input_shape, str):
        input_shape = parse_input_shape(input_shape)
    build_options = BuildOptions(arch=arch, baseline=str(baseline) if baseline else None, input_shape=input_shape)
    ctx = PassContext(
        checkpoint=checkpoint,
        layers=build_layers(checkpoint),
        options=AnalysisOptions(zero_tol=zero_tol),
        build=build(checkpoint, build_options, load_options),
    )
    findings, not_analysed = run_passes(ctx)
    return build_report(ctx, findings, not_analysed)
