"""Tables that keep their key column at any width, and code that is never wrapped.

A table is described once (`TableSpec`: columns, rows, which column names the row) and
drawn in the first layout that fits the width it is given: the wide layout, then narrower
variants (shorter numbers, fewer columns), then the key column folded onto several lines,
and finally a stacked layout (one block per row) that fits any width. Nothing is ever
cut: Rich squeezing a table that does not fit is what dropped the checkpoint names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

__all__ = ["Column", "TableSpec", "Fitted", "CodeBlock", "KEY_FOLD_WIDTHS"]

#: The key column is folded to these widths, in turn, before the layout turns to stacked blocks.
KEY_FOLD_WIDTHS = (24, 16)

Cell = str | Text


@dataclass(frozen=True)
class Column:
    header: str
    justify: str = "left"
    #: The column that names the row (checkpoint, module): never cut; folded if it must.
    key: bool = False
    #: Free text that may wrap onto several lines.
    wrap: bool = False


@dataclass
class TableSpec:
    columns: list[Column]
    rows: list[list[Cell]]
    title: str | None = None
    caption: str | None = None
    #: Style of each row's key in the stacked layout.
    key_style: str = "bold"
    notes: list[str] = field(default_factory=list)

    @property
    def key_index(self) -> int:
        return next((i for i, c in enumerate(self.columns) if c.key), 0)


def _width(cell: Cell) -> int:
    text = cell.plain if isinstance(cell, Text) else cell
    return max((cell_len(line) for line in text.split("\n")), default=0)


def _table(spec: TableSpec, key_width: int) -> Table:
    table = Table(
        box=box.SIMPLE_HEAD, title=spec.title, title_justify="left", title_style="bold",
        caption=spec.caption, caption_justify="left", expand=False, pad_edge=False,
    )
    for i, column in enumerate(spec.columns):
        widest = max([cell_len(column.header)] + [_width(row[i]) for row in spec.rows])
        if column.key:
            table.add_column(column.header, justify=column.justify, min_width=min(key_width, widest), overflow="fold")  # type: ignore[arg-type]
        elif column.wrap:
            table.add_column(column.header, justify=column.justify, overflow="fold")  # type: ignore[arg-type]
        else:
            table.add_column(column.header, justify=column.justify, no_wrap=True, min_width=widest)  # type: ignore[arg-type]
    for row in spec.rows:
        table.add_row(*row)
    return table


def _needed(spec: TableSpec, table: Table, key_width: int) -> int:
    """The width the table needs to draw every cell whole (the key folded to `key_width`).
    Rich's own measurement cannot say it: it counts a folded name as one long word."""
    total = table._extra_width  # box edges
    for i, column in enumerate(spec.columns):
        widest = max([cell_len(column.header)] + [_width(row[i]) for row in spec.rows])
        if column.key:
            width = min(key_width, widest)
        elif column.wrap:
            words = [w for row in spec.rows for w in (row[i].plain if isinstance(row[i], Text) else row[i]).split()]
            width = max([cell_len(column.header.split()[0])] + [cell_len(w) for w in words])
        else:
            width = widest
        total += width + table._get_padding_width(i)
    return total


def _stacked(spec: TableSpec) -> Text:
    """One block per row: the key on its own line, then `header value` pairs that wrap."""
    out = Text()
    if spec.title:
        out.append(spec.title + "\n", style="bold")
    key = spec.key_index
    for row in spec.rows:
        out.append_text(row[key] if isinstance(row[key], Text) else Text(str(row[key]), style=spec.key_style))
        out.append("\n")
        pairs = Text("  ")
        first = True
        for i, column in enumerate(spec.columns):
            value = row[i]
            plain = value.plain if isinstance(value, Text) else value
            if i == key or not plain.strip():
                continue
            if not first:
                pairs.append(" · ", style="dim")
            first = False
            pairs.append(f"{column.header} ", style="dim")
            if isinstance(value, Text):
                pairs.append_text(Text(", ").join(value.split("\n")))
            else:
                pairs.append(", ".join(value.split("\n")))
        out.append_text(pairs)
        out.append("\n")
    if spec.caption:
        out.append(spec.caption, style="dim")
    out.rstrip()
    return out


class Fitted:
    """The first of `specs` (widest first) that fits without cutting a cell; stacked when none does."""

    def __init__(self, *specs: TableSpec) -> None:
        assert specs, "at least one layout"
        self.specs = specs

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        for fold in (None, *KEY_FOLD_WIDTHS):
            for spec in self.specs:
                key_width = fold or max((_width(r[spec.key_index]) for r in spec.rows), default=0)
                table = _table(spec, key_width)
                if _needed(spec, table, key_width) <= width:
                    yield table
                    return
        yield _stacked(self.specs[0])  # the widest spec has every column and the full keys

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(1, options.max_width)


class CodeBlock:
    """Python code at the left margin, highlighted, never wrapped: a line wider than the
    console is cropped with an ellipsis, and a dim line says the JSON report keeps it whole.
    (Wrapped code pasted back is a SyntaxError; cropped code says that it is cropped.)"""

    def __init__(self, code: str) -> None:
        self.code = code.expandtabs(4).rstrip("\n")

    def cropped_lines(self, width: int) -> int:
        return sum(1 for line in self.code.split("\n") if cell_len(line) > width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        text = Syntax(self.code, "python", theme="ansi_dark", background_color="default").highlight(self.code)
        text.rstrip()
        text.no_wrap = True
        text.overflow = "ellipsis"
        yield text
        cropped = self.cropped_lines(width)
        if cropped:
            lines = f"{cropped} line{'s' if cropped != 1 else ''}"
            yield Text(f"({lines} cropped to {width} columns; the JSON report (--json) has the whole code)", style="dim italic")

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(1, options.max_width)
