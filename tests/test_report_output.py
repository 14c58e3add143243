"""What a person and a machine read: the terminal report (golden files), the JSON (against
report_schema.json), and the CLI's outputs (--export-html/--export-svg, --load, several
checkpoints, --quiet, progress).

Golden files, torchinfo style: every report is built here from checkpoints made with fixed
seeds, normalised (paths, file sizes), rendered on a 100-column colourless console and
compared with tests/test_output/<name>.out. `pytest --overwrite` rewrites them instead;
read the diff before committing it.
"""

from __future__ import annotations

import difflib
import html.parser
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune
from rich.console import Console

import analyzer
from analyzer import analyze
from analyzer.demo import DEMO_CASES, DemoCase, make_demo_checkpoints
from analyzer.profile.diagnose import diagnose
from analyzer.profile import MeasureOptions, ProfileOptions
from analyzer.profile.result import (
    Environment,
    FlopStats,
    LatencyStats,
    LayerProfile,
    MachineBalance,
    NvmlSummary,
    ProfileResult,
)
from analyzer.report.model import SCHEMA, Report
from analyzer.report.render_rich import RenderOptions, render, render_many
from analyzer.report.verdict import PRIORITY, verdict
from analyzer.zoo import resnet18

from .models import SmallNet, magnitude_prune

GOLDEN_DIR = Path(__file__).parent / "test_output"
SCHEMA_PATH = Path(analyzer.__file__).parent / "report_schema.json"
ARCH = "analyzer.zoo:resnet18"
SHAPE = (1, 3, 32, 32)
#: Stands in for the file size in golden reports (it depends on torch's zip layout).
FILE_SIZE = 123_456


# -- golden-file machinery -------------------------------------------------------------


def render_text(reports: Report | list[Report], options: RenderOptions = RenderOptions()) -> str:
    """The report as a 100-column, colourless terminal shows it."""
    console = Console(file=io.StringIO(), width=100, color_system=None, force_terminal=False, legacy_windows=False)
    if isinstance(reports, Report):
        render(reports, console, options)
    else:
        render_many(reports, console, options)
    return console.file.getvalue()  # type: ignore[attr-defined]


def _lines(text: str) -> list[str]:
    # Trailing blanks are padding: editors and hooks strip them from committed files.
    return [line.rstrip() for line in text.splitlines()]


def assert_matches_golden(actual: str, path: Path, overwrite: bool = False) -> None:
    """Compare `actual` with the golden file at `path` (or rewrite it), with a unified diff on failure."""
    if overwrite:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(_lines(actual)) + "\n", encoding="utf-8")
        return
    assert path.exists(), f"golden file {path} is missing: run `pytest {Path(__file__).name} --overwrite` to create it"
    expected = _lines(path.read_text(encoding="utf-8"))
    got = _lines(actual)
    if got != expected:
        diff = "\n".join(difflib.unified_diff(expected, got, fromfile=f"{path.name} (golden)", tofile=f"{path.name} (rendered now)", lineterm=""))
        raise AssertionError(
            f"the rendered report differs from {path}; if the change is intended, rerun with --overwrite "
            f"and review the diff of the golden file\n{diff}"
        )


@pytest.fixture
def golden(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], None]:
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    overwrite = bool(request.config.getoption("--overwrite"))

    def check(name: str, text: str) -> None:
        assert_matches_golden(text, GOLDEN_DIR / f"{name}.out", overwrite)

    return check


def _replace_strings(value: Any, replacements: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        for old, new in replacements:
            value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {_replace_strings(k, replacements): _replace_strings(v, replacements) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_strings(v, replacements) for v in value]
    return value


def normalise(report: Report, path: Path, name: str = "model.pth") -> Report:
    """The report with the checkpoint's path (wherever it appears) and size made fixed."""
    data = _replace_strings(report.to_dict(), [(str(path), name), (str(path.parent), "<tmp>")])
    out = Report.from_dict(data)
    out.source.path = name
    out.source.file_size = FILE_SIZE
    text = out.to_json()
    assert str(path.parent) not in text and "pytest-of-" not in text, "a temp path survived normalisation"
    return out


# -- checkpoints, made here with fixed seeds -------------------------------------------


def _small_net() -> SmallNet:
    torch.manual_seed(0)
    return SmallNet().eval()


def _save_clean(path: Path) -> Path:
    torch.save(_small_net().state_dict(), path)
    return path


def _save_masked(path: Path) -> Path:
    """torch.nn.utils.prune left with its masks: pruning-masks and unstructured-sparsity."""
    net = _small_net()
    prune.l1_unstructured(net.conv1, "weight", amount=0.5)
    prune.l1_unstructured(net.conv2, "weight", amount=0.5)
    torch.save(net.state_dict(), path)
    return path


def _save_ln_structured(path: Path) -> Path:
    """A few ResNet-18 convs with whole filters zeroed (prune.ln_structured + prune.remove);
    layer1.0.conv2 feeds a residual sum, so some of its zeros cannot be removed."""
    torch.manual_seed(0)
    model = resnet18().eval()
    for name in ("layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1"):
        conv = model.get_submodule(name)
        prune.ln_structured(conv, "weight", amount=0.25, n=2, dim=0)
        prune.remove(conv, "weight")
    torch.save(model.state_dict(), path)
    return path


def _save_tp_pruned(path: Path) -> Path:
    """ResNet-18 with 30% of its channels really removed by torch-pruning (state dict)."""

    torch.manual_seed(0)
    model = resnet18().eval()
    magnitude_prune(model, SHAPE, 0.3, [model.fc])
    torch.save(model.state_dict(), path)
    return path


class DemoCheckpoints:
    """The demo's checkpoints, each made (seeded) and analysed once, on first use."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cases = {case.filename: case for case in DEMO_CASES}
        self._done: dict[str, tuple[Path, Report]] = {}

    def case(self, filename: str) -> DemoCase:
        return self._cases[filename]

    def get(self, filename: str) -> tuple[Path, Report]:
        if filename not in self._done:
            case = self._cases[filename]
            (path,) = make_demo_checkpoints(self.folder, (case,))
            self._done[filename] = (path, analyze(path, **case.analyze_kwargs))
        return self._done[filename]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoCheckpoints:
    return DemoCheckpoints(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def tp_pruned_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tp_pruned(tmp_path_factory.mktemp("tp") / "resnet18_tp.pth")


def _hand_made_profile() -> ProfileResult:
    """A GPU profile with fixed numbers: timings are never deterministic, the renderer must be."""
    times = {  # name: (type, ms, fixed ms, MACs, bytes, FLOP/B, bound, pruned)
        "layer4.1.conv2": ("Conv2d", 0.060, 0.012, 821_762, 6_400_000, 0.26, "memory", True),
        "conv1": ("Conv2d", 0.050, 0.040, 1_216_512, 280_000, 8.7, "overhead", True),
        "layer1.0.conv1": ("Conv2d", 0.040, 0.010, 1_115_136, 107_000, 20.8, "memory", True),
        "layer1.0.conv2": ("Conv2d", 0.040, 0.010, 1_115_136, 107_000, 20.8, "memory", True),
        "fc": ("Linear", 0.030, 0.026, 512_000, 2_100_000, 0.49, "overhead", False),
        "bn1": ("BatchNorm2d", 0.020, 0.017, 0, 200_000, 0.0, "overhead", True),
        "maxpool": ("MaxPool2d", 0.015, 0.013, 0, 120_000, 0.0, "overhead", None),
        "avgpool": ("AdaptiveAvgPool2d", 0.010, 0.009, 0, 4_000, 0.0, "overhead", None),
    }
    total = sum(t[1] for t in times.values())
    layers = [
        LayerProfile(name, kind, ms, fixed, ms / total, macs, nbytes, intensity, bound, pruned)
        for name, (kind, ms, fixed, macs, nbytes, intensity, bound, pruned) in times.items()
    ]
    known = [layer for layer in layers if layer.pruned is not None]
    return ProfileResult(
        environment=Environment(
            device="cuda:0",
            device_name="NVIDIA H100 80GB HBM3",
            threads=16,
            torch_version="2.13.0",
            timer="cuda-events",
            warmup_runs=3,
            cudnn_benchmark=True,
            nvml_status="NVML sampled during the timed loop",
            notes=["clocks were not locked: medians of interleaved rounds are compared"],
        ),
        latency=[
            LatencyStats("dense", 1, [1.00, 1.01, 0.99, 1.02, 1.00, 0.98, 1.00, 1.01, 0.99, 1.00, 1.03, 0.97], 4),
            LatencyStats("pruned", 1, [0.92, 0.93, 0.91, 0.92, 0.94, 0.90, 0.92, 0.93, 0.92, 0.91, 0.92, 0.93], 4),
            LatencyStats("dense", 8, [2.40, 2.41, 2.39, 2.42, 2.40, 2.38, 2.40, 2.41, 2.39, 2.40]),
            # A noisy one: the IQR is above 10% of the median.
            LatencyStats("pruned", 8, [1.50, 1.90, 1.40, 1.95, 1.45, 1.60, 1.85, 1.42, 1.70, 1.55]),
        ],
        flops={
            "dense": FlopStats("dense", [1, 3, 32, 32], 37_523_456, 11_689_512, unsupported_ops={"aten::add_": 8, "aten::max_pool2d": 1}),
            "pruned": FlopStats("pruned", [1, 3, 32, 32], 18_874_368, 5_762_310, unsupported_ops={"aten::add_": 8, "aten::max_pool2d": 1}),
        },
        layers=layers,
        balance=MachineBalance(peak_flops=5.0e13, bandwidth=2.0e12, op_overhead_s=4.5e-6),
        nvml=NvmlSummary(
            samples=120,
            interval_ms=10.0,
            sm_util_median=31.0,
            sm_util_p90=44.0,
            mem_util_median=12.0,
            mem_used_mb_max=1536.0,
            power_w_median=180.0,
            sm_clock_mhz_median=1980.0,
            throttle_reasons=[],
        ),
        fixed_layer_cost_ms=0.012,
        # As the profiler derives them from the layers.
        fixed_cost_share=sum(layer.fixed_ms for layer in layers) / total,
        unpruned_time_share=sum(layer.time_ms for layer in known if not layer.pruned) / sum(layer.time_ms for layer in known),
    )


def _with_profile(report: Report, profile: ProfileResult) -> Report:
    """What analyze(..., profile=True) assembles, with a profile of fixed numbers."""
    findings = sorted(report.findings + diagnose(profile), key=lambda f: -f.severity.rank)
    report.findings = findings
    report.profile = profile.to_dict()
    report.verdict = verdict(findings)
    report.summary.findings = {s: sum(1 for f in findings if f.severity.value == s) for s in ("error", "warning", "info")}
    return report


# -- golden files ----------------------------------------------------------------------


def test_golden_clean_smallnet(tmp_path: Path, golden) -> None:
    path = _save_clean(tmp_path / "clean.pth")
    report = analyze(path)
    assert report.findings == []
    text = render_text(normalise(report, path))
    assert "✔ No problems found." in text
    golden("clean_smallnet", text)


def test_golden_masked_unstructured(tmp_path: Path, golden) -> None:
    path = _save_masked(tmp_path / "masked.pth")
    report = analyze(path)
    assert [f.kind for f in report.findings] == ["pruning-masks", "unstructured-sparsity"]
    golden("masked_unstructured", render_text(normalise(report, path)))


def test_golden_zeroed_channels_with_arch(tmp_path: Path, golden) -> None:
    path = _save_ln_structured(tmp_path / "resnet18_ln.pth")
    report = analyze(path, arch=ARCH, input_shape=SHAPE)
    assert "zeroed-channels" in [f.kind for f in report.findings]
    golden("zeroed_channels_resnet18", render_text(normalise(report, path)))


def test_golden_retinaface_heads_pruned(demo: DemoCheckpoints, golden) -> None:
    path, report = demo.get("retinaface_heads_pruned.pth")
    assert report.findings[0].kind == "head-shape-mismatch"
    golden("retinaface_heads_pruned", render_text(normalise(report, path)))


def test_golden_payload_unsafe_pickle(demo: DemoCheckpoints, golden) -> None:
    path, report = demo.get("payload.pth")
    assert report.findings[0].kind == "unsafe-pickle" and report.findings[0].severity.value == "error"
    assert not list(path.parent.glob("*.PAYLOAD-RAN")), "the payload ran"
    golden("payload_unsafe_pickle", render_text(normalise(report, path)))


def test_golden_profiled(tp_pruned_path: Path, golden) -> None:
    report = _with_profile(analyze(tp_pruned_path, arch=ARCH, input_shape=SHAPE), _hand_made_profile())
    kinds = [f.kind for f in report.findings]
    assert {"no-speedup", "overhead-bound", "memory-bound"} <= set(kinds)
    text = render_text(normalise(report, tp_pruned_path))
    for heading in ("latency", "MACs on 1×3×32×32", "where the time goes", "NVML (120 samples", "machine:"):
        assert heading in text
    golden("profiled", text)


def test_golden_comparison(tmp_path: Path, tp_pruned_path: Path, golden) -> None:
    clean = _save_clean(tmp_path / "clean.pth")
    masked = _save_masked(tmp_path / "masked.pth")
    profiled = _with_profile(analyze(tp_pruned_path, arch=ARCH, input_shape=SHAPE), _hand_made_profile())
    reports = [
        normalise(analyze(clean), clean, "clean.pth"),
        normalise(analyze(masked), masked, "masked.pth"),
        normalise(profiled, tp_pruned_path, "resnet18_tp.pth"),
    ]
    text = render_text(reports)
    assert text.index("checkpoints") < text.index("clean.pth")
    assert "0.920 @ 1" in text  # the pruned median at the first batch, from the profile
    golden("comparison", text)


def test_golden_files_have_no_strays() -> None:
    known = {
        "clean_smallnet", "masked_unstructured", "zeroed_channels_resnet18", "retinaface_heads_pruned",
        "payload_unsafe_pickle", "profiled", "comparison",
    }
    assert {p.stem for p in GOLDEN_DIR.glob("*.out")} <= known


def test_golden_mismatch_fails_with_a_readable_diff(tmp_path: Path) -> None:
    path = _save_clean(tmp_path / "clean.pth")
    text = render_text(normalise(analyze(path), path))
    altered = tmp_path / "clean_smallnet.out"
    shutil.copy(GOLDEN_DIR / "clean_smallnet.out", altered)
    assert_matches_golden(text, altered)  # the copy matches as it is
    original = altered.read_text(encoding="utf-8")
    assert "No problems found." in original
    altered.write_text(original.replace("No problems found.", "No problems found!"), encoding="utf-8")
    with pytest.raises(AssertionError) as failure:
        assert_matches_golden(text, altered)
    message = str(failure.value)
    assert "--overwrite" in message
    assert "--- clean_smallnet.out (golden)" in message and "+++ clean_smallnet.out (rendered now)" in message
    removed = [line for line in message.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line for line in message.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert len(removed) == len(added) == 1
    assert "No problems found!" in removed[0] and "No problems found." in added[0]
    # --overwrite rewrites the file, after which it matches.
    assert_matches_golden(text, altered, overwrite=True)
    assert_matches_golden(text, altered)
    assert altered.read_text(encoding="utf-8") == original


def test_missing_golden_file_says_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="--overwrite"):
        assert_matches_golden("text\n", tmp_path / "nothing.out")


# -- JSON schema -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def assert_valid(validator: jsonschema.Draft202012Validator, document: Any) -> None:
    errors = list(validator.iter_errors(document))
    # oneOf hides the reason in its context: list the innermost errors, with where they are.
    leaves = sorted({(f"/{'/'.join(map(str, e.absolute_path))}", e.message[:200]) for e in _leaf_errors(errors) if not e.context})
    listed = "\n".join(f"  at {where}: {message}" for where, message in leaves[:12])
    assert not errors, f"{len(errors)} schema error(s); innermost:\n{listed}"


@pytest.mark.parametrize("filename", [case.filename for case in DEMO_CASES])
def test_schema_demo_reports(demo: DemoCheckpoints, validator, filename: str) -> None:
    _, report = demo.get(filename)
    document = json.loads(report.to_json())
    assert_valid(validator, document)
    assert document["schema"] == SCHEMA


def test_schema_profiled_report(tp_pruned_path: Path, validator) -> None:
    options = ProfileOptions(measure=MeasureOptions(min_time_s=0.05, max_time_s=1), layer_profile_s=0.05)
    report = analyze(tp_pruned_path, arch=ARCH, input_shape=SHAPE, profile=True, profile_options=options)
    document = json.loads(report.to_json())
    assert document["profile"] is not None
    assert {s["label"] for s in document["profile"]["latency"]} == {"pruned", "dense"}
    assert document["profile"]["layers"]
    assert_valid(validator, document)


def test_schema_hand_made_profile(tp_pruned_path: Path, validator) -> None:
    report = _with_profile(analyze(tp_pruned_path, arch=ARCH, input_shape=SHAPE), _hand_made_profile())
    assert_valid(validator, json.loads(report.to_json()))


def test_schema_multi_report_document_from_cli(run_cli, tmp_path: Path, validator) -> None:
    clean, masked = _save_clean(tmp_path / "clean.pth"), _save_masked(tmp_path / "masked.pth")
    out = tmp_path / "out.json"
    result = run_cli(clean, masked, "--json", out, "--quiet")
    assert result.code == 0, result.err
    document = json.loads(out.read_text(encoding="utf-8"))
    assert set(document) == {"schema", "reports"} and len(document["reports"]) == 2
    assert_valid(validator, document)


def test_schema_safetensors_report(tmp_path: Path, validator) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in _small_net().state_dict().items()}, str(path), metadata={"format": "pt"})
    document = json.loads(analyze(path).to_json())
    assert (document["source"]["format"], document["source"]["loader"]) == ("safetensors", "safetensors")
    assert_valid(validator, document)


def test_schema_torchscript_report(tmp_path: Path, validator) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.script(_small_net()).save(str(path))
    document = json.loads(analyze(path).to_json())
    assert document["source"]["format"] == "torchscript"
    assert_valid(validator, document)


def test_schema_rejects_a_renamed_finding_kind(tmp_path: Path, validator) -> None:
    document = json.loads(analyze(_save_masked(tmp_path / "masked.pth")).to_json())

    def kind_errors(doc: dict[str, Any]) -> list[jsonschema.ValidationError]:
        return [e for e in _leaf_errors(list(validator.iter_errors(doc))) if list(e.absolute_path) == ["findings", 0, "kind"]]

    assert document["findings"][0]["kind"] == "pruning-masks"
    assert kind_errors(document) == []
    document["findings"][0]["kind"] = "pruning-mask"
    errors = kind_errors(document)
    assert errors, "a renamed finding kind passed validation"
    assert any("is not one of" in e.message for e in errors)


def _leaf_errors(errors: list[jsonschema.ValidationError]) -> Iterator[jsonschema.ValidationError]:
    for error in errors:
        yield error
        yield from _leaf_errors(list(error.context or []))


def _emitted_kinds() -> set[str]:
    """Every finding kind the package can emit: the passes' KIND constants and kind="..." literals."""
    import analyzer.passes as passes_package

    kinds = set()
    for name in dir(passes_package):
        module = getattr(passes_package, name)
        if getattr(module, "__name__", "").startswith("analyzer.passes."):
            kinds |= {value for attr, value in vars(module).items() if attr.startswith("KIND") and isinstance(value, str)}
    root = Path(analyzer.__file__).parent
    for source in root.rglob("*.py"):
        text = source.read_text(encoding="utf-8")
        kinds |= set(re.findall(r"""\bKIND\w*\s*=\s*["']([a-z0-9-]+)["']""", text))
        kinds |= set(re.findall(r"""\bkind\s*=\s*["']([a-z0-9-]+)["']""", text))
    return kinds


def test_schema_kind_enum_covers_every_emitted_kind(validator) -> None:
    enum = set(validator.schema["$defs"]["kind"]["enum"])
    emitted = _emitted_kinds()
    # The scan must find the kinds of the passes and of the profile diagnosis alike.
    assert {"pruning-masks", "zeroed-channels", "unsafe-pickle", "head-shape-mismatch", "no-speedup", "memory-bound"} <= emitted
    assert emitted - enum == set(), f"kinds emitted but missing from report_schema.json: {sorted(emitted - enum)}"
    assert set(PRIORITY) - enum == set(), f"kinds the verdict ranks but the schema lacks: {sorted(set(PRIORITY) - enum)}"


# -- CLI outputs -----------------------------------------------------------------------


class _TextOnly(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self._skip += tag in ("style", "script")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("style", "script")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def _readable(text: str) -> str:
    """Terminal text with the box drawing gone and whitespace collapsed (wrapped lines join up)."""
    text = re.sub(r"[\u2500-\u257f]", " ", text.replace("\xa0", " "))
    return " ".join(text.split())


def _html_text(markup: str) -> str:
    parser = _TextOnly()
    parser.feed(markup)
    parser.close()
    return _readable("".join(parser.parts))


@pytest.fixture
def umask_022() -> Iterator[None]:
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def _assert_normal_mode(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & 0o077 != 0, f"{path.name} is private ({oct(mode)}): mkstemp's 0600 leaked through"
    assert mode == 0o644, f"{path.name} has mode {oct(mode)}, expected 0o644 under umask 022"


@pytest.fixture
def exported_html(run_cli, tmp_path: Path, umask_022: None) -> tuple[Path, dict[str, Any]]:
    masked = _save_masked(tmp_path / "masked.pth")
    html_path, json_path = tmp_path / "report.html", tmp_path / "report.json"
    result = run_cli(masked, "--export-html", html_path, "--json", json_path)
    assert result.code == 0, result.err
    return html_path, json.loads(json_path.read_text(encoding="utf-8"))


def _assert_report_text(text: str, data: dict[str, Any]) -> None:
    assert _readable(data["verdict"]) in text
    for finding in data["findings"]:
        assert finding["kind"] in text
        assert "modules: " + ", ".join(finding["modules"]) in text
    assert "modules conv1 Conv2d" in text  # the module tree


def test_export_html_holds_the_report(exported_html) -> None:
    html_path, data = exported_html
    assert [f["kind"] for f in data["findings"]] == ["pruning-masks", "unstructured-sparsity"]
    markup = html_path.read_text(encoding="utf-8")
    assert markup.lstrip().lower().startswith("<!doctype html")
    _assert_report_text(_html_text(markup), data)
    _assert_normal_mode(html_path)
    _assert_normal_mode(html_path.with_name("report.json"))


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_export_html_renders_in_a_browser(exported_html) -> None:
    html_path, data = exported_html
    result = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", html_path.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    _assert_report_text(_html_text(result.stdout), data)


def test_export_svg_is_xml_with_the_report(run_cli, tmp_path: Path, umask_022: None) -> None:
    masked = _save_masked(tmp_path / "masked.pth")
    svg = tmp_path / "report.svg"
    result = run_cli(masked, "--export-svg", svg)
    assert result.code == 0, result.err
    root = ET.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    text = _readable("".join(root.itertext()))
    assert "pruning-masks" in text and "unstructured-sparsity" in text
    _assert_normal_mode(svg)


def test_export_keeps_the_mode_of_an_existing_file(run_cli, tmp_path: Path, umask_022: None) -> None:
    masked = _save_masked(tmp_path / "masked.pth")
    target = tmp_path / "report.html"
    target.write_text("old")
    target.chmod(0o640)
    assert run_cli(masked, "--export-html", target).code == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert "pruning-masks" in target.read_text(encoding="utf-8")


def test_load_re_renders_without_re_analysing(run_cli, tmp_path: Path) -> None:
    masked = _save_masked(tmp_path / "masked.pth")
    saved = tmp_path / "report.json"
    first = run_cli(masked, "--json", saved)
    masked.unlink()  # nothing left to analyse: --load must only read the JSON
    again = run_cli("--load", saved)
    assert (again.code, again.err) == (first.code, "")
    assert "Pruning masks were never folded in" in again.out
    assert "warning pruning-masks" in again.out and "warning unstructured-sparsity" in again.out
    assert again.out == first.out


def test_load_of_several_reports_re_renders_the_comparison(run_cli, tmp_path: Path) -> None:
    clean, masked = _save_clean(tmp_path / "clean.pth"), _save_masked(tmp_path / "masked.pth")
    saved = tmp_path / "sweep.json"
    first = run_cli(clean, masked, "--json", saved)
    clean.unlink()
    masked.unlink()
    again = run_cli("--load", saved)
    assert again.code == first.code and again.out == first.out
    assert "checkpoints" in again.out


def _report_with(tmp_path: Path, **changes: Any) -> str:
    data = json.loads(analyze(_save_clean(tmp_path / "clean.pth")).to_json())
    data.update(changes)
    return json.dumps(data)


_NOT_REPORTS: dict[str, Callable[[Path], str | bytes]] = {
    "not-json": lambda tmp: "this is not JSON {",
    "binary": lambda tmp: b"\x80\x04\x95\xff\xfe\x00 garbage \x00\x01",
    "empty": lambda tmp: "",
    "json-list": lambda tmp: "[1, 2, 3]",
    "json-string": lambda tmp: '"analyzer-report/1"',
    "other-json-object": lambda tmp: '{"name": "resnet18", "accuracy": 0.71}',
    "other-schema": lambda tmp: '{"schema": "something-else/2", "reports": []}',
    "reports-not-a-list": lambda tmp: '{"schema": "analyzer-report/1", "reports": 5}',
    "report-without-source": lambda tmp: '{"schema": "analyzer-report/1", "verdict": "x"}',
    "source-not-an-object": lambda tmp: _report_with(tmp, source=["model.pth"]),
    "profile-not-a-profile": lambda tmp: _report_with(tmp, profile={"latency_ms": 3.2}),
}


@pytest.mark.parametrize("name", list(_NOT_REPORTS))
def test_load_of_something_else_exits_2_with_one_line(run_cli, tmp_path: Path, name: str) -> None:
    content = _NOT_REPORTS[name](tmp_path)
    path = tmp_path / f"{name}.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    try:
        result = run_cli("--load", path)
    except Exception as e:  # noqa: BLE001 - the bug this test is for: a traceback instead of exit 2
        pytest.fail(f"analyze --load {name}.json raised {type(e).__name__}: {e} (expected exit 2 and one line)")
    assert result.code == 2, (result.code, result.out, result.err)
    assert result.out == ""
    assert result.err.startswith("analyze: error: ") and result.err.count("\n") == 1 and result.err.endswith("\n"), result.err
    assert path.name in result.err


def test_several_checkpoints_give_a_comparison(run_cli, tmp_path: Path) -> None:
    # A sweep: the paths differ only in their last characters, as they do in practice.
    clean, masked = _save_clean(tmp_path / "sweep_ratio0.0.pth"), _save_masked(tmp_path / "sweep_ratio0.5.pth")
    result = run_cli(clean, masked)
    assert result.code == 0, result.err
    table = result.out.split("\n─")[0]  # the table comes before the first report's rule
    assert table.lstrip().startswith("checkpoints")
    params = f"{sum(p.numel() for p in SmallNet().parameters()):,}"
    lines = table.splitlines()
    for path, findings in ((clean, ["none"]), (masked, ["pruning-masks", "unstructured-sparsity"])):
        # Each checkpoint must be identifiable in its row: at least its file name must show.
        rows = [i for i, line in enumerate(lines) if path.name in line]
        assert rows, f"{path.name} does not appear in the comparison table (a {len(str(path))}-character path on a 160-column terminal):\n{table}"
        assert params in lines[rows[0]]
        # one finding kind per line, the first on the checkpoint's own row
        assert [line.split()[-1] for line in lines[rows[0] : rows[0] + len(findings)]] == findings
        assert all(line.split()[-2] == "W" for line in lines[rows[0] : rows[0] + len(findings)] if findings != ["none"])
    # Then each checkpoint's own verdict, in order.
    assert result.out.index("No problems found") < result.out.index("Pruning masks were never folded in")

    data = json.loads(run_cli(clean, masked, "--json", "-").out)
    assert data["schema"] == SCHEMA
    assert [r["source"]["path"] for r in data["reports"]] == [str(clean), str(masked)]
    assert [r["summary"]["params"] for r in data["reports"]] == [int(params.replace(",", ""))] * 2


def test_quiet_prints_nothing(run_cli, tmp_path: Path) -> None:
    masked = _save_masked(tmp_path / "masked.pth")
    result = run_cli(masked, "--quiet", "--fail-on", "warning")
    assert (result.code, result.out, result.err) == (1, "", "")
    out = tmp_path / "r.json"
    result = run_cli(masked, "-q", "--json", out)
    assert (result.code, result.out, result.err) == (0, "", "")
    assert json.loads(out.read_text())["findings"]


_STAGES = ("reading ", "building and running the model", "scanning layers", "profiling", "checking")


def test_no_progress_output_in_process(run_cli, tmp_path: Path) -> None:
    masked = _save_masked(tmp_path / "masked.pth")
    result = run_cli(masked)
    assert result.err == ""
    assert not any(stage in result.out for stage in ("reading masked.pth", "scanning layers", "building and running"))


def test_no_progress_drawn_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    """A real process, stdout and stderr pipes, with a step (profiling) longer than the bar's 1 s delay."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    path = tmp_path / "whole.pth"
    torch.save(model.eval(), path)  # torch.nn classes only: runnable, so it can be profiled
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    result = subprocess.run(
        [sys.executable, "-m", "analyzer", str(path), "--profile", "--device", "cpu", "--input-shape", "1,3,16,16"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == ""
    assert "\x1b" not in result.stdout  # no cursor movement or colour on a pipe
    assert not any(line.lstrip().startswith(_STAGES) for line in result.stdout.splitlines())
    assert "latency" in result.stdout  # it did profile
