"""Diagnosis branches the common paths do not reach, each with an answer known by construction.

Every model here is built so that the right answer can be written down without the
analyzer: which module fails and why, how many channels a group can lose, what torch
itself raises. Models stay tiny (the suite runs on 2 CPU cores).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from analyzer import api
from analyzer.report.model import Finding, Report, Severity

SMALL = (1, 3, 8, 8)


def _kinds(report: Report) -> list[str]:
    return [f.kind for f in report.findings]


def _one(report: Report, kind: str) -> Finding:
    found = [f for f in report.findings if f.kind == kind]
    assert len(found) == 1, f"expected one {kind} finding, got {_kinds(report)}; failures {getattr(report, 'failures', None)}"
    return found[0]


def _save_full(model: nn.Module, path: Path) -> Path:
    torch.save(model.eval(), path)
    return path


# -- a forward failure inside a head is not hidden when the head check has nothing to say


class HeadNet(nn.Module):
    """A body of 8 channels feeding a head conv that still expects 16 (its input was pruned, it was not)."""

    def __init__(self, head_in: int = 16) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Sequential(nn.Conv2d(head_in, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


def _torch_error(model: nn.Module, shape: tuple[int, ...]) -> str:
    with torch.no_grad(), pytest.raises(RuntimeError) as raised:
        model(torch.randn(shape))
    return " ".join(str(raised.value).split())


def test_failure_inside_a_head_the_head_check_does_not_explain_is_reported(tmp_path: Path, run_cli) -> None:
    model = HeadNet().eval()
    expected_error = _torch_error(model, SMALL)  # the oracle: what torch itself raises
    assert "expected input[1, 8, 8, 8] to have 16 channels, but got 8 channels" in expected_error
    path = _save_full(model, tmp_path / "head.pth")
    report = api.analyze(path, allow_modules=("tests",), input_shape=SMALL)
    finding = _one(report, "forward-failure")
    assert finding.severity is Severity.ERROR
    assert finding.modules == ["head.0"]
    assert finding.evidence["module"] == "head.0"
    assert finding.evidence["exception"] == "RuntimeError"
    assert finding.evidence["error"] == expected_error[:500]
    assert "head-shape-mismatch" not in _kinds(report)
    assert report.verdict != "No problems found."
    result = run_cli(path, "--allow-module", "tests", "--input-shape", "1,3,8,8")
    assert result.code == 1, result.out + result.err
    assert "forward-failure" in result.out and "No problems found" not in result.out


def test_dense_head_net_runs_clean(tmp_path: Path) -> None:
    path = _save_full(HeadNet(head_in=8), tmp_path / "head.pth")
    report = api.analyze(path, allow_modules=("tests",), input_shape=SMALL)
    assert "forward-failure" not in _kinds(report)
    assert [f.kind for f in report.findings if f.severity is not Severity.INFO] == []
