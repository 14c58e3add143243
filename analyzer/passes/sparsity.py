"""Zero patterns that pruning left in dense tensors.

`unstructured-sparsity`: scattered zeros — dense kernels multiply by them anyway.
`semi-structured-sparsity`: an N:M pattern — sparse tensor cores can use it, but only
under conditions the checkpoint usually does not meet yet.
"""

from __future__ import annotations

from ..tensors.layers import Layer
from ..tensors.patterns import NM_PATTERNS, UNSTRUCTURED_MIN, WeightPattern
from ..report.model import Finding, Severity
from .context import PassContext

KIND_UNSTRUCTURED = "unstructured-sparsity"
KIND_SEMI = "semi-structured-sparsity"

# torch.sparse.to_sparse_semi_structured (CUTLASS): rows and columns must be multiples of these.
_SEMI_MIN_ROWS, _SEMI_MIN_COLS = 32, 64

_TP_SNIPPET = """\
import torch
import torch_pruning as tp

model = ...  # the dense model, before unstructured pruning
example_inputs = {example}
pruner = tp.pruner.MetaPruner(
    model,
    example_inputs,
    importance=tp.importance.MagnitudeImportance(p=2),
    pruning_ratio={ratio},  # channels removed per layer; FLOPs fall by about 1-(1-ratio)^2
    ignored_layers=[{ignored}],
    round_to=8,  # keep widths Tensor-Core friendly
)
pruner.step()
torch.save(model.state_dict(), "pruned.pth")  # then fine-tune"""

_SEMI_SNIPPET = """\
import torch
from torch.sparse import to_sparse_semi_structured

model = model.half().cuda().eval()  # needs a GPU of compute capability >= 8.0 (Ampere or newer)
for name in {names}:
    linear = model.get_submodule(name)
    linear.weight = torch.nn.Parameter(to_sparse_semi_structured(linear.weight))"""


def _weight_layers(ctx: PassContext) -> list[tuple[Layer, WeightPattern]]:
    found = []
    for layer in ctx.layers:
        pattern = ctx.pattern(layer)
        if isinstance(pattern, WeightPattern):
            found.append((layer, pattern))
    return found


def run(ctx: PassContext) -> list[Finding]:
    layers = _weight_layers(ctx)
    findings = []
    nm_labels = {f"{n}:{m}" for n, m in NM_PATTERNS}
    semi = [(l, p) for l, p in layers if p.label in nm_labels]
    scattered = [(l, p) for l, p in layers if p.label not in nm_labels and p.unstructured_fraction >= UNSTRUCTURED_MIN]
    if scattered:
        findings.append(_unstructured(ctx, scattered, layers))
    if semi:
        findings.append(_semi_structured(semi))
    return findings


def _unstructured(ctx: PassContext, scattered: list[tuple[Layer, WeightPattern]], all_layers: list[tuple[Layer, WeightPattern]]) -> Finding:
    zeros = sum(p.unstructured_zeros for _, p in scattered)
    weights = sum(p.numel for _, p in all_layers)
    in_layers = sum(p.numel for _, p in scattered)
    per_layer = {l.name: round(p.unstructured_fraction, 4) for l, p in sorted(scattered, key=lambda lp: -lp[1].unstructured_fraction)}
    overall = zeros / weights if weights else 0.0
    ratio = _channel_ratio_for(overall)
    example = ctx.model.example_input.code() if ctx.model else "torch.randn(1, 3, 224, 224)"
    return Finding(
        kind=KIND_UNSTRUCTURED,
        severity=Severity.WARNING,
        modules=list(per_layer),
        message=(
            f"{len(scattered)} layer{'s' if len(scattered) != 1 else ''} hold scattered zeros "
            f"({zeros / in_layers:.1%} of their weights, {overall:.1%} of all conv/linear weights): dense kernels "
            "multiply by them anyway, so the model is no faster (expected speedup 1.0×) and no smaller on disk."
        ),
        evidence={
            "sparsity_per_layer": per_layer,
            "zeros": zeros,
            "sparsity_in_these_layers": round(zeros / in_layers, 4),
            "sparsity_overall": round(overall, 4),
            "expected_speedup_dense_kernels": 1.0,
        },
        fix=(
            "For speed, remove channels instead of zeroing weights: structured pruning with torch-pruning "
            f"(a channel ratio of about {ratio} removes as many FLOPs as {overall:.0%} unstructured sparsity nominally "
            "does). Sparse kernels pay off only at very high sparsity (CSR on CPU, usually above 90%) or with a 2:4 "
            "pattern on Ampere+ GPUs in fp16/bf16."
        ),
        fix_code=_TP_SNIPPET.format(example=example, ratio=ratio, ignored=_last_layer(ctx)),
    )


def _semi_structured(semi: list[tuple[Layer, WeightPattern]]) -> Finding:
    per_layer = {}
    linear_ready = []
    for layer, pattern in semi:
        rows, cols = pattern.out_channels, pattern.numel // max(pattern.out_channels, 1)
        shape_ok = rows % _SEMI_MIN_ROWS == 0 and cols % _SEMI_MIN_COLS == 0
        dtype = str(layer.dtype).removeprefix("torch.")
        per_layer[layer.name] = {
            "pattern": pattern.label,
            "dtype": dtype,
            "gemm_shape": [rows, cols],
            "shape_ok": shape_ok,
            "dtype_ok": dtype in ("float16", "bfloat16", "int8"),
            "kernel_support": "linear" if layer.is_linear else "conv (to_sparse_semi_structured takes 2-d weights only)",
        }
        if layer.is_linear and shape_ok:
            linear_ready.append(layer.name)
    return Finding(
        kind=KIND_SEMI,
        severity=Severity.INFO,
        modules=list(per_layer),
        message=(
            f"{len(semi)} {'layers follow' if len(semi) != 1 else 'layer follows'} an N:M pattern "
            f"({', '.join(sorted({p.label for _, p in semi}))}): sparse tensor cores can run 2:4 GEMMs up to about "
            "1.5× faster, but only in fp16/bf16/int8 on GPUs of compute capability 8.0 or newer; stored dense, as "
            "here, they run at dense speed."
        ),
        evidence={"layers": per_layer, "requirements": {
            "dtype": "float16, bfloat16 or int8",
            "shape": f"rows a multiple of {_SEMI_MIN_ROWS}, columns a multiple of {_SEMI_MIN_COLS}",
            "gpu": "compute capability >= 8.0 (Ampere, Hopper, ...)",
        }},
        fix=(
            "Convert the qualifying Linear layers with torch.sparse.to_sparse_semi_structured on such a GPU; "
            "convolutions need a GEMM lowering that PyTorch does not provide, so their 2:4 zeros bring no speed."
            if linear_ready
            else "No layer meets the shape and kernel conditions as is: only Linear weights with the listed shape "
            "multiples can use to_sparse_semi_structured; convolution 2:4 zeros bring no speed in PyTorch."
        ),
        fix_code=_SEMI_SNIPPET.format(names=linear_ready) if linear_ready else None,
    )


def _channel_ratio_for(sparsity: float) -> float:
    # Removing a fraction r of channels in consecutive layers removes about 1-(1-r)^2 of the FLOPs.
    ratio = 1 - (1 - min(max(sparsity, 0.0), 0.95)) ** 0.5
    return round(ratio, 2)


def _last_layer(ctx: PassContext) -> str:
    weighted = [l for l in ctx.layers if (l.is_conv or l.is_linear) and l.weight]
    return f"model.get_submodule({weighted[-1].name!r})" if weighted else ""
