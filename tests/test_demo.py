"""The newcomer's first commands: `analyze --demo` on an 80-column terminal, and every code
block of the README, run as written in the folder the demo leaves behind.

The demo runs once (module fixture) with `--demo-dir`, as the README says to: its output is
checked case by case, its files and reports.json are used by the README's examples, and
the fix code it printed is run against the files it kept.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.cells import cell_len

from analyzer.cli import main
from analyzer.demo import DEMO_CASES, REPORTS_FILE
from analyzer.report.render_json import load_report_set

from .test_report_output import assert_snippets_parse, table_names

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEMO_COMMAND = "analyze --demo --demo-dir demo"


@dataclass
class DemoRun:
    folder: Path  # where the commands run: ./demo is the demo's folder
    code: int
    out: str
    err: str


def _run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    folder = tmp_path_factory.mktemp("readme")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("COLUMNS", "80")
        patch.setenv("NO_COLOR", "1")
        patch.delenv("FORCE_COLOR", raising=False)
        code, out, err = _run_main(shlex.split(DEMO_COMMAND)[1:])
    return DemoRun(folder, code, out, err)


def _cases(out: str) -> dict[str, str]:
    """The demo's output cut at the rule that opens each case (and the summary)."""
    parts = re.split(r"^─+ (\S+) ─+$", out, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_demo_runs_and_finds_the_classic_problems(demo_run: DemoRun) -> None:
    assert demo_run.code == 0 and demo_run.err == "", demo_run.err
    out = demo_run.out
    too_wide = [line for line in out.splitlines() if cell_len(line) > 80]
    assert not too_wide, too_wide[:3]
    cases = _cases(out)
    assert list(cases) == [case.filename for case in DEMO_CASES] + ["summary"]
    expected = {
        "resnet34_tp_ratio0.3.pth": ["unaligned-channels", "channel-removal"],
        "thin_net_tp_0.5.pth": ["no-speedup", "FLOPs fell 74%", "latency"],
        "resnet18_residual_by_hand.pth": ["error residual-mismatch", "layer1.0.bn2 (48", "(64"],
        "retinaface_heads_pruned.pth": ["error head-shape-mismatch"],
        "resnet18_prune_masks.pth": ["warning pruning-masks", "warning unstructured-sparsity"],
        "resnet18_unstructured.pth": ["warning unstructured-sparsity"],
        "resnet18_ln_structured.pth": ["warning zeroed-channels", "compact", "channels removed"],
        "custom_class_gone.pth": ["warning unsafe-pickle", "mynets_demo.C2f_v2"],
        "payload.pth": ["error unsafe-pickle", "posix.system"],
    }
    for name, pieces in expected.items():
        text = " ".join(cases[name].split())
        for piece in pieces:
            assert piece in text, f"{name}: {piece!r} not in\n{cases[name]}"
        assert len(cases[name].splitlines()) <= 45, f"{name} takes {len(cases[name].splitlines())} lines: more than a screen"
    assert len(out.splitlines()) <= 45 * len(DEMO_CASES)
    # The summary names every checkpoint, whatever the width.
    summary = cases["summary"].strip()
    assert table_names(summary) == [case.filename for case in DEMO_CASES], summary
    assert "The payload never ran" in out
    assert not list((demo_run.folder / "demo").glob("*.PAYLOAD-RAN"))


def test_demo_keeps_its_files_and_its_fix_code_runs(demo_run: DemoRun, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = demo_run.folder / "demo"
    assert sorted(p.name for p in folder.glob("*.pth")) == sorted(
        [case.filename for case in DEMO_CASES] + ["resnet18_ln_structured.compact.pth"]
    )
    results = load_report_set((folder / REPORTS_FILE).read_text(encoding="utf-8"), REPORTS_FILE)  # validated on load
    assert [Path(r.source.path).name for r in results.reports] == [case.filename for case in DEMO_CASES]
    assert results.run.command == ["analyze", "--demo", "--demo-dir", "demo"]
    masks = next(r for r in results.reports if r.source.path.endswith("resnet18_prune_masks.pth"))
    code = next(f.fix_code for f in masks.findings if f.kind == "pruning-masks")
    assert "demo/resnet18_prune_masks.pth" in code  # the path as the demo printed it
    monkeypatch.chdir(demo_run.folder)
    exec(compile(code, "pruning-masks fix", "exec"), {})
    import torch

    folded = torch.load("folded.pth", weights_only=True)
    assert not any(k.endswith(("_orig", "_mask")) for k in folded) and "conv1.weight" in folded


def test_demo_fix_snippets_parse(demo_run: DemoRun) -> None:
    results = load_report_set((demo_run.folder / "demo" / REPORTS_FILE).read_text(encoding="utf-8"))
    assert assert_snippets_parse(results.reports) > 20


# -- the README -------------------------------------------------------------------------


@dataclass
class Block:
    language: str
    code: str
    marker: str  # "" (run), "skip (reason)", "pytest (...)"
    line: int


def readme_blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    blocks = []
    for match in re.finditer(r"(?:<!-- readme-test: (.*?) -->\n)?```(\w+)\n(.*?)\n```", text, re.S):
        blocks.append(Block(match.group(2), match.group(3), match.group(1) or "", text[: match.start()].count("\n") + 1))
    return blocks


def test_readme_opens_with_the_two_commands_of_a_fresh_clone() -> None:
    first = readme_blocks()[0]
    assert first.language == "bash" and first.marker.startswith("skip (")
    lines = first.code.splitlines()
    assert lines == [
        "python3 -m venv .venv && .venv/bin/pip install -q -c constraints-cpu.txt -e . && .venv/bin/analyze --demo",
        "python3 -m venv .venv && .venv/bin/pip install -q -c constraints-cpu.txt -e '.[test]' && .venv/bin/python -m pytest -q",
    ]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip\" install -q -c constraints-cpu.txt -e '.[test]'" in ci and "-m pytest -q" in ci  # CI runs the second


def test_every_readme_block_is_run_or_says_why_not() -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 6
    for block in blocks:
        assert block.language in ("bash", "python", "toml"), block
        assert block.marker == "" or re.fullmatch(r"(skip|pytest) \(.{10,}\)", block.marker), f"README line {block.line}: {block.marker!r}"
    skipped = [b for b in blocks if b.marker.startswith("skip")]
    assert len(skipped) <= 6, [b.line for b in skipped]


def test_readme_examples_run_as_written(demo_run: DemoRun, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every block not marked skip, in order, in the folder the demo left (`./demo`): bash lines
    through the CLI (each must analyse: exit 0 or 1, never 2), Python as a script, a block
    marked pytest as a test file, TOML as a pyproject.toml table the CLI accepts."""
    monkeypatch.chdir(demo_run.folder)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("NO_COLOR", "1")
    ran = 0
    for block in readme_blocks():
        where = f"README line {block.line}"
        if block.marker.startswith("skip"):
            continue
        if block.language == "bash":
            for line in block.code.splitlines():
                argv = shlex.split(line, comments=True)
                assert argv and argv[0] == "analyze", f"{where}: {line!r} is not an analyze command"
                if line.split("#")[0].strip() == DEMO_COMMAND:
                    assert demo_run.code == 0  # run once, by the fixture, exactly so
                    continue
                code, out, err = _run_main(argv[1:])
                assert code in (0, 1) and err == "", f"{where}: {line!r} -> exit {code}: {err}"
                ran += 1
        elif block.language == "python" and block.marker.startswith("pytest"):
            (demo_run.folder / "test_readme_example.py").write_text(block.code + "\n", encoding="utf-8")
            result = pytester.runpytest_inprocess(str(demo_run.folder / "test_readme_example.py"), "-p", "no:cacheprovider", f"--rootdir={demo_run.folder}")
            result.assert_outcomes(passed=block.code.count("\ndef test_"))
            ran += 1
        elif block.language == "python":
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(block.code, where, "exec"), {"__name__": "__readme__"})
            ran += 1
            if "<in-memory Module ResNet>" in block.code:
                assert "<in-memory Module ResNet> ['channel-removal']" in out.getvalue(), out.getvalue()
        elif block.language == "toml":
            (demo_run.folder / "pyproject.toml").write_text(block.code + "\n", encoding="utf-8")
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            table = tomllib.loads(block.code)["tool"]["prune-analyzer"]
            code, out, err = _run_main(["demo/resnet18_prune_masks.pth", "-q"])
            assert code == 1 and err == "", f"{where}: {err}"  # fail-on = "warning" took effect
            assert table["fail-on"] == "warning"
            (demo_run.folder / "pyproject.toml").unlink()
            ran += 1
    assert ran >= 15
    # What the examples wrote is what they say.
    assert json.loads((demo_run.folder / "report.json").read_text())["schema"] == "analyzer-report/2"
    assert (demo_run.folder / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert json.loads((demo_run.folder / "analyze.sarif").read_text())["version"] == "2.1.0"
    assert (demo_run.folder / "small.pth").exists()
