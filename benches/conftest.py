"""Benchmarks run with: python -m pytest benches --benchmark-enable"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def resnet50_state_dict(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from analyzer.zoo import resnet50

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bench") / "resnet50.pth"
    torch.save(resnet50().state_dict(), path)
    return path
