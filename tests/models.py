"""A catalogue of small real models for the tests."""

from __future__ import annotations

import torch
import torch.nn as nn


class SmallNet(nn.Module):
    """A conv-bn-relu-pool-linear net small enough to build in milliseconds."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width * 2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width * 2)
        self.fc = nn.Linear(width * 2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def magnitude_prune(
    model: nn.Module,
    example: torch.Tensor | tuple[int, ...],
    ratio: float,
    ignored: list[nn.Module],
    round_to: int | None = None,
) -> nn.Module:
    """torch-pruning's MetaPruner with L2 magnitude importance, as users call it; prunes in place."""
    import warnings

    import torch_pruning as tp

    example = example if isinstance(example, torch.Tensor) else torch.randn(example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tp.pruner.MetaPruner(
            model,
            example,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=ignored,
            round_to=round_to,
        ).step()
    return model


def layer_width(module: nn.Module) -> int | None:
    """Output channels of a conv, BatchNorm or linear layer."""
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.BatchNorm2d):
        return module.num_features
    if isinstance(module, nn.Linear):
        return module.out_features
    return None
