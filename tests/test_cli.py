"""The command line: exit codes, JSON output, the report a person reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.utils.prune as prune

from analyzer import Report
from analyzer.report.model import SCHEMA

from .models import SmallNet


@pytest.fixture
def masked_checkpoint(tmp_path: Path, small_net: SmallNet) -> Path:
    prune.l1_unstructured(small_net.conv1, "weight", amount=0.5)
    path = tmp_path / "masked.pth"
    torch.save(small_net.state_dict(), path)
    return path


@pytest.fixture
def clean_checkpoint(tmp_path: Path, small_net: SmallNet) -> Path:
    path = tmp_path / "clean.pth"
    torch.save(small_net.state_dict(), path)
    return path


def test_clean_checkpoint_exits_0_and_says_so(run_cli, clean_checkpoint: Path) -> None:
    result = run_cli(clean_checkpoint)
    assert result.code == 0
    assert "No problems found" in result.out
    assert "conv1" in result.out and "Conv2d" in result.out


def test_fail_on_threshold(run_cli, masked_checkpoint: Path) -> None:
    assert run_cli(masked_checkpoint).code == 0  # a warning is below the default --fail-on error
    assert run_cli(masked_checkpoint, "--fail-on", "warning").code == 1
    assert run_cli(masked_checkpoint, "--fail-on", "never").code == 0


def test_report_shows_finding_module_and_fix(run_cli, masked_checkpoint: Path) -> None:
    out = run_cli(masked_checkpoint).out
    assert "pruning-masks" in out
    assert "modules: conv1" in out
    assert "prune.remove" in out or "_orig" in out


def test_json_written_atomically_and_valid(run_cli, masked_checkpoint: Path, tmp_path: Path, unchanged) -> None:
    target = tmp_path / "out" / "report.json"
    target.parent.mkdir()
    target.write_text("old")
    untouched = unchanged(masked_checkpoint)
    result = run_cli(masked_checkpoint, "--json", target, "--quiet")
    assert result.code == 0 and result.out == ""
    data = json.loads(target.read_text())
    assert data["schema"] == SCHEMA
    assert data["summary"]["params"] == sum(p.numel() for p in SmallNet().parameters())
    assert data["summary"]["nonzero_params"] < data["summary"]["params"]
    assert data["profile"] is None
    finding = data["findings"][0]
    assert {"kind", "severity", "modules", "message", "evidence", "fix"} <= finding.keys()
    assert finding["kind"] == "pruning-masks" and finding["modules"] == ["conv1"]
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]  # no temp file left
    untouched()


def test_json_to_stdout_round_trips(run_cli, masked_checkpoint: Path) -> None:
    result = run_cli(masked_checkpoint, "--json", "-")
    report = Report.from_json(result.out)
    assert report.findings[0].kind == "pruning-masks"
    assert Report.from_json(report.to_json()).to_dict() == report.to_dict()


def test_several_paths_give_one_json_document(run_cli, masked_checkpoint: Path, clean_checkpoint: Path) -> None:
    data = json.loads(run_cli(masked_checkpoint, clean_checkpoint, "--json", "-").out)
    assert [r["source"]["path"] for r in data["reports"]] == [str(masked_checkpoint), str(clean_checkpoint)]


def test_no_arguments_is_a_usage_error(run_cli) -> None:
    result = run_cli()
    assert result.code == 2
    assert result.err.count("\n") == 1 and "analyze --demo" in result.err


def test_debug_shows_traceback(run_cli, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pth"
    assert "Traceback" not in run_cli(missing).err
    assert "Traceback" in run_cli(missing, "--debug").err


def test_module_entry_point(tmp_path: Path, clean_checkpoint: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "analyzer", str(clean_checkpoint), "--json", "-"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["source"]["format"] == "torch-zip"
