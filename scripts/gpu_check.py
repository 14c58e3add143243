"""End-to-end check of the GPU path: CUDA timing, NVML samples, dense vs pruned ResNet-50.

Run on a machine with an NVIDIA GPU and driver:

    python scripts/gpu_check.py [--batches 1,8,32] [--ratio 0.5] [--json gpu_check.json]

It prunes the zoo ResNet-50 with torch-pruning, profiles dense and pruned through the
analyzer (CUDA events, cudnn.benchmark, NVML sampler thread) at each batch size, prints
latency, speedup, FLOPs, NVML readings and the findings, and exits 1 if the GPU path
did not really run (no CUDA, no NVML samples, or timing not done with CUDA events).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--json", help="write the full report as JSON here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: CUDA is not available here; nothing to check", file=sys.stderr)
        return 1

    import torch_pruning as tp

    from analyzer import analyze
    from analyzer.zoo import resnet50

    batches = tuple(int(b) for b in args.batches.split(","))
    torch.manual_seed(0)
    model = resnet50().eval()
    example = torch.randn(1, 3, args.size, args.size)
    tp.pruner.MetaPruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=args.ratio, ignored_layers=[model.fc], round_to=8,
    ).step()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet50_pruned.pth"
        torch.save(model.state_dict(), path)
        report = analyze(
            path, arch="analyzer.zoo:resnet50", input_shape=(1, 3, args.size, args.size),
            profile=True, device="cuda", batches=batches,
        )
    profile = report.profile or {}
    env = profile.get("environment", {})
    print(
        f"device: {env.get('device')} {env.get('device_name')}, timer {env.get('timer')}, "
        f"cudnn.benchmark={env.get('cudnn_benchmark')}, {env.get('threads')} CPU threads"
    )
    print(f"nvml: {env.get('nvml_status')}")
    for note in env.get("notes", []):
        print(f"note: {note}")
    medians = {(s["label"], s["batch"]): s for s in profile.get("latency", [])}
    speedups = profile.get("speedup", {})
    for batch in batches:
        dense, pruned = medians.get(("dense", batch)), medians.get(("pruned", batch))
        speedup = speedups.get(str(batch))
        if dense and pruned and speedup:
            print(
                f"batch {batch:>3}: dense {dense['median_ms']:.3f} ms (IQR {dense['iqr_ms']:.3f}, {dense['stopped']}), "
                f"pruned {pruned['median_ms']:.3f} ms (IQR {pruned['iqr_ms']:.3f}, {pruned['stopped']}), "
                f"speedup {speedup['value']:.2f}x (95% {speedup['low']:.2f}-{speedup['high']:.2f})"
            )
    check = profile.get("layer_check")
    if check:
        print(
            f"per-layer (CUDA events, {profile.get('layer_iterations')} passes): layers add up to {check['layer_sum_ms']:.3f} ms "
            f"of {check['end_to_end_ms']:.3f} ms end to end ({check['ratio']:.0%}); fixed per-op share "
            f"{profile.get('fixed_cost_share')}, memory-bound share {profile.get('memory_bound_share')}"
        )
    for flag in profile.get("flags", []):
        print(f"not trusted ({flag['scope']}): {flag['reason']}")
    flops = profile.get("flops", {})
    if "dense" in flops and "pruned" in flops:
        print(f"MACs: dense {flops['dense']['macs']:,}, pruned {flops['pruned']['macs']:,} ({flops['pruned']['macs'] / flops['dense']['macs']:.1%})")
    nvml = profile.get("nvml")
    if nvml:
        print(
            f"NVML: {nvml['samples']} samples, SM util median {nvml['sm_util_median']:.0f}% (p90 {nvml['sm_util_p90']:.0f}%), "
            f"mem util {nvml['mem_util_median']:.0f}%, mem used {nvml['mem_used_mb_max']:.0f} MB, "
            f"power {nvml['power_w_median']} W, SM clock {nvml['sm_clock_mhz_median']} MHz, throttle {nvml['throttle_reasons']}"
        )
    balance = profile.get("balance", {})
    if balance:
        print(
            f"machine: {balance['peak_flops'] / 1e12:.1f} TFLOP/s GEMM, {balance['bandwidth'] / 1e9:.0f} GB/s, "
            f"balance {balance['balance_flops_per_byte']:.1f} FLOPs/byte, op overhead {balance['op_overhead_s'] * 1e6:.1f} us"
        )
    for finding in report.findings:
        print(f"[{finding.severity.value}] {finding.kind}: {finding.message}")
    for line in report.not_analysed:
        print(f"not analysed: {line}")
    if args.json:
        Path(args.json).write_text(report.to_json())
    layers_timed = any(layer["time_ms"] > 0 for layer in profile.get("layers", []))
    ok = (
        env.get("device", "").startswith("cuda")
        and env.get("timer") == "cuda-events"
        and bool(nvml and nvml["samples"])
        and layers_timed
        and bool(speedups)
    )
    print("GPU path: OK" if ok else "GPU path: NOT exercised (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
