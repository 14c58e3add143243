"""Hugging Face folders: real transformers models (tiny configs, random init) saved with
save_pretrained — single file, sharded, .bin — analysed as one checkpoint, with config.json
as the dense architecture; stale configs, token inputs, Wanda and 2:4 sparsity, bad folders."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
from safetensors.torch import load_file, save_file

import analyzer
from analyzer import analyze, load_pruned
from analyzer.load import load_checkpoint
from analyzer.model import BuildOptions, build

from . import hf_models
from .hf_models import VOCAB

import transformers  # noqa: E402 - a test dependency (the test extra): missing is a failure, not a skip

SCHEMA = json.loads((Path(analyzer.__file__).parent / "report_schema.json").read_text())
REPO = Path(__file__).resolve().parents[1]


def _kinds(report: Any, *severities: str) -> list[str]:
    return [f.kind for f in report.findings if f.severity.value in severities]


def _finding(report: Any, kind: str) -> Any:
    found = [f for f in report.findings if f.kind == kind]
    assert len(found) == 1, [(f.kind, f.message) for f in report.findings]
    return found[0]


def _one_error_line(result: Any, says: str) -> None:
    assert result.code == 2, (result.out, result.err)
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("analyze: error: "), result.err
    assert says in lines[0], lines[0]
    assert "Traceback" not in result.err


# -- layouts --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    torch.manual_seed(0)
    return hf_models.llama()


@pytest.fixture(scope="module")
def layouts(llama: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    llama.save_pretrained(root / "single")
    llama.save_pretrained(root / "sharded", max_shard_size="100KB")
    hf_models.save_bin(llama, root / "bin")
    hf_models.save_bin(llama, root / "bin-sharded", max_shard_size="100KB")
    return {
        "single": root / "single",
        "sharded": root / "sharded",
        "index": root / "sharded" / "model.safetensors.index.json",
        "bin": root / "bin",
        "bin-sharded": root / "bin-sharded",
        "bin-index": root / "bin-sharded" / "pytorch_model.bin.index.json",
    }


@pytest.mark.parametrize("layout", ["single", "sharded", "index", "bin", "bin-sharded", "bin-index"])
def test_layouts_are_one_checkpoint_with_every_shard(layout: str, layouts: dict[str, Path], llama: torch.nn.Module) -> None:
    path = layouts[layout]
    checkpoint = load_checkpoint(path)
    expected = llama.state_dict()
    assert checkpoint.format == "hf-folder" and checkpoint.config["model_type"] == "llama"
    assert sorted(checkpoint.tensors) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(checkpoint.tensors[name], tensor), name
    folder = path if path.is_dir() else path.parent
    index = next(iter(folder.glob("*.index.json")), None)
    if index is not None:
        shards = set(json.loads(index.read_text())["weight_map"].values())
        assert len(shards) > 2 and set(checkpoint.shards) == shards
    report = analyze(path)
    assert {row.name for row in report.layers} == {k.rpartition(".")[0] for k in expected}
    assert report.source.shards == checkpoint.shards


def test_bin_layout_is_what_transformers_reads(layouts: dict[str, Path], llama: torch.nn.Module) -> None:
    """The .bin folders the tests write are the real layout: transformers loads them."""
    loaded = transformers.AutoModelForCausalLM.from_pretrained(layouts["bin-sharded"])
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), llama.state_dict().values()))


def test_cli_folder_report_validates_and_names_its_shards(layouts: dict[str, Path], run_cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = run_cli(layouts["sharded"], "--json", out)
    assert result.code == 0, result.err
    document = json.loads(out.read_text())
    jsonschema.validate(document, SCHEMA)
    report = document["reports"][0]
    assert report["source"]["format"] == "hf-folder"
    assert len(report["source"]["shards"]) > 2
    assert "shards" in result.out


def test_shards_are_opened_one_at_a_time(layouts: dict[str, Path]) -> None:
    """Reading every tensor maps at most one shard at any time (checked in /proc/self/maps)."""
    folder = layouts["sharded"].resolve()
    checkpoint = load_checkpoint(folder)

    def mapped_shards() -> set[str]:
        lines = Path("/proc/self/maps").read_text().splitlines()
        return {line.split()[-1] for line in lines if str(folder) in line and line.endswith(".safetensors")}

    seen: set[str] = set()
    for name in checkpoint.tensors:
        checkpoint.tensors[name]
        now = mapped_shards()
        assert len(now) <= 1, now
        seen |= now
    assert len(seen) == len(checkpoint.shards)


class _Recording:
    def __init__(self) -> None:
        self.stages: list[str] = []

    @contextmanager
    def stage(self, description: str, total: int | None = None) -> Iterator[Any]:
        self.stages.append(description)
        yield lambda n=1: None


def test_a_progress_stage_per_shard(layouts: dict[str, Path]) -> None:
    progress = _Recording()
    checkpoint = load_checkpoint(layouts["bin-sharded"], progress=progress)
    for shard in checkpoint.shards:
        assert sum(shard in stage for stage in progress.stages) == 1, progress.stages


def test_a_shard_alone_says_it_is_part_of_the_model(layouts: dict[str, Path]) -> None:
    folder = layouts["sharded"]
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    shard = sorted(set(index.values()))[0]
    report = analyze(folder / shard)
    assert any(f"one of the {len(set(index.values()))} shards" in note and str(folder) in note for note in report.notes)
    assert {row.name for row in report.layers} == {k.rpartition(".")[0] for k, v in index.items() if v == shard}


# -- dense models are clean, from config.json and from --arch ---------------------------------------

MODELS = ["llama", "qwen2", "bert", "vit", "convnext"]


@pytest.fixture(scope="module")
def dense_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dense")
    folders = {}
    for name in MODELS:
        torch.manual_seed(0)
        getattr(hf_models, name)().save_pretrained(root / name)
        folders[name] = root / name
    return folders


@pytest.mark.parametrize("source", ["config", "arch"])
@pytest.mark.parametrize("name", MODELS)
def test_dense_models_are_clean_and_run(name: str, source: str, dense_folders: dict[str, Path]) -> None:
    arch = f"tests.hf_models:{name}" if source == "arch" else None
    report = analyze(dense_folders[name], arch=arch)
    assert _kinds(report, "error", "warning") == [], [(f.kind, f.message) for f in report.findings]
    assert "channel-removal" not in _kinds(report, "info")
    assert report.summary.macs and report.summary.macs > 0  # the model ran on its example input
    assert not any("could not be run" in note for note in report.notes)


def test_dense_llama_runs_on_token_ids(dense_folders: dict[str, Path]) -> None:
    built = build(load_checkpoint(dense_folders["llama"]), BuildOptions())
    model = built.model
    assert model is not None and model.trace.ok, model and model.trace.failure
    ids = model.example_input.kwargs["input_ids"]
    assert ids.dtype == torch.int64 and ids.shape == (1, 16) and 0 <= int(ids.min()) and int(ids.max()) < VOCAB
    assert torch.all(model.example_input.kwargs["attention_mask"] == 1)
    assert model.trace.calls["model.embed_tokens"].inputs == [(1, 16)]
    assert not any(p.is_meta for p in model.module.state_dict().values())


def test_arch_llama_on_a_single_file_runs_on_token_ids(dense_folders: dict[str, Path]) -> None:
    """The issue's case: --arch on a healthy Llama fed a float tensor to nn.Embedding."""
    report = analyze(dense_folders["llama"] / "model.safetensors", arch="tests.hf_models:llama")
    assert _kinds(report, "error", "warning") == []
    assert report.summary.macs_input_shape == [1, 16]


def test_a_plain_module_starting_with_an_embedding_takes_token_ids(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = hf_models.TokenNet()
    torch.save(model.state_dict(), tmp_path / "tokens.pth")
    built = build(load_checkpoint(tmp_path / "tokens.pth"), BuildOptions(arch="tests.hf_models:TokenNet", input_shape=(2, 7)))
    assert built.model is not None and built.model.trace.ok
    (ids,) = built.model.example_input.args
    assert ids.dtype == torch.int64 and ids.shape == (2, 7) and int(ids.max()) < hf_models.TokenNet.VOCAB


def test_named_inputs_from_the_cli_and_the_api(dense_folders: dict[str, Path], run_cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = run_cli(dense_folders["llama"], "--input", "input_ids=2,8", "--input", "attention_mask=2,8", "--json", out)
    assert result.code == 0, result.err
    assert json.loads(out.read_text())["reports"][0]["summary"]["macs_input_shape"] == [2, 8]
    report = analyze(dense_folders["bert"], example_input={"input_ids": torch.randint(0, VOCAB, (1, 5))})
    assert report.summary.macs_input_shape == [1, 5] and _kinds(report, "error") == []
    _one_error_line(run_cli(dense_folders["llama"], "--input", "input_ids"), "NAME=SHAPE")


# -- a pruned model whose config.json was not updated ------------------------------------------------


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize(
    "factory, expected",
    [
        # head_dim is written in Llama's config.json: whole kv groups go, head_dim stays.
        ("llama", {"hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 2, "num_key_value_heads": 1}),
        # Qwen2 derives head_dim = hidden_size // heads (= 24 here), so it must be written: 16.
        ("qwen2", {"hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16}),
    ],
)
def test_stale_config_gives_the_fields_that_load(factory: str, expected: dict[str, int], tmp_path: Path) -> None:
    torch.manual_seed(0)
    pruned = hf_models.prune_decoder(getattr(hf_models, factory)(), hidden=48, intermediate=96, keep_kv_groups=[1])
    pruned.save_pretrained(tmp_path)  # model.config still says the dense widths (torch-pruning #512)
    with pytest.raises(Exception, match="size|shape"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    report = analyze(tmp_path)
    finding = _finding(report, "state-dict-mismatch")
    assert finding.severity.value == "error" and "config.json not updated" in finding.message
    assert finding.evidence["config_patch"] == expected
    # The heads are whole under the widths the tensors need: a stale config is no attention problem.
    assert _kinds(report, "error") == ["state-dict-mismatch"]
    # 2 heads of 16 or 4 heads of 8 give the same shapes; the other reading is offered too.
    assert finding.evidence["alternative_patch"] == {"hidden_size": 48, "intermediate_size": 96, "head_dim": 8}
    ids = torch.randint(0, VOCAB, (1, 6))
    torch.testing.assert_close(_logits(load_pruned(tmp_path), ids), _logits(pruned, ids))  # before the fix, too
    exec(finding.fix_code, {})  # the fix as printed, applied to the folder's config.json
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(loaded, ids), _logits(pruned, ids))
    assert _kinds(analyze(tmp_path), "error", "warning") == []


def test_widths_that_differ_per_layer_need_load_pruned(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pruned = hf_models.prune_decoder(hf_models.llama(), intermediate=[96, 112])
    pruned.save_pretrained(tmp_path)
    finding = _finding(analyze(tmp_path), "state-dict-mismatch")
    assert "differ between layers" in finding.message and "load_pruned" in finding.fix_code
    assert finding.fix is not None and "analyzer.load_pruned" in finding.fix and "same ratio in every layer" in finding.fix
    widths = finding.evidence["per_layer"]["model.layers.#.mlp.gate_proj.weight dim 0 (intermediate_size)"]
    assert widths == {"96": ["model.layers.0.mlp.gate_proj"], "112": ["model.layers.1.mlp.gate_proj"]}
    rebuilt = load_pruned(tmp_path)
    ids = torch.randint(0, VOCAB, (1, 6))
    torch.testing.assert_close(_logits(rebuilt, ids), _logits(pruned, ids))


def test_a_trimmed_vocabulary_keeps_lm_head_tied_to_the_embedding(tmp_path: Path) -> None:
    """Tied weights (save_pretrained stores the embedding once): the vocabulary cut to its
    first 60 tokens; load_pruned resizes both and ties them again, or lm_head would stay a
    fresh tensor the file never fills."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    config = hf_models.llama_config()
    config.tie_word_embeddings = True
    model = LlamaForCausalLM(config).eval()
    embed = model.model.embed_tokens
    embed.weight = torch.nn.Parameter(embed.weight[:60].detach().clone())
    embed.num_embeddings = 60
    model.lm_head.weight = embed.weight
    model.lm_head.out_features = 60
    model.save_pretrained(tmp_path)
    rebuilt = load_pruned(tmp_path)
    assert rebuilt.lm_head.weight is rebuilt.model.embed_tokens.weight
    ids = torch.randint(0, 60, (1, 6))
    torch.testing.assert_close(_logits(rebuilt, ids), _logits(model, ids))


def test_zeroed_intermediate_features_of_bert_compact(tmp_path: Path) -> None:
    """Its groups have Embedding producers (weight (count, hidden): channels on axis 1) next
    to the Linear ones; eight zeroed rows of one intermediate Linear go, outputs unchanged."""
    torch.manual_seed(0)
    model = hf_models.bert()
    dense = model.bert.encoder.layer[0].intermediate.dense
    with torch.no_grad():
        dense.weight[:8] = 0
        dense.bias[:8] = 0
    model.save_pretrained(tmp_path / "bert")
    out = tmp_path / "compact.pth"
    report = analyze(tmp_path / "bert", compact_to=out)
    assert report.failures == []
    c = report.compaction
    assert c["refused"] is None, c["refused"]
    hidden = model.config.hidden_size
    assert c["params_before"] - c["params_after"] == 8 * (hidden + 1) + 8 * hidden  # rows + bias, output columns
    compacted = torch.load(out, weights_only=False)
    assert compacted.bert.encoder.layer[0].intermediate.dense.out_features == model.config.intermediate_size - 8
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(compacted(input_ids=ids).logits, model(input_ids=ids).logits)


def test_llama_whose_grouping_torch_pruning_cannot_finish_is_analysed_per_layer(tmp_path: Path) -> None:
    """torch-pruning (1.6.1) loops without end grouping transformers' Llama: the grouping runs
    in a bounded child, so the analysis finishes, per layer, and --compact refuses, both
    saying why. (A torch-pruning that groups it makes this test fail: then check the groups.)"""
    torch.manual_seed(0)
    model = hf_models.llama()
    up = model.model.layers[0].mlp.up_proj
    with torch.no_grad():
        up.weight[:8] = 0
    model.save_pretrained(tmp_path / "llama")
    report = analyze(tmp_path / "llama", compact_to=tmp_path / "compact.pth")
    assert report.failures == []
    zeroed = _finding(report, "zeroed-channels")
    assert zeroed.evidence["coupling_checked"] is False
    assert zeroed.evidence["per_layer"]["model.layers.0.mlp.up_proj"]["zeroed"] == 8
    assert "grouping did not finish within" in zeroed.message
    assert "grouping did not finish within" in report.compaction["refused"]
    assert not (tmp_path / "compact.pth").exists()


_WITHOUT_TRANSFORMERS = """
import sys
class NoTransformers:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "transformers":
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, NoTransformers())
from analyzer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _without_transformers(*args: str | Path) -> tuple[int, dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TRANSFORMERS, *map(str, args), "--json", "-", "--quiet"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)["reports"][0]


def test_without_transformers_the_static_checks_run(dense_folders: dict[str, Path], tmp_path: Path) -> None:
    torch.manual_seed(0)
    hf_models.prune_decoder(hf_models.llama(), hidden=48, intermediate=96, keep_kv_groups=[1]).save_pretrained(tmp_path)
    code, report = _without_transformers(tmp_path)
    (finding,) = [f for f in report["findings"] if f["kind"] == "state-dict-mismatch"]
    assert code == 1 and finding["evidence"]["absent_widths"] == {"hidden_size": 64, "intermediate_size": 128}
    assert "analyzer[transformers]" in finding["fix"]
    code, report = _without_transformers(dense_folders["llama"])
    assert code == 0 and not [f for f in report["findings"] if f["severity"] in ("error", "warning")]
    assert any("analyzer[transformers]" in note for note in report["notes"])


# -- sparsity through a folder ---------------------------------------------------------------------


def test_wanda_rows_are_unstructured_sparsity(llama: torch.nn.Module, tmp_path: Path) -> None:
    model = copy.deepcopy(llama)
    pruned = hf_models.wanda_rows(model)
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    finding = _finding(analyze(tmp_path), "unstructured-sparsity")
    assert set(finding.modules) == set(pruned) and len(pruned) == 14
    for name in pruned:
        weight = model.get_submodule(name).weight
        assert finding.evidence["sparsity_per_layer"][name] == pytest.approx(float((weight == 0).float().mean()), abs=1e-4)
    assert "semi-structured-sparsity" not in _kinds(analyze(tmp_path), "info")


def test_two_four_is_semi_structured_sparsity(llama: torch.nn.Module, tmp_path: Path) -> None:
    model = copy.deepcopy(llama)
    pruned = hf_models.two_four(model)
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    report = analyze(tmp_path)
    finding = _finding(report, "semi-structured-sparsity")
    assert set(finding.modules) == set(pruned)
    assert {v["pattern"] for v in finding.evidence["layers"].values()} == {"2:4"}
    assert "unstructured-sparsity" not in _kinds(report, "warning")


# -- folders that cannot be analysed, and what is never run ------------------------------------------


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


def _rewrite_index(folder: Path, change: Any) -> None:
    path = folder / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    change(index["weight_map"])
    path.write_text(json.dumps(index))


def _shard_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("model-*.safetensors"))


def _missing_shard(folder: Path) -> None:
    _shard_files(folder)[0].unlink()


def _tensor_in_two_shards(folder: Path) -> None:
    first, second = _shard_files(folder)[:2]
    extra = load_file(first)
    save_file({**load_file(second), **extra}, second)


def _index_outside(folder: Path) -> None:
    _rewrite_index(folder, lambda wm: wm.update({k: "../" + v for k, v in list(wm.items())[:1]}))


def _unlisted_tensor(folder: Path) -> None:
    shard = _shard_files(folder)[0]
    save_file({**load_file(shard), "extra.weight": torch.zeros(3)}, shard)


def _truncated_shard(folder: Path) -> None:
    shard = _shard_files(folder)[1]
    shard.write_bytes(shard.read_bytes()[:-100])


def _listed_in_the_wrong_shard(folder: Path) -> None:
    names = [p.name for p in _shard_files(folder)]
    _rewrite_index(folder, lambda wm: wm.update({k: names[1] if v == names[0] else v for k, v in list(wm.items())}))


def _duplicate_key(folder: Path) -> None:
    path = folder / "model.safetensors.index.json"
    text = path.read_text()
    first = next(iter(json.loads(text)["weight_map"].items()))
    path.write_text(text.replace('"weight_map": {', f'"weight_map": {{"{first[0]}": "{first[1]}", ', 1))


@pytest.mark.parametrize(
    "damage, says",
    [
        (_missing_shard, "missing from the folder"),
        (_tensor_in_two_shards, "is in two shards"),
        (_index_outside, "outside its folder"),
        (_unlisted_tensor, "the index does not list (extra.weight)"),
        (_listed_in_the_wrong_shard, "which does not hold it"),
        (_duplicate_key, "twice"),
        (_truncated_shard, "a malformed safetensors shard"),
    ],
)
def test_bad_folders_are_one_line_exit_2(damage: Any, says: str, layouts: dict[str, Path], tmp_path: Path, run_cli: Any, unchanged: Any) -> None:
    folder = _copy(layouts["sharded"], tmp_path)
    damage(folder)
    check = unchanged(folder / "model.safetensors.index.json")
    _one_error_line(run_cli(folder), says)
    _one_error_line(run_cli(folder / "model.safetensors.index.json"), says)
    check()


def test_a_folder_without_weights(tmp_path: Path, run_cli: Any) -> None:
    (tmp_path / "config.json").write_text("{}")
    _one_error_line(run_cli(tmp_path), "without model weights (it holds config.json)")


def test_custom_code_is_never_run(dense_folders: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(dense_folders["llama"], tmp_path)
    marker = tmp_path / "ran"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    report = analyze(folder)
    assert not marker.exists()
    assert any("not run" in note and "modeling_evil" in note for note in report.notes)
    assert _kinds(report, "error", "warning") == [] and report.summary.macs  # transformers' own Llama ran


def test_a_config_too_deep_is_left_out_with_a_note(dense_folders: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(dense_folders["llama"], tmp_path)
    (folder / "config.json").write_text("[" * 100 + "]" * 100)
    report = analyze(folder)
    assert any("nests" in note for note in report.notes) and report.summary.macs is None


def test_a_config_asking_for_a_million_layers_is_not_built(dense_folders: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(dense_folders["llama"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 10**6
    (folder / "config.json").write_text(json.dumps(config))
    report = analyze(folder)
    assert any("asks for more layers (1000000)" in note for note in report.notes), report.notes
    assert _kinds(report, "error") == []


def test_buffers_older_checkpoints_saved_are_ignored_as_transformers_does(dense_folders: dict[str, Path], tmp_path: Path) -> None:
    """Checkpoints from older transformers hold bert.embeddings.position_ids, a buffer the model
    now computes itself: from_pretrained ignores it, and so must the fit."""
    folder = _copy(dense_folders["bert"], tmp_path)
    tensors = load_file(folder / "model.safetensors")
    tensors["bert.embeddings.position_ids"] = torch.arange(64).unsqueeze(0)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    transformers.AutoModelForMaskedLM.from_pretrained(folder)  # loads: the oracle
    report = analyze(folder)
    assert _kinds(report, "error", "warning") == [] and report.summary.macs
    assert any("bert.embeddings.position_ids" in note for note in report.notes)


def test_nothing_is_downloaded_for_a_config_that_names_a_hub_backbone(
    dense_folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DETR-like configs name a backbone repo; transformers looks it up on the Hub while it
    reads the config. Building from config.json must not reach the network at all."""
    import socket

    attempts: list[Any] = []
    real_connect, real_lookup = socket.socket.connect, socket.getaddrinfo
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: attempts.append(a) or real_connect(self, *a))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: attempts.append(a) or real_lookup(*a, **k))
    folder = _copy(dense_folders["convnext"], tmp_path)
    config = {"model_type": "detr", "use_timm_backbone": False, "backbone": "microsoft/resnet-50", "use_pretrained_backbone": True}
    (folder / "config.json").write_text(json.dumps(config))
    report = analyze(folder)
    assert attempts == []
    assert any("config.json is not used" in note for note in report.notes), report.notes


def test_shapes_no_config_can_give_are_said_so(tmp_path: Path) -> None:
    """down_proj reads 96 inputs in every layer while gate/up still give 128: no value of
    intermediate_size (or any other field) makes these shapes."""
    torch.manual_seed(0)
    model = hf_models.llama()
    for layer in model.model.layers:
        down = layer.mlp.down_proj
        down.weight = torch.nn.Parameter(down.weight[:, :96].detach().clone())
        down.in_features = 96
    with pytest.raises(RuntimeError, match="cannot be multiplied"):  # the oracle: transformers' own forward
        model(torch.randint(0, VOCAB, (1, 6)))
    model.save_pretrained(tmp_path)
    report = analyze(tmp_path)
    finding = _finding(report, "state-dict-mismatch")
    assert finding.message.startswith("Pruned, and no config.json can describe it (no setting of config.json's fields gives these shapes)")
    assert "model.layers.0.mlp.down_proj.weight is [64, 96] in the file, [64, 128] from config.json" in finding.message
    assert finding.fix.startswith("Rebuild it with analyzer.load_pruned") and "load_pruned(" in finding.fix_code
    assert "forward-failure" in {f.kind for f in report.findings}
    # rebuilt to the file's shapes it still fails: that, not the load, is what the verdict leads with
    assert report.verdict.startswith("The model fails on the inputs input_ids")


def test_a_folder_missing_a_layers_tensors_is_a_different_architecture(dense_folders: dict[str, Path], tmp_path: Path) -> None:
    """config.json describes every tensor that is there, but one MLP's tensors are gone (a
    layer dropped from the file by hand): from_pretrained would leave them random."""
    folder = tmp_path / "llama"
    shutil.copytree(dense_folders["llama"], folder)
    state = load_file(folder / "model.safetensors")
    dropped = sorted(k for k in state if k.startswith("model.layers.1.mlp."))
    assert len(dropped) == 3  # gate, up and down projections
    save_file({k: v for k, v in state.items() if k not in dropped}, folder / "model.safetensors", metadata={"format": "pt"})
    report = analyze(folder)
    [finding] = [f for f in report.findings if f.kind == "state-dict-mismatch"]
    assert finding.severity.value == "error"
    assert "3 keys missing" in finding.message and "different architecture" in finding.message
    assert sorted(finding.modules) == sorted(k.removesuffix(".weight") for k in dropped)
