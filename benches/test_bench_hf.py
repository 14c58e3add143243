"""A Llama-like sharded safetensors folder: `analyze FOLDER` against the floor.

The floor is what any analysis must do at least: open every shard with safetensors and
`count_nonzero` every tensor. Both run as separate processes over the same folder (in the
page cache: it was just written), one after the other in the same session. Two ratios: of
the processes' wall times (interpreter start and imports included: torch alone takes
seconds), and of the work after the imports (the floor's loop against `analyze()`). Ours
runs twice: without transformers (static: the tensors only) and with it (config.json
built as the dense model, the checkpoint assigned into it and run on 16 tokens); each
child reports how long each of its stages took.

Size: ANALYZER_BENCH_HF_SIZE=small (default, a few M parameters) or 1b (TinyLlama's
1.1B-parameter shape, bf16, ~2.2 GB; check `df -h /tmp` first).
Run: python -m pytest benches/test_bench_hf.py --benchmark-enable -s
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

_SIZES = {
    "small": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, vocab_size=2000, shard="2MB"),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4, vocab_size=32000, shard="500MB"),
}

_FLOOR = """
import sys, json, time, torch
from safetensors import safe_open
start = time.perf_counter()
index = json.load(open(sys.argv[1] + "/model.safetensors.index.json"))["weight_map"]
total = 0
for shard in sorted(set(index.values())):
    with safe_open(sys.argv[1] + "/" + shard, framework="pt") as f:
        for name in f.keys():
            total += int(torch.count_nonzero(f.get_tensor(name)))
print(json.dumps({"total_s": time.perf_counter() - start, "nonzero": total}))
"""

_OURS = """
import json, sys, time
from contextlib import contextmanager
if sys.argv[2] == "static":
    class NoTransformers:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "transformers":
                raise ModuleNotFoundError(name)
    sys.meta_path.insert(0, NoTransformers())
from analyzer import analyze

class Stages:
    def __init__(self):
        self.seconds = {}
    @contextmanager
    def stage(self, description, total=None):
        start = time.perf_counter()
        yield lambda n=1: None
        key = description.split(" ")[0] if description.startswith("reading") else description
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start

start = time.perf_counter()
stages = Stages()
report = analyze(sys.argv[1], progress=stages)
total = time.perf_counter() - start
print(json.dumps({"total_s": total, "stages_s": stages.seconds, "ran": report.summary.macs is not None,
                  "findings": [f.kind for f in report.findings], "notes": report.notes}))
"""


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A sharded folder as save_pretrained writes it, filled fast: bf16, dense (no zeros), not random."""
    from huggingface_hub import split_torch_state_dict_into_shards

    size = dict(_SIZES[os.environ.get("ANALYZER_BENCH_HF_SIZE", "small")])
    shard_size = size.pop("shard")
    folder = tmp_path_factory.mktemp("hf") / "llama"
    config = transformers.LlamaConfig(**size, dtype="bfloat16")
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(folder)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in transformers.LlamaForCausalLM(config).state_dict().items()}
    meta = {k: torch.empty(v, dtype=torch.bfloat16, device="meta") for k, v in shapes.items()}
    split = split_torch_state_dict_into_shards(meta, filename_pattern="model{suffix}.safetensors", max_shard_size=shard_size)
    from safetensors.torch import save_file

    pattern = torch.linspace(0.01, 0.05, 4099).to(torch.bfloat16)  # dense values, cheap to tile
    for filename, names in split.filename_to_tensors.items():
        tensors = {}
        for name in names:
            tensor = torch.empty(shapes[name], dtype=torch.bfloat16)
            flat = tensor.view(-1)
            reps = -(-flat.numel() // pattern.numel())
            flat.copy_(pattern.repeat(reps)[: flat.numel()])
            tensors[name] = tensor
        save_file(tensors, folder / filename, metadata={"format": "pt"})
        del tensors
    index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    params = sum(torch.Size(s).numel() for s in shapes.values())
    return folder, params


def _child(args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, timeout=3600)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    return time.perf_counter() - start, result.stdout


@pytest.mark.benchmark(group="hf-folder")
def test_analyze_sharded_llama_folder_against_the_floor(benchmark, llama_folder: tuple[Path, int]) -> None:
    folder, params = llama_folder
    floor_s, floor_out = _child([sys.executable, "-c", _FLOOR, str(folder)])
    static_s, static_out = _child([sys.executable, "-c", _OURS, str(folder), "static"])

    def full() -> tuple[float, str]:
        return _child([sys.executable, "-c", _OURS, str(folder), "full"])

    full_s, full_out = benchmark.pedantic(full, rounds=1, iterations=1)
    static, ours, floor = json.loads(static_out), json.loads(full_out), json.loads(floor_out)
    benchmark.extra_info.update(
        {
            "params": params,
            "shards": len(list(folder.glob("model-*.safetensors"))),
            "floor_s": round(floor_s, 2),
            "static_s": round(static_s, 2),
            "full_s": round(full_s, 2),
            "static_ratio_vs_floor": round(static_s / floor_s, 3),
            "full_ratio_vs_floor": round(full_s / floor_s, 3),
            "floor_work_s": round(floor["total_s"], 2),
            "static_work_ratio_vs_floor": round(static["total_s"] / floor["total_s"], 3),
            "full_work_ratio_vs_floor": round(ours["total_s"] / floor["total_s"], 3),
            "static_stages_s": {k: round(v, 2) for k, v in static["stages_s"].items()},
            "full_stages_s": {k: round(v, 2) for k, v in ours["stages_s"].items()},
        }
    )
    print(json.dumps(benchmark.extra_info, indent=1))
    assert ours["ran"] and not static["ran"]
    assert not any(kind in ("state-dict-mismatch", "forward-failure") for kind in ours["findings"]), ours
