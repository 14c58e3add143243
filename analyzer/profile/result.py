"""Profile data: raw samples and how they were taken, plain dataclasses, JSON round trip."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from typing import Any

from .estimate import Estimate, median_estimate

__all__ = [
    "Environment",
    "LatencyStats",
    "FlopStats",
    "LayerProfile",
    "NvmlSummary",
    "MachineBalance",
    "ProfileResult",
    "Flag",
    "LayerCheck",
    "NOISY_IQR_FRACTION",
    "LAYER_SUM_TOLERANCE",
    "LATENCY",
    "LAYERS",
]

#: As torch.utils.benchmark: a measurement whose IQR exceeds this share of the median is noisy.
NOISY_IQR_FRACTION = 0.10
#: The per-layer times are flagged when their sum and the end-to-end latency are further apart than this.
LAYER_SUM_TOLERANCE = 0.20

#: What a flag makes unreliable: the end-to-end latencies, or the per-layer profile.
LATENCY = "latency"
LAYERS = "layers"


@dataclass
class Environment:
    device: str
    device_name: str
    threads: int
    torch_version: str
    #: How each sample was timed: "thread_time" (CPU time of the one thread that ran the
    #: model), "perf_counter" (wall clock) or "cuda-events" (with synchronize).
    timer: str
    warmup_runs: int
    inference_mode: bool = True
    cudnn_benchmark: bool | None = None
    #: One line on the GPU sampler: what was sampled, or why nothing was.
    nvml_status: str = ""
    notes: list[str] = field(default_factory=list)
    #: Cores this process may use, the 1-minute load average around the timed loop (the
    #: higher of before and after), and the share of the loop's wall time its threads held a core.
    cores: int | None = None
    load_average: float | None = None
    cpu_share: float | None = None
    oversubscribed: bool = False


@dataclass
class LatencyStats:
    """Raw samples of one model at one batch size; statistics computed from them."""

    label: str
    batch: int
    #: Milliseconds per call, one value per timed block.
    samples_ms: list[float]
    #: Calls timed together in each block (a sample is the block's mean per call).
    calls_per_sample: int = 1
    #: Wall-clock milliseconds per call of the same blocks (equal to samples_ms for a wall-clock timer).
    wall_ms: list[float] = field(default_factory=list)
    #: Why sampling stopped: "stable", "time budget spent", "max samples reached".
    stopped: str = "stable"
    #: When it stopped unsettled, what had not settled.
    unsettled: str = ""

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def estimate(self) -> Estimate:
        """The median and its 95% confidence interval."""
        return median_estimate(self.samples_ms)

    @property
    def iqr_ms(self) -> float:
        if len(self.samples_ms) < 4:
            return 0.0
        q = statistics.quantiles(self.samples_ms, n=4)
        return q[2] - q[0]

    @property
    def p90_ms(self) -> float:
        if len(self.samples_ms) < 10:
            return max(self.samples_ms)
        return statistics.quantiles(self.samples_ms, n=10)[8]

    @property
    def noisy(self) -> bool:
        return self.iqr_ms > NOISY_IQR_FRACTION * self.median_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "batch": self.batch,
            "samples_ms": [round(s, 6) for s in self.samples_ms],
            "calls_per_sample": self.calls_per_sample,
            "median_ms": round(self.median_ms, 6),
            "iqr_ms": round(self.iqr_ms, 6),
            "p90_ms": round(self.p90_ms, 6),
            "noisy": self.noisy,
            "median_interval_ms": [round(self.estimate.low, 6), round(self.estimate.high, 6)],
            "wall_ms": [round(s, 6) for s in self.wall_ms],
            "stopped": self.stopped,
            "unsettled": self.unsettled,
        }


@dataclass
class FlopStats:
    """The model's MACs on the profiled input (analyzer/model/macs.py: one multiply-add = 1)."""

    label: str
    input_shape: list[int]
    #: MACs of one forward pass on input_shape (the whole batch).
    macs: int
    params: int
    #: Module name -> MACs of its own ops (a leaf layer's all; a block's attention matmuls).
    macs_by_layer: dict[str, int] = field(default_factory=dict)
    #: Ops that ran without a MAC formula (elementwise, norms, pooling), with how often they ran.
    unsupported_ops: dict[str, int] = field(default_factory=dict)
    #: macs / batch: the figure the report's header gives.
    macs_per_sample: int | None = None


@dataclass
class LayerProfile:
    name: str
    type: str
    time_ms: float
    #: The part of time_ms that did not shrink on a tiny input: per-op fixed cost.
    fixed_ms: float
    share: float
    macs: int
    bytes: int
    #: FLOPs (2 per MAC) per byte moved.
    intensity: float
    #: compute, memory (below the machine balance) or overhead (at the per-layer floor).
    bound: str
    #: Whether the layer is narrower than in the dense reference (None: no reference).
    pruned: bool | None = None
    #: A module with children whose own ops (attention matmuls, say) are this row; False for a leaf layer.
    own_ops: bool = False


@dataclass
class Flag:
    """A measurement that is not to be trusted, and why: rules that read it stay silent."""

    #: LATENCY or LAYERS.
    scope: str
    reason: str
    #: The batch it concerns (None: every batch).
    batch: int | None = None


@dataclass
class LayerCheck:
    """The per-layer times against the end-to-end latency of the same model and input (its
    forward without hooks, timed in the same per-layer session)."""

    layer_sum_ms: float
    end_to_end_ms: float

    @property
    def ratio(self) -> float:
        return self.layer_sum_ms / self.end_to_end_ms if self.end_to_end_ms else float("inf")

    @property
    def apart(self) -> bool:
        return abs(self.ratio - 1) > LAYER_SUM_TOLERANCE


@dataclass
class NvmlSummary:
    samples: int
    interval_ms: float
    sm_util_median: float
    sm_util_p90: float
    mem_util_median: float
    mem_used_mb_max: float
    power_w_median: float | None
    sm_clock_mhz_median: float | None
    throttle_reasons: list[str] = field(default_factory=list)
    #: Samples NVML refused while sampling, and the first error NVML raised (None: none).
    failed_samples: int = 0
    error: str | None = None


@dataclass
class MachineBalance:
    #: FLOP/s of a large GEMM on the device in use.
    peak_flops: float
    #: Bytes/s of a large copy (read + write).
    bandwidth: float
    #: Seconds of a near-empty operator: the fixed cost of one op (dispatch or launch).
    op_overhead_s: float
    #: Seconds an nn.Module call costs beyond its forward: added to each layer's time per call.
    module_call_s: float = 0.0

    @property
    def balance(self) -> float:
        """FLOPs per byte at which a layer stops being memory-bound (the roofline's ridge)."""
        return self.peak_flops / self.bandwidth


@dataclass
class ProfileResult:
    environment: Environment
    latency: list[LatencyStats]
    flops: dict[str, FlopStats]
    layers: list[LayerProfile]
    balance: MachineBalance
    dense_layers: list[LayerProfile] = field(default_factory=list)
    nvml: NvmlSummary | None = None
    #: Median fixed cost of the pruned model's conv/linear layers (time left on a tiny input).
    fixed_layer_cost_ms: float | None = None
    #: Share of the pruned model's layer time that is fixed per-op cost.
    fixed_cost_share: float | None = None
    #: Share of the pruned model's measured layer time in layers the pruning did not touch.
    unpruned_time_share: float | None = None
    #: 95% confidence interval of fixed_cost_share, over the per-layer profile's iterations.
    fixed_cost_share_interval: list[float] | None = None
    #: Share of the pruned model's layer time in memory-bound layers, and its interval.
    memory_bound_share: float | None = None
    memory_bound_share_interval: list[float] | None = None
    #: Passes of the per-layer profile (each on the real input and on the tiny one).
    layer_iterations: int | None = None
    layer_check: LayerCheck | None = None
    flags: list[Flag] = field(default_factory=list)

    def stats(self, label: str, batch: int) -> LatencyStats | None:
        return next((s for s in self.latency if s.label == label and s.batch == batch), None)

    def median(self, label: str, batch: int) -> float | None:
        stats = self.stats(label, batch)
        return stats.median_ms if stats is not None else None

    def speedup(self, batch: int) -> Estimate | None:
        """Dense over pruned time, round by round (the two were timed in the same rounds): the median
        of the per-round ratios and its interval. None without both models at this batch."""
        dense, pruned = self.stats("dense", batch), self.stats("pruned", batch)
        if dense is None or pruned is None:
            return None
        ratios = [d / p for d, p in zip(dense.samples_ms, pruned.samples_ms) if p > 0]
        return median_estimate(ratios) if ratios else None

    def flagged(self, scope: str, batch: int | None = None) -> list[str]:
        """Why measurements of `scope` (at `batch`, or any) are unreliable; empty when they are not."""
        return [f.reason for f in self.flags if f.scope == scope and (batch is None or f.batch is None or f.batch == batch)]

    def batches(self) -> list[int]:
        return sorted({s.batch for s in self.latency})

    def to_dict(self) -> dict[str, Any]:
        data = {
            "environment": dataclasses.asdict(self.environment),
            "latency": [s.to_dict() for s in self.latency],
            "flops": {k: dataclasses.asdict(v) for k, v in self.flops.items()},
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
            "dense_layers": [dataclasses.asdict(layer) for layer in self.dense_layers],
            "balance": {**dataclasses.asdict(self.balance), "balance_flops_per_byte": self.balance.balance},
            "nvml": dataclasses.asdict(self.nvml) if self.nvml else None,
            "fixed_layer_cost_ms": self.fixed_layer_cost_ms,
            "fixed_cost_share": self.fixed_cost_share,
            "unpruned_time_share": self.unpruned_time_share,
            "fixed_cost_share_interval": self.fixed_cost_share_interval,
            "memory_bound_share": self.memory_bound_share,
            "memory_bound_share_interval": self.memory_bound_share_interval,
            "layer_iterations": self.layer_iterations,
            "layer_check": (
                {**dataclasses.asdict(self.layer_check), "ratio": round(self.layer_check.ratio, 4)} if self.layer_check else None
            ),
            "speedup": {str(b): e.to_dict() for b in self.batches() if (e := self.speedup(b)) is not None},
            "flags": [dataclasses.asdict(flag) for flag in self.flags],
        }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProfileResult:
        balance = {k: v for k, v in data["balance"].items() if k != "balance_flops_per_byte"}
        return cls(
            environment=Environment(**data["environment"]),
            latency=[
                LatencyStats(
                    s["label"], s["batch"], s["samples_ms"], s.get("calls_per_sample", 1), s.get("wall_ms", []),
                    s.get("stopped", "stable"), s.get("unsettled", ""),
                )
                for s in data["latency"]
            ],
            flops={k: FlopStats(**v) for k, v in data["flops"].items()},
            layers=[LayerProfile(**layer) for layer in data["layers"]],
            dense_layers=[LayerProfile(**layer) for layer in data.get("dense_layers", [])],
            balance=MachineBalance(**balance),
            nvml=NvmlSummary(**data["nvml"]) if data.get("nvml") else None,
            fixed_layer_cost_ms=data.get("fixed_layer_cost_ms"),
            fixed_cost_share=data.get("fixed_cost_share"),
            unpruned_time_share=data.get("unpruned_time_share"),
            fixed_cost_share_interval=data.get("fixed_cost_share_interval"),
            memory_bound_share=data.get("memory_bound_share"),
            memory_bound_share_interval=data.get("memory_bound_share_interval"),
            layer_iterations=data.get("layer_iterations"),
            layer_check=(
                LayerCheck(data["layer_check"]["layer_sum_ms"], data["layer_check"]["end_to_end_ms"]) if data.get("layer_check") else None
            ),
            flags=[Flag(**flag) for flag in data.get("flags", [])],
        )
