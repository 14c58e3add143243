"""Find the weights in whatever object a checkpoint file held.

State dicts, full modules (real or placeholder), training dicts (`model`, `ema`, ...
next to `optimizer`, `epoch`), torch-pruning's `tp.state_dict` format, and anything
else that holds tensors somewhere. Names come out as a state dict would have them,
with `module.`/`_orig_mod.` prefixes stripped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .checkpoint import MaskPair
from .placeholder import Placeholder, placeholder_target

__all__ = ["Extracted", "extract_weights", "WEIGHT_KEYS", "find_masks", "describe"]

#: Keys under which training checkpoints keep the weights, most likely first.
WEIGHT_KEYS = (
    "state_dict", "model_state_dict", "model", "net", "network", "ema", "model_ema",
    "state_dict_ema", "module", "weights", "params", "generator", "student",
)
_STRIPPABLE_PREFIXES = ("module.", "_orig_mod.")
_MAX_DEPTH = 64


@dataclass
class Extracted:
    tensors: dict[str, torch.Tensor]
    container: str
    module: nn.Module | None = None
    module_types: dict[str, str] = field(default_factory=dict)
    buffers: set[str] = field(default_factory=set)
    weights_key: str | None = None
    other_weight_keys: list[str] = field(default_factory=list)
    stripped_prefix: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def extract_weights(obj: Any, key: str | None = None) -> Extracted:
    """The weights in `obj`; `key` picks the entry of a training dict (else the first of WEIGHT_KEYS).

    Returns an Extracted with no tensors when there are none; the caller says why that is fatal.
    """
    if key is not None:
        return _from_chosen_key(obj, key)
    extracted = _extract(obj)
    return _strip_prefixes(extracted)


def _extract(obj: Any) -> Extracted:
    if isinstance(obj, nn.Module) and _is_module_like(obj):
        return _from_module(obj)
    if isinstance(obj, Mapping):
        if "full_state_dict" in obj and "attributions" in obj:
            return _from_tp_state_dict(obj)
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return Extracted({str(k): v for k, v in obj.items()}, "state-dict")
        present = [k for k in WEIGHT_KEYS if k in obj and _holds_tensors(obj[k])]
        if present:
            inner = _extract(obj[present[0]])
            inner.container = "training-dict"
            inner.weights_key = present[0] if inner.weights_key is None else f"{present[0]}.{inner.weights_key}"
            inner.other_weight_keys = present[1:]
            inner.metadata = {**_scalar_metadata(obj), **inner.metadata}
            return inner
    tensors: dict[str, torch.Tensor] = {}
    module_types: dict[str, str] = {}
    _walk(obj, "", tensors, module_types, set(), 0)
    container = "dict" if isinstance(obj, Mapping) else "object"
    return Extracted(tensors, container, module_types=module_types, metadata=_scalar_metadata(obj))


def _from_chosen_key(obj: Any, key: str) -> Extracted:
    from ..errors import UsageError

    node = obj
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            keys = ", ".join(map(str, obj.keys())) if isinstance(obj, Mapping) else type(obj).__name__
            raise UsageError(f"--key {key}: no such entry (the checkpoint holds: {keys})")
        node = node[part]
    inner = _strip_prefixes(_extract(node))
    inner.container = "training-dict"
    inner.weights_key = key
    inner.metadata = {**_scalar_metadata(obj), **inner.metadata}
    return inner


def _from_module(module: nn.Module) -> Extracted:
    if isinstance(module, torch.jit.ScriptModule):
        return _from_script_module(module)
    tensors: dict[str, torch.Tensor] = {}
    buffers: set[str] = set()
    module_types: dict[str, str] = {}
    for prefix, sub in tolerant_named_modules(module):
        module_types[prefix] = class_name(sub)
        dot = f"{prefix}." if prefix else ""
        for name, param in _own_items(sub, "_parameters"):
            tensors.setdefault(dot + name, param)
        for name, buf in _own_items(sub, "_buffers"):
            tensors.setdefault(dot + name, buf)
            buffers.add(dot + name)
    return Extracted(tensors, "full-module", module=module, module_types=module_types, buffers=buffers)


def _from_script_module(module: torch.jit.ScriptModule) -> Extracted:
    """A TorchScript module loaded with --trust: its tables live in C++, read through its API."""
    tensors: dict[str, torch.Tensor] = {}
    buffers: set[str] = set()
    module_types: dict[str, str] = {}
    for prefix, sub in module.named_modules():
        module_types[prefix] = class_name(sub)
        dot = f"{prefix}." if prefix else ""
        for name, param in sub.named_parameters(recurse=False):
            tensors.setdefault(dot + name, param)
        for name, buf in sub.named_buffers(recurse=False):
            tensors.setdefault(dot + name, buf)
            buffers.add(dot + name)
    return Extracted(tensors, "full-module", module=module, module_types=module_types, buffers=buffers)


def _from_tp_state_dict(obj: Mapping[str, Any]) -> Extracted:
    # torch-pruning's tp.state_dict: {"full_state_dict": {module name: module.__dict__}, "attributions": ...}
    tensors: dict[str, torch.Tensor] = {}
    buffers: set[str] = set()
    module_types: dict[str, str] = {}
    for prefix, attrs in obj["full_state_dict"].items():
        if not isinstance(attrs, Mapping):
            continue
        dot = f"{prefix}." if prefix else ""
        for kind in ("_parameters", "_buffers"):
            for name, tensor in (attrs.get(kind) or {}).items():
                if isinstance(tensor, torch.Tensor):
                    tensors[dot + name] = tensor
                    if kind == "_buffers":
                        buffers.add(dot + name)
        for child, sub in (attrs.get("_modules") or {}).items():
            if isinstance(sub, nn.Module):
                module_types[dot + child] = class_name(sub)
    return Extracted(tensors, "tp-state-dict", module_types=module_types, buffers=buffers)


def tolerant_named_modules(module: nn.Module, prefix: str = "", seen: set[int] | None = None, depth: int = 0) -> Iterator[tuple[str, nn.Module]]:
    """named_modules() that reads `_modules` from the instance dict, so a module tree a
    crafted pickle left without its tables (or with cycles) is walked, never crashed on."""
    seen = set() if seen is None else seen
    if id(module) in seen or depth > _MAX_DEPTH:
        return
    seen.add(id(module))
    yield prefix, module
    children = module.__dict__.get("_modules")
    if not isinstance(children, dict):
        return
    for name, child in children.items():
        if isinstance(child, nn.Module):
            yield from tolerant_named_modules(child, f"{prefix}.{name}" if prefix else str(name), seen, depth + 1)


def _own_items(module: nn.Module, table: str) -> Iterator[tuple[str, torch.Tensor]]:
    # Read the tables directly: state_dict() would run hooks stored in the file.
    for name, value in (module.__dict__.get(table) or {}).items():
        if isinstance(value, torch.Tensor):
            yield str(name), value


def _walk(obj: Any, prefix: str, tensors: dict[str, torch.Tensor], types: dict[str, str], seen: set[int], depth: int) -> None:
    if isinstance(obj, torch.Tensor):
        tensors.setdefault(prefix.rstrip(".") or "tensor", obj)
        return
    if depth > _MAX_DEPTH or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, nn.Module) and _is_module_like(obj):
        inner = _from_module(obj)
        tensors.update({prefix + k: v for k, v in inner.tensors.items()})
        types.update({(prefix + k).rstrip("."): v for k, v in inner.module_types.items()})
        return
    if isinstance(obj, Placeholder):
        if "_placeholder_state" in obj.__dict__:  # an object the pickle built, not a function call
            types[prefix.rstrip(".")] = class_name(obj)
        for part in ("_placeholder_state", "_placeholder_args", "_placeholder_items"):
            _walk(obj.__dict__.get(part), prefix, tensors, types, seen, depth + 1)
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            _walk(v, f"{prefix}{k}.", tensors, types, seen, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _walk(v, f"{prefix}{i}.", tensors, types, seen, depth + 1)


def _holds_tensors(obj: Any) -> bool:
    found: dict[str, torch.Tensor] = {}
    _walk(obj, "", found, {}, set(), 0)
    return bool(found)


def _is_module_like(module: nn.Module) -> bool:
    return not isinstance(module, Placeholder) or module.is_module_like


def class_name(module: Any) -> str:
    if isinstance(module, Placeholder):
        return placeholder_target(module).rpartition(".")[2]
    original = getattr(module, "original_name", None)  # TorchScript modules
    return original if isinstance(original, str) else type(module).__name__


def _strip_prefixes(extracted: Extracted) -> Extracted:
    stripped = ""
    names = list(extracted.tensors)
    while names:
        prefix = next((p for p in _STRIPPABLE_PREFIXES if all(n.startswith(p) for n in names)), None)
        if prefix is None:
            break
        stripped += prefix
        names = [n[len(prefix):] for n in names]
    if not stripped:
        return extracted
    cut = len(stripped)
    extracted.tensors = {k[cut:]: v for k, v in extracted.tensors.items()}
    extracted.buffers = {k[cut:] for k in extracted.buffers}
    wrapper = stripped.rstrip(".")
    extracted.module_types = {
        ("" if k == wrapper else k[cut:]): v
        for k, v in extracted.module_types.items()
        if k.startswith(stripped) or k == wrapper
    }
    if extracted.module is not None:
        node: object = extracted.module
        for part in stripped.rstrip(".").split("."):
            children = getattr(node, "__dict__", {}).get("_modules")
            node = children.get(part) if isinstance(children, dict) else None
        extracted.module = node if isinstance(node, nn.Module) else None
    extracted.stripped_prefix = stripped
    return extracted


def find_masks(names: list[str]) -> dict[str, MaskPair]:
    """`x.weight_orig` + `x.weight_mask` pairs, keyed by the effective name `x.weight`."""
    present = set(names)
    masks: dict[str, MaskPair] = {}
    for name in names:
        if name.endswith("_orig") and name[: -len("_orig")] + "_mask" in present:
            base = name[: -len("_orig")]
            masks[base] = MaskPair(orig=name, mask=base + "_mask")
    return masks


def _scalar_metadata(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        return {}
    metadata: dict[str, Any] = {}
    other: list[str] = []
    for key, value in obj.items():
        if isinstance(value, (bool, int, float, str)) or value is None:
            if not isinstance(value, float) or value == value and abs(value) != float("inf"):
                metadata[str(key)] = value if not isinstance(value, str) else value[:200]
        elif str(key) not in WEIGHT_KEYS:
            other.append(str(key))
    if other:
        metadata["other_keys"] = other
    return metadata


def describe(obj: Any) -> str:
    """A few words on what an object is, for error messages."""
    if isinstance(obj, Mapping):
        keys = ", ".join(map(str, list(obj.keys())[:8]))
        return f"a dict with keys [{keys}{', …' if len(obj) > 8 else ''}]" if obj else "an empty dict"
    if isinstance(obj, Placeholder):
        return f"an object of class {placeholder_target(obj)}"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"a {type(obj).__name__}"
