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

from analyzer import api, load_pruned
from analyzer.report.model import Finding, Report, ReportSet, Severity

SMALL = (1, 3, 8, 8)


def _kinds(report: Report) -> list[str]:
    return [f.kind for f in report.findings]


def _one(report: Report, kind: str) -> Finding:
    found = [f for f in report.findings if f.kind == kind]
    assert len(found) == 1, f"expected one {kind} finding, got {_kinds(report)}; failures {getattr(report, 'failures', None)}"
    return found[0]


def _assert_same_outputs(model: nn.Module, compacted: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        assert torch.allclose(model(x), compacted(x), atol=1e-5)


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
    assert finding.message.startswith("The model fails on an input of shape [1, 3, 8, 8] in head.0: RuntimeError: ")
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


# -- compaction: a group torch-pruning refuses is left, said so; an untraceable graph is a refusal


def _all_dead_then_two(head_bias: bool = True) -> nn.Sequential:
    """conv0's 8 channels are all dead (its BatchNorm has scale and shift 0); conv3 has two
    dead channels (filters 2 and 5 zero, their BatchNorm scale and shift 0)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4, bias=head_bias),
    ).eval()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
        model[3].weight[[2, 5]] = 0
        model[3].bias[[2, 5]] = 0
        model[4].weight[[2, 5]] = 0
        model[4].bias[[2, 5]] = 0
    return model


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_compact_leaves_a_group_torch_pruning_refuses_and_says_why(tmp_path: Path) -> None:
    model = _all_dead_then_two()
    path = _save_full(model, tmp_path / "dead.pth")
    out = tmp_path / "out.pth"
    c = api.analyze(path, input_shape=SMALL, compact_to=out).compaction
    assert c["refused"] is None, c["refused"]
    groups = {g["root"]: g for g in c["groups"]}
    # Removing all 8 channels of conv0 would leave it empty: torch-pruning's check refuses the group.
    assert (groups["0"]["removed"], groups["0"]["left"]) == (0, 8)
    assert "torch-pruning" in groups["0"]["left_because"] and "'0'" in groups["0"]["left_because"]
    assert (groups["3"]["removed"], groups["3"]["dead"], groups["3"]["left"]) == (2, 2, 0)
    # What was reported removed is what was removed: conv3's two filters and biases, bn4's two
    # scales and shifts, two input columns of the Linear.
    per_channel = 8 + 1 + 2 + 4
    assert c["params_before"] == _params(model)
    assert c["params_before"] - c["params_after"] == 2 * per_channel
    compacted = torch.load(out, weights_only=False)
    assert (compacted[0].out_channels, compacted[3].out_channels, compacted[8].in_features) == (8, 6, 6)
    x = torch.randn(2, 3, 8, 8)
    _assert_same_outputs(model, compacted, x)


class OnlyAllDead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.bn.weight.zero_()
            self.bn.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_compact_refuses_when_the_only_removal_is_one_torch_pruning_refuses(tmp_path: Path) -> None:
    path = _save_full(OnlyAllDead(), tmp_path / "dead.pth")
    out = tmp_path / "out.pth"
    c = api.analyze(path, allow_modules=("tests",), input_shape=SMALL, compact_to=out).compaction
    assert c["refused"] and "torch-pruning" in c["refused"] and "nothing written" in c["refused"]
    assert c["output"] is None and not out.exists()


class DataclassOutput(nn.Module):
    """Runs fine, but returns an object torch-pruning cannot walk for its graph."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.conv.weight[[1, 6]] = 0
            self.conv.bias[[1, 6]] = 0

    def forward(self, x: torch.Tensor) -> Boxes:
        return Boxes(self.head(torch.relu(self.conv(x))))


class Boxes:
    def __init__(self, values: torch.Tensor) -> None:
        self.values = values


def test_compact_of_a_graph_torch_pruning_cannot_trace_is_a_refusal(tmp_path: Path, run_cli) -> None:
    import torch_pruning as tp

    model = DataclassOutput().eval()
    with pytest.raises(TypeError):  # the oracle: torch-pruning itself cannot build the graph
        tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(SMALL))
    path = _save_full(model, tmp_path / "boxes.pth")
    out = tmp_path / "out.pth"
    report = api.analyze(path, allow_modules=("tests",), input_shape=SMALL, compact_to=out)
    c = report.compaction
    assert c["refused"] and "torch-pruning cannot trace" in c["refused"] and "TypeError" in c["refused"]
    assert not out.exists()
    zeroed = _one(report, "zeroed-channels")
    assert zeroed.evidence["coupling_checked"] is False
    assert "torch-pruning could not trace the model (TypeError" in zeroed.message
    assert zeroed.fix.startswith("Remove the channels rather than zeroing them")
    assert zeroed.evidence["per_layer"]["conv"]["zeroed"] == 2
    result = run_cli(path, "--allow-module", "tests", "--input-shape", "1,3,8,8", "--compact", out)
    assert "Traceback" not in result.out + result.err
    assert result.code == 0, result.err
    assert "torch-pruning cannot trace" in " ".join(result.out.split())


# -- the channel axis of a consumer's input is the one its weight reads (Linear: the last)


TOKENS = (1, 5, 16)  # (N, T, F): fewer tokens than hidden features, so axis 1 is not the channels


def _token_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16)).eval()
    with torch.no_grad():
        model[0].weight[[3, 7, 20]] = 0
        model[0].bias[[3, 7, 20]] = 0
    return model


def test_zeroed_hidden_features_of_a_token_mlp_are_counted(tmp_path: Path) -> None:
    path = _save_full(_token_mlp(), tmp_path / "mlp.pth")
    report = api.analyze(path, input_shape=TOKENS)
    assert not any(line.startswith("zeroed channels") for line in report.not_analysed), report.not_analysed
    finding = _one(report, "zeroed-channels")
    assert finding.evidence["coupling_checked"] is True
    group = finding.evidence["per_group"]["0"]
    assert (group["channels"], group["removable"], group["dead"], group["constant"]) == (32, 3, 3, 0)
    # Three rows of the first Linear (16 weights + a bias each) and three columns of the second.
    assert finding.evidence["params_removable"] == 3 * (16 + 1) + 3 * 16
    # Per token, each removed feature costs 16 MACs in each Linear; five tokens per sample.
    assert finding.evidence["macs_removable"] == 5 * (3 * 16 + 3 * 16)


def test_token_mlp_compacts_along_its_features(tmp_path: Path, run_cli) -> None:
    model = _token_mlp()
    path = _save_full(model, tmp_path / "mlp.pth")
    out = tmp_path / "out.pth"
    c = api.analyze(path, input_shape=TOKENS, compact_to=out).compaction
    assert c["refused"] is None, c["refused"]
    assert c["output"] == str(out)
    compacted = torch.load(out, weights_only=False)
    assert (compacted[0].out_features, compacted[2].in_features) == (29, 29)
    x = torch.randn(3, 7, 16)
    _assert_same_outputs(model, compacted, x)
    result = run_cli(path, "--input-shape", "1,5,16", "--compact", tmp_path / "cli.pth")
    assert "Traceback" not in result.out + result.err and result.code == 0, result.err


class RefusesDispatchModes(nn.Module):
    """The token MLP behind a kernel that will not run under a Python dispatch mode, as a C++
    extension op without a Python dispatch key does: the MAC counter cannot run it, torch can."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = _token_mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils._python_dispatch import is_in_torch_dispatch_mode

        if is_in_torch_dispatch_mode():
            raise NotImplementedError("no kernel registered for the Python dispatch key")
        return self.mlp(x)


def refuses_dispatch_modes() -> RefusesDispatchModes:
    return RefusesDispatchModes().eval()


def test_a_compaction_whose_macs_cannot_be_counted_still_compacts(tmp_path: Path, run_cli) -> None:
    model = refuses_dispatch_modes()
    path = tmp_path / "mlp.pth"
    torch.save(model.state_dict(), path)
    out = tmp_path / "out.pth"
    report = api.analyze(path, arch="tests.test_branches:refuses_dispatch_modes", input_shape=TOKENS, compact_to=out)
    c = report.compaction
    assert c["refused"] is None, c["refused"]
    assert c["macs_before"] is None and c["macs_after"] is None
    assert [n.split(" (")[0] for n in c["notes"]] == ["MACs not counted", "MACs not counted"]
    assert "NotImplementedError: no kernel registered for the Python dispatch key" in c["notes"][0]
    assert report.summary.macs is None  # the header has no count either, and says so in its notes
    assert any(n.startswith("MACs not counted") for n in report.notes), report.notes
    state = torch.load(out, weights_only=True)["state_dict"]
    assert (state["mlp.0.weight"].shape, state["mlp.2.weight"].shape) == ((29, 16), (16, 29))
    compacted = load_pruned(out, "tests.test_branches:refuses_dispatch_modes")
    x = torch.randn(3, 7, 16)
    _assert_same_outputs(model, compacted, x)
    cli = run_cli(path, "--arch", "tests.test_branches:refuses_dispatch_modes", "--input-shape", "1,5,16",
                  "--compact", tmp_path / "cli.pth")
    assert cli.code == 0 and "Traceback" not in cli.out + cli.err, cli.err
    assert "MACs not counted → not counted" in cli.out and "note: MACs not counted (NotImplementedError" in cli.out


# -- what a silenced channel carries: varying after a padded depthwise conv; unobserved


def _depthwise_between() -> nn.Sequential:
    """conv0's filters 2 and 5 are zero. Channel 2 keeps a bias of 0.5: the padded depthwise
    3x3 conv after it sums fewer taps at the borders, so conv3 sees it vary. Channel 5 has no
    bias: it is 0 everywhere, padding included."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
        nn.Conv2d(8, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ).eval()
    with torch.no_grad():
        model[0].weight[[2, 5]] = 0
        model[0].bias[2] = 0.5
        model[0].bias[5] = 0
        model[2].weight.abs_()  # all taps positive: the border sums really are smaller
    return model


def test_silenced_channel_that_arrives_varying_is_not_removable(tmp_path: Path) -> None:
    model = _depthwise_between()
    with torch.no_grad():  # the oracle: channel 2 after the depthwise conv is not constant, channel 5 is 0
        seen = model[2](model[1](model[0](torch.randn(2, 3, 8, 8))))
    assert float(seen[:, 2].max() - seen[:, 2].min()) > 0.1 and float(seen[:, 5].abs().max()) == 0.0
    path = _save_full(model, tmp_path / "dw.pth")
    out = tmp_path / "out.pth"
    report = api.analyze(path, input_shape=SMALL, compact_to=out)
    finding = _one(report, "zeroed-channels")
    (group,) = [g for g in finding.evidence["per_group"].values() if g["producers"] == ["0"]]
    assert (group["removable"], group["dead"], group["constant"], group["not_removable_exactly"]) == (1, 1, 0, 1)
    # Channel 5 costs 27 weights and a bias in conv0, 9 in the depthwise conv, 4 in conv3; each
    # meets its 8x8 output positions once.
    assert finding.evidence["params_removable"] == 27 + 1 + 9 + 4
    assert finding.evidence["macs_removable"] == (27 + 9 + 4) * 64
    c = report.compaction
    (summary,) = [g for g in c["groups"] if g["removed"] or g["left"]]
    assert (summary["removed"], summary["left"]) == (1, 1)
    assert "'3'" in summary["left_because"] or "3 receives a varying signal" in summary["left_because"]
    compacted = torch.load(out, weights_only=False)
    assert (compacted[0].out_channels, compacted[2].groups, compacted[3].in_channels) == (7, 7, 7)
    x = torch.randn(2, 3, 8, 8)
    _assert_same_outputs(model, compacted, x)


class BatchOfOneHead(nn.Module):
    """`single` reads mid's channels only for one image (unbatched, or a batch of one: a
    deployment path): the example input runs it and torch-pruning's graph holds it (it
    traces a batch-1 tensor unbatched), the probes (batch 4) never run it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 8, 1)
        self.single = nn.Conv2d(8, 4, 1)
        self.batched = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            for conv, dead in ((self.stem, [0, 5]), (self.mid, [1, 2, 6])):
                conv.weight[dead] = 0
                conv.bias[dead] = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.mid(torch.relu(self.stem(x))))
        return self.single(y) if x.dim() == 3 or x.shape[0] == 1 else self.batched(y)


def test_channels_whose_consumer_never_ran_on_the_probes_stay(tmp_path: Path) -> None:
    model = BatchOfOneHead().eval()
    path = _save_full(model, tmp_path / "gated.pth")
    out = tmp_path / "out.pth"
    report = api.analyze(path, allow_modules=("tests",), input_shape=SMALL, compact_to=out)
    per_group = _one(report, "zeroed-channels").evidence["per_group"]
    by_producer = {tuple(g["producers"]): g for g in per_group.values()}
    assert (by_producer[("stem",)]["removable"], by_producer[("stem",)]["dead"]) == (2, 2)
    assert (by_producer[("mid",)]["removable"], by_producer[("mid",)]["not_removable_exactly"]) == (0, 3)
    groups = {g["root"]: g for g in report.compaction["groups"]}
    assert (groups["stem"]["removed"], groups["mid"]["removed"], groups["mid"]["left"]) == (2, 0, 3)
    assert "single" in groups["mid"]["left_because"] and "not observed" in groups["mid"]["left_because"]
    compacted = torch.load(out, weights_only=False)
    assert (compacted.stem.out_channels, compacted.mid.in_channels, compacted.mid.out_channels) == (6, 6, 8)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 8, 8)
        _assert_same_outputs(model, compacted, x)


# -- the compaction's verification: outputs must agree within 1e-4 of their scale


def _near_zero_filters(amplify: float) -> nn.Sequential:
    """conv0's filters 1 and 4 are 1e-5 (zero under --zero-tol 1e-3); conv1 reads those
    channels with weight `amplify`, so removing them changes the output by about amplify * 1e-4."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        model[0].weight[[1, 4]] = 1e-5
        model[1].weight[:, [1, 4]] = amplify
    return model


def _expected_difference(model: nn.Sequential) -> tuple[float, float]:
    """The oracle: zero the two filters by hand and compare on the compaction's probe inputs."""
    from analyzer.model.inputs import random_input
    from analyzer.model.silence import probe_inputs

    zeroed = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.Conv2d(8, 4, 1)).eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        zeroed[0].weight[[1, 4]] = 0
        worst = scale = 0.0
        for x in probe_inputs(random_input(model, SMALL)):
            expected = x.call(model)
            worst = max(worst, float((expected - x.call(zeroed)).abs().max()))
            scale = max(scale, float(expected.abs().max()))
    return worst, 1e-4 * max(1.0, scale)


@pytest.mark.parametrize("amplify", [1.0, 1000.0], ids=["within", "beyond"])
def test_compaction_verification_tolerance(tmp_path: Path, amplify: float) -> None:
    model = _near_zero_filters(amplify)
    difference, tolerance = _expected_difference(model)
    assert (difference < tolerance) == (amplify == 1.0), (difference, tolerance)
    path = _save_full(model, tmp_path / "near.pth")
    out = tmp_path / "out.pth"
    c = api.analyze(path, input_shape=SMALL, zero_tol=1e-3, compact_to=out).compaction
    assert c["max_abs_diff"] == pytest.approx(difference, rel=1e-3)
    assert c["tolerance"] == pytest.approx(tolerance, rel=1e-6)
    if amplify == 1.0:
        assert c["refused"] is None, c["refused"]
        assert torch.load(out, weights_only=False)[0].out_channels == 6
    else:
        assert c["refused"].startswith("verification failed: outputs differ by"), c["refused"]
        assert not out.exists()


# -- an exception inside a pass is an analyzer failure, said in the report and the exit code


def _broken_check(ctx) -> list[Finding]:
    return [ctx.layers[len(ctx.layers)]]  # an off-by-one, as a real bug would be


@pytest.fixture
def broken_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    import analyzer.passes as passes

    monkeypatch.setattr(passes, "PASSES", (*passes.PASSES[:3], ("broken check", _broken_check), *passes.PASSES[3:]))


@pytest.mark.pass_failure_expected
def test_a_pass_that_raises_is_reported_as_a_failure(tmp_path: Path, broken_registry: None) -> None:
    import json

    import jsonschema

    path = _save_full(_token_mlp(), tmp_path / "mlp.pth")
    report = api.analyze(path, input_shape=TOKENS)
    (failure,) = report.failures
    assert (failure["pass"], failure["exception"]) == ("broken check", "IndexError")
    assert failure["message"] == "list index out of range"
    assert "_broken_check" in failure["traceback"] and "Traceback (most recent call last)" in failure["traceback"]
    assert not any("broken check" in line for line in report.not_analysed)
    assert "zeroed-channels" in _kinds(report)  # the other checks still ran
    assert report.verdict.startswith("The analysis is incomplete: the broken check check failed")
    schema = json.loads((Path(api.__file__).parent / "report_schema.json").read_text())
    jsonschema.validate(json.loads(ReportSet([report]).to_json()), schema)
    assert Report.from_json(report.to_json()).failures == report.failures


@pytest.mark.pass_failure_expected
def test_cli_exits_2_on_a_pass_failure_with_the_traceback_under_debug(tmp_path: Path, broken_registry: None, run_cli) -> None:
    path = _save_full(_token_mlp(), tmp_path / "mlp.pth")
    plain = run_cli(path, "--input-shape", "1,5,16")
    assert plain.code == 2
    assert "analyzer failure" in plain.out and "broken check: IndexError: list index out of range" in plain.out
    (line,) = plain.err.strip().splitlines()
    assert "the broken check check failed (IndexError: list index out of range)" in line and "incomplete" in line
    debug = run_cli(path, "--input-shape", "1,5,16", "--debug", "--fail-on", "never")
    assert debug.code == 2
    assert "Traceback (most recent call last)" in debug.err and "_broken_check" in debug.err


@pytest.mark.pass_failure_expected
def test_assert_clean_fails_an_incomplete_analysis(tmp_path: Path, broken_registry: None) -> None:
    from analyzer import assert_clean

    path = _save_full(HeadNet(head_in=8), tmp_path / "clean.pth")
    with pytest.raises(AssertionError, match=r"incomplete, 1 check\(s\) failed:\n  broken check: IndexError"):
        assert_clean(path, allow_modules=("tests",), input_shape=SMALL)


def test_skipped_pass_is_not_a_failure(tmp_path: Path, run_cli) -> None:
    # No reference: channel removal cannot run. That is a "not analysed" line, exit code from the findings.
    path = _save_full(HeadNet(head_in=8), tmp_path / "head.pth")
    report = api.analyze(path, allow_modules=("tests",), input_shape=SMALL)
    assert report.failures == []
    assert any(line.startswith("channel removal:") for line in report.not_analysed)
    assert run_cli(path, "--allow-module", "tests", "--input-shape", "1,3,8,8").code == 0


@pytest.mark.pass_failure_expected
def test_the_suite_fails_a_test_whose_analysis_had_a_pass_failure(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("from tests.conftest import _record_pass_failures, _fail_on_pass_failures, pytest_configure\n")
    pytester.makepyfile(
        """
        import pytest
        import torch
        import analyzer.passes as passes
        from analyzer import api

        def _broken(ctx):
            raise KeyError("bug")

        @pytest.fixture
        def checkpoint(tmp_path, monkeypatch):
            monkeypatch.setattr(passes, "PASSES", (("broken", _broken),))
            path = tmp_path / "sd.pth"
            torch.save({"fc.weight": torch.ones(2, 2)}, path)
            return path

        def test_unmarked(checkpoint):
            api.analyze(checkpoint)

        @pytest.mark.pass_failure_expected
        def test_marked(checkpoint):
            assert api.analyze(checkpoint).failures[0]["exception"] == "KeyError"
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*1 analyzer pass failure(s)*", "*pass 'broken': KeyError*"])


# -- zero patterns: zeroed rows and columns together, N:M over several chunks


def _nonzero_weights(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g)
    return torch.where(w.abs() < 0.1, torch.full_like(w, 0.5), w)


def test_zeros_outside_zeroed_rows_and_columns_are_counted_once() -> None:
    from analyzer.tensors.patterns import weight_pattern

    w = _nonzero_weights(10, 6, 3, 3)
    w[[1, 4, 8]] = 0  # three filters
    w[:, [0, 5]] = 0  # two input channels, crossing the filters
    scattered = [(0, 1, 0, 0), (2, 2, 1, 1), (3, 3, 2, 0), (9, 4, 0, 2), (6, 1, 1, 2)]
    for index in scattered:
        w[index] = 0
    p = weight_pattern(w)
    # The oracle: zeros outside the zeroed rows and columns, counted with a mask.
    outside = torch.ones_like(w, dtype=torch.bool)
    outside[[1, 4, 8]] = False
    outside[:, [0, 5]] = False
    assert int((w[outside] == 0).sum()) == len(scattered)
    assert p.zero_out_channels == [1, 4, 8] and p.zero_in_channels == [0, 5]
    assert p.zeros == int((w == 0).sum())
    assert p.unstructured_zeros == len(scattered)
    assert p.zero_kernels == 0


def _max_nonzeros_per_group(w: torch.Tensor, m: int) -> int:
    """The oracle for N:M, in plain Python: the most non-zeros in any aligned run of m inputs."""
    rows = w.reshape(w.shape[0], -1).tolist()
    return max(sum(1 for v in row[i : i + m] if v != 0) for row in rows for i in range(0, len(row), m))


@pytest.mark.parametrize("looser_rows", ["first", "last"])
def test_n_of_m_takes_the_loosest_chunk(monkeypatch: pytest.MonkeyPatch, looser_rows: str) -> None:
    import analyzer.tensors.patterns as patterns

    w = _nonzero_weights(12, 32)
    groups = w.view(12, 8, 4)
    groups[:, :, 1:] = 0  # 1:4 everywhere...
    looser = slice(0, 3) if looser_rows == "first" else slice(9, 12)
    groups[looser, :, 2] = 1.0  # ...but 2:4 in three rows
    monkeypatch.setattr(patterns, "_CHUNK_ELEMENTS", 32 * 2)  # two rows per chunk: six chunks
    p = patterns.weight_pattern(w)
    assert _max_nonzeros_per_group(w, 4) == 2 and _max_nonzeros_per_group(w, 8) == 4
    assert p.nm == ["2:4", "4:8"]
    assert p.label == "2:4"
    assert p.zeros == int((w == 0).sum())


# -- residual checks: bottleneck blocks statically, the hook path with the shortcut first


def _bottleneck_stack(conv3_out: int = 16, downsample_out: int = 16) -> nn.Module:
    """Two zoo Bottleneck blocks: layer1.0 with a downsample shortcut (8 → 16), layer1.1 with
    the identity. conv1 reads 8 or 16 channels and writes 4: the block width is not conv1's."""
    from collections import OrderedDict

    from analyzer.zoo.resnet import Bottleneck, conv1x1

    torch.manual_seed(0)
    first = Bottleneck(8, 4, downsample=nn.Sequential(conv1x1(8, downsample_out), nn.BatchNorm2d(downsample_out)))
    second = Bottleneck(16, 4)
    if conv3_out != 16:
        second.conv3 = conv1x1(4, conv3_out)
        second.bn3 = nn.BatchNorm2d(conv3_out)
    return nn.Sequential(OrderedDict(layer1=nn.Sequential(first, second))).eval()


def _static_report(model: nn.Module, path: Path) -> Report:
    torch.save(model.state_dict(), path)
    return api.analyze(path)  # a state dict, no --arch: the static check


def test_static_check_passes_intact_bottlenecks(tmp_path: Path) -> None:
    report = _static_report(_bottleneck_stack(), tmp_path / "ok.pth")
    assert "residual-mismatch" not in _kinds(report)


def test_static_check_names_a_narrowed_bottleneck_against_its_identity_shortcut(tmp_path: Path) -> None:
    model = _bottleneck_stack(conv3_out=12)
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"tensor a \(12\) must match the size of tensor b \(16\)"):
        model(torch.randn(1, 8, 4, 4))  # the oracle: the add really fails, 12 against 16
    finding = _one(_static_report(model, tmp_path / "narrow.pth"), "residual-mismatch")
    assert finding.evidence["static"] is True and finding.evidence["module"] == "layer1.1"
    assert finding.evidence["operand_channels"] == {"layer1.1.bn3": 12, "layer1.1 input (layer1.1.conv1 reads it)": 16}


def test_static_check_names_a_narrowed_downsample(tmp_path: Path) -> None:
    model = _bottleneck_stack(downsample_out=12)
    finding = _one(_static_report(model, tmp_path / "narrow.pth"), "residual-mismatch")
    assert finding.evidence["module"] == "layer1.0"
    assert finding.evidence["operand_channels"] == {"layer1.0.bn3": 16, "layer1.0.downsample": 12}


class ShortcutFirstBlock(nn.Module):
    """`x + out`: the shortcut is operand a of the add. Data-dependent, so torch.fx cannot trace it."""

    def __init__(self, out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, out, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        if x.sum() > 0:
            out = out * 2
        return torch.relu(x + self.bn2(self.conv2(out)))


class ShortcutFirstNet(nn.Module):
    def __init__(self, out: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = ShortcutFirstBlock(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x)).mean((2, 3))


def test_hook_path_with_the_shortcut_as_first_operand(tmp_path: Path) -> None:
    from analyzer.model.graph import trace_graph

    model = ShortcutFirstNet().eval()
    assert trace_graph(model, torch.randn(SMALL)) is None  # the module-hook fallback is what is tested
    assert "tensor a (8) must match the size of tensor b (6)" in _torch_error(model, SMALL)
    report = api.analyze(_save_full(model, tmp_path / "first.pth"), allow_modules=("tests",), input_shape=SMALL)
    finding = _one(report, "residual-mismatch")
    assert finding.evidence["found_by"] == "module hooks"
    assert finding.evidence["operand_channels"] == {"block.bn2": 6, "block input": 8}
    assert "forward-failure" not in _kinds(report)
    # The fix starts from the conv that feeds the narrow operand, and says how many channels went.
    assert "model.get_submodule('block.conv2')" in finding.fix_code and "the 2 channel indices" in finding.fix_code


# -- a pruned checkpoint with a layer that cannot take its narrower width


class GroupNormNet(nn.Module):
    """conv → GroupNorm(4 groups) → linear: 16 channels fit 4 groups, 10 do not."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.gn = nn.GroupNorm(4, 16)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.gn(self.conv(x)).mean((2, 3)))


def test_narrower_layer_that_cannot_be_resized(tmp_path: Path) -> None:
    from analyzer.errors import BuildError

    dense = GroupNormNet().state_dict()
    with pytest.raises(ValueError, match="divisible"):  # the oracle: torch refuses a GroupNorm of 10 channels in 4 groups
        nn.GroupNorm(4, 10)
    pruned = {k: (v[:, :10] if k == "fc.weight" else v if k == "fc.bias" else v[:10]) for k, v in dense.items()}
    path = tmp_path / "gn.pth"
    torch.save(pruned, path)
    report = api.analyze(path, arch="tests.test_branches:GroupNormNet", input_shape=SMALL)
    finding = _one(report, "state-dict-mismatch")
    assert finding.evidence["cause"] == "pruned checkpoint into a dense class"
    assert [entry.split()[0] for entry in finding.evidence["not_resizable"]] == ["gn"]
    assert "but gn (GroupNorm: 10 channels do not split into 4 groups) cannot be resized" in finding.message
    assert "tp.state_dict" in finding.fix
    assert "cannot resize gn (GroupNorm: 10 channels do not split into 4 groups)" in report.notes
    with pytest.raises(BuildError, match=r"cannot be resized: gn \(GroupNorm: 10 channels do not split into 4 groups\)"):
        api.load_pruned(path, GroupNormNet)


# -- the exit code over several files: any file's findings count


def test_exit_code_of_a_sweep_is_1_when_any_file_has_an_error(tmp_path: Path, run_cli) -> None:
    broken = _save_full(HeadNet(), tmp_path / "broken.pth")
    clean = _save_full(HeadNet(head_in=8), tmp_path / "clean.pth")
    args = ("--allow-module", "tests", "--input-shape", "1,3,8,8")
    assert run_cli(clean, clean, *args).code == 0
    for order in ((broken, clean), (clean, broken)):
        result = run_cli(*order, *args)
        assert result.code == 1, result.err
        assert "forward-failure" in result.out


# -- MACs of a transposed convolution


def test_conv_transpose_macs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    # 8x8 → 17x17 (stride 2, kernel 3, no padding: not simply twice the input) → 18x18, grouped
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ConvTranspose2d(4, 6, 3, stride=2), nn.ConvTranspose2d(6, 4, 2, groups=2)).eval()
    # Each input position of a transposed conv meets every weight once (weight: in × out/groups × k × k).
    expected = {"0": 4 * 3 * 9 * 8 * 8, "1": 8 * 8 * (4 * 6 * 9), "2": 17 * 17 * (6 * 2 * 4)}
    shapes = [tuple(out.shape) for out in _layer_outputs(model, torch.randn(SMALL))]
    assert shapes == [(1, 4, 8, 8), (1, 6, 17, 17), (1, 4, 18, 18)]  # the positions the formula assumes
    report = api.analyze(_save_full(model, tmp_path / "up.pth"), input_shape=SMALL)
    assert report.summary.macs == sum(expected.values())


def _layer_outputs(model: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    outputs = []
    with torch.no_grad():
        for layer in model:
            x = layer(x)
            outputs.append(x)
    return outputs


# -- STACK_GLOBAL whose module and name are computed at load time


def test_stack_global_with_computed_strings_is_dynamic_and_refused(tmp_path: Path, run_cli) -> None:
    import pickle

    from analyzer.load.pickle_scan import DYNAMIC, GlobalRef, scan_globals
    from analyzer.load.policy import DYNAMIC_NAME, GlobalKind, GlobalPolicy

    sentinel = tmp_path / "PWNED"

    def short(text: str) -> bytes:
        return pickle.SHORT_BINUNICODE + bytes([len(text)]) + text.encode()

    def computed(text: str) -> bytes:  # str(text): a call whose result the scan cannot know
        return pickle.GLOBAL + b"builtins\nstr\n" + short(text) + pickle.TUPLE1 + pickle.REDUCE

    body = computed("os") + computed("system") + pickle.STACK_GLOBAL + short(f"touch {sentinel}") + pickle.TUPLE1 + pickle.REDUCE
    path = tmp_path / "computed.pkl"
    path.write_bytes(pickle.PROTO + b"\x04" + body + pickle.STOP)
    with open(path, "rb") as f:
        assert scan_globals(f) == [GlobalRef("builtins", "str"), GlobalRef(DYNAMIC, DYNAMIC)]
    resolved = GlobalPolicy().resolve(DYNAMIC, DYNAMIC)
    assert resolved.kind is GlobalKind.UNKNOWN and DYNAMIC_NAME in resolved.refusals
    finding = _one(api.analyze(path), "unsafe-pickle")  # the same answer as in a torch zip (issue 12, item 8)
    assert finding.severity is Severity.ERROR and "<dynamic>.<dynamic>" in finding.message
    assert "could not be read safely" in finding.evidence["refused"]
    result = run_cli(path)
    assert result.code == 1 and "Traceback" not in result.out + result.err
    assert not sentinel.exists()


# -- a transposed conv's output channels are its weight's dim 1


def _upsampler() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(3, 8, 2, stride=2), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        model[0].weight[:, [1, 6]] = 0  # (in, out, kh, kw): output channels 1 and 6
        model[0].bias[[1, 6]] = 0
    return model


def test_zeroed_output_channels_of_a_transposed_conv(tmp_path: Path) -> None:
    model = _upsampler()
    path = _save_full(model, tmp_path / "up.pth")
    out = tmp_path / "out.pth"
    report = api.analyze(path, input_shape=(1, 3, 4, 4), compact_to=out)
    assert {row.name: row.pattern for row in report.layers}["0"] == "zeroed-out"
    finding = _one(report, "zeroed-channels")
    assert finding.evidence["coupling_checked"] is True
    (group,) = finding.evidence["per_group"].values()
    assert (group["channels"], group["removable"], group["dead"], group["producers"]) == (8, 2, 2, ["0"])
    # Each removed channel: 3 * 2 * 2 weights + a bias in the transposed conv, 4 weights of the 1x1 conv.
    assert finding.evidence["params_removable"] == 2 * (12 + 1 + 4)
    # The transposed conv meets each of a channel's 12 weights at its 4x4 input positions; the 1x1 conv
    # reads the channel at its 8x8 output positions with 4 weights.
    assert finding.evidence["macs_removable"] == 2 * (16 * 12 + 64 * 4)
    assert report.compaction["refused"] is None, report.compaction["refused"]
    compacted = torch.load(out, weights_only=False)
    assert (compacted[0].out_channels, compacted[2].in_channels) == (6, 6)
    x = torch.randn(2, 3, 4, 4)
    _assert_same_outputs(model, compacted, x)


# -- constants that cannot be folded into the layer that reads them


def _constant_into(consumer: nn.Module, channels: int = 8) -> nn.Sequential:
    """conv0's filters 2 and 3 are zero with a bias of 0.5 (a constant 0.5 after the ReLU);
    filter 5 is zero with no bias (dead)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, channels, 1), nn.ReLU(), consumer).eval()
    with torch.no_grad():
        model[0].weight[[2, 3, 5]] = 0
        model[0].bias[[2, 3]] = 0.5
        model[0].bias[5] = 0
    return model


@pytest.mark.parametrize(
    ("consumer", "because"),
    [
        (lambda: nn.ConvTranspose2d(8, 4, 3, stride=2), "is a transposed conv"),
        (lambda: nn.Conv2d(8, 4, 1, bias=False), "has no bias and no BatchNorm"),
        (lambda: nn.Conv2d(8, 4, 3, padding="same"), "is a padded conv"),
    ],
    ids=["transposed", "no-bias", "padding-same"],
)
def test_constant_that_cannot_be_folded_stays(tmp_path: Path, consumer, because: str) -> None:
    model = _constant_into(consumer())
    if isinstance(model[2], nn.ConvTranspose2d):  # the oracle: a constant input does not give a uniform output
        with torch.no_grad():
            response = model[2](torch.full((1, 8, 4, 4), 0.5)) - model[2].bias[:, None, None]
        assert float(response.max() - response.min()) > 0.01
    path = _save_full(model, tmp_path / "const.pth")
    out = tmp_path / "out.pth"
    report = api.analyze(path, input_shape=SMALL, compact_to=out)
    (group,) = _one(report, "zeroed-channels").evidence["per_group"].values()
    assert (group["removable"], group["dead"], group["constant"], group["not_removable_exactly"]) == (1, 1, 0, 2)
    (summary,) = report.compaction["groups"]
    assert (summary["removed"], summary["left"]) == (1, 2) and because in summary["left_because"]
    compacted = torch.load(out, weights_only=False)
    x = torch.randn(2, 3, 8, 8)
    _assert_same_outputs(model, compacted, x)


def test_constant_into_a_valid_padded_conv_is_folded(tmp_path: Path) -> None:
    model = _constant_into(nn.Conv2d(8, 4, 3, padding="valid"))
    path = _save_full(model, tmp_path / "const.pth")
    out = tmp_path / "out.pth"
    (summary,) = api.analyze(path, input_shape=SMALL, compact_to=out).compaction["groups"]
    assert (summary["removed"], summary["dead"], summary["constants_folded"], summary["left"]) == (3, 1, 2, 0)
    compacted = torch.load(out, weights_only=False)
    assert compacted[0].out_channels == 5
    x = torch.randn(2, 3, 8, 8)
    _assert_same_outputs(model, compacted, x)


def test_channels_read_by_a_grouped_conv_stay(tmp_path: Path) -> None:
    # Removing one of 8 input channels leaves a groups=2 conv with groups of 4 and 3.
    model = _constant_into(nn.Conv2d(8, 4, 1, groups=2))
    path = _save_full(model, tmp_path / "grouped.pth")
    out = tmp_path / "out.pth"
    c = api.analyze(path, input_shape=SMALL, compact_to=out).compaction
    assert c["refused"].startswith("no channel can be removed exactly: 3 silent channels stay"), c["refused"]
    assert "a grouped conv" in c["refused"] and not out.exists()


@pytest.mark.parametrize("absorber", ["bias", "batchnorm", "none"])
def test_constant_into_a_linear(tmp_path: Path, absorber: str) -> None:
    """Features 3 and 7 of the first Linear are a constant 0.5 (zero rows, bias 0.5); feature 20 is dead.
    The constant folds into the second Linear's bias, or into the BatchNorm1d after it; with neither it stays."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8, bias=absorber == "bias")]
    layers += [nn.BatchNorm1d(8)] if absorber == "batchnorm" else []
    model = nn.Sequential(*layers).eval()
    with torch.no_grad():
        model[0].weight[[3, 7, 20]] = 0
        model[0].bias[[3, 7]] = 0.5
        model[0].bias[20] = 0
        if absorber == "batchnorm":
            model[3].running_mean.uniform_(-1, 1)
            model[3].running_var.uniform_(0.5, 2)
    path = _save_full(model, tmp_path / "mlp.pth")
    out = tmp_path / "out.pth"
    (summary,) = api.analyze(path, input_shape=(1, 16), compact_to=out).compaction["groups"]
    folded = 0 if absorber == "none" else 2
    assert (summary["removed"], summary["dead"], summary["constants_folded"], summary["left"]) == (1 + folded, 1, folded, 2 - folded)
    if absorber == "none":
        assert "has no bias and no BatchNorm" in summary["left_because"]
    compacted = torch.load(out, weights_only=False)
    assert compacted[0].out_features == 32 - 1 - folded
    x = torch.randn(5, 16)
    _assert_same_outputs(model, compacted, x)


# -- --round-to, and masks folded by the compaction


def _three_dead_two_constant() -> nn.Sequential:
    """conv0: filters 1, 6, 9 dead (zero, no bias); 4 and 12 a constant 0.5 (zero, bias 0.5), which
    folds into the 1x1 conv's bias."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1)).eval()
    with torch.no_grad():
        model[0].weight[[1, 4, 6, 9, 12]] = 0
        model[0].bias[[1, 6, 9]] = 0
        model[0].bias[[4, 12]] = 0.5
    return model


@pytest.mark.parametrize("round_to", [None, 4, 8])
def test_round_to_keeps_widths_multiples(tmp_path: Path, round_to: int | None) -> None:
    model = _three_dead_two_constant()
    path = _save_full(model, tmp_path / "m.pth")
    out = tmp_path / "out.pth"
    c = api.analyze(path, input_shape=SMALL, compact_to=out, round_to=round_to).compaction
    # 16 - 5 = 11 channels: a multiple of 4 keeps one zero channel (a constant first: it needs no
    # folding), a multiple of 8 would keep all five.
    if round_to == 8:
        assert c["refused"] and "kept so that widths stay multiples of --round-to" in c["refused"], c["refused"]
        assert not out.exists()
        return
    expected = {None: (5, 3, 2, 0, 11), 4: (4, 3, 1, 1, 12)}[round_to]
    (g,) = c["groups"]
    assert (g["removed"], g["dead"], g["constants_folded"], g["kept_for_alignment"], 16 - g["removed"]) == expected
    compacted = torch.load(out, weights_only=False)
    assert compacted[0].out_channels == expected[4]
    x = torch.randn(2, 3, 8, 8)
    _assert_same_outputs(model, compacted, x)


def test_compaction_folds_prune_masks_of_a_full_module(tmp_path: Path) -> None:
    import torch.nn.utils.prune as prune

    model = _three_dead_two_constant()
    prune.l1_unstructured(model[2], "weight", amount=0.25)
    assert hasattr(model[2], "weight_mask")
    path = _save_full(model, tmp_path / "masked.pth")
    out = tmp_path / "out.pth"
    c = api.analyze(path, input_shape=SMALL, compact_to=out).compaction
    assert c["refused"] is None and c["masks_folded"] == 1
    compacted = torch.load(out, weights_only=False)
    assert not [k for k in compacted.state_dict() if k.endswith(("_orig", "_mask"))]
    x = torch.randn(2, 3, 8, 8)
    _assert_same_outputs(model, compacted, x)


def three_dead_two_constant() -> nn.Sequential:
    """The --arch factory of the next test (the dense architecture)."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1))


def test_compaction_counts_the_masks_of_a_state_dict_rebuilt_on_arch(tmp_path: Path) -> None:
    import torch.nn.utils.prune as prune

    model = _three_dead_two_constant()
    prune.l1_unstructured(model[2], "weight", amount=0.25)
    path = tmp_path / "masked-state.pth"
    torch.save(model.state_dict(), path)
    out = tmp_path / "out.pth"
    c = api.analyze(path, arch="tests.test_branches:three_dead_two_constant", input_shape=SMALL, compact_to=out).compaction
    assert c["refused"] is None and c["masks_folded"] == 1 and c["saved_as"] == "state dict + arch"
    compacted = api.load_pruned(out, three_dead_two_constant)
    assert compacted[0].out_channels == 11
    x = torch.randn(2, 3, 8, 8)
    _assert_same_outputs(model, compacted, x)


# -- sparsity: the channel ratio suggested, N:M requirements


def test_unstructured_sparsity_suggests_a_channel_ratio_removing_as_many_flops(tmp_path: Path) -> None:
    import torch.nn.utils.prune as prune

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.Flatten(), nn.Linear(16 * 4 * 4, 4)).eval()
    prune.l1_unstructured(model[2], "weight", amount=0.6)
    prune.remove(model[2], "weight")
    path = tmp_path / "sparse.pth"
    torch.save(model.state_dict(), path)
    finding = _one(api.analyze(path), "unstructured-sparsity")
    w = model[2].weight.detach()
    # Scattered zeros: those outside the 3x3 kernels that came out entirely zero by chance.
    whole_kernels = int((w.view(16, 16, 9) == 0).all(-1).sum())
    zeros = int((w == 0).sum()) - 9 * whole_kernels
    weights = sum(m.weight.numel() for m in (model[0], model[2], model[4]))
    assert finding.modules == ["2"] and finding.evidence["zeros"] == zeros
    assert finding.evidence["sparsity_per_layer"] == {"2": round(zeros / model[2].weight.numel(), 4)}
    assert finding.evidence["sparsity_overall"] == round(zeros / weights, 4)
    assert finding.evidence["sparsity_in_these_layers"] == round(zeros / w.numel(), 4)
    ratio = float(finding.fix_code.split("pruning_ratio=")[1].split(",")[0])
    assert ratio == round(ratio, 2)  # a ratio to type, not a computed float
    # Removing a share r of the channels of consecutive layers removes 1 - (1 - r)^2 of their FLOPs.
    assert 1 - (1 - ratio) ** 2 == pytest.approx(zeros / weights, abs=0.02)
    assert f"about {ratio}" in finding.fix
    assert "ignored_layers=[model.get_submodule('4')]" in finding.fix_code


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_two_of_four_requirements(tmp_path: Path, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 48), nn.Conv2d(1, 8, (1, 4)), nn.Linear(16, 1)).to(dtype).eval()
    with torch.no_grad():
        for layer in (model[0], model[2], model[3], model[4]):
            groups = layer.weight.view(layer.weight.shape[0], -1, 4)
            groups.scatter_(-1, groups.float().abs().argsort(-1)[..., :2], 0.0)
    path = tmp_path / "semi.pth"
    torch.save(model.state_dict(), path)
    finding = _one(api.analyze(path), "semi-structured-sparsity")
    layers = finding.evidence["layers"]
    # (32, 64) fits CUTLASS's multiples of 32 rows and 64 columns; (48, 32) does not.
    assert {name: (e["gemm_shape"], e["shape_ok"]) for name, e in layers.items()} == {
        "0": ([32, 64], True), "2": ([48, 32], False), "3": ([8, 4], False), "4": ([1, 16], False)
    }
    assert all(isinstance(v, int) for e in layers.values() for v in e["gemm_shape"])
    assert finding.message.startswith("4 layers follow an N:M pattern (2:4)")
    assert all(e["dtype_ok"] == (dtype == torch.float16) for e in layers.values())
    assert layers["3"]["kernel_support"].startswith("conv") and layers["0"]["kernel_support"] == "linear"
    assert finding.fix_code is not None and "for name in ['0']:" in finding.fix_code


# -- a head narrower than the reference, with outputs that differ from the dense model's


def head_net() -> HeadNet:
    """The --arch factory: HeadNet as it was before pruning."""
    return HeadNet(head_in=8)


def test_head_narrower_than_the_reference_and_its_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = head_net().state_dict()
    state["head.0.weight"], state["head.0.bias"] = state["head.0.weight"][:2], state["head.0.bias"][:2]
    path = tmp_path / "head.pth"
    torch.save(state, path)
    report = api.analyze(path, arch="tests.test_branches:head_net", input_shape=SMALL)
    finding = _one(report, "head-shape-mismatch")
    assert finding.modules == ["head.0"]
    assert finding.evidence["heads"]["head.0"]["reference_out_channels"] == 4
    assert finding.evidence["problems"] == [
        "head: 2 output channels where the reference has 4",
        "outputs on 1×3×8×8 are [(1, 2, 8, 8)] where --arch tests.test_branches:head_net gives [(1, 4, 8, 8)]",
    ]
    # 10 of the 12 conv output channels are left: a pruning ratio of 0.17.
    assert "pruning_ratio=0.17," in finding.fix_code and "'head.0'" in finding.fix_code


@pytest.mark.pass_failure_expected
def test_a_failure_message_is_one_line_and_an_analyzer_error_is_not_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import analyzer.passes as passes
    from analyzer.errors import InputError

    def multiline(ctx) -> list[Finding]:
        raise ValueError("first line\n    second line " + "x" * 400)

    path = _save_full(HeadNet(head_in=8), tmp_path / "clean.pth")
    monkeypatch.setattr(passes, "PASSES", (("multiline", multiline),))
    (failure,) = api.analyze(path, allow_modules=("tests",), input_shape=SMALL).failures
    assert failure["message"] == ("first line second line " + "x" * 400)[:300]

    def refuses(ctx) -> list[Finding]:
        raise InputError("the file says no")

    monkeypatch.setattr(passes, "PASSES", (("refuses", refuses),))
    with pytest.raises(InputError, match="the file says no"):  # our own errors are the CLI's one line, exit 2
        api.analyze(path, allow_modules=("tests",), input_shape=SMALL)


def test_a_single_two_of_four_layer(tmp_path: Path) -> None:
    linear = nn.Linear(64, 32)
    with torch.no_grad():
        groups = linear.weight.view(32, -1, 4)
        groups.scatter_(-1, groups.abs().argsort(-1)[..., :2], 0.0)
    path = tmp_path / "one.pth"
    torch.save({"fc.weight": linear.weight.detach(), "fc.bias": linear.bias.detach()}, path)
    finding = _one(api.analyze(path), "semi-structured-sparsity")
    assert finding.message.startswith("1 layer follows an N:M pattern (2:4)")


# -- detection heads: anchors that disagree, and the loss error on this input


class TwoHeads(nn.Module):
    """Box and class heads reshaped to (N, -1, K), with no anchor count to compare with: the box
    head holds 2 anchors of 4 values; a class head of 6 channels holds 3 anchors of 2, and
    disagrees with it."""

    def __init__(self, class_channels: int = 4) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.box_head = nn.Conv2d(8, 8, 1)
        self.cls_head = nn.Conv2d(8, class_channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.relu(self.body(x))
        boxes = self.box_head(f).permute(0, 2, 3, 1).contiguous()
        classes = self.cls_head(f).permute(0, 2, 3, 1).contiguous()
        return boxes.view(boxes.shape[0], -1, 4), classes.view(classes.shape[0], -1, 2)


@pytest.mark.parametrize("class_channels", [4, 6])
def test_heads_that_disagree_on_anchors(tmp_path: Path, class_channels: int) -> None:
    path = _save_full(TwoHeads(class_channels), tmp_path / "heads.pth")
    report = api.analyze(path, allow_modules=("tests",), input_shape=SMALL)
    if class_channels == 4:  # 2 anchors each: they agree
        assert "head-shape-mismatch" not in _kinds(report)
        return
    finding = _one(report, "head-shape-mismatch")
    assert finding.evidence["problems"] == ["the heads disagree on anchors per location (box_head: 2, cls_head: 3)"]
    assert {conv: h["anchors_per_location"] for conv, h in finding.evidence["heads"].items()} == {"box_head": 2, "cls_head": 3}


def _retinaface_with(family: str, width: int) -> nn.Module:
    from analyzer.zoo import retinaface_mnet

    torch.manual_seed(0)
    model = retinaface_mnet().eval()
    for head in getattr(model, family):
        head.conv1x1 = nn.Conv2d(64, width, 1)
    return model


def test_box_head_with_three_anchors_names_the_loss_error(tmp_path: Path) -> None:
    model = _retinaface_with("BboxHead", 12)  # 3 anchors of 4 values where the priors hold 2
    with torch.no_grad():
        boxes = model(torch.randn(1, 3, 128, 128))[0]
    assert boxes.shape == (1, 3 * 336, 4)  # the oracle: 16*16 + 8*8 + 4*4 = 336 positions, 3 boxes each
    report = api.analyze(_save_full(model, tmp_path / "rf.pth"), input_shape=(1, 3, 128, 128))
    finding = _one(report, "head-shape-mismatch")
    assert "emits 1008 boxes per image against 672 priors" in finding.message
    assert "Target sizes: [N, 1008, 4]. Tensor sizes: [N, 672, 1]" in finding.message


def test_class_head_pruned_alone_has_no_box_loss_line(tmp_path: Path) -> None:
    report = api.analyze(_save_full(_retinaface_with("ClassHead", 2), tmp_path / "rf.pth"), input_shape=(1, 3, 128, 128))
    finding = _one(report, "head-shape-mismatch")
    assert any(p.startswith("ClassHead (3 levels): 2 output channels, that is 1 anchor") for p in finding.evidence["problems"])
    assert "Target sizes" not in finding.message and "boxes per image" not in finding.message


# -- zeroed channels without a runnable model: the counts come from the tensors alone


def test_static_zeroed_channels_counts_each_layers_own_parameters(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = {"conv.weight": torch.randn(8, 3, 3, 3), "conv.bias": torch.randn(8), "fc.weight": torch.randn(6, 10), "fc.bias": torch.randn(6)}
    state["conv.weight"][[1, 4, 6]] = 0
    state["fc.weight"][[0, 3]] = 0
    path = tmp_path / "zeroed.pth"
    torch.save(state, path)
    finding = _one(api.analyze(path), "zeroed-channels")
    # the oracle: a zeroed filter's own parameters are its weight slice and its bias entry
    conv_each, fc_each = 3 * 3 * 3 + 1, 10 + 1
    assert finding.evidence["params_removable_at_least"] == 3 * conv_each + 2 * fc_each == 106
    assert finding.message.startswith("5 output channels in 2 layers are zeroed but still computed (at least 106 parameters")
    assert finding.evidence["per_layer"]["fc"] == {"zeroed": 2, "of": 6, "zero_filters": 2, "silenced_by_batchnorm": 0}
    assert finding.evidence["coupling_checked"] is False


# -- unaligned widths, with a profile: time per MAC against the aligned convs' median


def test_unaligned_slowdown_is_time_per_mac_over_the_aligned_median(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from analyzer.load import load_checkpoint
    from analyzer.passes import PassContext, unaligned_channels
    from analyzer.profile.result import LayerProfile
    from analyzer.tensors.layers import build_layers

    torch.manual_seed(0)
    state = {"conv1.weight": torch.randn(12, 3, 3, 3), "conv2.weight": torch.randn(16, 12, 3, 3), "conv3.weight": torch.randn(16, 16, 3, 3)}
    path = tmp_path / "narrow.pth"
    torch.save(state, path)
    checkpoint = load_checkpoint(path)
    ctx = PassContext(checkpoint, build_layers(checkpoint))

    def timed(name: str, ms: float) -> LayerProfile:
        return LayerProfile(name, "Conv2d", ms, 0.0, 0.0, 1000, 0, 0.0, "compute")

    (plain,) = unaligned_channels.run(ctx)
    assert plain.modules == ["conv1"] and plain.evidence["widths"] == {"conv1": 12} and plain.evidence["rounded_up"] == {"conv1": 16}
    assert plain.evidence["measured_time_per_mac_vs_aligned"] is None  # nothing measured
    ctx.profile = SimpleNamespace(layers=[timed("conv1", 3.0), timed("conv2", 1.0), timed("conv3", 2.0)])
    (measured,) = unaligned_channels.run(ctx)
    # the oracle by hand: the aligned per-MAC times are 0.001 and 0.002 ms; the upper median is 0.002
    assert measured.evidence["measured_time_per_mac_vs_aligned"] == {"conv1": 1.5}
    ctx.profile = SimpleNamespace(layers=[timed("conv1", 3.0)])  # no aligned conv to compare with
    (alone,) = unaligned_channels.run(ctx)
    assert alone.evidence["measured_time_per_mac_vs_aligned"] is None


# -- a BatchNorm without affine parameters after a zeroed filter


def test_zeroed_filters_before_a_batchnorm_without_affine_parameters() -> None:
    """BatchNorm2d(affine=False) has no weight to silence channels with: the zero filters
    alone are silent (and, at running mean 0, still 0 after the norm)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, affine=False), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)).eval()
    with torch.no_grad():
        model[0].weight[[2, 5]] = 0
        model[0].bias[[2, 5]] = 0
    report = api.analyze(model, example_input=torch.randn(1, 3, 8, 8))
    finding = _one(report, "zeroed-channels")
    group = finding.evidence["per_group"]["0"]
    assert (group["removable"], group["dead"], group["producers"]) == (2, 2, ["0"])
    # the oracle: each removed channel takes its filter and bias, and 4 output filters' 3x3 slice of it
    assert finding.message.startswith("2 channels in 1 coupled groups are zeroed but still computed; 2 can be removed, saving 128 parameters")
    assert 2 * (3 * 9 + 1) + 2 * (4 * 9) == 128


# -- a compacted model that no longer runs: the verification refuses it, nothing written


class HardCodedWidth(nn.Module):
    """Runs at 8 channels only: its forward reshapes to a hard-coded 8 (as hand-written heads do)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)
        with torch.no_grad():
            self.conv.weight[[1, 6]] = 0
            self.conv.bias[[1, 6]] = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.fc(y.reshape(y.shape[0], 8, y.shape[2] * y.shape[3]).mean(2))


def test_a_compaction_that_breaks_the_forward_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = HardCodedWidth().eval()
    narrowed = nn.Conv2d(3, 6, 3, padding=1)
    with pytest.raises(RuntimeError, match=r"shape '\[1, 8, 64\]' is invalid"):  # the oracle: the model at 6 channels
        model.fc(narrowed(torch.randn(1, 3, 8, 8)).reshape(1, 8, 64).mean(2))
    out = tmp_path / "out.pth"
    c = api.analyze(model, example_input=torch.randn(1, 3, 8, 8), compact_to=out).compaction
    assert c["refused"].startswith("verification failed: the compacted model fails on the probe inputs (RuntimeError: shape '[")
    assert c["refused"].endswith("nothing written") and c["output"] is None and not out.exists()


# -- zeroed kernels of 256 and more elements (a byte-wide count would wrap at 256)


@pytest.mark.parametrize("side", [15, 16, 17])
def test_zeroed_kernels_counted_at_any_kernel_size(side: int) -> None:
    from analyzer.tensors.patterns import weight_pattern

    torch.manual_seed(0)
    weight = torch.randn(4, 3, side, side)
    for out, inp in [(0, 1), (2, 0), (3, 2)]:
        weight[out, inp] = 0
    expected = sum(1 for o in range(4) for i in range(3) if not weight[o, i].any())  # the oracle, kernel by kernel
    pattern = weight_pattern(weight)
    assert expected == 3 and pattern.zero_kernels == expected
    assert pattern.kernel_size == side * side and "kernels" in pattern.label


# -- a consumer called with its input by keyword


class KeywordCall(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)
        with torch.no_grad():
            self.conv.weight[[0, 3, 5]] = 0
            self.conv.bias[[0, 3, 5]] = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(input=self.conv(x).mean((2, 3)))


def test_a_consumer_fed_by_keyword_is_observed() -> None:
    report = api.analyze(KeywordCall().eval(), example_input=torch.randn(1, 3, 8, 8))
    finding = _one(report, "zeroed-channels")
    group = finding.evidence["per_group"]["conv"]
    # observed at fc (its input came by keyword): the three zero filters arrive as exactly 0
    assert (group["removable"], group["dead"], group["constant"]) == (3, 3, 0)


# -- a weight of one column: its zeroed rows are zeroed output channels all the same


def test_zeroed_rows_of_a_one_column_weight() -> None:
    from analyzer.tensors.patterns import weight_pattern

    weight = torch.randn(6, 1)
    weight[[2, 4]] = 0
    pattern = weight_pattern(weight)
    assert pattern.zero_out_channels == [r for r in range(6) if weight[r, 0] == 0] == [2, 4]


# -- the zero test on unsigned integers, with a tolerance


def test_zero_tolerance_on_unsigned_integers() -> None:
    from analyzer.tensors.patterns import zero_mask

    values = torch.tensor([0, 1, 2, 255], dtype=torch.uint8)
    assert zero_mask(values).tolist() == [True, False, False, False]
    assert zero_mask(values, zero_tol=1.0).tolist() == [v <= 1 for v in (0, 1, 2, 255)] == [True, True, False, False]
    assert zero_mask(values, zero_tol=0.5).tolist() == [True, False, False, False]
