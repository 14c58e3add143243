"""The HTML report (`--export-html`, `--output-format html`): a self-contained page for people.

Read back with html.parser: the title block (command, versions, date), the verdict, one
collapsible block per finding with its code exactly as in the JSON, the per-layer table,
and charts drawn as inline SVG whose bars and points are checked against the report's
numbers. Then opened in headless Chromium: the DOM it builds and a screenshot whose
pixels show the charts.
"""

from __future__ import annotations

import html.parser
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.utils.prune as prune

from analyzer import analyze
from analyzer.report.emit import EmitOptions, renderer
from analyzer.report.model import Report, ReportSet, RunInfo

from .models import SmallNet
from .test_report_output import ARCH, SHAPE, _hand_made_profile, _save_masked, _save_tp_pruned, _with_profile


class Page(html.parser.HTMLParser):
    """The parts of the page the tests look at: elements with their attributes and text."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[dict[str, Any]] = []
        self._open: list[dict[str, Any]] = []
        self.feed(markup)
        self.close()

    _VOID = {"meta", "br", "img", "input", "link", "hr", "rect", "line", "polyline"}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = {"tag": tag, "attrs": dict(attrs), "text": "", "parents": [e["tag"] for e in self._open]}
        self.elements.append(element)
        if tag not in self._VOID:
            self._open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append({"tag": tag, "attrs": dict(attrs), "text": "", "parents": [e["tag"] for e in self._open]})

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()["tag"] == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element["text"] += data

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.elements if e["tag"] == tag and (cls is None or cls in (e["attrs"].get("class") or "").split())]


@pytest.fixture(scope="module")
def profiled_set(tmp_path_factory: pytest.TempPathFactory) -> ReportSet:
    folder = tmp_path_factory.mktemp("html")
    tp_path = _save_tp_pruned(folder / "resnet18_tp.pth")
    profiled = _with_profile(analyze(tp_path, arch=ARCH, input_shape=SHAPE), _hand_made_profile())
    masked = analyze(_save_masked(folder / "masked.pth"))
    run = RunInfo(
        distribution="prune-analyzer", version="0.2.0", torch=torch.__version__, python="3.11.7",
        command=["analyze", str(tp_path), str(folder / "masked.pth"), "--arch", ARCH], created="2026-03-04T05:06:07Z",
    )
    return ReportSet([profiled, masked], run=run)


def test_html_report_holds_the_run_the_findings_and_the_tables(profiled_set: ReportSet) -> None:
    markup = renderer("html").render(profiled_set, EmitOptions(fail_on="error"))
    page = Page(markup)
    assert markup.startswith("<!DOCTYPE html>")
    assert page.find("title")[0]["text"] == "analyze: 2 checkpoints"
    run = " ".join(page.find("dl", "run")[0]["text"].split())
    assert profiled_set.run.command and " ".join(profiled_set.run.command) in run
    assert f"prune-analyzer 0.2.0 · torch {torch.__version__} · Python 3.11.7" in run
    assert "2026-03-04 05:06 UTC" in run
    # The comparison: one row per checkpoint, linking to its section.
    links = [a["attrs"]["href"] for a in page.find("a")]
    assert links == ["#r0", "#r1"] and [s["attrs"].get("id") for s in page.find("section", "report")] == ["r0", "r1"]
    all_findings = [f for r in profiled_set.reports for f in r.findings]
    blocks = page.find("details", "finding")
    assert len(blocks) == len(all_findings)
    for block, finding in zip(blocks, all_findings):
        assert finding.kind in block["text"] and " ".join(finding.message.split()) in " ".join(block["text"].split())
    for report in profiled_set.reports:  # open: the finding the verdict leads with, and every error
        for j, finding in enumerate(report.findings):
            block = blocks.pop(0)
            assert ("open" in block["attrs"]) == (j == 0 or finding.severity.value == "error")
    codes = [c["text"] for c in page.find("code", "language-python")]
    assert codes == [f.fix_code.rstrip() for f in all_findings if f.fix_code]  # copyable: the exact code
    assert len(page.find("button", "copy")) == len(codes)
    for report, verdict in zip(profiled_set.reports, page.find("div", "verdict")):
        assert report.verdict in " ".join(verdict["text"].split())
    tables = page.find("table", "layers")
    body_rows = [[r for r in _rows_of(page, t) if r["tag"] == "tr" and "tbody" in r["parents"]] for t in tables]
    assert [len(rows) for rows in body_rows] == [len(r.layers) for r in profiled_set.reports]
    names = [e["text"] for e in _rows_of(page, tables[0]) if e["tag"] == "th" and e["attrs"].get("scope") == "row"]
    assert names == [r.name for r in profiled_set.reports[0].layers]


def _inside(page: Page, element: dict[str, Any]) -> list[dict[str, Any]]:
    """The elements from `element` up to the next element of the same tag."""
    start = page.elements.index(element)
    end = next((i for i, e in enumerate(page.elements[start + 1 :], start + 1) if e["tag"] == element["tag"]), len(page.elements))
    return page.elements[start:end]


def _rows_of(page: Page, table: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in _inside(page, table) if e["tag"] in ("tr", "th")]


def test_html_charts_draw_the_reports_numbers(profiled_set: ReportSet) -> None:
    page = Page(renderer("html").render(profiled_set))
    report = profiled_set.reports[0]
    # Channels kept: one bar per conv/linear layer with a reference width, as long as kept/reference.
    expected = [(r.name, r.out_channels / r.reference_out) for r in report.layers if r.reference_out and r.out_channels is not None and "Norm" not in r.type]
    chart = _inside(page, page.find("svg", "chart")[0])
    assert chart[0]["attrs"]["aria-label"] == "Channels kept per layer"
    groups = [e for e in chart if e["tag"] == "g"]
    bars = [e for e in chart if e["tag"] == "rect" and "bar" in e["attrs"]["class"]]
    refs = [e for e in chart if e["tag"] == "rect" and e["attrs"]["class"] == "ref"]
    assert len(bars) == len(refs) == len(expected) == 21
    for (name, ratio), bar, ref, group in zip(expected, bars, refs, groups):
        assert abs(float(bar["attrs"]["width"]) / float(ref["attrs"]["width"]) - ratio) < 0.01, name
        assert group["text"].startswith(f"{name}: ")
    # Latency and speedup against the batch: the medians of the profile.
    profile = _hand_made_profile()
    dots = [e for e in page.elements if e["tag"] == "circle"]
    titles = [d["text"] for d in dots]
    for label in ("dense", "pruned"):
        for batch in profile.batches():
            assert f"{label}: {profile.median(label, batch):.3g} ms" in titles
    for batch in profile.batches():
        assert f"measured: {profile.median('dense', batch) / profile.median('pruned', batch):.3g} ×" in titles
    # The masked model has no reference: its chart is the share of non-zero weights per layer.
    masked_chart = page.find("svg", "chart")[-1]
    assert masked_chart["attrs"]["aria-label"] == "Non-zero weights per layer"


def test_html_is_self_contained(profiled_set: ReportSet) -> None:
    markup = renderer("html").render(profiled_set)
    page = Page(markup)
    for element in page.elements:
        for name in ("src", "href", "action", "data"):
            value = element["attrs"].get(name)
            assert value is None or value.startswith("#"), f"<{element['tag']} {name}={value!r}> loads something"
    assert not page.find("link") and not [s for s in page.find("script") if "src" in s["attrs"]]
    assert "@import" not in markup and "url(" not in markup
    outside = set(re.findall(r"https?://[^\s\"'<>]+", markup)) - {"http://www.w3.org/2000/svg"}
    assert not outside, outside


def test_export_html_from_the_cli(run_cli, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = SmallNet().eval()
    prune.l1_unstructured(net.conv1, "weight", amount=0.5)
    path = tmp_path / "masked.pth"
    torch.save(net.state_dict(), path)
    target = tmp_path / "report.html"
    result = run_cli(path, "--export-html", target, "--quiet")  # the HTML report does not need the terminal one
    assert result.code == 0 and result.out.count("\n") == 1, result.err
    page = Page(target.read_text(encoding="utf-8"))
    assert page.find("title")[0]["text"] == "analyze: masked.pth"
    assert f"analyze {path} --export-html {target} --quiet" in " ".join(page.find("dl", "run")[0]["text"].split())
    assert [b["text"].split("—")[0].split()[-1] for b in page.find("details", "finding")] == ["pruning-masks", "unstructured-sparsity"]
    same = run_cli(path, "--output-format", "html")
    assert Page(same.out).find("title")[0]["text"] == "analyze: masked.pth"


def _pixels(png: Path) -> tuple[tuple[int, int], dict[str, int]]:
    """The screenshot's size and how many pixels have each of the chart colours."""
    from PIL import Image

    image = Image.open(png).convert("RGB")
    colours = {"bar-green": (0x2D, 0xA4, 0x4E), "bar-yellow": (0xBF, 0x87, 0x00), "line-blue": (0x09, 0x69, 0xDA), "badge-warning": (0x9A, 0x67, 0x00)}
    counts: dict[str, int] = defaultdict(int)
    for n, pixel in image.getcolors(maxcolors=1 << 22) or []:
        for name, rgb in colours.items():
            if max(abs(a - b) for a, b in zip(pixel, rgb)) <= 8:
                counts[name] += n
    return image.size, counts


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_html_in_headless_chromium(profiled_set: ReportSet, tmp_path: Path) -> None:
    page_path = tmp_path / "report.html"
    page_path.write_text(renderer("html").render(profiled_set), encoding="utf-8")
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*browser, "--dump-dom", page_path.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = Page(dom.stdout)
    assert len(rendered.find("details", "finding")) == sum(len(r.findings) for r in profiled_set.reports)
    assert len(rendered.find("svg", "chart")) == 4  # channels kept, latency, speedup; non-zero weights
    screenshot = tmp_path / "report.png"
    shot = subprocess.run(
        [*browser, f"--screenshot={screenshot}", "--window-size=1200,2600", page_path.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert shot.returncode == 0 and screenshot.exists(), shot.stderr[-2000:]
    size, counts = _pixels(screenshot)
    assert size == (1200, 2600)
    # The bars of 21 layers kept at about 70% (yellow) and the fc at 100% (green), the profile's
    # blue lines, the warning badges: the charts were drawn, not just present in the markup.
    assert counts["bar-yellow"] > 20 * 200 and counts["bar-green"] > 200, counts
    assert counts["line-blue"] > 100 and counts["badge-warning"] > 50, counts
