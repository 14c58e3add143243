"""The library: analyze() on an in-memory module (as torchinfo, fvcore and torch-pruning take
it), and saved reports of the first JSON version still loading."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from analyzer import UsageError, analyze, assert_clean
from analyzer.report.model import SCHEMA, ReportSet
from analyzer.report.render_json import load_report_set

from .models import SmallNet, magnitude_prune


#: What only a file can have: how its pickle reads.
_FILE_KINDS = {"unsafe-pickle", "full-model-pickle"}


def _comparable(report) -> dict:
    data = report.to_dict()
    findings = [(f["kind"], f["severity"], f["modules"], f["evidence"]) for f in data["findings"] if f["kind"] not in _FILE_KINDS]
    return {"layers": data["layers"], "findings": findings, "summary": {k: v for k, v in data["summary"].items() if k != "findings"}}


def test_an_in_memory_module_gives_the_report_of_its_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = SmallNet().eval()
    prune.l1_unstructured(net.conv1, "weight", amount=0.5)  # masks live on the module
    path = tmp_path / "net.pth"
    torch.save(net, path)  # the same module, whole, as a file
    from_file = analyze(path, input_shape=(1, 3, 16, 16), allow_modules=("tests",))  # rebuilt: runnable like the module
    net.train()
    from_memory = analyze(net, example_input=torch.randn(1, 3, 16, 16))
    assert net.training and all(m.training for m in net.modules())  # its mode is the caller's again
    assert from_memory.source.path == "<in-memory Module SmallNet>"
    assert (from_memory.source.format, from_memory.source.loader, from_memory.source.file_size) == ("in-memory", "in-memory", 0)
    assert [f.kind for f in from_memory.findings] == ["pruning-masks", "unstructured-sparsity"]
    assert _comparable(from_memory) == _comparable(from_file)
    assert from_memory.summary.macs_input_shape == [1, 3, 16, 16]
    ReportSet([from_memory]).to_json()  # serialisable, schema-valid shape
    from analyzer.report.schema_check import schema_errors

    assert schema_errors(json.loads(ReportSet([from_memory]).to_json())) == []


def test_an_in_memory_module_against_its_architecture(tmp_path: Path) -> None:
    """torch-pruning's model, straight from the pruner, compared with the dense factory."""
    from analyzer.zoo import resnet18

    torch.manual_seed(0)
    model = resnet18().eval()
    magnitude_prune(model, (1, 3, 32, 32), 0.3, [model.fc])
    report = analyze(model, arch="analyzer.zoo:resnet18", example_input=torch.randn(1, 3, 32, 32))
    kinds = {f.kind for f in report.findings}
    assert "channel-removal" in kinds and "unaligned-channels" in kinds
    removal = next(f for f in report.findings if f.kind == "channel-removal")
    assert removal.evidence["params"] == sum(p.numel() for p in model.parameters())


def test_example_input_forms(tmp_path: Path) -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(5, 3)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    model = TwoInputs().eval()
    for example in ((torch.randn(2, 4), torch.randn(2, 5)), {"x": torch.randn(2, 4), "y": torch.randn(2, 5)}):
        report = analyze(model, example_input=example)
        assert report.findings == [] and report.summary.macs == 4 * 3 + 5 * 3
    with pytest.raises(UsageError, match="example_input"):
        analyze(model, example_input=[1, 2])


def test_assert_clean_takes_a_module_and_the_clis_default() -> None:
    torch.manual_seed(0)
    net = SmallNet().eval()
    prune.l1_unstructured(net.conv1, "weight", amount=0.5)
    report = assert_clean(net, example_input=torch.randn(1, 3, 16, 16))  # warnings pass at the default "error"
    assert {f.severity.value for f in report.findings} == {"warning"}
    with pytest.raises(AssertionError, match=r"<in-memory Module SmallNet>: 2 finding\(s\) at or above warning"):
        assert_clean(net, "warning", example_input=torch.randn(1, 3, 16, 16))
    with pytest.raises(UsageError, match="did you mean pruning-masks"):
        assert_clean(net, ignore=["pruning-mask"], example_input=torch.randn(1, 3, 16, 16))


# -- saved reports of analyzer-report/1 ------------------------------------------------


def _v1(report_dict: dict, findings: int) -> dict:
    """What version 1 wrote for this report: its schema, and the count in the verdict."""
    old = {**report_dict, "schema": "analyzer-report/1"}
    others = findings - 1
    if others:
        old["verdict"] += f" ({others} more finding{'s' if others != 1 else ''} below.)"
    return old


@pytest.mark.parametrize("shape", ["bare", "several"])
def test_version_1_files_still_load(run_cli, tmp_path: Path, shape: str) -> None:
    torch.manual_seed(0)
    net = SmallNet().eval()
    prune.l1_unstructured(net.conv1, "weight", amount=0.5)
    path = tmp_path / "masked.pth"
    torch.save(net.state_dict(), path)
    report = analyze(path)
    new = run_cli("--load", _write(tmp_path / "new.json", ReportSet([report] * (1 if shape == "bare" else 2)).to_dict()))
    old_reports = [_v1(report.to_dict(), len(report.findings))]
    document = old_reports[0] if shape == "bare" else {"schema": "analyzer-report/1", "reports": old_reports * 2}
    assert "(1 more finding below.)" in json.dumps(document)
    loaded = load_report_set(json.dumps(document))
    assert [r.schema for r in loaded.reports] == [SCHEMA] * len(loaded.reports)
    assert all(r.verdict == report.verdict for r in loaded.reports)  # the render text is gone from the data
    old = run_cli("--load", _write(tmp_path / "old.json", document))
    assert (old.code, old.err) == (new.code, "")
    assert old.out == new.out and old.out.count("(1 more finding below.)") == len(loaded.reports)


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_load_validates_against_the_schema_in_one_line(run_cli, tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "net.pth"
    torch.save(SmallNet().state_dict(), path)
    data = ReportSet([analyze(path)]).to_dict()
    data["reports"][0]["layers"][0]["params"] = -3
    result = run_cli("--load", _write(tmp_path / "bad.json", data))
    assert result.code == 2 and result.out == "" and result.err.count("\n") == 1
    assert re.search(r"bad\.json: not a valid analyzer report \(at /reports/0/layers/0/params: -3 is below the minimum 0\)", result.err), result.err
