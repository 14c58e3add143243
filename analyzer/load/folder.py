"""Hugging Face model folders (`save_pretrained`): config.json plus one weights file or shards.

A folder (or its `*.index.json` given directly) becomes ONE Checkpoint whose tensors come
from every shard. safetensors shards are read lazily: their headers are read up front (to
check them against the index), and a tensor's shard is opened only when the tensor is
asked for, one shard open at a time. `.bin` shards are pickles: each goes through the same
safe loader as any other pickle. `config.json` is read as JSON only, bounded in size and
depth; nothing from the folder — custom modelling code named by `auto_map`, `*.py`
files — is ever run. An index that does not match its shards is refused in one line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from safetensors import safe_open

from ..errors import InputError
from ..progress import NullProgress, Progress
from .checkpoint import Checkpoint, DictTensorStore, TensorStore
from .extract import find_masks
from .safetensors_file import MAX_HEADER_BYTES, dtype_of, read_header
from .sniff import Format, sniff

__all__ = ["FORMAT", "WEIGHT_FILES", "ShardedTensorStore", "is_model_folder", "load_folder", "notes_beside", "read_config"]

#: Checkpoint.format of a model folder (or a shard index given directly).
FORMAT = "hf-folder"
#: The weight files `from_pretrained` looks for, in the order it prefers them.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
CONFIG_FILE = "config.json"
#: Real config.json files are a few kB (large multimodal ones ~100 kB); indexes ~100 bytes a tensor.
MAX_CONFIG_BYTES = 4 << 20
MAX_INDEX_BYTES = 64 << 20
MAX_JSON_DEPTH = 32

ReadFile = Callable[[Path], Checkpoint]


def is_model_folder(path: Path) -> bool:
    """A directory (it must hold a save_pretrained layout), or a shard index file (by its content)."""
    if path.is_dir():
        return True
    return _looks_like_index(path)


def load_folder(path: Path, read_file: ReadFile, progress: Progress | None = None) -> Checkpoint:
    """The whole model of a folder (or of the index at `path`) as one Checkpoint.

    read_file: the loader of a single pickle file (the safe one every checkpoint goes through)."""
    progress = progress or NullProgress()
    folder, weights, notes = _resolve(path)
    if weights.name.endswith(".index.json"):
        weight_map, index_metadata = _parse_index(weights)
    else:
        weight_map, index_metadata = None, {}
    shard_names = sorted(set(weight_map.values())) if weight_map is not None else [weights.name]
    shards: list[_Shard] = []
    header_bytes = 0
    for number, name in enumerate(shard_names, 1):
        with progress.stage(f"reading shard {number}/{len(shard_names)} {name}" if len(shard_names) > 1 else f"reading {name}"):
            shards.append(_open_shard(folder, name, read_file))
        header_bytes += shards[-1].header_bytes
        if header_bytes > MAX_HEADER_BYTES:
            raise InputError(f"{weights}: the shards' safetensors headers add up to over {MAX_HEADER_BYTES >> 20} MB; refused")
    store = ShardedTensorStore(shards, _check_against_index(weights, shards, weight_map))
    config, config_notes = read_config(folder)
    notes += config_notes + _custom_code_notes(folder, config)
    pickled = [s.checkpoint for s in shards if s.checkpoint is not None]
    refused = next((c.refused for c in pickled if c.container == "unreadable"), None)
    for shard in shards:
        if shard.checkpoint is not None:
            notes += [f"{shard.name}: {note}" for note in shard.checkpoint.notes]
    metadata: dict[str, Any] = {"weights": weights.name, **{k: _short(v) for k, v in index_metadata.items()}}
    if config is not None:
        metadata.update({k: _short(config[k]) for k in ("model_type", "architectures") if k in config})
    return Checkpoint(
        path=path,
        format=FORMAT,
        container="unreadable" if refused else "state-dict",
        tensors=store if not refused else DictTensorStore({}),
        loader=_loader(pickled),
        file_size=sum(s.size for s in shards),
        globals=[g for c in pickled for g in c.globals],
        refused=refused,
        stripped_prefix=next((c.stripped_prefix for c in pickled if c.stripped_prefix), None),
        metadata=metadata,
        masks=find_masks(list(store)) if not refused else {},
        notes=notes,
        config=config,
        shards=shard_names if len(shard_names) > 1 else [],
    )


# -- the store --------------------------------------------------------------------------


@dataclass
class _Shard:
    name: str
    path: Path
    size: int
    #: safetensors: the header (tensor name -> entry); None for a pickled shard.
    header: dict[str, Any] | None = None
    #: A pickled (.bin) shard, read by the safe loader.
    checkpoint: Checkpoint | None = None
    header_bytes: int = 0

    def names(self) -> list[str]:
        if self.header is not None:
            return [k for k in self.header if k != "__metadata__"]
        assert self.checkpoint is not None
        return list(self.checkpoint.tensors)


class ShardedTensorStore(TensorStore):
    """The tensors of every shard under one mapping; a safetensors shard is opened when one of
    its tensors is asked for, and closed when a tensor of another shard is."""

    def __init__(self, shards: list[_Shard], shard_of: dict[str, int]) -> None:
        self._shards = shards
        #: Tensor name -> index of its shard, grouped by shard (iteration reads shard by shard).
        self._shard_of = shard_of
        self._open: tuple[int, Any] | None = None
        self.may_share_storage = any(s.checkpoint is not None for s in shards)

    def __getitem__(self, name: str) -> torch.Tensor:
        index = self._shard_of[name]
        shard = self._shards[index]
        if shard.checkpoint is not None:
            return shard.checkpoint.tensors[name]
        return self._handle(index).get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._shard_of)

    def __len__(self) -> int:
        return len(self._shard_of)

    def __contains__(self, name: object) -> bool:
        return name in self._shard_of

    def meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        shard = self._shards[self._shard_of[name]]
        if shard.header is not None:
            entry = shard.header[name]
            return tuple(entry["shape"]), dtype_of(entry["dtype"])
        assert shard.checkpoint is not None
        return shard.checkpoint.tensors.meta(name)

    def shard_name(self, name: str) -> str:
        return self._shards[self._shard_of[name]].name

    def _handle(self, index: int) -> Any:
        if self._open is None or self._open[0] != index:
            self._open = None  # close the previous shard before mapping the next
            shard = self._shards[index]
            try:
                self._open = (index, safe_open(str(shard.path), framework="pt", device="cpu"))
            except Exception as e:  # safetensors' own SafetensorError for any inconsistency
                raise InputError(f"{shard.path}: a malformed safetensors shard ({str(e).splitlines()[0][:200]})") from e
        return self._open[1]


def _open_shard(folder: Path, name: str, read_file: ReadFile) -> _Shard:
    path = folder / name
    if not path.exists():
        raise InputError(f"{path}: a shard named by the index is missing from the folder")
    fmt = sniff(path)  # by its bytes, whatever its name says
    size = path.stat().st_size
    if fmt is Format.SAFETENSORS:
        with open(path, "rb") as f:
            header_bytes = int.from_bytes(f.read(8), "little")
        shard = _Shard(name, path, size, header=read_header(path), header_bytes=header_bytes)
        _validated(shard)
        return shard
    if fmt not in (Format.TORCH_ZIP, Format.TORCH_LEGACY, Format.PICKLE):
        raise InputError(f"{path}: a {fmt.value} file as a shard; save_pretrained writes safetensors or torch.save state dicts")
    checkpoint = read_file(path)
    if checkpoint.container not in ("state-dict", "unreadable"):
        raise InputError(f"{path}: the shard holds a {checkpoint.container}, not the state dict save_pretrained writes")
    return _Shard(name, path, size, checkpoint=checkpoint)


def _validated(shard: _Shard) -> None:
    """safetensors checks every tensor's offsets against the file when it opens it: do it now,
    so a damaged shard is refused before anything is analysed (and closed again at once)."""
    try:
        with safe_open(str(shard.path), framework="pt", device="cpu"):
            pass
    except Exception as e:  # safetensors' own SafetensorError for any inconsistency
        raise InputError(f"{shard.path}: a malformed safetensors shard ({str(e).splitlines()[0][:200]})") from e


def _check_against_index(index_path: Path, shards: list[_Shard], weight_map: dict[str, str] | None) -> dict[str, int]:
    """Tensor name -> shard number; every tensor in exactly one shard, the one the index names."""
    shard_of: dict[str, int] = {}
    stored: dict[str, str] = {}  # name in the index (as stored) -> name in the checkpoint
    for number, shard in enumerate(shards):
        if shard.checkpoint is not None and shard.checkpoint.container == "unreadable":
            continue  # its payload is the finding; there are no tensors to check
        prefix = shard.checkpoint.stripped_prefix or "" if shard.checkpoint is not None else ""
        for name in shard.names():
            if name in shard_of:
                raise InputError(f"{index_path}: tensor {name!r} is in two shards, {shards[shard_of[name]].name} and {shard.name}")
            shard_of[name] = number
            stored[prefix + name] = name
    if weight_map is None:
        return shard_of
    for listed, shard_name in weight_map.items():
        name = stored.get(listed)
        if name is None:
            if not _unreadable(shards, shard_name):
                raise InputError(f"{index_path}: the index lists {listed!r} in {shard_name}, which does not hold it")
        elif shards[shard_of[name]].name != shard_name:
            raise InputError(f"{index_path}: the index lists {listed!r} in {shard_name}, but it is in {shards[shard_of[name]].name}")
    unlisted = [listed for listed in stored if listed not in weight_map]
    if unlisted:
        shard_name = shards[shard_of[stored[unlisted[0]]]].name
        raise InputError(
            f"{index_path}: shard {shard_name} holds tensors the index does not list "
            f"({', '.join(unlisted[:3])}{', …' if len(unlisted) > 3 else ''})"
        )
    return shard_of


def _unreadable(shards: list[_Shard], name: str) -> bool:
    return any(s.name == name and s.checkpoint is not None and s.checkpoint.container == "unreadable" for s in shards)


def _loader(pickled: list[Checkpoint]) -> str:
    """How the folder's bytes became objects: the least trusting reader any shard needed."""
    loaders = {c.loader for c in pickled}
    for loader in ("refused", "trusted", "restricted-unpickler", "weights_only"):
        if loader in loaders:
            return loader
    return "safetensors"


# -- the folder ---------------------------------------------------------------------------


def _resolve(path: Path) -> tuple[Path, Path, list[str]]:
    """(folder, the weights file or index to read, notes)."""
    if not path.is_dir():
        return path.parent, path, []
    present = [name for name in WEIGHT_FILES if (path / name).is_file()]
    if not present:
        raise InputError(f"{path}: {_describe_folder(path)}")
    chosen = present[0]
    notes = []
    if len(present) > 1:
        notes.append(f"the folder also holds {', '.join(present[1:])}; {chosen} was read, as from_pretrained prefers it")
    return path, path / chosen, notes


def _describe_folder(path: Path) -> str:
    try:
        names = sorted(entry.name for entry in os.scandir(path))
    except OSError as e:
        return f"cannot list the folder ({e.strerror})"
    expected = "expected a save_pretrained folder (" + ", ".join(WEIGHT_FILES) + ") or a checkpoint file"
    if not names:
        return f"is an empty directory; {expected}"
    shown = ", ".join(names[:8]) + (" …" if len(names) > 8 else "")
    return f"is a directory without model weights (it holds {shown}); {expected}"


def _looks_like_index(path: Path) -> bool:
    """A JSON object with a weight_map: what save_pretrained writes next to its shards (by content)."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_INDEX_BYTES:
            return False
        with open(path, "rb") as f:
            if not f.read(64).lstrip().startswith(b"{"):
                return False
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "weight_map" in data


def _parse_index(path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """(weight_map, metadata) of a shard index, checked: every entry names a shard beside it."""
    data = _read_json(path, MAX_INDEX_BYTES, "shard index")
    if not isinstance(data, dict) or "weight_map" not in data:
        raise InputError(f"{path}: a shard index must be a JSON object with a weight_map")
    weight_map, metadata = data["weight_map"], data.get("metadata") or {}
    if not isinstance(weight_map, dict) or not weight_map or not isinstance(metadata, dict):
        raise InputError(f"{path}: the index's weight_map must map tensor names to shard files")
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise InputError(f"{path}: the index maps {name!r} to {type(shard).__name__}, not a shard file name")
        if not _plain_file_name(shard):
            raise InputError(f"{path}: the index names {shard!r}, a file outside its folder; shards must lie beside the index")
    return weight_map, metadata


def _plain_file_name(name: str) -> bool:
    # A name only (what save_pretrained writes): no directory part, no parent, nothing absolute.
    # The shard itself may be a symlink (the Hub cache links snapshots to blobs): the name is what is checked.
    return bool(name) and PurePosixPath(name).name == name and name not in (".", "..") and "\\" not in name and "\x00" not in name


def read_config(folder: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """config.json as plain JSON data (never code), and notes on what could not be used."""
    path = folder / CONFIG_FILE
    if not path.exists():
        return None, [f"no {CONFIG_FILE} in {folder}: analysed from the tensors alone"]
    try:
        config = _read_json(path, MAX_CONFIG_BYTES, CONFIG_FILE)
    except InputError as e:
        return None, [f"{e}; analysed from the tensors alone"]
    if not isinstance(config, dict):
        return None, [f"{path}: not a JSON object; analysed from the tensors alone"]
    return config, []


def _custom_code_notes(folder: Path, config: dict[str, Any] | None) -> list[str]:
    code = []
    if config is not None and isinstance(config.get("auto_map"), dict):
        code.append("config.json's auto_map (" + ", ".join(map(str, list(config["auto_map"].values())[:3])) + ")")
    try:
        scripts = sorted(entry.name for entry in os.scandir(folder) if entry.name.endswith(".py"))
    except OSError:
        scripts = []
    if scripts:
        code.append("the folder's " + ", ".join(scripts[:3]) + (" …" if len(scripts) > 3 else ""))
    if not code:
        return []
    return [f"custom modelling code named by {' and '.join(code)} was not run (no trust_remote_code): only transformers' own classes are used"]


def _read_json(path: Path, limit: int, what: str) -> Any:
    try:
        if not path.is_file():
            raise InputError(f"{path}: the {what} is not a regular file")
        with open(path, "rb") as f:
            raw = f.read(limit + 1)  # never more than the limit, whatever the size says
        if len(raw) > limit:
            raise InputError(f"{path}: the {what} is over the {limit >> 20} MB limit")
        text = raw.decode("utf-8")
    except OSError as e:
        raise InputError(f"{path}: cannot read the {what} ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: the {what} is not UTF-8 text") from e
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError as e:
        raise InputError(f"{path}: the {what} nests deeper than JSON can be read") from e
    except _DuplicateKey as e:
        raise InputError(f"{path}: the {what} lists {e.args[0]!r} twice") from e
    except ValueError as e:
        raise InputError(f"{path}: the {what} is not valid JSON ({e})") from e
    if _depth(data) > MAX_JSON_DEPTH:
        raise InputError(f"{path}: the {what} nests more than {MAX_JSON_DEPTH} levels deep")
    return data


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of repeated keys silently; a tensor listed twice must not be.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _depth(data: Any) -> int:
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            break
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _short(value: Any) -> Any:
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if isinstance(value, list):
        return [_short(v) for v in value[:8]]
    return str(value)[:200]


# -- a single file that is part of a folder -------------------------------------------------


def notes_beside(path: Path) -> list[str]:
    """Notes for a single weights file given alone: one shard of an index, or a file next to a config.json."""
    folder = path.parent
    for index_name in (WEIGHT_FILES[1], WEIGHT_FILES[3]):
        index_path = folder / index_name
        if not index_path.is_file():
            continue
        try:
            index = _parse_index(index_path)
        except InputError:
            index = None
        if index is not None and path.name in index[0].values():
            shards = len(set(index[0].values()))
            return [
                f"{path.name} is one of the {shards} shards listed in {index_name} beside it: only this shard's "
                f"tensors were analysed; analyse the folder (analyze {folder}) for the whole model"
            ]
    if path.name in WEIGHT_FILES and (folder / CONFIG_FILE).is_file():
        return [f"a {CONFIG_FILE} lies beside it: analyse the folder (analyze {folder}) to use it as the dense architecture"]
    return []
