"""The command line: exit codes, JSON output, arguments checked before any work, one line per failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.utils.prune as prune

from analyzer import DISTRIBUTION, Report, __version__
from analyzer.report.model import SCHEMA

from .models import SmallNet

ROOT = Path(__file__).resolve().parent.parent


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


def _one_line_error(result, code: int = 2) -> str:
    assert result.code == code, (result.code, result.out, result.err)
    assert result.out == ""
    assert result.err.startswith("analyze: error: ") and result.err.count("\n") == 1, result.err
    return result.err


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
    assert result.code == 0 and result.err == ""
    data = json.loads(target.read_text())
    assert data["schema"] == SCHEMA and len(data["reports"]) == 1
    report = data["reports"][0]
    assert report["summary"]["params"] == sum(p.numel() for p in SmallNet().parameters())
    assert report["summary"]["nonzero_params"] < report["summary"]["params"]
    assert report["profile"] is None
    finding = report["findings"][0]
    assert {"kind", "severity", "modules", "message", "evidence", "fix"} <= finding.keys()
    assert finding["kind"] == "pruning-masks" and finding["modules"] == ["conv1"]
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]  # no temp file left
    untouched()


def test_json_to_stdout_round_trips(run_cli, masked_checkpoint: Path) -> None:
    result = run_cli(masked_checkpoint, "--json", "-")
    report = Report.from_json(result.out)  # a document with one report reads as that report
    assert report.findings[0].kind == "pruning-masks"
    assert Report.from_json(report.to_json()).to_dict() == report.to_dict()


def test_several_paths_give_one_json_document(run_cli, masked_checkpoint: Path, clean_checkpoint: Path) -> None:
    data = json.loads(run_cli(masked_checkpoint, clean_checkpoint, "--json", "-").out)
    assert [r["source"]["path"] for r in data["reports"]] == [str(masked_checkpoint), str(clean_checkpoint)]
    with pytest.raises(ValueError, match="several reports"):
        Report.from_json(json.dumps(data))


def test_no_arguments_is_a_usage_error(run_cli) -> None:
    assert "analyze --demo" in _one_line_error(run_cli())


def test_debug_shows_traceback(run_cli, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pth"
    assert "Traceback" not in run_cli(missing).err
    assert "Traceback" in run_cli(missing, "--debug").err


def test_module_entry_point(tmp_path: Path, clean_checkpoint: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "analyzer", str(clean_checkpoint), "--json", "-"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["reports"][0]["source"]["format"] == "torch-zip"


def test_version_names_the_distribution(run_cli, capsys) -> None:
    with pytest.raises(SystemExit) as done:
        run_cli("--version")
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"analyze ({DISTRIBUTION}) {__version__}"


# -- every failure: one line, exit 2, before any work ---------------------------------


def _bad_invocations(tmp: Path, ckpt: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, a piece of the one line it must print)."""
    (tmp / "link.pth").symlink_to(ckpt)
    os.link(ckpt, tmp / "hard.pth")
    (tmp / "dense.pth").write_bytes(ckpt.read_bytes())
    return {
        "abbreviation": ([str(ckpt), "--prof"], "did you mean --profile?"),
        "typo": ([str(ckpt), "--fail-om", "warning"], "did you mean --fail-on?"),
        "shape-text": ([str(ckpt), "--input-shape", "1,3,x"], "--input-shape 1,3,x: expected integers"),
        "device-string": ([str(ckpt), "--device", "tpu", "--profile"], "--device tpu: expected auto, cpu, cuda or cuda:N"),
        "device-without-profile": ([str(ckpt), "--device", "cpu"], "add --profile"),
        "batch": ([str(ckpt), "--profile", "--batch", "0"], "--batch 0"),
        "quiet-svg": ([str(ckpt), "--quiet", "--export-svg", str(tmp / "r.svg")], "--export-svg"),
        "json-over-input": ([str(ckpt), "--json", str(ckpt)], "is the input"),
        "html-over-symlink": ([str(ckpt), "--export-html", str(tmp / "link.pth")], "is the input"),
        "json-over-hard-link": ([str(ckpt), "--json", str(tmp / "hard.pth")], "is the input"),
        "svg-over-baseline": ([str(ckpt), "--baseline", str(tmp / "dense.pth"), "--export-svg", str(tmp / "dense.pth")], "is the input"),
        "two-outputs-one-file": ([str(ckpt), "--json", str(tmp / "a.out"), "--export-html", str(tmp / "a.out")], "both write"),
        "no-such-folder": ([str(ckpt), "--json", str(tmp / "nowhere" / "r.json")], "does not exist"),
        "output-is-a-folder": ([str(ckpt), "--export-html", str(tmp)], "is a folder"),
        "unknown-kind": ([str(ckpt), "--select", "pruning-mask"], "did you mean pruning-masks?"),
        "unknown-ignore": ([str(ckpt), "--ignore", "zeroed-channel,bogus-kind"], "did you mean zeroed-channels?"),
        "two-on-stdout": ([str(ckpt), "--output-format", "sarif", "--json", "-"], "both write to stdout"),
        "quiet-sarif": ([str(ckpt), "-q", "--output-format", "sarif"], "--quiet"),
        "format-choice": ([str(ckpt), "--output-format", "xml"], "invalid choice"),
        "load-with-paths": (["--load", str(tmp / "r.json"), str(ckpt)], "give it no checkpoint paths"),
        "load-with-arch": (["--load", str(tmp / "r.json"), "--arch", "analyzer.zoo:resnet18"], "--load only re-renders"),
        "round-to": ([str(ckpt), "--round-to", "8"], "--round-to N needs --compact"),
        "baseline-report-missing": ([str(ckpt), "--baseline-report", str(tmp / "old.json")], "cannot read the report"),
        "demo-with-paths": (["--demo", str(ckpt)], "--demo takes no checkpoints"),
        "demo-dir-alone": ([str(ckpt), "--demo-dir", str(tmp)], "--demo-dir goes with --demo"),
        "select-and-ignore": ([str(ckpt), "--select", "pruning-masks", "--ignore", "pruning-masks"], "both name pruning-masks"),
        "missing-checkpoint": ([str(tmp / "nothing.pth")], "nothing.pth: no such file"),
        "missing-baseline": ([str(ckpt), "--baseline", str(tmp / "dense-missing.pth")], "dense-missing.pth: no such file"),
    }


def test_bad_arguments_fail_in_one_line_before_torch_is_imported(tmp_path: Path, clean_checkpoint: Path, unchanged) -> None:
    """Each bad invocation: exit 2, one line naming the problem, nothing written, the input
    untouched — and all of it decided before torch is even imported (no work was done)."""
    cases = _bad_invocations(tmp_path, clean_checkpoint)
    untouched = unchanged(clean_checkpoint)
    before = sorted(p.name for p in tmp_path.iterdir())
    script = textwrap.dedent(
        """
        import contextlib, io, json, sys
        from analyzer.cli import main
        results = {}
        for name, argv in json.loads(sys.argv[1]).items():
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as out:
                code = main(argv)
            results[name] = [code, out.getvalue(), err.getvalue(), "torch" in sys.modules]
        print(json.dumps(results))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps({name: argv for name, (argv, _) in cases.items()})],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    for name, (argv, expected) in cases.items():
        code, out, err, torch_imported = results[name]
        assert (code, out) == (2, ""), f"{name}: {argv} -> exit {code}, stdout {out!r}, stderr {err!r}"
        assert err.startswith("analyze: error: ") and err.count("\n") == 1, f"{name}: {err!r}"
        assert expected in err, f"{name}: {err!r} does not say {expected!r}"
        assert not torch_imported, f"{name}: torch was imported before the arguments were refused"
    untouched()
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "a refused run wrote a file"


def test_input_rank_is_a_usage_error_not_a_forward_failure(run_cli, clean_checkpoint: Path) -> None:
    err = _one_line_error(run_cli(clean_checkpoint, "--input-shape", "3,224"))
    assert "take 4-d input (N, C, H, W)" in err and "--input-shape 1,3,224,224" in err
    assert "forward-failure" not in err
    # The right rank runs; so does the batch size, spatial size and the inferred input.
    assert run_cli(clean_checkpoint, "--input-shape", "2,3,16,16").code == 0


def test_output_over_the_input_is_refused_and_the_input_is_untouched(run_cli, clean_checkpoint: Path, tmp_path: Path, unchanged) -> None:
    (tmp_path / "sym.pth").symlink_to(clean_checkpoint)
    os.link(clean_checkpoint, tmp_path / "hard.pth")
    untouched = unchanged(clean_checkpoint)
    for flag in ("--json", "--export-html", "--export-svg", "--output-file"):
        for target in (clean_checkpoint, tmp_path / "sym.pth", tmp_path / "hard.pth", Path(os.path.relpath(clean_checkpoint))):
            err = _one_line_error(run_cli(clean_checkpoint, flag, target))
            assert "refusing to write over an input" in err
    err = _one_line_error(run_cli(clean_checkpoint, "--compact", tmp_path / "hard.pth", "--arch", "analyzer.zoo:resnet18"))
    assert "refusing to write over an input" in err
    untouched()


def test_unexpected_exception_is_one_line_with_a_hint(run_cli, clean_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    """A bug in the user's architecture module (it fails on import): not ours to explain,
    but still one line, exit 2, and --debug for the traceback."""
    (tmp_path / "broken_arch.py").write_text("ratio = 1 / 0\n\ndef net():\n    pass\n")
    (tmp_path / "interrupted_arch.py").write_text("def net():\n    raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    err = _one_line_error(run_cli(clean_checkpoint, "--arch", "broken_arch:net"))
    assert "unexpected ZeroDivisionError: division by zero" in err and "rerun with --debug" in err
    debug = run_cli(clean_checkpoint, "--arch", "broken_arch:net", "--debug")
    assert debug.code == 2 and "Traceback" in debug.err and debug.err.rstrip().endswith("division by zero")
    interrupted = run_cli(clean_checkpoint, "--arch", "interrupted_arch:net")
    assert (interrupted.code, interrupted.err) == (130, "analyze: interrupted\n")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_cuda_is_refused_up_front(run_cli, clean_checkpoint: Path) -> None:
    err = _one_line_error(run_cli(clean_checkpoint, "--profile", "--device", "cuda:0"))
    assert "CUDA is not available here" in err and "--device cpu" in err


def test_no_abbreviations(run_cli, clean_checkpoint: Path) -> None:
    for prefix in ("--prof", "--inp", "--js", "--fail"):
        err = _one_line_error(run_cli(clean_checkpoint, prefix, "x"))
        assert "unrecognised option" in err


# -- CI conventions --------------------------------------------------------------------


def test_select_and_ignore(run_cli, tmp_path: Path) -> None:
    net = SmallNet().eval()
    prune.l1_unstructured(net.conv1, "weight", amount=0.5)
    path = tmp_path / "m.pth"
    torch.save(net.state_dict(), path)
    everything = json.loads(run_cli(path, "--json", "-").out)["reports"][0]
    assert [f["kind"] for f in everything["findings"]] == ["pruning-masks", "unstructured-sparsity"]
    ignored = json.loads(run_cli(path, "--ignore", "pruning-masks", "--json", "-").out)
    report = ignored["reports"][0]
    assert [f["kind"] for f in report["findings"]] == ["unstructured-sparsity"]
    assert report["summary"]["findings"] == {"error": 0, "warning": 1, "info": 0}
    assert report["verdict"].startswith("The zeros are scattered")
    assert any("not shown by --select/--ignore: pruning-masks" in n for n in report["notes"])
    assert ignored["run"]["ignore"] == ["pruning-masks"]
    selected = json.loads(run_cli(path, "--select", "pruning-masks", "--json", "-").out)["reports"][0]
    assert [f["kind"] for f in selected["findings"]] == ["pruning-masks"]
    # The exit code follows what is left.
    assert run_cli(path, "--fail-on", "warning", "-q").code == 1
    assert run_cli(path, "--fail-on", "warning", "--ignore", "pruning-masks,unstructured-sparsity", "-q").code == 0


def _write_pyproject(folder: Path, table: str) -> Path:
    path = folder / "pyproject.toml"
    path.write_text(f'[project]\nname = "theirs"\n\n[tool.{DISTRIBUTION}]\n{textwrap.dedent(table)}\n')
    return path


def test_configuration_from_the_nearest_pyproject_upward(run_cli, masked_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    project = tmp_path / "project"
    deep = project / "src" / "pkg"
    deep.mkdir(parents=True)
    _write_pyproject(project, 'fail-on = "warning"\nignore = ["unstructured-sparsity"]\n')
    (project / "src" / "pyproject.toml").write_text('[tool.ruff]\nline-length = 100\n')  # nearer, but not ours
    monkeypatch.chdir(deep)
    data = json.loads(run_cli(masked_checkpoint, "--json", "-").out)
    assert [f["kind"] for f in data["reports"][0]["findings"]] == ["pruning-masks"]
    assert data["run"]["config"] == str(project / "pyproject.toml")
    assert run_cli(masked_checkpoint, "-q").code == 1  # fail-on = "warning" from the table
    # Flags override the table; --isolated ignores it.
    assert run_cli(masked_checkpoint, "-q", "--fail-on", "error").code == 0
    isolated = json.loads(run_cli(masked_checkpoint, "--isolated", "--json", "-").out)
    assert len(isolated["reports"][0]["findings"]) == 2 and isolated["run"]["config"] is None


@pytest.mark.parametrize(
    "table, expected",
    [
        ('fail_on = "warning"\nignor = ["pruning-masks"]\n', "unknown key 'ignor'; did you mean ignore?"),
        ('select = "pruning-masks"\n', "select = 'pruning-masks': expected a list of strings"),
        ('select = ["pruning-mask"]\n', "unknown finding kind 'pruning-mask'; did you mean pruning-masks?"),
        ('fail-on = "sometimes"\n', "'sometimes' is not one of error, warning, info, never"),
        ('output-format = "sarf"\n', "did you mean sarif?"),
        ('trust = true\n', "unknown key 'trust'"),
        ("fail-on = \n", "cannot read it as TOML"),
    ],
)
def test_bad_configuration_is_one_line(run_cli, masked_checkpoint: Path, tmp_path: Path, monkeypatch, table: str, expected: str) -> None:
    _write_pyproject(tmp_path, table)
    monkeypatch.chdir(tmp_path)
    err = _one_line_error(run_cli(masked_checkpoint))
    assert expected in err and "pyproject.toml" in err


def test_baseline_report_fails_only_on_new_findings(run_cli, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = SmallNet().eval()
    prune.l1_unstructured(net.conv1, "weight", amount=0.3)
    old = tmp_path / "model.pth"
    torch.save(net.state_dict(), old)
    saved = tmp_path / "old.json"
    assert run_cli(old, "--json", saved, "-q", "--fail-on", "warning").code == 1

    # The next version: the same modules masked, more zeros (other numbers, other wording),
    # and a new masked module.
    net = SmallNet().eval()
    prune.l1_unstructured(net.conv1, "weight", amount=0.6)
    same = tmp_path / "same.pth"
    torch.save(net.state_dict(), same)
    prune.l1_unstructured(net.conv2, "weight", amount=0.6)
    more = tmp_path / "more.pth"
    torch.save(net.state_dict(), more)

    result = run_cli(same, "--baseline-report", saved, "--fail-on", "warning", "--json", "-")
    assert result.code == 0, result.out  # nothing new: both findings are known by kind and modules
    report = json.loads(result.out)["reports"][0]
    assert report["findings"] == []
    assert any("also in the baseline report" in n and "pruning-masks" in n for n in report["notes"])

    result = run_cli(more, "--baseline-report", saved, "--fail-on", "warning", "--json", "-")
    assert result.code == 1
    new = json.loads(result.out)["reports"][0]["findings"]
    assert sorted((f["kind"], tuple(f["modules"])) for f in new) == [
        ("pruning-masks", ("conv1", "conv2")),
        ("unstructured-sparsity", ("conv1", "conv2")),
    ]
