"""The CUDA and NVML paths for real. These need an NVIDIA GPU and its driver, which this
project's usual machines lack; on a machine with one they run (scripts/gpu_check.py is the
end-to-end version with printed figures)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from analyzer.profile import MeasureOptions, ProfileOptions, profile_models
from analyzer.profile.nvml import NvmlSampler, start_sampler

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _stack(width: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1)]
    for _ in range(8):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
    return nn.Sequential(*layers).eval()


def test_profile_on_cuda_times_with_events_and_samples_nvml() -> None:
    options = ProfileOptions(device="cuda", batches=(1, 8), measure=MeasureOptions(min_time_s=0.2, max_time_s=5), layer_profile_s=0.1)
    result = profile_models(_stack(32), _stack(64), torch.randn(1, 3, 64, 64), options)
    env = result.environment
    assert env.device.startswith("cuda") and env.timer == "cuda-events"
    assert env.cudnn_benchmark is True
    assert {(s.label, s.batch) for s in result.latency} == {("pruned", 1), ("dense", 1), ("pruned", 8), ("dense", 8)}
    assert all(s.median_ms > 0 for s in result.latency)
    assert result.nvml is not None and result.nvml.samples > 0, env.nvml_status
    assert 0 <= result.nvml.sm_util_median <= 100
    assert result.balance.peak_flops > 1e11  # any CUDA GPU beats 100 GFLOP/s
    # per-layer times from CUDA events, one pass per model, checked against the forward
    assert result.layers and all(layer.time_ms >= 0 for layer in result.layers) and any(layer.time_ms > 0 for layer in result.layers)
    assert result.layer_check is not None and result.layer_check.end_to_end_ms > 0
    assert result.speedup(1) is not None and result.speedup(8) is not None
    # the one MAC counter on CUDA tensors: 3→32 conv then 8 convs 32→32, 3×3, at 64×64, per sample
    assert result.flops["pruned"].macs_per_sample == 64 * 64 * 9 * (3 * 32 + 8 * 32 * 32)


def test_real_nvml_sampler_reads_the_gpu() -> None:
    sampler = start_sampler(torch.cuda.current_device())
    assert isinstance(sampler, NvmlSampler), sampler
    x = torch.randn(2048, 2048, device="cuda")
    with sampler:
        for _ in range(200):
            x = x @ x
            x = x / x.norm()
        torch.cuda.synchronize()
    summary = sampler.summary()
    assert summary is not None and summary.samples > 0
    assert summary.mem_used_mb_max > 0
