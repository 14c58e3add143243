"""Detection heads: which convs they are, how many values per anchor, how many anchors.

A head conv's output channels are anchors-per-location × values-per-anchor (K): class 2,
box 4, landmarks 10 for RetinaFace; na × (5 + nc) for YOLO. K comes from the view that
reshapes the head's output to (N, -1, K) when the model runs, from the dense reference,
or from RetinaFace's head names; the expected anchor count from the heads' own
`num_anchors` attribute or from the reference's widths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.nn as nn

from ..load.extract import tolerant_named_modules
from .graph import VIEW_OPS, GraphTrace
from ..tensors.layers import Layer

__all__ = ["Head", "find_heads", "KNOWN_VALUES_PER_ANCHOR"]

_HEAD_NAME = re.compile(r"head|detect", re.IGNORECASE)
#: Values per anchor of heads known by name (Pytorch_Retinaface).
KNOWN_VALUES_PER_ANCHOR = {"ClassHead": 2, "BboxHead": 4, "LandmarkHead": 10}
#: Anchors per location of the Pytorch_Retinaface configurations (mobilenet0.25, resnet50).
RETINAFACE_ANCHORS = 2


@dataclass
class Head:
    #: The conv whose output is the head's output.
    conv: str
    #: Heads of one kind share a family ("BboxHead"); one member per pyramid level.
    family: str
    width: int
    values_per_anchor: int | None = None
    #: Where values_per_anchor came from: view, reference, name.
    values_source: str | None = None
    expected_anchors: int | None = None
    #: Where expected_anchors came from: attribute, reference.
    expected_source: str | None = None
    reference_width: int | None = None
    #: Output positions (H*W) of the head on the example input, when the model ran.
    positions: int | None = None

    @property
    def anchors(self) -> float | None:
        if not self.values_per_anchor:
            return None
        return self.width / self.values_per_anchor


def find_heads(
    layers: list[Layer],
    module_types: dict[str, str],
    reference_shapes: dict[str, tuple[int, ...]] | None,
    module: nn.Module | None,
    graph: GraphTrace | None,
    conv_outputs: dict[str, tuple[int, ...]],
) -> list[Head]:
    """Head convs of the model, with what is known about their anchors."""
    by_name = {layer.name: layer for layer in layers}
    convs = _head_convs(layers, module_types, graph)
    views = _view_values(graph)
    # The checkpoint's own module tree may be one a crafted pickle left without its tables.
    modules = dict(tolerant_named_modules(module)) if module is not None else {}
    heads = []
    for name in convs:
        layer = by_name[name]
        if layer.shape is None:
            continue
        head = Head(conv=name, family=_family(name, module_types), width=layer.shape[0])
        if reference_shapes and layer.weight in reference_shapes:
            head.reference_width = reference_shapes[layer.weight][0]
        if name in views:
            head.values_per_anchor, head.values_source = views[name], "view"
        elif head.family.rpartition(".")[2] in KNOWN_VALUES_PER_ANCHOR:
            head.values_per_anchor, head.values_source = KNOWN_VALUES_PER_ANCHOR[head.family.rpartition(".")[2]], "name"
        attribute = _num_anchors(modules, name)
        if attribute:
            head.expected_anchors, head.expected_source = attribute, "attribute"
        elif head.reference_width and head.values_per_anchor and head.reference_width % head.values_per_anchor == 0:
            head.expected_anchors, head.expected_source = head.reference_width // head.values_per_anchor, "reference"
        elif head.values_source == "name":
            head.expected_anchors, head.expected_source = RETINAFACE_ANCHORS, "retinaface-layout"
        shape = conv_outputs.get(name)
        if shape is not None and len(shape) == 4:
            head.positions = shape[2] * shape[3]
        heads.append(head)
    return heads


def _head_convs(layers: list[Layer], module_types: dict[str, str], graph: GraphTrace | None) -> list[str]:
    """Convs inside modules named or typed like heads, the last conv of each head's level;
    plus convs reshaped to (N, -1, K)."""
    head_modules = {name for name, kind in module_types.items() if _HEAD_NAME.search(kind)}
    convs = [layer for layer in layers if layer.is_conv]
    owned = {layer.name: o for layer in convs if (o := _head_owner(layer.name, head_modules, module_types))}
    levels: dict[str, list[Layer]] = {}
    for layer in convs:
        if layer.name in owned:
            levels.setdefault(owned[layer.name][1], []).append(layer)
    parallel = _parallel_levels(levels)
    last_of: dict[str, str] = {}  # the head's last conv, and each parallel level's
    for layer in convs:
        if layer.name in owned:
            head, level = owned[layer.name]
            last_of[head] = layer.name
            if level in parallel:
                last_of[level] = layer.name
    outputs = set(last_of.values())
    found = dict.fromkeys(layer.name for layer in convs if layer.name in outputs)
    names = {layer.name for layer in convs}
    for producer in _view_values(graph):
        if producer in names:  # not the model's input or an op of its own
            found.setdefault(producer)
    return list(found)


def _parallel_levels(levels: dict[str, list[Layer]]) -> set[str]:
    """The levels that are parallel branches (one per pyramid level: RetinaFace's ClassHead.N,
    YOLO's Detect.m.N), not the steps of a tower a head stacks in a list (mmdetection's
    cls_convs.N, each feeding the next): two or more entries of one list, none of which
    gives its width to the next."""
    lists: dict[str, list[str]] = {}
    for level in levels:
        parent, _, index = level.rpartition(".")
        if index.isdigit():
            lists.setdefault(parent, []).append(level)
    parallel: set[str] = set()
    for entries in lists.values():
        entries.sort(key=lambda level: int(level.rpartition(".")[2]))
        feeds = any(
            levels[this][-1].out_width() == levels[following][0].in_width()
            for this, following in zip(entries, entries[1:])
        )
        if len(entries) > 1 and not feeds:
            parallel.update(entries)
    return parallel


def _head_owner(name: str, head_modules: set[str], module_types: dict[str, str]) -> tuple[str, str] | None:
    """The head (a module typed or named like one) that holds the layer `name`, and the
    pyramid level of it that does, so that every level's last conv is a head conv."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:i]) in head_modules:
            return ".".join(parts[:i]), ".".join(parts[: _level_end(parts, i, module_types)])
    for i, part in enumerate(parts[:-1]):
        if _HEAD_NAME.search(part):
            return ".".join(parts[: i + 1]), ".".join(parts[: _level_end(parts, i + 1, module_types)])
    return None


def _level_end(parts: list[str], start: int, module_types: dict[str, str]) -> int:
    """Where the head's level ends: after the first index below the head that picks one of
    parallel branches (a ModuleList: RetinaFace's ClassHead.1, YOLO's Detect.m.2 and
    Detect.cv2.0), never a step of a Sequential; without module types, an index that is
    not the layer itself."""
    for j in range(start, len(parts)):
        if not parts[j].isdigit():
            continue
        container = module_types.get(".".join(parts[:j]))
        if container == "ModuleList" or (container is None and j < len(parts) - 1):
            return j + 1
    return start


def _family(name: str, module_types: dict[str, str]) -> str:
    """The conv's name with its level index dropped: ClassHead.1.conv1x1 -> ClassHead."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit() and i > 0 and (_HEAD_NAME.search(parts[i - 1]) or _HEAD_NAME.search(module_types.get(".".join(parts[:i]), ""))):
            return ".".join(parts[:i])
    return name.rpartition(".")[0] or name


def _view_values(graph: GraphTrace | None) -> dict[str, int]:
    """conv name -> K, for convs whose output is reshaped to (N, -1, K), directly or after
    views of their own (YOLOv5: view(N, anchors, K, H, W), permute, then view(N, -1, K))."""
    values: dict[str, int] = {}
    if graph is None:
        return values
    records = list(graph.records) + ([graph.failure] if graph.failure else [])
    views = {f"<{r.op} {r.node}>": r for r in records if r.op in VIEW_OPS}
    for record in records:
        shape = record.view_shape
        if record.op in VIEW_OPS and shape and len(shape) == 3 and shape[1] == -1 and record.producers:
            producer, seen = record.producers[0], set()
            while producer in views and producer not in seen and views[producer].producers:
                seen.add(producer)
                producer = views[producer].producers[0]
            values.setdefault(producer, shape[2])
    return values


def _num_anchors(modules: dict[str, nn.Module], conv: str) -> int | None:
    parts = conv.split(".")
    for i in range(len(parts) - 1, 0, -1):
        value = getattr(modules.get(".".join(parts[:i])), "num_anchors", None)
        if isinstance(value, int) and value > 0:
            return value
    return None
