"""The HTML report: a page for people, to attach to a pull request or an issue.

Self-contained (no network: inline CSS, inline SVG charts drawn here, a few lines of
inline script for the copy buttons): a title block with the command, the tool and torch
versions and the date; per checkpoint the verdict, the findings as collapsible blocks
with their code, a chart of the channels each layer kept against the dense reference
(or of each layer's zeros without one), latency and speedup against the batch when
profiled, and the per-layer table. Several checkpoints open with the comparison table.
"""

from __future__ import annotations

import html
from datetime import datetime
from pathlib import PurePath
from typing import Any

from .emit import EmitOptions, fails
from .model import Finding, LayerRow, Report, ReportSet, RunInfo, Severity
from .render_rich import more_findings
from .sections import profile_from_dict
from .verdict import first_sentence

__all__ = ["HtmlRenderer"]

_MAX_CHART_ROWS = 80
_OPEN_TABLE_ROWS = 40


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


class HtmlRenderer:
    name = "html"
    extension = ".html"

    def render(self, results: ReportSet, options: EmitOptions = EmitOptions()) -> str:
        reports = results.reports
        title = f"analyze: {PurePath(reports[0].source.path).name}" if len(reports) == 1 else f"analyze: {len(reports)} checkpoints"
        body = [_run_block(title, results.run, reports, options.fail_on)]
        if len(reports) > 1:
            body.append(_comparison(reports))
        body += [_report(r, i, options.fail_on, several=len(reports) > 1) for i, r in enumerate(reports)]
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
            + "\n".join(body)
            + f"\n</main>\n<script>{_SCRIPT}</script>\n</body>\n</html>\n"
        )


# -- blocks ------------------------------------------------------------------------------


def _run_block(title: str, run: RunInfo, reports: list[Report], fail_on: str) -> str:
    findings = [f for r in reports for f in r.findings]
    failing = sum(1 for f in findings if fails(f, fail_on))
    outcome = (
        f'<span class="outcome fail">fails --fail-on {_e(fail_on)}</span>'
        if failing
        else f'<span class="outcome pass">passes --fail-on {_e(fail_on)}</span>'
    )
    facts = []
    if run.command:
        facts.append(f"<dt>command</dt><dd><code>{_e(' '.join(run.command))}</code></dd>")
    versions = [f"{run.distribution or run.tool} {run.version}".strip()] if run.version else []
    if run.torch:
        versions.append(f"torch {run.torch}")
    if run.python:
        versions.append(f"Python {run.python}")
    if versions:
        facts.append(f"<dt>versions</dt><dd>{_e(' · '.join(versions))}</dd>")
    if run.created:
        facts.append(f"<dt>date</dt><dd><time datetime=\"{_e(run.created)}\">{_e(_date(run.created))}</time></dd>")
    if run.select or run.ignore:
        chosen = ([f"select {', '.join(run.select)}"] if run.select else []) + ([f"ignore {', '.join(run.ignore)}"] if run.ignore else [])
        facts.append(f"<dt>kinds</dt><dd>{_e('; '.join(chosen))}</dd>")
    if run.baseline_report:
        facts.append(f"<dt>baseline report</dt><dd><code>{_e(run.baseline_report)}</code> (its findings are not shown)</dd>")
    return f"<header>\n<h1>{_e(title)} {outcome}</h1>\n<dl class=\"run\">{''.join(facts)}</dl>\n</header>"


def _date(created: str) -> str:
    try:
        return datetime.fromisoformat(created.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return created


def _comparison(reports: list[Report]) -> str:
    rows = []
    for i, report in enumerate(reports):
        s = report.summary
        counted = s.params - s.params_without_data
        zero = f"{1 - s.nonzero_params / counted:.1%}" if counted else "-"
        kinds = " ".join(_badge(f.severity, f.kind) for f in _distinct(report.findings)) or '<span class="none">none</span>'
        latency = _latency(report)
        rows.append(
            f"<tr><th scope=\"row\"><a href=\"#r{i}\">{_e(report.source.path)}</a></th><td class=\"num\">{s.params:,}</td>"
            f"<td class=\"num\">{zero}</td><td class=\"num\">{f'{s.macs:,}' if s.macs is not None else '-'}</td>"
            f"<td class=\"num\">{_e(latency)}</td><td>{kinds}</td></tr>"
        )
    head = "<tr><th>checkpoint</th><th>params</th><th>zero</th><th>MACs</th><th>latency ms</th><th>findings</th></tr>"
    return f"<section>\n<h2>Checkpoints</h2>\n<div class=\"scroll\"><table class=\"compare\"><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></div>\n</section>"


def _report(report: Report, index: int, fail_on: str, several: bool) -> str:
    source, summary = report.source, report.summary
    counted = summary.params - summary.params_without_data
    zero = 1 - summary.nonzero_params / counted if counted else 0.0
    worst = report.worst_severity()
    parts = [f"<section class=\"report\" id=\"r{index}\">"]
    parts.append(f"<h2>{_e(source.path)}</h2>" if several else "")
    meta = [f"{source.format}, {source.container}, read by {source.loader}", f"{summary.params:,} parameters ({zero:.1%} zero) in {summary.layers} layers"]
    if summary.macs is not None:
        meta.append(f"{summary.macs:,} MACs per sample on {'×'.join(map(str, summary.macs_input_shape or []))}")
    if source.placeholders:
        meta.append("placeholders: " + ", ".join(source.placeholders))
    parts.append(f"<p class=\"meta\">{' · '.join(_e(m) for m in meta)}</p>")
    verdict = (report.verdict or "No problems found.") + more_findings(report)
    parts.append(f"<div class=\"verdict {_sev_class(worst)}\"><strong>Verdict.</strong> {_e(verdict)}</div>")
    if report.findings:
        parts.append(f"<h3>Findings ({len(report.findings)})</h3>")
        parts += [_finding(f, fail_on, f"r{index}f{j}", opened=j == 0) for j, f in enumerate(report.findings)]
    chart = _channel_chart(report.layers)
    if chart:
        parts.append(chart)
    if report.profile:
        parts.append(_profile_charts(report.profile))
    if report.compaction:
        parts.append(_compaction(report.compaction))
    if report.layers:
        parts.append(_layer_table(report.layers))
    extra = [f"<li>{_e(n)}</li>" for n in report.notes] + [f"<li class=\"na\">not analysed: {_e(n)}</li>" for n in report.not_analysed]
    if extra:
        parts.append(f"<h3>Notes</h3><ul class=\"notes\">{''.join(extra)}</ul>")
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def _finding(f: Finding, fail_on: str, anchor: str, opened: bool = False) -> str:
    """Collapsed, except errors and the finding the verdict leads with (the first)."""
    opened_attr = " open" if opened or f.severity is Severity.ERROR else ""
    fails_mark = ' <span class="fails">fails</span>' if fails(f, fail_on) else ""
    body = [f"<p>{_e(f.message)}</p>"]
    if f.modules:
        body.append(f"<p><b>modules</b> {', '.join(f'<code>{_e(m)}</code>' for m in f.modules)}</p>")
    evidence = [(k, v) for k, v in f.evidence.items() if v not in (None, [], {}, "")]
    if evidence:
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_short(v))}</td></tr>" for k, v in evidence)
        body.append(f"<details class=\"evidence\"><summary>evidence</summary><table>{rows}</table></details>")
    if f.fix:
        body.append(f"<p><b>fix</b> {_e(f.fix)}</p>")
    if f.fix_code:
        body.append(
            f"<div class=\"code\"><button type=\"button\" class=\"copy\" aria-label=\"copy the code\">copy</button>"
            f"<pre><code class=\"language-python\">{_e(f.fix_code.rstrip())}</code></pre></div>"
        )
    summary = f"{_badge(f.severity, f.severity.value)} <code>{_e(f.kind)}</code>{fails_mark} — {_e(first_sentence(f.message))}"
    return f"<details class=\"finding {_sev_class(f.severity)}\" id=\"{anchor}\"{opened_attr}><summary>{summary}</summary>{''.join(body)}</details>"


def _layer_table(rows: list[LayerRow]) -> str:
    head = "<tr><th>module</th><th>type</th><th>shape</th><th>params</th><th>zero</th><th>pattern</th><th>out channels</th><th></th></tr>"
    body = []
    for row in rows:
        fraction = row.zero_fraction
        kept = "" if row.out_channels is None else (f"{row.out_channels}/{row.reference_out}" if row.reference_out else str(row.out_channels))
        body.append(
            f"<tr><th scope=\"row\"><code>{_e(row.name)}</code></th><td>{_e(row.type)}</td>"
            f"<td class=\"num\">{_e('×'.join(map(str, row.shape)) if row.shape else '-')}</td><td class=\"num\">{row.params:,}</td>"
            f"<td class=\"num\">{'' if fraction is None else f'{fraction:.1%}'}</td><td>{_e(row.pattern or '')}</td>"
            f"<td class=\"num\">{_e(kept)}</td><td>{'masked' if row.masked else ''}</td></tr>"
        )
    opened = " open" if len(rows) <= _OPEN_TABLE_ROWS else ""
    table = f"<div class=\"scroll\"><table class=\"layers\"><thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div>"
    return f"<details class=\"layers\"{opened}><summary><h3>Layers ({len(rows)})</h3></summary>{table}</details>"


def _compaction(data: dict[str, Any]) -> str:
    if data.get("refused"):
        text = f"Not compacted: {data['refused']}."
    else:
        removed = sum(g["removed"] for g in data.get("groups", []))
        text = (
            f"Wrote {data['output']} ({data.get('saved_as')}): {removed} channels removed; params {data['params_before']:,} → "
            f"{data['params_after']:,}; outputs equal within {data.get('tolerance') or 0:.2g}."
        )
    code = f"<div class=\"code\"><button type=\"button\" class=\"copy\">copy</button><pre><code>{_e(data['load_code'])}</code></pre></div>" if data.get("load_code") else ""
    return f"<h3>Compaction</h3><p>{_e(text)}</p>{code}"


# -- charts (inline SVG) -----------------------------------------------------------------


def _channel_chart(rows: list[LayerRow]) -> str:
    """Kept channels per layer against the reference; without a reference, each layer's zeros."""
    with_reference = [r for r in rows if r.reference_out and r.out_channels is not None and "Norm" not in r.type]
    if with_reference:
        items = [(r.name, r.out_channels / r.reference_out, f"{r.out_channels}/{r.reference_out}") for r in with_reference]  # type: ignore[operator]
        title, legend = "Channels kept per layer", "kept channels, against the dense reference (100%)"
    else:
        zeros = [r for r in rows if r.weight_sparsity and r.weight_sparsity > 0.001]
        if not zeros:
            return ""
        items = [(r.name, 1 - (r.weight_sparsity or 0), f"{r.weight_sparsity:.0%} zero") for r in zeros]
        title, legend = "Non-zero weights per layer", "share of each layer's weights that is not zero (no dense reference given)"
    shown = items[:_MAX_CHART_ROWS]
    row_h, label_w, bar_w, value_w = 16, 230, 420, 90
    width = label_w + bar_w + value_w
    height = row_h * len(shown) + 24
    marks = [f"<line x1=\"{label_w + bar_w * t / 4:.1f}\" y1=\"0\" x2=\"{label_w + bar_w * t / 4:.1f}\" y2=\"{height - 20}\" class=\"grid\"/>"
             f"<text x=\"{label_w + bar_w * t / 4:.1f}\" y=\"{height - 6}\" class=\"axis\" text-anchor=\"middle\">{t * 25}%</text>" for t in range(5)]
    bars = []
    for i, (name, ratio, value) in enumerate(shown):
        y = i * row_h
        ratio = max(0.0, min(ratio, 1.5))
        tone = "good" if ratio >= 0.9 else "mid" if ratio >= 0.5 else "low"
        bars.append(
            f"<g><title>{_e(name)}: {_e(value)}</title>"
            f"<text x=\"{label_w - 6}\" y=\"{y + 12}\" class=\"label\" text-anchor=\"end\">{_e(_tail(name, 34))}</text>"
            f"<rect x=\"{label_w}\" y=\"{y + 3}\" width=\"{bar_w}\" height=\"{row_h - 5}\" class=\"ref\"/>"
            f"<rect x=\"{label_w}\" y=\"{y + 3}\" width=\"{bar_w * min(ratio, 1.0):.1f}\" height=\"{row_h - 5}\" class=\"bar {tone}\"/>"
            f"<text x=\"{label_w + bar_w + 6}\" y=\"{y + 12}\" class=\"value\">{_e(value)}</text></g>"
        )
    more = f"<p class=\"caption\">The first {_MAX_CHART_ROWS} of {len(items)} layers; the table below has all.</p>" if len(items) > len(shown) else ""
    svg = (
        f"<svg class=\"chart\" role=\"img\" aria-label=\"{_e(title)}\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" "
        f"xmlns=\"http://www.w3.org/2000/svg\">{''.join(marks)}{''.join(bars)}</svg>"
    )
    return f"<figure><figcaption><h3>{_e(title)}</h3><span>{_e(legend)}</span></figcaption>{svg}{more}</figure>"


def _profile_charts(data: dict[str, Any]) -> str:
    profile = profile_from_dict(data)
    batches = profile.batches()
    labels = [label for label in ("dense", "pruned") if any(s.label == label for s in profile.latency)]
    series = {label: [(b, profile.median(label, b)) for b in batches] for label in labels}
    latency = _line_chart(
        "Latency by batch (median ms)", batches, {k: [v for _, v in pts] for k, pts in series.items()}, unit="ms", reference=None
    )
    parts = [latency]
    if "dense" in labels and "pruned" in labels:
        speedups = [
            (d / p) if d and p else None
            for (_, d), (_, p) in zip(series["dense"], series["pruned"])
        ]
        dense_flops, pruned_flops = profile.flops.get("dense"), profile.flops.get("pruned")
        expected = dense_flops.macs / pruned_flops.macs if dense_flops and pruned_flops and pruned_flops.macs else None
        parts.append(_line_chart("Speedup by batch (dense ÷ pruned)", batches, {"measured": speedups}, unit="×", reference=expected))
    env = profile.environment
    caption = f"{env.device} ({env.device_name}), {env.threads} threads, timer {env.timer}"
    return f"<figure class=\"profile\"><figcaption><h3>Profile</h3><span>{_e(caption)}</span></figcaption>{''.join(parts)}</figure>"


def _line_chart(title: str, batches: list[int], series: dict[str, list[float | None]], unit: str, reference: float | None) -> str:
    width, height, left, right, top, bottom = 360, 220, 48, 12, 26, 34
    values = [v for vs in series.values() for v in vs if v is not None] + ([reference] if reference else []) + ([1.0] if unit == "×" else [])
    top_value = max(values or [1.0]) * 1.15 or 1.0
    plot_w, plot_h = width - left - right, height - top - bottom

    def x_at(i: int) -> float:
        return left + (plot_w * (i + 0.5) / max(len(batches), 1))

    def y_at(v: float) -> float:
        return top + plot_h * (1 - v / top_value)

    out = [f"<text x=\"{left}\" y=\"16\" class=\"title\">{_e(title)}</text>"]
    for t in range(5):
        v = top_value * t / 4
        out.append(f"<line x1=\"{left}\" y1=\"{y_at(v):.1f}\" x2=\"{width - right}\" y2=\"{y_at(v):.1f}\" class=\"grid\"/>")
        out.append(f"<text x=\"{left - 4}\" y=\"{y_at(v) + 4:.1f}\" class=\"axis\" text-anchor=\"end\">{v:.3g}</text>")
    for i, b in enumerate(batches):
        out.append(f"<text x=\"{x_at(i):.1f}\" y=\"{height - bottom + 16}\" class=\"axis\" text-anchor=\"middle\">{b}</text>")
    out.append(f"<text x=\"{left + plot_w / 2:.1f}\" y=\"{height - 4}\" class=\"axis\" text-anchor=\"middle\">batch</text>")
    if unit == "×":
        out.append(f"<line x1=\"{left}\" y1=\"{y_at(1.0):.1f}\" x2=\"{width - right}\" y2=\"{y_at(1.0):.1f}\" class=\"one\"/>")
    if reference:
        out.append(f"<line x1=\"{left}\" y1=\"{y_at(reference):.1f}\" x2=\"{width - right}\" y2=\"{y_at(reference):.1f}\" class=\"expected\"/>")
        out.append(f"<text x=\"{width - right}\" y=\"{y_at(reference) - 4:.1f}\" class=\"axis\" text-anchor=\"end\">{reference:.2f}× expected from FLOPs</text>")
    for n, (label, vs) in enumerate(series.items()):
        points = [(x_at(i), y_at(v), v) for i, v in enumerate(vs) if v is not None]
        css = f"s{n}" if unit == "×" else ("dense" if label == "dense" else "pruned")
        if len(points) > 1:
            out.append(f"<polyline points=\"{' '.join(f'{x:.1f},{y:.1f}' for x, y, _ in points)}\" class=\"line {css}\"/>")
        for x, y, v in points:
            out.append(f"<circle cx=\"{x:.1f}\" cy=\"{y:.1f}\" r=\"3.5\" class=\"dot {css}\"><title>{_e(label)}: {v:.3g} {unit}</title></circle>")
            out.append(f"<text x=\"{x + 6:.1f}\" y=\"{y - 6:.1f}\" class=\"value\">{v:.3g}</text>")
        if unit != "×":
            out.append(f"<text x=\"{left + 8 + 70 * n}\" y=\"{top + 12}\" class=\"legend {css}\">● {_e(label)}</text>")
    return (
        f"<svg class=\"chart small\" role=\"img\" aria-label=\"{_e(title)}\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" "
        f"xmlns=\"http://www.w3.org/2000/svg\">{''.join(out)}</svg>"
    )


# -- helpers -----------------------------------------------------------------------------


def _latency(report: Report) -> str:
    if not report.profile:
        return "-"
    profile = profile_from_dict(report.profile)
    batches = profile.batches()
    median = profile.median("pruned", batches[0]) if batches else None
    return f"{median:.3f} @ {batches[0]}" if median is not None else "-"


def _tail(name: str, width: int) -> str:
    """The end of a long module name (its distinctive part), with an ellipsis in front."""
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _badge(severity: Severity, text: str) -> str:
    return f"<span class=\"badge {_sev_class(severity)}\">{_e(text)}</span>"


def _sev_class(severity: Severity | None) -> str:
    return "sev-ok" if severity is None else f"sev-{severity.value}"


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 400 else text[:399] + "…"


def _distinct(findings: list[Finding]) -> list[Finding]:
    seen: set[str] = set()
    out = []
    for f in findings:
        if f.kind not in seen:
            seen.add(f.kind)
            out.append(f)
    return out


_CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--bg:#fff;--soft:#f6f8fa;--err:#cf222e;--warn:#9a6700;--info:#0969da;--ok:#1a7f37}
*{box-sizing:border-box}body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif}
main{max-width:1100px;margin:0 auto;padding:24px}h1{font-size:24px;margin:0 0 8px}h2{font-size:20px;margin:28px 0 6px;word-break:break-all}
h3{font-size:16px;margin:20px 0 6px;display:inline-block}code,pre{font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
dl.run{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0;color:var(--muted)}dl.run dt{font-weight:600}dl.run dd{margin:0;word-break:break-all}
.outcome{font-size:13px;vertical-align:middle;padding:2px 8px;border-radius:10px;color:#fff}.outcome.fail{background:var(--err)}.outcome.pass{background:var(--ok)}
.meta{color:var(--muted);margin:4px 0}.verdict{border-left:4px solid var(--ok);background:var(--soft);padding:10px 14px;margin:12px 0}
.verdict.sev-error{border-color:var(--err)}.verdict.sev-warning{border-color:var(--warn)}.verdict.sev-info{border-color:var(--info)}
details.finding{border:1px solid var(--line);border-left:4px solid var(--info);border-radius:6px;margin:8px 0;padding:6px 12px}
details.finding.sev-error{border-left-color:var(--err)}details.finding.sev-warning{border-left-color:var(--warn)}
details.finding>summary{cursor:pointer}details.finding p{margin:6px 0}
.badge{display:inline-block;font-size:12px;font-weight:600;padding:0 6px;border-radius:8px;color:#fff;background:var(--info);margin-right:4px}
.badge.sev-error{background:var(--err)}.badge.sev-warning{background:var(--warn)}.fails{color:var(--err);font-weight:600;font-size:13px}
.code{position:relative}.code pre{background:var(--soft);border:1px solid var(--line);border-radius:6px;padding:10px 12px;overflow-x:auto;white-space:pre}
.copy{position:absolute;top:6px;right:6px;font-size:12px;padding:2px 8px;border:1px solid var(--line);border-radius:4px;background:#fff;cursor:pointer}
table{border-collapse:collapse;font-size:13px}th,td{padding:3px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}table.compare th[scope=row],table.layers th[scope=row]{word-break:break-all}
.scroll{overflow-x:auto}.evidence table th{font-weight:600;white-space:nowrap}.none{color:var(--ok)}
figure{margin:16px 0}figcaption span{color:var(--muted);margin-left:10px;font-size:13px}
svg.chart{display:block;max-width:100%;height:auto;font:11px ui-monospace,monospace}svg.small{display:inline-block;margin-right:16px}
svg .grid{stroke:#eaeef2}svg .axis{fill:var(--muted)}svg .label{fill:var(--fg)}svg .value{fill:var(--muted)}svg .title{font:600 13px system-ui,sans-serif;fill:var(--fg)}
svg .ref{fill:#eaeef2}svg .bar.good{fill:#2da44e}svg .bar.mid{fill:#bf8700}svg .bar.low{fill:#cf222e}
svg .line{fill:none;stroke-width:2}svg .line.dense{stroke:#8c959f}svg .dot.dense{fill:#8c959f}
svg .line.pruned,svg .line.s0{stroke:#0969da}svg .dot.pruned,svg .dot.s0{fill:#0969da}svg .legend.dense{fill:#6e7781}svg .legend.pruned{fill:#0969da}svg .one{stroke:#8c959f;stroke-dasharray:2 3}svg .expected{stroke:#2da44e;stroke-dasharray:6 4}
ul.notes{color:var(--muted);font-size:13px}details.layers>summary{cursor:pointer}details.layers>summary h3{margin:16px 0 6px}
@media print{.copy{display:none}details{break-inside:avoid}}
"""

_SCRIPT = """
document.querySelectorAll("button.copy").forEach(function (button) {
  button.addEventListener("click", function () {
    var code = button.parentElement.querySelector("code").innerText;
    var done = function () { button.textContent = "copied"; setTimeout(function () { button.textContent = "copy"; }, 1500); };
    if (navigator.clipboard && window.isSecureContext) { navigator.clipboard.writeText(code).then(done); return; }
    var area = document.createElement("textarea"); area.value = code; document.body.appendChild(area);
    area.select(); document.execCommand("copy"); document.body.removeChild(area); done();
  });
});
"""
