"""transformers models: the dense architecture a model folder's config.json describes.

Only transformers' own classes are used, never code from the folder: the config class
transformers registers for `model_type`, and the model class `architectures[0]` names when
transformers itself defines it (else the AutoModel class registered for that config). The
model is built with its parameters on the meta device — no memory, nothing initialised —
and its buffers on the CPU, so the non-persistent ones a forward needs (rotary `inv_freq`,
`position_ids`) are computed by the constructors exactly as transformers computes them.
Loading a checkpoint into it assigns the checkpoint's tensors (nothing is copied).

When the tensors do not fit the config, `fit_config` finds the config fields that would
make them fit: each integer field is doubled in turn to learn which tensor dimensions it
sets (and with which power), the checkpoint's dimensions are solved for the fields, and
the answer is verified by building the patched config and comparing every shape.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
import torch.nn as nn

from ..errors import InputError
from ..load.checkpoint import TensorStore
from ..load.isolation import BoundedRunFailed, ChildLimits, ChildRaised, isolation_available, run_bounded

__all__ = [
    "ConfigFit",
    "ConfigUnusable",
    "RenamedTensorStore",
    "available",
    "is_transformers_model",
    "dense_from_config",
    "config_shapes",
    "checkpoint_renaming",
    "fit_config",
    "apply_patch",
    "ignored_when_loading",
    "INSTALL_HINT",
]

INSTALL_HINT = "pip install 'prune-analyzer[transformers]'"
#: A config whose model takes longer than this to build (on meta!) is not a real one.
#: Building a model from config.json (meta parameters; buffers such as rotary tables on CPU).
_BUILD_LIMITS = ChildLimits(memory_bytes=2 << 30, cpu_seconds=60.0)
#: Integer config fields probed when the tensors do not fit the config.
_MAX_PROBES = 48
_MAX_FIELD_VALUE = 10**7


class ConfigUnusable(Exception):
    """config.json cannot be turned into a transformers model; the message says why (for a note)."""


def available() -> bool:
    """Whether transformers can be imported (the optional prune-analyzer[transformers] extra)."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def is_transformers_model(module: nn.Module) -> bool:
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(module, transformers.PreTrainedModel)


# -- building ---------------------------------------------------------------------------------


def dense_from_config(config: Mapping[str, Any], tensors: int | None = None) -> nn.Module:
    """The dense model of config.json: parameters on meta, buffers computed on the CPU, eval mode.

    tensors: how many tensors the checkpoint holds; a config asking for more layers than that
    is not this checkpoint's (and a crafted one would take ages to build)."""
    if tensors is not None:
        _check_layer_counts(config, tensors)
    return _build(config, buffers_on_meta=False).eval()


#: Fields that count layers (num_hidden_layers, n_layer, depths, decoder_layers), not thresholds like max_window_layers.
_LAYER_COUNT = re.compile(r"(num|n)_\w*layers?|depths?|(en|de)coder_layers")


def _check_layer_counts(config: Mapping[str, Any], tensors: int, depth: int = 0) -> None:
    for key, value in config.items():
        counts = value if isinstance(value, list) else [value]
        if _LAYER_COUNT.fullmatch(str(key)) and all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
            if sum(counts) > max(tensors, 1):
                raise ConfigUnusable(f"its {key} asks for more layers ({sum(counts)}) than the checkpoint has tensors ({tensors})")
        elif isinstance(value, Mapping) and depth < 2:
            _check_layer_counts(value, tensors, depth + 1)


def config_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every state-dict tensor's shape of the model config.json describes (built wholly on meta)."""
    return {k: tuple(v.shape) for k, v in _build(config, buffers_on_meta=True).state_dict().items()}


def _build(config: Mapping[str, Any], buffers_on_meta: bool) -> nn.Module:
    if not available():
        raise ConfigUnusable(f"transformers is not installed ({INSTALL_HINT})")
    # config.json comes from the folder: its sizes could ask for any allocation or spin
    # (hidden_size 10**9, a million positions). Building is first proved to fit in a bounded
    # child, never under a limit on this process.
    if isolation_available():
        try:
            run_bounded(lambda: _construct(config, buffers_on_meta) is not None, _BUILD_LIMITS)
        except ChildRaised as e:
            raise ConfigUnusable(" ".join(e.message.split())[:200] if e.type_name == "ConfigUnusable" else f"{e.type_name}: {_line(e)}") from e
        except BoundedRunFailed as e:
            raise ConfigUnusable(f"building its model ran past the bounds set for it ({_line(e)})") from e
    try:
        return _construct(config, buffers_on_meta)
    except MemoryError as e:
        raise ConfigUnusable("building its model needs more memory than is available") from e


def _construct(config: Mapping[str, Any], buffers_on_meta: bool) -> nn.Module:
    with _quiet(), _offline():
        config_object = _config_object(config)
        cls = _model_class(config, config_object)
        placement = torch.device("meta") if buffers_on_meta else _parameters_on_meta()
        try:
            with placement:
                return cls(config_object)
        except (ConfigUnusable, InputError):
            raise
        except Exception as e:  # transformers validates configs with any exception it likes
            raise ConfigUnusable(f"transformers cannot build {cls.__name__} from it ({type(e).__name__}: {_line(e)})") from e


def _config_object(config: Mapping[str, Any]) -> Any:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise ConfigUnusable("config.json names no model_type")
    try:
        config_class = CONFIG_MAPPING[model_type]
    except KeyError:
        raise ConfigUnusable(
            f"model_type {model_type!r} is not one of transformers' architectures (custom code, which is never run)"
        ) from None
    try:
        return config_class.from_dict(_without_downloads(config))
    except Exception as e:
        raise ConfigUnusable(f"transformers cannot read config.json as a {config_class.__name__} ({type(e).__name__}: {_line(e)})") from e


def _model_class(config: Mapping[str, Any], config_object: Any) -> type:
    """architectures[0] when transformers defines it for this config; else the AutoModel class."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    architectures = config.get("architectures")
    name = architectures[0] if isinstance(architectures, list) and architectures else None
    if isinstance(name, str) and re.fullmatch(r"[A-Z][A-Za-z0-9_]*", name):
        cls = getattr(transformers, name, None)
        if (
            isinstance(cls, type)
            and issubclass(cls, transformers.PreTrainedModel)
            and cls.__module__.startswith("transformers.")
            and isinstance(getattr(cls, "config_class", None), type)
            and isinstance(config_object, cls.config_class)
        ):
            return cls
    try:
        return MODEL_MAPPING[type(config_object)]
    except KeyError:
        raise ConfigUnusable(f"transformers has no model class for {type(config_object).__name__}") from None


class _parameters_on_meta(contextlib.ContextDecorator):
    """Parameters go to the meta device as modules register them; buffers stay where they
    are made (what accelerate calls init_empty_weights(include_buffers=False))."""

    def __enter__(self) -> None:
        self._original = original = nn.Module.register_parameter

        def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
            if param is not None and param.device.type != "meta":  # a tied parameter is already on meta: keep it
                param = type(param)(param.to("meta"), requires_grad=param.requires_grad)
            original(module, name, param)

        nn.Module.register_parameter = register  # type: ignore[method-assign]

    def __exit__(self, *exc: object) -> None:
        nn.Module.register_parameter = self._original  # type: ignore[method-assign]


def _without_downloads(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of config.json whose backbones are built empty: use_pretrained_backbone would
    fetch weights while the model is constructed (DETR-like models)."""
    copied = copy.deepcopy(dict(config))
    for node in [copied, *(v for v in copied.values() if isinstance(v, dict))]:
        if node.get("use_pretrained_backbone"):
            node["use_pretrained_backbone"] = False
    return copied


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """No network while a config is turned into a model: the Hub client in offline mode, and
    any socket connection refused (a config naming a backbone repo would otherwise be looked up)."""
    import socket

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError("no network access while building the model from config.json")

    hub = sys.modules.get("huggingface_hub.constants")
    saved = (socket.socket.connect, socket.socket.connect_ex, socket.create_connection)
    offline = getattr(hub, "HF_HUB_OFFLINE", None)
    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]
    if hub is not None:
        hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.create_connection = saved  # type: ignore[method-assign]
        if hub is not None:
            hub.HF_HUB_OFFLINE = offline


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers logs and warns while it builds; the report says what matters."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _line(error: BaseException) -> str:
    return " ".join(str(error).split())[:200]


# -- names as transformers loads them ---------------------------------------------------------


class RenamedTensorStore(TensorStore):
    """A store seen under other names (the names a model's state dict uses)."""

    def __init__(self, base: TensorStore, stored_name: Mapping[str, str]) -> None:
        self._base = base
        self._stored = dict(stored_name)  # new name -> name in the file
        self.may_share_storage = base.may_share_storage

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._base[self._stored[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._stored)

    def __len__(self) -> int:
        return len(self._stored)

    def meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        return self._base.meta(self._stored[name])


def checkpoint_renaming(model: nn.Module, names: list[str]) -> tuple[dict[str, str] | None, str | None]:
    """How transformers renames a checkpoint's tensors when it loads them into `model`
    (ViT's `encoder.layer.N.attention.attention.query` → `layers.N.attention.q_proj`).

    Returns (file name -> model name for the names that change, None) — empty when nothing
    is renamed — or (None, why) when transformers would also merge or split tensors (MoE
    experts), which a name-by-name comparison cannot follow."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:  # transformers 4 loads checkpoints under their own names
        return {}, None
    try:
        transforms = get_model_conversion_mapping(model)
    except Exception as e:
        return None, f"transformers' weight conversion for {type(model).__name__} could not be read ({_line(e)})"
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    renamed: dict[str, str] = {}
    for name in sorted(names):  # transformers renames in sorted order (grouped renames depend on it)
        new, converted = rename_source_key(name, renamings, converters)
        if converted is not None:
            return None, f"transformers merges or splits {type(model).__name__}'s tensors while loading ({name})"
        if new != name:
            renamed[name] = new
    return renamed, None


# -- which config fits the tensors -------------------------------------------------------------

Field = tuple[Any, ...]  # a path into config.json: ("hidden_size",), ("text_config", "hidden_size"), ("hidden_sizes", 0)


@dataclass
class ConfigFit:
    """How config.json relates to the tensors' shapes."""

    #: The tensors have exactly the shapes config.json gives.
    fits: bool
    #: config.json's changes that make every shape fit, as JSON (nested like the file); verified.
    patch: dict[str, Any] | None = None
    #: Another patch that fits the shapes as well (q_proj rows = heads × head_dim: fewer heads, or
    #: narrower heads); `patch` keeps head_dim, as torch-pruning's head pruning does.
    alternative: dict[str, Any] | None = None
    #: Dotted field -> (value in config.json, value the tensors need).
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    #: Dimensions whose width differs between layers: "tensor dim N (fields)" -> {width: [modules]}.
    per_layer: dict[str, dict[int, list[str]]] = field(default_factory=dict)
    #: Every tensor no larger than config.json's (what pruning leaves).
    narrower: bool = True
    #: The first tensor whose shape differs: (name, shape in the file, shape config.json gives).
    first_mismatch: tuple[str, tuple[int, ...], tuple[int, ...]] | None = None
    #: Why no patch was found, when none was.
    reason: str | None = None


def fit_config(config: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> ConfigFit:
    """Whether config.json gives the tensors' `shapes` (model names, tied names filled in), and if
    not, the config fields and values that do. Only tensors both have are compared: missing and
    unexpected ones are the generic check's (from_pretrained loads past them, with a warning)."""
    base = dict(config)
    reference = config_shapes(base)
    common = [k for k in reference if k in shapes and not k.endswith("num_batches_tracked")]
    mismatched = [k for k in common if tuple(shapes[k]) != reference[k]]
    if not mismatched:
        return ConfigFit(fits=True)
    first = (mismatched[0], tuple(shapes[mismatched[0]]), reference[mismatched[0]])
    narrower = all(len(shapes[k]) == len(reference[k]) and all(a <= b for a, b in zip(shapes[k], reference[k])) for k in mismatched)
    result = ConfigFit(fits=False, narrower=narrower, first_mismatch=first)
    held = {k: tuple(shapes[k]) for k in common}
    pinned = _pin_head_dim(base, reference)
    exponents = _exponents(pinned, reference)
    equations = _equations(reference, held, exponents)
    unexplained = [eq for eq in equations if not eq.powers and eq.ratio != 1]
    if unexplained:
        eq = unexplained[0]
        result.reason = f"{eq.tensor} dimension {eq.axis} is {eq.have} where config.json gives {eq.want}, and no config field sets it"
        return result
    per_layer = _per_layer_values(equations)
    if per_layer:
        result.per_layer = per_layer
        result.reason = "widths differ between layers"
        return result
    for values in _solutions(equations, pinned):
        patch = _verified_patch(base, pinned, values, held, set(reference))
        if patch is None or patch == result.patch:
            continue
        if result.patch is not None:
            result.alternative = patch  # shapes alone cannot tell these apart
            return result
        result.patch = patch
        result.changes = {_dotted(f): (_get(base, f, None), v) for f, v in _flatten(patch, base).items()}
    if result.patch is None:
        result.reason = "no setting of config.json's fields gives these shapes"
    return result


def apply_patch(config: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """config.json with `patch` merged in (nested objects merged, everything else replaced)."""
    merged = copy.deepcopy(dict(config))
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = apply_patch(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _pin_head_dim(config: dict[str, Any], reference: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """config with head_dim written out when the model derives it (hidden_size // heads), so that
    doubling hidden_size does not also double every head; unchanged when writing it changes anything."""
    if "head_dim" in config:
        return config
    try:
        config_object = _config_object(config)
        hidden, heads = getattr(config_object, "hidden_size", None), getattr(config_object, "num_attention_heads", None)
    except ConfigUnusable:
        return config
    if not (isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads == 0):
        return config
    pinned = {**config, "head_dim": hidden // heads}
    try:
        return pinned if config_shapes(pinned) == dict(reference) else config
    except ConfigUnusable:
        return config


def _fields(config: Mapping[str, Any], prefix: Field = (), depth: int = 0) -> list[Field]:
    """Integer fields (and integer list items) that can set a width; token ids never do."""
    fields: list[Field] = []
    for key, value in config.items():
        path = (*prefix, key)
        if "token_id" in str(key):
            continue
        if _is_width(value):
            fields.append(path)
        elif isinstance(value, list) and 0 < len(value) <= 8 and all(_is_width(v) for v in value):
            fields.extend((*path, i) for i in range(len(value)))
        elif isinstance(value, Mapping) and depth < 1:
            fields.extend(_fields(value, path, depth + 1))
    return fields


def _is_width(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_FIELD_VALUE


def _get(config: Mapping[str, Any], path: Field, default: Any = None) -> Any:
    node: Any = config
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return default
    return node


def _set(config: Mapping[str, Any], path: Field, value: Any) -> dict[str, Any]:
    result = copy.deepcopy(dict(config))
    node: Any = result
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return result


def _dotted(path: Field) -> str:
    return ".".join(str(p) for p in path)


#: (tensor, axis) -> {field: power}; None for a dimension that is not a power law in the field.
Exponents = dict[tuple[str, int], dict[Field, int | None]]


def _exponents(config: dict[str, Any], reference: Mapping[str, tuple[int, ...]]) -> Exponents:
    """Which tensor dimensions each field sets: double the field, see which dimensions scale by 2**power."""
    exponents: Exponents = {}
    for path in _fields(config)[:_MAX_PROBES]:
        try:
            probe = config_shapes(_set(config, path, 2 * _get(config, path)))
        except ConfigUnusable:
            continue  # a value transformers rejects: this field is not solved for
        for name, shape in reference.items():
            doubled = probe.get(name)
            if doubled is None or len(doubled) != len(shape):
                continue
            for axis, (old, new) in enumerate(zip(shape, doubled)):
                if old != new:
                    ratio = new / old if old else 0
                    power = round(math.log2(ratio)) if ratio > 0 else None
                    exact = power is not None and power != 0 and 2.0**power == ratio
                    exponents.setdefault((name, axis), {})[path] = power if exact else None
    return exponents


@dataclass
class _Equation:
    """One tensor dimension: have / want == product of (new / old) ** power over its fields."""

    tensor: str
    axis: int
    have: int
    want: int
    powers: dict[Field, int]
    #: Some field sets this dimension in a way that is not a power law (checked only by building).
    irregular: bool = False

    @property
    def ratio(self) -> Fraction:
        return Fraction(self.have, self.want)


def _equations(reference: Mapping[str, tuple[int, ...]], shapes: Mapping[str, tuple[int, ...]], exponents: Exponents) -> list[_Equation]:
    equations = []
    for name, want in reference.items():
        have = shapes.get(name)
        if have is None or len(have) != len(want):
            continue
        for axis, (h, w) in enumerate(zip(have, want)):
            powers = exponents.get((name, axis), {})
            regular = {f: p for f, p in powers.items() if p is not None}
            if w == 0:
                continue
            equations.append(_Equation(name, axis, int(h), int(w), regular, irregular=len(regular) < len(powers)))
    return equations


def _role(tensor: str) -> str:
    """A tensor's name with its layer numbers taken out: the same tensor in every layer."""
    return re.sub(r"(^|\.)\d+(?=\.|$)", r"\1#", tensor)


def _per_layer_values(equations: list[_Equation]) -> dict[str, dict[int, list[str]]]:
    """Dimensions that the same fields set, in the same tensor of every layer, but that the
    checkpoint scaled differently from layer to layer: tensor (layer numbers as #) and axis ->
    {width: [modules]}."""
    groups: dict[tuple[str, int, frozenset[tuple[Field, int]]], list[_Equation]] = {}
    for eq in equations:
        if eq.powers:
            groups.setdefault((_role(eq.tensor), eq.axis, frozenset(eq.powers.items())), []).append(eq)
    found: dict[str, dict[int, list[str]]] = {}
    for (role, axis, powers), members in groups.items():
        if len({eq.ratio for eq in members}) < 2:
            continue
        fields = ", ".join(sorted(_dotted(f) for f, _ in powers))
        widths: dict[int, list[str]] = {}
        for eq in members:
            widths.setdefault(eq.have, []).append(eq.tensor.rpartition(".")[0])
        found[f"{role} dim {axis} ({fields})"] = dict(sorted(widths.items()))
    return found


def _solve_one(old: Any, ratio: Fraction, power: int) -> int | None:
    """The integer v with (v / old) ** power == ratio, if there is one."""
    if not isinstance(old, int) or power == 0:
        return None
    target = ratio ** (1 / power) * old if power not in (1, -1) else (ratio * old if power == 1 else old / ratio)
    value = round(float(target))
    return value if value > 0 and Fraction(value, old) ** power == ratio else None


#: Fields held at their value first when products of fields cannot be told apart from shapes
#: alone (q_proj rows = heads × head_dim): torch-pruning keeps head_dim and removes heads.
_HOLD_FIRST = ("head_dim", "num_attention_heads", "num_key_value_heads")


def _solutions(equations: list[_Equation], config: Mapping[str, Any]) -> Iterator[dict[Field, int]]:
    """Field values that satisfy every regular equation; ambiguous products are resolved by
    holding one field at its value, head_dim first."""
    involved = sorted({f for eq in equations for f in eq.powers}, key=lambda f: (_hold_rank(f), _dotted(f)))
    yield from (s for s in [_propagate(equations, config, {})] if s is not None)
    for held in involved:
        solution = _propagate(equations, config, {held: _get(config, held)})
        if solution is not None:
            yield solution


def _hold_rank(path: Field) -> int:
    last = str(path[-1]) if not isinstance(path[-1], int) else str(path[-2])
    return _HOLD_FIRST.index(last) if last in _HOLD_FIRST else len(_HOLD_FIRST)


def _propagate(equations: list[_Equation], config: Mapping[str, Any], known: dict[Field, int]) -> dict[Field, int] | None:
    """Solve equations with one unknown field until none is left; None on a contradiction or
    when some field stays undetermined."""
    values = dict(known)
    progress = True
    while progress:
        progress = False
        for eq in equations:
            unknown = [f for f in eq.powers if f not in values]
            rest = Fraction(1)
            for f, p in eq.powers.items():
                if f in values:
                    rest *= Fraction(values[f], _get(config, f)) ** p
            if not unknown:
                if rest != eq.ratio:
                    return None
                continue
            if len(unknown) == 1:
                value = _solve_one(_get(config, unknown[0]), eq.ratio / rest, eq.powers[unknown[0]])
                if value is None:
                    return None
                values[unknown[0]] = value
                progress = True
    if any(f not in values for eq in equations for f in eq.powers):
        return None
    return values


def _verified_patch(
    config: dict[str, Any], pinned: dict[str, Any], values: dict[Field, int], held: Mapping[str, tuple[int, ...]], keys: set[str]
) -> dict[str, Any] | None:
    """The smallest patch to config.json (changed fields only; head_dim only when needed) whose
    model has the same tensors as config.json's and exactly the shapes the checkpoint holds."""
    changed = {f: v for f, v in values.items() if v != _get(pinned, f)}
    if not changed:
        return None
    candidates = [changed]
    if "head_dim" in pinned and "head_dim" not in config and ("head_dim",) not in changed:
        candidates.append({**changed, ("head_dim",): pinned["head_dim"]})
    for candidate in candidates:
        patched = config
        for path, value in candidate.items():
            patched = _set(patched, path, value)
        try:
            built = config_shapes(patched)
        except ConfigUnusable:
            continue
        if set(built) == keys and all(built[k] == v for k, v in held.items()):
            order = {key: i for i, key in enumerate(config)}
            return _nested(dict(sorted(candidate.items(), key=lambda item: order.get(item[0][0], len(order)))), patched)
    return None


def ignored_when_loading(model: nn.Module, names: list[str]) -> list[str]:
    """Checkpoint tensors transformers drops when it loads `model`: buffers the model computes
    itself (non-persistent: position_ids, rotary inv_freq that older versions saved), and the
    names its class declares ignorable (_keys_to_ignore_on_load_unexpected)."""
    computed = {
        f"{module_name}.{buffer}" if module_name else buffer
        for module_name, module in model.named_modules()
        for buffer in getattr(module, "_non_persistent_buffers_set", ())
    }
    patterns = [p for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []) if isinstance(p, str)]
    # The patterns only ever apply to tensors the model does not expect (GPT-2's "attn.bias"
    # also matches every attn.c_attn.bias, which the model needs).
    expected = set(model.state_dict(keep_vars=True))
    return [n for n in names if n in computed or (n not in expected and any(re.search(p, n) for p in patterns))]


def _nested(changes: dict[Field, int], patched: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON patch: top-level fields, sub-config objects with their changed fields, whole lists."""
    patch: dict[str, Any] = {}
    for path in changes:
        if isinstance(path[-1], int):
            path = path[:-1]  # a list item: the patch replaces the list
        node = patch
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = copy.deepcopy(_get(patched, path))
    return patch


def _flatten(patch: Mapping[str, Any], config: Mapping[str, Any], prefix: Field = ()) -> dict[Field, Any]:
    flat: dict[Field, Any] = {}
    for key, value in patch.items():
        path = (*prefix, key)
        if isinstance(value, Mapping) and isinstance(_get(config, path), Mapping):
            flat.update(_flatten(value, config, path))
        else:
            flat[path] = value
    return flat
