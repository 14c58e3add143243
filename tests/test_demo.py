"""`analyze --demo`: the newcomer's first command."""

from __future__ import annotations

from analyzer.demo import DEMO_CASES


def test_demo_runs_and_finds_the_classic_problems(run_cli) -> None:
    result = run_cli("--demo")
    assert result.code == 0, result.err
    for case in DEMO_CASES:
        assert case.filename in result.out
    assert "pruning-masks" in result.out
    assert "unsafe-pickle" in result.out and "posix.system" in result.out
    assert "mynets_demo.C2f_v2" in result.out
    assert "The payload never ran" in result.out
