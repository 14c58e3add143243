"""Shared fixtures: small real models and a CLI runner."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
