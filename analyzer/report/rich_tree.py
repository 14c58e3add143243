"""The module tree: where pruning happened, at a glance.

Each layer shows its type, a bar of channels kept against the dense reference, its
weight sparsity and zero pattern; containers add up what is below them. Large models
fold away the layers with nothing to note.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.text import Text
from rich.tree import Tree

from .model import LayerRow

__all__ = ["module_tree", "retention_bar"]

_BAR_CELLS = 10
_MAX_ROWS = 60


@dataclass
class _Node:
    name: str
    row: LayerRow | None = None
    children: dict[str, _Node] = field(default_factory=dict)

    def rows(self) -> list[LayerRow]:
        own = [self.row] if self.row is not None else []
        return own + [r for child in self.children.values() for r in child.rows()]


def module_tree(rows: list[LayerRow], all_layers: bool = False, named: set[str] = frozenset()) -> Tree:
    """`named`: modules the findings name; they are always shown."""
    root = _Node("")
    for row in rows:
        node = root
        for part in row.name.split("."):
            node = node.children.setdefault(part, _Node(part))
        node.row = row
    fold = not all_layers and len(rows) > _MAX_ROWS
    tree = Tree(Text("modules", style="bold"), guide_style="dim")
    for child in root.children.values():
        _add(tree, child, depth=1, fold=fold, named=named)
    return tree


def _add(parent: Tree, node: _Node, depth: int, fold: bool, named: set[str]) -> None:
    rows = node.rows()
    if node.row is not None and not node.children:
        parent.add(_leaf_label(node.name, node.row))
        return
    ratio = _retention(rows)
    if fold and not any(_notable(r, ratio) or r.name in named for r in rows):
        label = _container_label(node.name, rows)
        label.append(f"  {len(rows)} layer{'s' if len(rows) != 1 else ''}, nothing to note", style="dim")
        parent.add(label)
        return
    hidden = 0
    branch = parent.add(_container_label(node.name, rows))
    shown = 0
    for child in node.children.values():
        child_rows = child.rows()
        if fold and depth >= 2 and not any(_notable(r, ratio) or r.name in named for r in child_rows):
            hidden += len(child_rows)
            continue
        _add(branch, child, depth + 1, fold, named)
        shown += 1
    if hidden:
        like = f", kept like the rest ({ratio:.0%})" if ratio is not None else ""
        more = " more" if shown else ""
        branch.add(Text(f"… {hidden}{more} layer{'s' if hidden != 1 else ''} with no zeros or masks{like}", style="dim"))


def _notable(row: LayerRow, around: float | None) -> bool:
    """Worth a line of its own: zeros, masks, or a retention unlike its container's."""
    if row.masked or row.pattern not in (None, "dense"):
        return True
    ratio = _retention([row])
    return ratio is not None and around is not None and abs(ratio - around) > 0.1


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
