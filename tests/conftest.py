"""Shared fixtures: small real models and a CLI runner."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from analyzer.cli import main

from .models import SmallNet


@pytest.fixture
def small_net() -> SmallNet:
    torch.manual_seed(0)
    return SmallNet().eval()


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """Run `analyze` in-process with a wide, colourless terminal."""
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("FORCE_COLOR", raising=False)

    def run(*args: str | os.PathLike[str]) -> CliResult:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def unchanged() -> Callable[[Path], Callable[[], None]]:
    """Record a file's bytes and mtime; the returned check asserts they did not change."""

    def record(path: Path) -> Callable[[], None]:
        before = (path.read_bytes(), path.stat().st_mtime_ns)

        def check() -> None:
            assert (path.read_bytes(), path.stat().st_mtime_ns) == before, f"{path} was modified"

        return check

    return record


pytest_plugins = ["pytester"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--overwrite",
        action="store_true",
        default=False,
        help="rewrite the golden files under tests/test_output/ instead of comparing with them",
    )


# -- an exception inside a pass fails the test ----------------------------------------
#
# The analyzer turns an exception inside a pass into a `failures` entry of the report
# (an incomplete analysis, exit code 2), never into silence. Here it fails the test that
# caused it, unless the test is marked `pass_failure_expected`: every analyze() call of
# the suite, including those made while setting up module-scoped fixtures, is watched.

_PASS_FAILURES: list[Any] = []
_REPORTED = [0]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pass_failure_expected: the test makes a pass raise on purpose")


@pytest.fixture(scope="session", autouse=True)
def _record_pass_failures() -> Iterator[None]:
    import analyzer.api
    import analyzer.passes

    original = analyzer.passes.run_passes
    if getattr(original, "records_failures", False):  # a pytester session inside this one
        yield
        return

    def recording(*args: Any, **kwargs: Any) -> Any:
        results = original(*args, **kwargs)
        _PASS_FAILURES.extend(results.failures)
        return results

    recording.records_failures = True  # type: ignore[attr-defined]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(analyzer.passes, "run_passes", recording)
        patch.setattr(analyzer.api, "run_passes", recording)
        yield


@pytest.fixture(autouse=True)
def _fail_on_pass_failures(request: pytest.FixtureRequest, _record_pass_failures: None) -> Iterator[None]:
    yield
    new = _PASS_FAILURES[_REPORTED[0]:]
    _REPORTED[0] = len(_PASS_FAILURES)
    if new and request.node.get_closest_marker("pass_failure_expected") is None:
        details = "\n".join(f"--- pass {f.name!r}: {f.exception}: {f.message}\n{f.traceback}" for f in new)
        pytest.fail(f"{len(new)} analyzer pass failure(s) (a pass raised):\n{details}", pytrace=False)
