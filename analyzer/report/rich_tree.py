"""The module tree: where pruning happened, at a glance.

Each layer shows its type, a bar of channels kept against the dense reference, its
weight sparsity and zero pattern; containers add up what is below them. Only what has
something to say is drawn: layers with zeros or masks, widths unlike the rest of the
model, modules a finding names. The rest is one line at the end (`--all-layers` draws
everything); a model with nothing to note at all is one line.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from rich.console import RenderableType
from rich.text import Text
from rich.tree import Tree

from .model import LayerRow

__all__ = ["module_tree", "retention_bar", "SMALL_MODEL_ROWS"]

_BAR_CELLS = 10
#: Models with at most this many layers are drawn whole: folding them saves nothing.
SMALL_MODEL_ROWS = 8
#: A layer whose retention differs from the model's by more than this is worth a line.
_RETENTION_APART = 0.1


@dataclass
class _Node:
    name: str
    row: LayerRow | None = None
    children: dict[str, _Node] = field(default_factory=dict)

    def rows(self) -> list[LayerRow]:
        own = [self.row] if self.row is not None else []
        return own + [r for child in self.children.values() for r in child.rows()]


def module_tree(rows: list[LayerRow], all_layers: bool = False, named: set[str] = frozenset()) -> RenderableType:
    """`named`: modules the findings point at; they are always drawn."""
    root = _Node("")
    for row in rows:
        node = root
        for part in row.name.split("."):
            node = node.children.setdefault(part, _Node(part))
        node.row = row
    overall = _retention(rows)
    fold = not all_layers and len(rows) > SMALL_MODEL_ROWS

    def shown(row: LayerRow) -> bool:
        return not fold or row.name in named or _notable(row, overall)

    if fold and not any(shown(r) for r in rows):
        return _one_line(rows, overall)
    tree = Tree(Text("modules", style="bold"), guide_style="dim")
    for child in root.children.values():
        _add(tree, child, shown)
    hidden = [r for r in rows if not shown(r)]
    if hidden:
        kept = _retention(hidden)
        like = f", widths like the rest ({kept:.0%} kept)" if kept is not None else ""
        tree.add(Text(f"… {len(hidden)} more layer{'s' if len(hidden) != 1 else ''}: no zeros or masks{like} (--all-layers shows them)", style="dim"))
    return tree


def _add(parent: Tree, node: _Node, shown: object) -> None:
    rows = node.rows()
    if not any(shown(r) for r in rows):  # type: ignore[operator]
        return
    if node.row is not None and not node.children:
        parent.add(_leaf_label(node.name, node.row))
        return
    branch = parent.add(_container_label(node.name, rows))
    for child in node.children.values():
        _add(branch, child, shown)


def _one_line(rows: list[LayerRow], overall: float | None) -> Text:
    types = Counter(r.type for r in rows)
    listed = ", ".join(f"{n} {t}" for t, n in types.most_common(4)) + (", …" if len(types) > 4 else "")
    text = Text.assemble(("modules ", "bold"), f"{len(rows)} layers, no zeros or masks")
    if overall is not None:
        text.append(", every width ")
        text.append_text(retention_bar(overall))
        text.append(f" {overall:.0%} of reference")
    text.append(f"\n  {listed} (--all-layers draws each)", style="dim")
    return text


def _notable(row: LayerRow, around: float | None) -> bool:
    """Worth a line of its own: zeros, masks, or a retention unlike the model's."""
    if row.masked or row.pattern not in (None, "dense"):
        return True
    ratio = _retention([row])
    return ratio is not None and around is not None and abs(ratio - around) > _RETENTION_APART


def _retention(rows: list[LayerRow]) -> float | None:
    counted = _width_rows(rows)
    original = sum(r.reference_out or 0 for r in counted)
    return sum(r.out_channels or 0 for r in counted) / original if original else None


def _width_rows(rows: list[LayerRow]) -> list[LayerRow]:
    """Conv and linear layers with a reference width (norms repeat their conv's width)."""
    return [r for r in rows if r.out_channels is not None and r.reference_out is not None and "Norm" not in r.type]


def _leaf_label(name: str, row: LayerRow) -> Text:
    text = Text.assemble((name, "bold"), " ", (row.type, "dim"), " ")
    text.append_text(_widths(row.out_channels, row.reference_out))
    if row.weight_sparsity:
        text.append(f"  {row.weight_sparsity:.0%} zero", style="yellow" if row.weight_sparsity >= 0.05 else "dim")
    if row.pattern not in (None, "dense"):
        text.append(f"  {row.pattern}", style="magenta")
    if row.masked:
        text.append("  masked", style="yellow")
    return text


def _container_label(name: str, rows: list[LayerRow]) -> Text:
    widths = _width_rows(rows)
    text = Text.assemble((name, "bold"))
    if widths:
        text.append(" ")
        text.append_text(_widths(sum(r.out_channels or 0 for r in widths), sum(r.reference_out or 0 for r in widths)))
    notable = sum(1 for r in rows if r.masked or r.pattern not in (None, "dense"))
    if notable:
        text.append(f"  {notable} with zeros or masks", style="magenta")
    return text


def _widths(kept: int | None, original: int | None) -> Text:
    if kept is None:
        return Text("")
    if original is None or original == 0:
        return Text(f"{kept} ch", style="dim")
    ratio = kept / original
    return Text.assemble(retention_bar(ratio), f" {kept}/{original} ({ratio:.0%})")


def retention_bar(ratio: float, cells: int = _BAR_CELLS) -> Text:
    filled = max(0, min(cells, round(ratio * cells)))
    style = "green" if ratio >= 0.9 else "yellow" if ratio >= 0.5 else "red"
    return Text.assemble(("█" * filled, style), ("░" * (cells - filled), "dim"))
