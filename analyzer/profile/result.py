"""Profile data: raw samples and how they were taken, plain dataclasses, JSON round trip."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Environment",
    "LatencyStats",
    "FlopStats",
    "LayerProfile",
    "NvmlSummary",
    "MachineBalance",
    "ProfileResult",
    "NOISY_IQR_FRACTION",
]

#: As torch.utils.benchmark: a measurement whose IQR exceeds this share of the median is noisy.
NOISY_IQR_FRACTION = 0.10


@dataclass
class Environment:
    device: str
    device_name: str
    threads: int
    torch_version: str
    #: How each sample was timed: "cuda-events" (with synchronize) or "perf_counter".
    timer: str
    warmup_runs: int
    inference_mode: bool = True
    cudnn_benchmark: bool | None = None
    #: One line on the GPU sampler: what was sampled, or why nothing was.
    nvml_status: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class LatencyStats:
    """Raw samples of one model at one batch size; statistics computed from them."""

    label: str
    batch: int
    #: Milliseconds per call, one value per timed block.
    samples_ms: list[float]
    #: Calls timed together in each block (a sample is the block's mean per call).
    calls_per_sample: int = 1

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

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
        }


@dataclass
class FlopStats:
    """fvcore's count (one multiply-add counts as one flop there: these are MACs)."""

    label: str
    input_shape: list[int]
    macs: int
    params: int
    macs_by_layer: dict[str, int] = field(default_factory=dict)
    #: Ops fvcore could not count, with how often they ran: the total leaves them out.
    unsupported_ops: dict[str, int] = field(default_factory=dict)


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


@dataclass
class MachineBalance:
    #: FLOP/s of a large GEMM on the device in use.
    peak_flops: float
    #: Bytes/s of a large copy (read + write).
    bandwidth: float
    #: Seconds of a near-empty operator: the fixed cost of one op (dispatch or launch).
    op_overhead_s: float

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

    def median(self, label: str, batch: int) -> float | None:
        for stats in self.latency:
            if stats.label == label and stats.batch == batch:
                return stats.median_ms
        return None

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
        }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProfileResult:
        balance = {k: v for k, v in data["balance"].items() if k != "balance_flops_per_byte"}
        return cls(
            environment=Environment(**data["environment"]),
            latency=[LatencyStats(s["label"], s["batch"], s["samples_ms"], s.get("calls_per_sample", 1)) for s in data["latency"]],
            flops={k: FlopStats(**v) for k, v in data["flops"].items()},
            layers=[LayerProfile(**layer) for layer in data["layers"]],
            dense_layers=[LayerProfile(**layer) for layer in data.get("dense_layers", [])],
            balance=MachineBalance(**balance),
            nvml=NvmlSummary(**data["nvml"]) if data.get("nvml") else None,
            fixed_layer_cost_ms=data.get("fixed_layer_cost_ms"),
            fixed_cost_share=data.get("fixed_cost_share"),
            unpruned_time_share=data.get("unpruned_time_share"),
        )
