"""Measurements → findings. Each rule is a small function that returns a finding or None,
and each message names the measured value and the threshold it crossed.

A rule decides only from measurements it can trust: when what it reads is flagged (a time
budget spent before the estimates settled, an oversubscribed multi-threaded run, per-layer
times that do not add up to the latency), or when the 95% interval of the value straddles
the threshold, the rule is *withheld* — `evaluate` says which and why — rather than firing
on one run and not on the next.
"""

from __future__ import annotations

from collections.abc import Callable

from .result import LATENCY, LAYERS, LayerProfile, ProfileResult
from ..report.model import Finding, Severity

__all__ = [
    "RULES",
    "diagnose",
    "evaluate",
    "withheld",
    "NO_SPEEDUP_REALISED",
    "OVERHEAD_SHARE",
    "GPU_BUSY",
    "MEMORY_SHARE",
    "MIN_FLOP_CUT",
]

#: no-speedup: latency fell by less than this share of the share FLOPs fell by.
NO_SPEEDUP_REALISED = 0.5
#: no-speedup: only when pruning removed at least this share of the FLOPs.
MIN_FLOP_CUT = 0.10
#: overhead-bound: fixed per-layer cost holds at least this share of the layer time...
OVERHEAD_SHARE = 0.5
#: ...or the GPU's SM utilisation (NVML median) stayed under this.
GPU_BUSY = 50.0
#: memory-bound: layers below the machine balance take at least this share of the time.
MEMORY_SHARE = 0.4

Rule = Callable[[ProfileResult], "Finding | None"]


class _Withheld(Exception):
    """The rule cannot decide from these measurements; the message says why."""


def evaluate(profile: ProfileResult) -> tuple[list[Finding], dict[str, str]]:
    """The findings, and for each rule that was withheld, why."""
    findings: list[Finding] = []
    reasons: dict[str, str] = {}
    for kind, rule in _DECISIONS:
        try:
            finding = rule(profile)
        except _Withheld as why:
            reasons[kind] = str(why)
            continue
        if finding is not None:
            findings.append(finding)
    return findings, reasons


def diagnose(profile: ProfileResult) -> list[Finding]:
    return evaluate(profile)[0]


def withheld(profile: ProfileResult) -> dict[str, str]:
    """Rule kind -> why it drew no conclusion from this profile."""
    return evaluate(profile)[1]


def _quiet_when_withheld(rule: Rule) -> Rule:
    def public(profile: ProfileResult) -> Finding | None:
        try:
            return rule(profile)
        except _Withheld:
            return None

    public.__name__ = public.__qualname__ = rule.__name__.lstrip("_")
    public.__doc__ = rule.__doc__
    return public


def _decide(value: float, low: float, high: float, threshold: float, above_fires: bool, what: str) -> bool:
    """Whether the rule fires: the whole interval on the firing side of the threshold fires, the
    whole interval on the other side does not, and an interval that straddles it is withheld."""
    if (low >= threshold) if above_fires else (high < threshold):
        return True
    if (high < threshold) if above_fires else (low >= threshold):
        return False
    raise _Withheld(
        f"{what} is {value:.3g} (95% interval {low:.3g}–{high:.3g}), which straddles the threshold of {threshold:.3g}: "
        "measure longer (MeasureOptions.max_time_s, ProfileOptions.layer_profile_s) or on a quieter machine"
    )


def _no_speedup(profile: ProfileResult) -> Finding | None:
    dense, pruned = profile.flops.get("dense"), profile.flops.get("pruned")
    if dense is None or pruned is None or not dense.macs:
        return None
    flop_cut = 1 - pruned.macs / dense.macs
    if flop_cut < MIN_FLOP_CUT:
        return None
    expected = dense.macs / max(pruned.macs, 1)
    per_batch = _speedups(profile)
    first = profile.batches()[0]
    speed = profile.speedup(first)
    if speed is None:
        return None
    flagged = profile.flagged(LATENCY, first)
    if flagged:
        raise _Withheld("; ".join(flagged))
    measured = speed.value

    def realised_at(speedup: float) -> float:
        return (1 - 1 / speedup) / flop_cut

    latency_cut = 1 - 1 / measured
    realised = realised_at(measured)
    what = f"the latency cut at batch {first} as a share of the FLOP cut ({measured:.2f}× against {expected:.2f}× expected)"
    if not _decide(realised, realised_at(speed.low), realised_at(speed.high), NO_SPEEDUP_REALISED, False, what):
        return None
    change = f"fell only {latency_cut:.0%}" if latency_cut >= 0 else f"rose {-latency_cut:.0%}"
    interval = f" (95% interval {speed.low:.2f}–{speed.high:.2f}×)" if speed.high > speed.low else ""
    message = (
        f"FLOPs fell {flop_cut:.0%} ({dense.macs:,} → {pruned.macs:,} MACs) but latency {change} "
        f"at batch {first} ({profile.median('dense', first):.3g} → {profile.median('pruned', first):.3g} ms): "
        f"{measured:.2f}× measured{interval} against {expected:.2f}× expected; the latency cut is {realised:.0%} of the "
        f"FLOP cut (threshold {NO_SPEEDUP_REALISED:.0%})."
    )
    if profile.unpruned_time_share is not None and profile.unpruned_time_share > 0.3:
        message += f" {profile.unpruned_time_share:.0%} of the pruned model's layer time is in layers that were not pruned."
    if len(per_batch) > 1:
        message += " Speedup by batch: " + ", ".join(f"{b}: {s:.2f}×" for b, s in sorted(per_batch.items())) + "."
    noisy = [f"{s.label}@{s.batch}" for s in profile.latency if s.noisy]
    if noisy:
        message += f" Caution: the timings of {', '.join(noisy)} are noisy (IQR over 10% of the median); re-run on a quiet machine."
    return Finding(
        kind="no-speedup",
        severity=Severity.WARNING,
        modules=_top_unpruned(profile.layers),
        message=message,
        evidence={
            "macs_dense": dense.macs,
            "macs_pruned": pruned.macs,
            "flop_cut": round(flop_cut, 4),
            "speedup_expected": round(expected, 3),
            "speedup_measured_by_batch": {str(b): round(s, 3) for b, s in per_batch.items()},
            "realised": round(realised, 3),
            "speedup_interval": [round(speed.low, 3), round(speed.high, 3)],
            "rounds": speed.n,
            "unpruned_time_share": _round(profile.unpruned_time_share),
            "noisy": noisy,
            "latency_ms": {f"{s.label}@{s.batch}": round(s.median_ms, 4) for s in profile.latency},
        },
        fix=(
            "Find where the time goes first: if the model is overhead-bound (see below) raise the batch or use "
            "torch.compile / CUDA graphs; if the time sits in layers that were not pruned, prune those; keep widths "
            "multiples of 8."
        ),
    )


def _overhead_bound(profile: ProfileResult) -> Finding | None:
    share = profile.fixed_cost_share
    nvml = profile.nvml
    gpu_idle = nvml is not None and nvml.sm_util_median < GPU_BUSY
    fixed_bound = False
    if share is not None:
        try:
            flagged = profile.flagged(LAYERS)
            if flagged:
                raise _Withheld("; ".join(flagged))
            low, high = profile.fixed_cost_share_interval or (share, share)
            fixed_bound = _decide(share, low, high, OVERHEAD_SHARE, True, "the fixed per-op share of the layer time")
        except _Withheld:
            if not gpu_idle:
                raise
    if not gpu_idle and not fixed_bound:
        return None
    scaling = _batch_scaling(profile)
    reasons = []
    if fixed_bound:
        reasons.append(
            f"{share:.0%} of the layer time (threshold {OVERHEAD_SHARE:.0%}) stays when the input shrinks to almost "
            f"no arithmetic (a median {(profile.fixed_layer_cost_ms or 0) * 1000:.1f} µs per conv/linear layer)"
        )
    if gpu_idle:
        reasons.append(f"the GPU's SMs were busy a median {nvml.sm_util_median:.0f}% of the time (threshold {GPU_BUSY:.0f}%)")  # type: ignore[union-attr]
    if scaling:
        reasons.append(scaling)
    device = profile.environment.device
    cause = "kernel launches and idle gaps between small kernels" if device.startswith("cuda") else "framework dispatch per operator"
    return Finding(
        kind="overhead-bound",
        severity=Severity.WARNING,
        modules=[],
        message=f"Time goes to fixed per-operator cost ({cause}), not arithmetic: " + "; ".join(reasons) + ". Removing channels cannot shrink that part.",
        evidence={
            "fixed_layer_cost_ms": _round(profile.fixed_layer_cost_ms),
            "fixed_cost_share": _round(share),
            "op_overhead_us": round(profile.balance.op_overhead_s * 1e6, 2),
            "sm_util_median": nvml.sm_util_median if nvml else None,
            "latency_ms_by_batch": {f"{s.label}@{s.batch}": round(s.median_ms, 4) for s in profile.latency},
            "device": device,
        },
        fix=(
            "Amortise the fixed cost: a larger batch; torch.compile(model, mode='reduce-overhead') or CUDA graphs on "
            "GPU; fuse conv+BatchNorm (torch.fx / torch.ao fuse_modules) and drop tiny layers."
        ),
        fix_code='model = torch.compile(model, mode="reduce-overhead")  # CUDA graphs on GPU; fewer dispatches on CPU',
    )


def _memory_bound(profile: ProfileResult) -> Finding | None:
    total = sum(layer.time_ms for layer in profile.layers)
    below = [layer for layer in profile.layers if layer.bound == "memory"]
    share = profile.memory_bound_share
    if share is None:
        share = sum(layer.time_ms for layer in below) / total if total else 0.0
    if not below:
        return None
    flagged = profile.flagged(LAYERS)
    if flagged:
        raise _Withheld("; ".join(flagged))
    low_share, high_share = profile.memory_bound_share_interval or (share, share)
    if not _decide(share, low_share, high_share, MEMORY_SHARE, True, "the share of the layer time in memory-bound layers"):
        return None
    top = sorted(below, key=lambda layer: -layer.time_ms)[:10]
    balance = profile.balance.balance
    return Finding(
        kind="memory-bound",
        severity=Severity.INFO,
        modules=[layer.name for layer in top],
        message=(
            f"{share:.0%} of the layer time (threshold {MEMORY_SHARE:.0%}) is in layers below the machine balance of "
            f"{balance:.1f} FLOPs/byte ({', '.join(f'{l.name} {l.type} {l.intensity:.2g}' for l in top[:4])}): they "
            "are limited by bytes moved, so shrinking channels shrinks their cost less than their FLOPs."
        ),
        evidence={
            "memory_bound_time_share": round(share, 4),
            "memory_bound_time_share_interval": [round(low_share, 4), round(high_share, 4)],
            "machine_balance_flops_per_byte": round(balance, 3),
            "peak_gflops": round(profile.balance.peak_flops / 1e9, 2),
            "bandwidth_gbs": round(profile.balance.bandwidth / 1e9, 2),
            "layers": {l.name: {"type": l.type, "intensity": round(l.intensity, 3), "time_ms": round(l.time_ms, 4)} for l in top},
        },
        fix=(
            "Fold BatchNorms into the convs before deploying, fuse activations, prefer channels_last on GPU; "
            "depthwise and thin layers will not speed up by pruning channels."
        ),
    )


no_speedup = _quiet_when_withheld(_no_speedup)
overhead_bound = _quiet_when_withheld(_overhead_bound)
memory_bound = _quiet_when_withheld(_memory_bound)

RULES: tuple[Rule, ...] = (no_speedup, overhead_bound, memory_bound)
_DECISIONS: tuple[tuple[str, Rule], ...] = (
    ("no-speedup", _no_speedup),
    ("overhead-bound", _overhead_bound),
    ("memory-bound", _memory_bound),
)


def _speedups(profile: ProfileResult) -> dict[int, float]:
    """Batch -> the median of the per-round dense/pruned ratios."""
    return {batch: estimate.value for batch in profile.batches() if (estimate := profile.speedup(batch)) is not None}


def _batch_scaling(profile: ProfileResult) -> str | None:
    batches = profile.batches()
    if len(batches) < 2:
        return None
    small, large = batches[0], batches[-1]
    t_small, t_large = profile.median("pruned", small), profile.median("pruned", large)
    if not t_small or not t_large:
        return None
    per_sample = (t_large / large) / (t_small / small)
    return f"per-sample time at batch {large} is {per_sample:.0%} of that at batch {small}"


def _top_unpruned(layers: list[LayerProfile]) -> list[str]:
    unpruned = [layer for layer in layers if layer.pruned is False]
    return [layer.name for layer in sorted(unpruned, key=lambda l: -l.time_ms)[:8]]


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)
