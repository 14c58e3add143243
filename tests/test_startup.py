"""Start-up without torch: `--help`, `--version`, `--load report.json` and argument errors
never import it (importing torch is most of the 3 s a command took). Checked by looking at
sys.modules in a fresh interpreter, not by timing (benches/test_bench_startup.py times it)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from analyzer import analyze
from analyzer.report.model import ReportSet

from .models import SmallNet
from .test_report_output import _hand_made_profile, _save_masked

ROOT = Path(__file__).resolve().parent.parent

_SCRIPT = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from analyzer.cli import main
    results = []
    for argv in json.loads(sys.argv[1]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:  # --help, --version
                code = e.code
        results.append({"argv": argv, "code": code, "out": out.getvalue(), "err": err.getvalue(),
                        "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))[:3]})
    print(json.dumps(results))
    """
)


def _run(argvs: list[list[str]]) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(argvs)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_help_version_load_and_argument_errors_do_not_import_torch(tmp_path: Path) -> None:
    masked = _save_masked(tmp_path / "masked.pth")
    plain = tmp_path / "plain.json"
    plain.write_text(ReportSet([analyze(masked)]).to_json(), encoding="utf-8")
    profiled_report = analyze(masked)
    profiled_report.profile = _hand_made_profile().to_dict()
    profiled = tmp_path / "profiled.json"
    profiled.write_text(ReportSet([profiled_report, analyze(masked)]).to_json(), encoding="utf-8")
    argvs = [
        ["--help"],
        ["--version"],
        ["--load", str(plain)],
        ["--load", str(profiled), "--export-html", str(tmp_path / "r.html"), "--output-format", "markdown"],
        ["--load", str(profiled), "--output-format", "sarif"],
        [str(masked), "--prof"],
        [str(masked), "--select", "nonsense"],
        ["--load", str(tmp_path / "missing.json")],
    ]
    results = _run(argvs)
    for result in results:
        assert result["torch"] == [], f"{result['argv']} imported {result['torch']}"
    help_, version, load_plain, load_profiled, sarif, typo, kind, missing = results
    assert help_["code"] == 0 and "usage: analyze" in help_["out"] and "--output-format" in help_["out"]
    assert version["code"] == 0 and version["out"].startswith("analyze (prune-analyzer)")
    assert load_plain["code"] == 0 and "Pruning masks were never folded in" in load_plain["out"]
    assert load_profiled["code"] == 0 and load_profiled["out"].count("| `masked.pth` |") == 2
    assert "### analyze: 2 checkpoints" in load_profiled["out"]
    assert "Latency by batch" in (tmp_path / "r.html").read_text(encoding="utf-8")  # the profile section, rendered without torch
    assert json.loads(sarif["out"])["version"] == "2.1.0"
    assert typo["code"] == kind["code"] == missing["code"] == 2
    assert "did you mean --profile?" in typo["err"]


def test_the_data_modules_loaded_without_torch_are_the_ones_torch_code_uses() -> None:
    """The profile/compaction dataclasses read during --load come without torch; importing
    the implementations afterwards must give the very same classes."""
    code = textwrap.dedent(
        """
        import sys
        from analyzer.report import sections  # what --load uses
        from analyzer.profile.result import ProfileResult as early
        from analyzer.compact.result import CompactionResult as early_compaction
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
        from analyzer.profile import profile_models, ProfileResult
        from analyzer.compact import compact, CompactionResult
        assert "torch" in sys.modules
        assert ProfileResult is early and CompactionResult is early_compaction
        print("same")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "same", done.stderr
