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


class AttentionNet(nn.Module):
    """A conv stem, then attention over its positions three ways: nn.MultiheadAttention
    (its fused fast path runs in eval without grad), F.scaled_dot_product_attention, and
    plain matmuls. MACs on (B, 3, H, W), with T = H/2 · W/2 tokens of width C: stem
    C·27·T, MultiheadAttention 4·T·C² + 2·T²·C, qkv T·3C², SDPA 2·T²·C, matmuls 2·T²·C,
    head 4·C — per sample."""

    def __init__(self, width: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.stem = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.qkv = nn.Linear(width, 3 * width)
        self.head = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)  # (B, T, C)
        x = self.attn(x, x, x, need_weights=False)[0]
        b, t, c = x.shape
        q, k, v = (z.reshape(b, t, self.heads, c // self.heads).transpose(1, 2) for z in self.qkv(x).chunk(3, dim=-1))
        x = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, c)
        scores = torch.softmax(x @ x.transpose(1, 2) / c**0.5, dim=-1)
        x = scores @ x
        return self.head(x.mean(1))


def attention_net_macs(height: int, width: int, channels: int = 16) -> int:
    """AttentionNet's MACs per sample on a height × width image, written out from its layers
    (the oracle for the MAC counter)."""
    tokens = (height // 2) * (width // 2)
    c = channels
    return c * 27 * tokens + 4 * tokens * c * c + 2 * tokens * tokens * c + tokens * 3 * c * c + 2 * tokens * tokens * c + 2 * tokens * tokens * c + 4 * c
