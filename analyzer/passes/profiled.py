"""Findings from measurements (`--profile`): no-speedup, overhead-bound, memory-bound."""

from __future__ import annotations

from ..diagnose import diagnose
from ..report.model import Finding
from .context import PassContext, PassSkipped


def run(ctx: PassContext) -> list[Finding]:
    if ctx.profile is None:
        if ctx.profile_skipped:
            raise PassSkipped(ctx.profile_skipped)
        return []
    return diagnose(ctx.profile)
