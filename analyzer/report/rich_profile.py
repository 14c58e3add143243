"""Profile tables: how it was measured and what is not to be trusted, latency with its spread
and the speedup's interval, MACs, where the time goes, NVML, the machine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import RenderableType
from rich.text import Text

from .rich_compare import short_number
from .rich_fit import Column, Fitted, TableSpec

if TYPE_CHECKING:
    from ..profile.result import ProfileResult

__all__ = ["profile_renderables"]

_MAX_PROFILE_LAYERS = 15


def profile_renderables(profile: ProfileResult) -> list[RenderableType]:
    env = profile.environment
    parts: list[RenderableType] = []
    threads = f"{env.threads} thread{'s' if env.threads != 1 else ''}" + (f" of {env.cores} cores" if env.cores else "")
    setting = f"{env.device} ({env.device_name}), {threads}, timer {env.timer}, {env.warmup_runs} warm-up runs"
    if env.cudnn_benchmark is not None:
        setting += f", cudnn.benchmark={env.cudnn_benchmark}"
    parts.append(Text.assemble(("profile: ", "bold"), setting))
    parts += [Text(f"  {line}", style="dim") for line in [env.nvml_status, *env.notes] if line]
    if env.oversubscribed:
        parts.append(Text("  the machine was oversubscribed while profiling (see above)", style="yellow"))
    parts += [Text(f"  not trusted ({flag.scope}): {flag.reason}", style="yellow") for flag in profile.flags]
    parts += [_latency_table(profile), _flops_table(profile), _layer_table(profile)]
    if profile.nvml:
        parts.append(_nvml_line(profile))
    b = profile.balance
    parts.append(
        Text(
            f"machine: {b.peak_flops / 1e9:.1f} GFLOP/s GEMM, {b.bandwidth / 1e9:.1f} GB/s copy, balance "
            f"{b.balance:.1f} FLOPs/byte, {b.op_overhead_s * 1e6:.1f} µs per near-empty op",
            style="dim",
        )
    )
    return parts


def _latency_table(profile: ProfileResult) -> RenderableType:
    rows = []
    for stats in sorted(profile.latency, key=lambda s: (s.batch, s.label)):
        estimate = profile.speedup(stats.batch) if stats.label == "pruned" else None
        speedup = ""
        if estimate is not None:
            speedup = f"{estimate.value:.2f}×" + (f" ({estimate.low:.2f}–{estimate.high:.2f})" if estimate.high > estimate.low else "")
        samples = f"{len(stats.samples_ms)}" + (f" × {stats.calls_per_sample}" if stats.calls_per_sample > 1 else "")
        label = stats.label if "dense" in profile.flops else "model"
        label += " (noisy)" if stats.noisy else ""
        rows.append([str(stats.batch), label, f"{stats.median_ms:.3f}", f"{stats.iqr_ms:.3f}", f"{stats.p90_ms:.3f}", samples, speedup])
    headers = ("batch", "model", "median ms", "IQR ms", "p90 ms", "samples", "speedup")
    caption = "speedup: median of per-round ratios (95% interval)" if "dense" in profile.flops else None
    wide = TableSpec(
        [Column(h, "left" if h == "model" else "right", key=h == "model") for h in headers], rows, title="latency", caption=caption
    )
    keep = (0, 1, 2, 3, 6)
    narrow = TableSpec(
        [wide.columns[i] for i in keep], [[row[i] for i in keep] for row in rows], title="latency", caption=caption
    )
    return Fitted(wide, narrow)


def _flops_table(profile: ProfileResult) -> RenderableType:
    shapes = {"×".join(map(str, f.input_shape)) for f in profile.flops.values()}
    rows = []
    for label, flops in profile.flops.items():
        uncounted = ", ".join(f"{op.removeprefix('aten::')}×{n}" for op, n in list(flops.unsupported_ops.items())[:4])
        rows.append([label if "dense" in profile.flops else "model", f"{flops.macs:,}", f"{flops.params:,}", uncounted])
    columns = [Column("model", key=True), Column("MACs", "right"), Column("params", "right"), Column("ops without MACs", wrap=True)]
    title = f"MACs on {', '.join(sorted(shapes))} (conv, linear, matmul, attention)"
    return Fitted(TableSpec(columns, rows, title=title))


def _layer_table(profile: ProfileResult) -> RenderableType:
    which = "pruned model" if "dense" in profile.flops else "model"
    title = f"where the time goes ({which})"
    caption = "; ".join(_layer_captions(profile)) or None
    wide_rows, narrow_rows = [], []
    for layer in sorted(profile.layers, key=lambda l: -l.time_ms)[:_MAX_PROFILE_LAYERS]:
        pruned = "" if layer.pruned is None else ("yes" if layer.pruned else "no")
        fixed = f"{layer.fixed_ms / layer.time_ms:.0%}" if layer.time_ms else ""
        kind = layer.type + (" (own ops)" if layer.own_ops else "")
        numbers = [f"{layer.time_ms:.3f}", f"{layer.share:.1%}", fixed]
        tail = [f"{layer.intensity:.2g}", layer.bound, pruned]
        wide_rows.append([layer.name, kind, *numbers, f"{layer.macs:,}", *tail])
        named = Text.assemble(layer.name, "\n", (kind, "dim"))
        narrow_rows.append([named, *numbers, short_number(layer.macs), *tail])
    headers = ("ms", "share", "fixed", "MACs", "FLOP/B")
    wide = TableSpec(
        [Column("module", key=True), Column("type"), *(Column(h, "right") for h in headers), Column("bound"), Column("pruned")],
        wide_rows, title=title, caption=caption,
    )
    narrow = TableSpec(
        [Column("module", key=True), *(Column(h, "right") for h in headers), Column("bound"), Column("pruned")],
        narrow_rows, title=title, caption=caption,
    )
    return Fitted(wide, narrow)


def _layer_captions(profile: ProfileResult) -> list[str]:
    captions = []
    if profile.fixed_cost_share is not None:
        captions.append(f"{profile.fixed_cost_share:.0%}{_interval(profile.fixed_cost_share_interval)} of the layer time is fixed per-op cost")
    if profile.memory_bound_share is not None:
        captions.append(f"{profile.memory_bound_share:.0%}{_interval(profile.memory_bound_share_interval)} is in memory-bound layers")
    if profile.unpruned_time_share is not None:
        captions.append(f"{profile.unpruned_time_share:.0%} is in layers the pruning did not touch")
    check = profile.layer_check
    if check is not None:
        captions.append(f"the layers add up to {check.ratio:.0%} of the end-to-end latency")
    if profile.layer_iterations:
        captions.append(f"medians of {profile.layer_iterations} passes")
    return captions


def _interval(bounds: list[float] | None) -> str:
    if not bounds or bounds[0] == bounds[1]:
        return ""
    return f" ({bounds[0]:.0%}–{bounds[1]:.0%})"


def _nvml_line(profile: ProfileResult) -> Text:
    n = profile.nvml
    assert n is not None
    return Text(
        f"NVML ({n.samples} samples every {n.interval_ms:.0f} ms): SM util median {n.sm_util_median:.0f}% "
        f"(p90 {n.sm_util_p90:.0f}%), memory-controller util {n.mem_util_median:.0f}%, memory used "
        f"{n.mem_used_mb_max:.0f} MB"
        + (f", power {n.power_w_median:.0f} W" if n.power_w_median is not None else "")
        + (f", SM clock {n.sm_clock_mhz_median:.0f} MHz" if n.sm_clock_mhz_median is not None else "")
        + (f", throttle: {', '.join(n.throttle_reasons)}" if n.throttle_reasons else "")
    )
