"""What a person and a machine read: the terminal report (golden files), the JSON (against
report_schema.json), and the CLI's outputs (--export-html/--export-svg, --load, several
checkpoints, --quiet, progress).

Golden files, torchinfo style: every report is built here from checkpoints made with fixed
seeds, normalised (paths, file sizes), rendered on an 80-column (and, for the sweep, the
profile and the long fix code, also a 160-column) colourless console and compared with
tests/test_output/<name>_<width>.out. `pytest --overwrite` rewrites them instead; read the
diff before committing it.
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
from rich.cells import cell_len
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
from analyzer.report.model import SCHEMA, Report, ReportSet
from analyzer.report.schema_check import ANNOTATIONS, SUPPORTED_KEYWORDS, known_kinds, schema_document, schema_errors
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


def render_text(reports: Report | list[Report], options: RenderOptions = RenderOptions(), width: int = 80) -> str:
    """The report as a colourless terminal of `width` columns shows it."""
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False, legacy_windows=False)
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

WIDTHS = (80, 160)
#: Sweep file names as people write them: long, alike, differing near the end.
SWEEP_NAMES = ("resnet18_sweep_ratio0.00_seed0.pth", "resnet18_sweep_ratio0.50_seed0.pth", "resnet18_sweep_tp_ratio0.30_seed0.pth")


def _assert_fits(text: str, width: int) -> None:
    too_wide = [line for line in text.splitlines() if cell_len(line.rstrip()) > width]
    assert not too_wide, f"{len(too_wide)} line(s) wider than {width} columns, e.g. {too_wide[0]!r}"


def table_names(table: str) -> list[str]:
    """The checkpoint names of a drawn comparison table, read back: a row starts on a line with
    all its columns (6 words or more); a folded name continues at the start of the next lines
    (lines that continue other columns start with blanks); a prefix and suffix that the title
    shows as `prefix*suffix` are put back."""
    lines = [line.rstrip() for line in table.splitlines()]
    title = re.fullmatch(r"checkpoints(?: (.*)\*(.*))?", lines[0].strip())
    assert title, lines[0]
    prefix, suffix = title.group(1) or "", title.group(2) or ""
    rule = next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"})
    keys: list[str] = []
    for line in lines[rule + 1 :]:
        if not line:  # the blank line after the body
            break
        if line.startswith("  "):
            continue
        words = line.split()
        if len(words) >= 6:
            keys.append(words[0])
        else:
            keys[-1] += words[0]
    return [prefix + key + suffix for key in keys]


def test_golden_clean_smallnet(tmp_path: Path, golden) -> None:
    path = _save_clean(tmp_path / "clean.pth")
    report = analyze(path)
    assert report.findings == []
    text = render_text(normalise(report, path))
    assert "✔ No problems found." in text
    golden("clean_smallnet_80", text)


def test_golden_clean_dense_model_folds_its_tree(tmp_path: Path, golden) -> None:
    """A dense ResNet-18 compared with its own architecture: nothing to note, so the module
    tree is one line, not 60 lines of full bars."""
    path = tmp_path / "dense.pth"
    torch.manual_seed(0)
    torch.save(resnet18().eval().state_dict(), path)
    report = analyze(path, arch=ARCH, input_shape=SHAPE)
    assert report.findings == []
    text = render_text(normalise(report, path))
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("modules"))
    tree = lines[first : first + 2]
    assert "41 layers, no zeros or masks" in tree[0] and "100% of reference" in tree[0], text
    assert "--all-layers" in tree[1] and "20 Conv2d" in tree[1]
    assert "├──" not in text and len(lines) == first + 2
    full = render_text(normalise(report, path), RenderOptions(all_layers=True))
    # every layer and every container above one: all dotted prefixes of the layer names
    nodes = {".".join(row.name.split(".")[: i + 1]) for row in report.layers for i in range(row.name.count(".") + 1)}
    assert full.count("├──") + full.count("└──") == len(nodes) == 56
    golden("clean_dense_resnet18_80", text)


@pytest.mark.parametrize("width", WIDTHS)
def test_golden_fix_with_long_lines(tmp_path: Path, golden, width: int) -> None:
    """pruning-masks' fix code has a 96-character line: cropped with an ellipsis and a pointer
    to the JSON at 80 columns, whole at 160; never wrapped."""
    path = _save_masked(tmp_path / "masked.pth")
    report = analyze(path)
    assert [f.kind for f in report.findings] == ["pruning-masks", "unstructured-sparsity"]
    text = render_text(normalise(report, path), width=width)
    _assert_fits(text, width)
    longest = max(len(line) for f in report.findings for line in (f.fix_code or "").splitlines())
    assert longest > 80  # the case this golden is for
    if width == 80:
        assert "cropped to 80 columns; the JSON report (--json) has the whole code" in text
        assert any(line.endswith("…") for line in text.splitlines())
    else:
        assert "cropped" not in text
    golden(f"masked_unstructured_{width}", text)


def test_golden_zeroed_channels_with_arch(tmp_path: Path, golden) -> None:
    path = _save_ln_structured(tmp_path / "resnet18_ln.pth")
    report = analyze(path, arch=ARCH, input_shape=SHAPE)
    assert "zeroed-channels" in [f.kind for f in report.findings]
    text = render_text(normalise(report, path))
    _assert_fits(text, 80)
    # The tree draws the layers with zeros and folds the rest into one line.
    assert "layer1.0.conv1" not in text or "zeroed-out" in text
    assert re.search(r"… \d+ more layers: no zeros or masks", text)
    golden("zeroed_channels_resnet18_80", text)


def test_golden_retinaface_heads_pruned(demo: DemoCheckpoints, golden) -> None:
    path, report = demo.get("retinaface_heads_pruned.pth")
    assert report.findings[0].kind == "head-shape-mismatch"
    text = render_text(normalise(report, path))
    _assert_fits(text, 80)
    golden("retinaface_heads_pruned_80", text)


def test_golden_payload_unsafe_pickle(demo: DemoCheckpoints, golden) -> None:
    path, report = demo.get("payload.pth")
    assert report.findings[0].kind == "unsafe-pickle" and report.findings[0].severity.value == "error"
    assert not list(path.parent.glob("*.PAYLOAD-RAN")), "the payload ran"
    text = render_text(normalise(report, path))
    _assert_fits(text, 80)
    golden("payload_unsafe_pickle_80", text)


@pytest.mark.parametrize("width", WIDTHS)
def test_golden_profiled(tp_pruned_path: Path, golden, width: int) -> None:
    report = _with_profile(analyze(tp_pruned_path, arch=ARCH, input_shape=SHAPE), _hand_made_profile())
    kinds = [f.kind for f in report.findings]
    assert {"no-speedup", "overhead-bound", "memory-bound"} <= set(kinds)
    text = render_text(normalise(report, tp_pruned_path), width=width)
    _assert_fits(text, width)
    for heading in ("latency", "MACs on 1×3×32×32", "where the time goes", "NVML (120 samples", "machine:"):
        assert heading in text
    table = text[text.index("where the time goes") :].split("\n\n", 1)[0]
    # Every module name whole at the start of its row (the key column is never cut).
    names = [layer.name for layer in _hand_made_profile().layers]
    for name in names:
        assert re.search(rf"^ ?{re.escape(name)}\s", table, re.M), f"{name} is not whole in:\n{table}"
    golden(f"profiled_{width}", text)


def _sweep_reports(tmp_path: Path, tp_pruned_path: Path) -> list[Report]:
    clean = _save_clean(tmp_path / SWEEP_NAMES[0])
    masked = _save_masked(tmp_path / SWEEP_NAMES[1])
    profiled = _with_profile(analyze(tp_pruned_path, arch=ARCH, input_shape=SHAPE), _hand_made_profile())
    return [
        normalise(analyze(clean), clean, SWEEP_NAMES[0]),
        normalise(analyze(masked), masked, SWEEP_NAMES[1]),
        normalise(profiled, tp_pruned_path, SWEEP_NAMES[2]),
    ]


@pytest.mark.parametrize("width", WIDTHS)
def test_golden_comparison(tmp_path: Path, tp_pruned_path: Path, golden, width: int) -> None:
    reports = _sweep_reports(tmp_path, tp_pruned_path)
    text = render_text(reports, width=width)
    _assert_fits(text, width)
    table = text.split("\n─")[0]
    assert table.startswith("checkpoints")
    assert table_names(table) == list(SWEEP_NAMES), f"checkpoint names lost at {width} columns:\n{table}"
    assert "0.920 @ 1" in table  # the pruned median at the first batch, from the profile
    golden(f"comparison_{width}", text)


@pytest.mark.parametrize("width", [40, 50, 60, 70, 80, 100, 120, 200])
def test_comparison_keeps_every_name_at_any_width(tmp_path: Path, tp_pruned_path: Path, width: int, sweep_cache: dict) -> None:
    if "reports" not in sweep_cache:
        sweep_cache["reports"] = _sweep_reports(tmp_path, tp_pruned_path)
    reports = sweep_cache["reports"]
    from analyzer.report.rich_compare import comparison_table

    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(comparison_table(reports))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    _assert_fits(text, width)
    if "─" in text:  # a table: the key column read back
        assert table_names(text) == list(SWEEP_NAMES), text
    else:  # stacked: each name on a line of its own
        lines = [line.strip() for line in text.splitlines()]
        assert all(name in lines for name in SWEEP_NAMES), text
    for kind in ("pruning-masks", "unaligned-channels", "no-speedup"):
        assert kind in " ".join(text.split()).replace("- ", "-"), f"{kind} lost at {width} columns"


@pytest.fixture(scope="module")
def sweep_cache() -> dict:
    return {}


def test_golden_files_have_no_strays() -> None:
    known = {
        "clean_smallnet_80", "clean_dense_resnet18_80", "zeroed_channels_resnet18_80", "retinaface_heads_pruned_80",
        "payload_unsafe_pickle_80",
        *(f"{name}_{w}" for name in ("masked_unstructured", "profiled", "comparison") for w in WIDTHS),
    }
    assert {p.stem for p in GOLDEN_DIR.glob("*.out")} <= known


def test_golden_80_column_files_fit_80_columns() -> None:
    for path in GOLDEN_DIR.glob("*_80.out"):
        _assert_fits(path.read_text(encoding="utf-8"), 80)


def test_golden_mismatch_fails_with_a_readable_diff(tmp_path: Path) -> None:
    path = _save_clean(tmp_path / "clean.pth")
    text = render_text(normalise(analyze(path), path))
    altered = tmp_path / "clean_smallnet_80.out"
    shutil.copy(GOLDEN_DIR / "clean_smallnet_80.out", altered)
    assert_matches_golden(text, altered)  # the copy matches as it is
    original = altered.read_text(encoding="utf-8")
    assert "No problems found." in original
    altered.write_text(original.replace("No problems found.", "No problems found!"), encoding="utf-8")
    with pytest.raises(AssertionError) as failure:
        assert_matches_golden(text, altered)
    message = str(failure.value)
    assert "--overwrite" in message
    assert "--- clean_smallnet_80.out (golden)" in message and "+++ clean_smallnet_80.out (rendered now)" in message
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


def envelope(*reports: Report) -> dict[str, Any]:
    """What `--json` writes for these reports, parsed."""
    return json.loads(ReportSet(list(reports)).to_json())


def test_schema_profiled_report(tp_pruned_path: Path, validator) -> None:
    options = ProfileOptions(measure=MeasureOptions(min_time_s=0.05, max_time_s=1), layer_profile_s=0.05)
    report = analyze(tp_pruned_path, arch=ARCH, input_shape=SHAPE, profile=True, profile_options=options)
    document = envelope(report)
    profile = document["reports"][0]["profile"]
    assert profile is not None
    assert {s["label"] for s in profile["latency"]} == {"pruned", "dense"}
    assert profile["layers"]
    assert_valid(validator, document)


def test_schema_hand_made_profile(tp_pruned_path: Path, validator) -> None:
    report = _with_profile(analyze(tp_pruned_path, arch=ARCH, input_shape=SHAPE), _hand_made_profile())
    assert_valid(validator, envelope(report))


@pytest.mark.parametrize("count", [1, 2])
def test_json_has_one_shape_whatever_the_number_of_checkpoints(run_cli, tmp_path: Path, validator, count: int) -> None:
    paths = [_save_clean(tmp_path / "clean.pth"), _save_masked(tmp_path / "masked.pth")][:count]
    out = tmp_path / "out.json"
    result = run_cli(*paths, "--json", out, "--quiet")
    assert result.code == 0, result.err
    document = json.loads(out.read_text(encoding="utf-8"))
    assert set(document) == {"schema", "run", "reports"} and len(document["reports"]) == count
    assert [r["source"]["path"] for r in document["reports"]] == [str(p) for p in paths]
    run = document["run"]
    assert run["distribution"] == "prune-analyzer" and run["version"] == analyzer.__version__
    assert run["torch"] == torch.__version__ and run["command"][0] == "analyze" and run["command"][-1] == "--quiet"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", run["created"])
    assert_valid(validator, document)


def test_verdict_holds_no_render_text(tmp_path: Path) -> None:
    report = analyze(_save_masked(tmp_path / "masked.pth"))
    assert len(report.findings) == 2
    assert "below" not in report.verdict and "more finding" not in report.verdict
    assert report.verdict.startswith("Pruning masks were never folded in")
    # The renderer says it instead.
    assert "(1 more finding below.)" in " ".join(render_text(report).split())


def test_schema_safetensors_report(tmp_path: Path, validator) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in _small_net().state_dict().items()}, str(path), metadata={"format": "pt"})
    document = envelope(analyze(path))
    assert (document["reports"][0]["source"]["format"], document["reports"][0]["source"]["loader"]) == ("safetensors", "safetensors")
    assert_valid(validator, document)


def test_schema_torchscript_report(tmp_path: Path, validator) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.script(_small_net()).save(str(path))
    document = envelope(analyze(path))
    assert document["reports"][0]["source"]["format"] == "torchscript"
    assert_valid(validator, document)


def test_schema_kinds_are_open_but_well_formed(tmp_path: Path, validator) -> None:
    """A later version's kind must validate (kinds are added, never renamed); a kind that is
    not kebab-case must not."""
    document = envelope(analyze(_save_masked(tmp_path / "masked.pth")))
    finding = document["reports"][0]["findings"][0]
    assert finding["kind"] == "pruning-masks"
    finding["kind"] = "quantisation-drift"  # not a kind of this version
    assert_valid(validator, document)
    assert schema_errors(document) == []
    for bad in ("Pruning Masks", "pruning_masks", "-masks", ""):
        finding["kind"] = bad
        assert list(validator.iter_errors(document)), f"{bad!r} passed jsonschema"
        assert schema_errors(document), f"{bad!r} passed the built-in check"


def test_schema_cites_nothing_outside_the_repository() -> None:
    text = SCHEMA_PATH.read_text(encoding="utf-8")
    assert "DESIGN.md" not in text and "http" not in text.replace("https://json-schema.org/draft/2020-12/schema", "")


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


def test_schema_kind_list_covers_every_emitted_kind() -> None:
    known = set(known_kinds())
    emitted = _emitted_kinds()
    # The scan must find the kinds of the passes and of the profile diagnosis alike.
    assert {"pruning-masks", "zeroed-channels", "unsafe-pickle", "head-shape-mismatch", "no-speedup", "memory-bound"} <= emitted
    assert emitted - known == set(), f"kinds emitted but missing from report_schema.json: {sorted(emitted - known)}"
    assert set(PRIORITY) - known == set(), f"kinds the verdict ranks but the schema lacks: {sorted(set(PRIORITY) - known)}"
    assert all(known_kinds().values()), "every known kind says what it means"


# -- the built-in schema check that --load runs, against jsonschema ------------------------


def _keywords(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            found.add(key)
            if key in ("properties", "$defs"):
                for child in value.values():
                    found |= _keywords(child)
            elif key not in ("enum", "const", "required", "examples"):
                found |= _keywords(value)
    elif isinstance(node, list):
        for child in node:
            found |= _keywords(child)
    return found


def test_builtin_check_covers_every_keyword_of_the_schema() -> None:
    schema = schema_document()
    assert _keywords(schema) <= SUPPORTED_KEYWORDS | ANNOTATIONS, _keywords(schema) - SUPPORTED_KEYWORDS - ANNOTATIONS


def _damaged(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """One change at a time, each to a different rule of the schema."""
    import copy

    def change(label: str, edit: Callable[[dict[str, Any]], None]) -> tuple[str, dict[str, Any]]:
        doc = copy.deepcopy(document)
        edit(doc)
        return label, doc

    r = lambda d: d["reports"][0]  # noqa: E731
    yield change("schema version", lambda d: d.update(schema="analyzer-report/9"))
    yield change("extra top-level key", lambda d: d.update(extra=1))
    yield change("reports not a list", lambda d: d.update(reports={}))
    yield change("severity", lambda d: r(d)["findings"][0].update(severity="fatal"))
    yield change("kind pattern", lambda d: r(d)["findings"][0].update(kind="Bad Kind"))
    yield change("missing message", lambda d: r(d)["findings"][0].pop("message"))
    yield change("empty message", lambda d: r(d)["findings"][0].update(message=""))
    yield change("modules not strings", lambda d: r(d)["findings"][0].update(modules=[1]))
    yield change("negative params", lambda d: r(d)["summary"].update(params=-1))
    yield change("params a float", lambda d: r(d)["summary"].update(params=1.5))
    yield change("params a bool", lambda d: r(d)["summary"].update(params=True))
    yield change("unknown format", lambda d: r(d)["source"].update(format="onnx"))
    yield change("sparsity above 1", lambda d: r(d)["layers"][0].update(weight_sparsity=1.5))
    yield change("profile a list", lambda d: r(d).update(profile=[]))
    yield change("no samples", lambda d: r(d).update(profile={**_PROFILE_DICT, "latency": [{**_PROFILE_DICT["latency"][0], "samples_ms": []}]}))
    yield change("extra finding key", lambda d: r(d)["findings"][0].update(extra=1))
    yield change("run command not strings", lambda d: d.update(run={"command": [1]}))
    yield change("missing verdict", lambda d: r(d).pop("verdict"))


_PROFILE_DICT = _hand_made_profile().to_dict()


def test_builtin_check_agrees_with_jsonschema(tmp_path: Path, validator) -> None:
    report = analyze(_save_masked(tmp_path / "masked.pth"))
    report.profile = _PROFILE_DICT
    document = envelope(report)
    assert not list(validator.iter_errors(document)) and schema_errors(document) == []
    for label, damaged in _damaged(document):
        by_jsonschema = bool(list(validator.iter_errors(damaged)))
        by_builtin = schema_errors(damaged)
        assert by_jsonschema, f"{label}: jsonschema accepted it (the damage is not a schema violation)"
        assert by_builtin, f"{label}: the built-in check accepted what jsonschema refuses"
        assert by_builtin[0].startswith("at /"), by_builtin


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


def test_quiet_prints_one_summary_line(run_cli, tmp_path: Path) -> None:
    masked = _save_masked(tmp_path / "masked.pth")
    result = run_cli(masked, "--quiet", "--fail-on", "warning")
    assert (result.code, result.err) == (1, "")
    assert result.out == f"{masked}: 0 errors, 2 warnings, 0 info (pruning-masks, unstructured-sparsity); fails --fail-on warning (2 at or above it)\n"
    out = tmp_path / "r.json"
    result = run_cli(masked, "-q", "--json", out)
    assert (result.code, result.err) == (0, "")
    assert result.out.count("\n") == 1 and result.out.endswith("passes --fail-on error\n")
    assert json.loads(out.read_text())["reports"][0]["findings"]
    clean = _save_clean(tmp_path / "clean.pth")
    result = run_cli(clean, masked, "-q")
    assert result.out == "2 checkpoints: 0 errors, 2 warnings, 0 info (pruning-masks, unstructured-sparsity); passes --fail-on error\n"


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


# -- fix code: every printed and every JSON snippet parses --------------------------------


def _printed_block(text: str, code: str, width: int) -> tuple[list[str], str]:
    """The lines where `code` was printed (each whole, or cropped to `width` with an ellipsis),
    and the line after them."""
    expected = code.expandtabs(4).rstrip("\n").split("\n")

    def shown(printed: str, original: str) -> bool:
        printed, original = printed.rstrip(), original.rstrip()
        if cell_len(original) <= width:
            return printed == original
        return printed.endswith("…") and cell_len(printed) == width and original.startswith(printed[:-1])

    lines = text.splitlines()
    for i in range(len(lines) - len(expected) + 1):
        if all(shown(lines[i + j], line) for j, line in enumerate(expected)):
            after = lines[i + len(expected)] if i + len(expected) < len(lines) else ""
            return lines[i : i + len(expected)], after
    raise AssertionError(f"the code was not printed line for line at {width} columns:\n{code}\n--- in ---\n{text}")


def _snippet_reports(demo: DemoCheckpoints, tmp_path: Path, tp_pruned_path: Path) -> list[Report]:
    # The demo's own cases are checked the same way in tests/test_demo.py, from its run.
    reports = [demo.get(name)[1] for name in ("retinaface_heads_pruned.pth", "payload.pth", "custom_class_gone.pth")]
    reports.append(analyze(_save_masked(tmp_path / "masked.pth")))
    reports.append(analyze(_save_ln_structured(tmp_path / "ln.pth"), arch=ARCH, input_shape=SHAPE))
    reports.append(_with_profile(analyze(tp_pruned_path, arch=ARCH, input_shape=SHAPE), _hand_made_profile()))
    return reports


def assert_snippets_parse(reports: list[Report]) -> int:
    """Every fix code from the JSON parses with ast.parse; printed, it appears line for line at
    the left margin — at 160 columns whole and parseable as it stands, at 80 columns cropped
    lines end in "…" and a line says so. Returns how many printed snippets were checked."""
    import ast

    snippets = 0
    cropped_somewhere = False
    for report in reports:
        data = Report.from_json(report.to_json())
        codes = [f.fix_code for f in data.findings if f.fix_code]
        compaction = data.compaction or {}
        loads = [compaction["load_code"]] if compaction.get("load_code") else []
        for code in codes + loads:
            ast.parse(code)  # the JSON keeps the code whole
        for width in (80, 160):
            for options in (RenderOptions(), RenderOptions(brief=True)):
                text = render_text(report, options, width=width)
                # The brief layout shows the leading fix's code, unless --compact applied it.
                lead = [] if compaction.get("output") and not compaction.get("refused") else codes[:1]
                shown = (codes if not options.brief else lead) + loads
                for code in shown:
                    printed, after = _printed_block(text, code, width)
                    if any(line.rstrip().endswith("…") and cell_len(line.rstrip()) == width for line in printed):
                        cropped_somewhere = True
                        assert "the JSON report (--json) has the whole code" in after, after
                    else:
                        ast.parse("\n".join(printed))
                    snippets += 1
    assert cropped_somewhere
    return snippets


def test_every_fix_snippet_parses_as_printed_and_in_json(demo: DemoCheckpoints, tmp_path: Path, tp_pruned_path: Path) -> None:
    """The golden reports and a few demo cases (tests/test_demo.py checks the demo's own run)."""
    assert assert_snippets_parse(_snippet_reports(demo, tmp_path, tp_pruned_path)) > 20


def _svg_lines(svg: Path) -> list[str]:
    """The terminal lines an SVG export draws: its <text> pieces put back at their columns."""
    root = ET.parse(svg).getroot()
    pieces = [(float(t.get("y")), float(t.get("x")), float(t.get("textLength")), "".join(t.itertext()).replace("\xa0", " "))
              for t in root.iter("{http://www.w3.org/2000/svg}text") if t.get("textLength") and "".join(t.itertext())]
    cell = pieces[0][2] / len(pieces[0][3])
    rows: dict[float, list[str]] = {}
    for y, x, _, text in sorted(pieces):
        row = rows.setdefault(y, [])
        column = round(x / cell)
        line = "".join(row).ljust(column)
        rows[y] = [line[:column] + text]
    return ["".join(rows[y]).rstrip() for y in sorted(rows)]


def test_export_svg_of_a_sweep_keeps_the_names_at_80_columns(run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    paths = [_save_clean(tmp_path / SWEEP_NAMES[0]), _save_masked(tmp_path / SWEEP_NAMES[1])]
    svg = tmp_path / "sweep.svg"
    result = run_cli(*paths, "--export-svg", svg)
    assert result.code == 0, result.err
    lines = _svg_lines(svg)
    start = next(i for i, line in enumerate(lines) if line.startswith("checkpoints"))
    assert table_names("\n".join(lines[start:])) == list(SWEEP_NAMES[:2])
    assert max(len(line) for line in lines) <= 80


def test_json_keeps_each_layer_row_on_one_line(tmp_path: Path) -> None:
    """The indented JSON holds the same document as compact JSON, with one line per layer row."""
    torch.manual_seed(0)
    first, second = nn.Sequential(nn.Linear(4, 3), nn.ReLU()), nn.Sequential(nn.Conv2d(3, 5, 3))
    paths = [tmp_path / "a.pth", tmp_path / "b.pth"]
    for model, path in zip((first, second), paths):
        torch.save(model.state_dict(), path)
    results = ReportSet([analyze(p) for p in paths])
    text = results.to_json()
    assert json.loads(text) == json.loads(results.to_json(indent=None)) == json.loads(json.dumps(results.to_dict()))
    rows = [json.loads(line.strip().rstrip(",")) for line in text.splitlines() if line.lstrip().startswith('{"name": ')]
    assert [r["name"] for r in rows] == ["0", "0"] and rows[1]["shape"] == [5, 3, 3, 3]
    empty = Report.from_dict({**results.reports[0].to_dict(), "layers": []})
    assert json.loads(empty.to_json())["layers"] == []
