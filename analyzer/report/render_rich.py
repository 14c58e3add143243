"""The terminal report, drawn with Rich. Reads the Report; computes nothing new."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from ..profile.result import ProfileResult
from .model import Finding, LayerRow, Report, Severity

__all__ = ["render", "render_report"]

_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
_MAX_LAYER_ROWS = 50
_MAX_EVIDENCE_ITEMS = 8


def render(report: Report, console: Console, all_layers: bool = False, show_layers: bool = True) -> None:
    console.print(render_report(report, all_layers, show_layers))


def render_report(report: Report, all_layers: bool = False, show_layers: bool = True) -> RenderableType:
    parts: list[RenderableType] = [_header(report), _verdict(report)]
    parts += [_finding(f) for f in report.findings]
    if report.layers and show_layers:
        parts.append(_layer_table(report.layers, all_layers))
    if report.profile:
        parts += _profile_tables(ProfileResult.from_dict(report.profile))
    parts += [Text(f"note: {note}", style="dim") for note in report.notes]
    parts += [Text(f"not analysed: {line}", style="dim italic") for line in report.not_analysed]
    return Group(*parts)


def _header(report: Report) -> RenderableType:
    source, summary = report.source, report.summary
    counted = summary.params - summary.params_without_data
    zero = 1 - summary.nonzero_params / counted if counted else 0.0
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("file", f"{source.path} ({_bytes(source.file_size)})")
    read = f"{source.format}, {source.container}, read by {source.loader}"
    if source.weights_key:
        read += f", weights from '{source.weights_key}'"
    grid.add_row("read as", read)
    params = f"{summary.params:,} ({summary.nonzero_params:,} non-zero, {zero:.1%} zero) in {summary.layers} layers"
    if summary.params_without_data:
        params += f"; {summary.params_without_data:,} without data (meta tensors) not counted"
    grid.add_row("params", params)
    if source.placeholders:
        grid.add_row("placeholders", ", ".join(source.placeholders))
    return Panel(grid, title="analyze", title_align="left", box=box.ROUNDED)


def _verdict(report: Report) -> RenderableType:
    worst = report.worst_severity()
    if worst is None:
        return Text("✔ No problems found.", style="bold green")
    top = report.findings[0]
    counts = ", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in report.summary.findings.items() if n)
    first_sentence = top.message.split(". ")[0].rstrip(".") + "."
    return Text.assemble((f"{worst.value.upper()}: ", _STYLE[worst]), (f"{top.kind}: ", "bold"), first_sentence, (f"  ({counts})", "dim"))


def _finding(finding: Finding) -> RenderableType:
    body: list[RenderableType] = [Text(finding.message)]
    if finding.modules:
        shown = ", ".join(finding.modules[:12]) + (f" … (+{len(finding.modules) - 12})" if len(finding.modules) > 12 else "")
        body.append(Text.assemble(("modules: ", "bold"), shown))
    evidence = _evidence_lines(finding.evidence)
    if evidence:
        body.append(Text.assemble(("evidence: ", "bold"), evidence))
    if finding.fix:
        body.append(Text.assemble(("fix: ", "bold green"), finding.fix))
    if finding.fix_code:
        body.append(Syntax(finding.fix_code, "python", theme="ansi_dark", background_color="default", word_wrap=True))
    style = _STYLE[finding.severity]
    return Panel(Group(*body), title=f"[{style}]{finding.severity.value}[/] {finding.kind}", title_align="left", border_style=style)


def _evidence_lines(evidence: dict[str, Any]) -> str:
    parts = []
    for key, value in evidence.items():
        if value in (None, [], {}, ""):
            continue
        parts.append(f"{key}={_short(value)}")
    return "; ".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        items = list(value.items())
        text = ", ".join(f"{k}: {_short(v)}" for k, v in items[:_MAX_EVIDENCE_ITEMS])
        return "{" + text + (f", … +{len(items) - _MAX_EVIDENCE_ITEMS}" if len(items) > _MAX_EVIDENCE_ITEMS else "") + "}"
    if isinstance(value, list):
        text = ", ".join(_short(v) for v in value[:_MAX_EVIDENCE_ITEMS])
        return "[" + text + (f", … +{len(value) - _MAX_EVIDENCE_ITEMS}" if len(value) > _MAX_EVIDENCE_ITEMS else "") + "]"
    return str(value)


def _layer_table(rows: list[LayerRow], all_layers: bool) -> RenderableType:
    shown = rows
    if not all_layers and len(rows) > _MAX_LAYER_ROWS:
        interesting = [r for r in rows if (r.zero_fraction or 0) > 0 or r.masked or r.pattern not in (None, "dense")]
        shown = (interesting or rows)[:_MAX_LAYER_ROWS]
    table = Table(box=box.SIMPLE_HEAD, title="layers", title_justify="left", title_style="bold")
    for column, justify in [("module", "left"), ("type", "left"), ("shape", "left"), ("params", "right"), ("zero", "right"), ("pattern", "left"), ("dtype", "left")]:
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in shown:
        fraction = row.zero_fraction
        zero = "?" if fraction is None else f"{fraction:.1%}"
        type_text = row.type if row.type_source == "module" else f"{row.type}*"
        table.add_row(
            row.name,
            type_text,
            "×".join(map(str, row.shape)) if row.shape else "-",
            f"{row.params:,}",
            zero,
            (row.pattern or "") + (" (masked)" if row.masked else ""),
            row.dtype,
        )
    hidden = len(rows) - len(shown)
    if hidden:
        table.caption = f"{hidden} more layers with nothing to note (all in --json, or --all-layers); * type inferred from shapes"
    elif any(r.type_source != "module" for r in rows):
        table.caption = "* type inferred from names and shapes"
    return table


def _bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


_MAX_PROFILE_LAYERS = 15


def _profile_tables(profile: ProfileResult) -> list[RenderableType]:
    env = profile.environment
    parts: list[RenderableType] = []
    setting = f"{env.device} ({env.device_name}), {env.threads} threads, timer {env.timer}, {env.warmup_runs} warm-up runs"
    if env.cudnn_benchmark is not None:
        setting += f", cudnn.benchmark={env.cudnn_benchmark}"
    parts.append(Text.assemble(("profile: ", "bold"), setting))
    parts += [Text(f"  {line}", style="dim") for line in [env.nvml_status, *env.notes] if line]
    parts.append(_latency_table(profile))
    parts.append(_flops_table(profile))
    parts.append(_profile_layer_table(profile))
    if profile.nvml:
        n = profile.nvml
        parts.append(
            Text(
                f"NVML ({n.samples} samples every {n.interval_ms:.0f} ms): SM util median {n.sm_util_median:.0f}% "
                f"(p90 {n.sm_util_p90:.0f}%), memory-controller util {n.mem_util_median:.0f}%, memory used "
                f"{n.mem_used_mb_max:.0f} MB"
                + (f", power {n.power_w_median:.0f} W" if n.power_w_median is not None else "")
                + (f", SM clock {n.sm_clock_mhz_median:.0f} MHz" if n.sm_clock_mhz_median is not None else "")
                + (f", throttle: {', '.join(n.throttle_reasons)}" if n.throttle_reasons else "")
            )
        )
    b = profile.balance
    parts.append(
        Text(
            f"machine: {b.peak_flops / 1e9:.1f} GFLOP/s GEMM, {b.bandwidth / 1e9:.1f} GB/s copy, balance "
            f"{b.balance:.1f} FLOPs/byte, {b.op_overhead_s * 1e6:.1f} µs per near-empty op",
            style="dim",
        )
    )
    return parts


def _latency_table(profile: ProfileResult) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title="latency", title_justify="left", title_style="bold")
    for column in ("batch", "model", "median ms", "IQR ms", "p90 ms", "samples", "speedup"):
        table.add_column(column, justify="right" if column not in ("model",) else "left")
    for stats in sorted(profile.latency, key=lambda s: (s.batch, s.label)):
        dense = profile.median("dense", stats.batch)
        speedup = f"{dense / stats.median_ms:.2f}×" if stats.label == "pruned" and dense else ""
        table.add_row(
            str(stats.batch),
            stats.label + (" (noisy)" if stats.noisy else ""),
            f"{stats.median_ms:.3f}",
            f"{stats.iqr_ms:.3f}",
            f"{stats.p90_ms:.3f}",
            str(len(stats.samples_ms)),
            speedup,
        )
    return table


def _flops_table(profile: ProfileResult) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title="FLOPs (fvcore: one multiply-add = one MAC)", title_justify="left", title_style="bold")
    for column in ("model", "MACs", "params", "not counted"):
        table.add_column(column, justify="left" if column in ("model", "not counted") else "right")
    for label, flops in profile.flops.items():
        uncounted = ", ".join(f"{op}×{n}" for op, n in list(flops.unsupported_ops.items())[:4])
        table.add_row(label, f"{flops.macs:,}", f"{flops.params:,}", uncounted)
    return table


def _profile_layer_table(profile: ProfileResult) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title="where the time goes (pruned model)", title_justify="left", title_style="bold")
    for column in ("module", "type", "ms", "share", "MACs", "FLOP/B", "bound", "pruned"):
        table.add_column(column, justify="left" if column in ("module", "type", "bound", "pruned") else "right")
    for layer in sorted(profile.layers, key=lambda l: -l.time_ms)[:_MAX_PROFILE_LAYERS]:
        pruned = "" if layer.pruned is None else ("yes" if layer.pruned else "no")
        table.add_row(
            layer.name, layer.type, f"{layer.time_ms:.3f}", f"{layer.share:.1%}", f"{layer.macs:,}",
            f"{layer.intensity:.2g}", layer.bound, pruned,
        )
    if profile.unpruned_time_share is not None:
        table.caption = f"{profile.unpruned_time_share:.0%} of the layer time is in layers the pruning did not touch"
    return table
