"""Tables: one model of a table of results, three renderers (the terminal, Markdown, HTML), and the one
definition of every derived number a table shows.

A :class:`Table` is a title, columns (a header and an alignment each: the first column, the row's label,
left-aligned unless said otherwise, the others right-aligned), rows of cells, an optional footer row (a
total), notes (paragraphs under the table, footnotes included) and ``empty`` (what to say when there are no
rows). A cell is a string, formatted once when the table is built by the functions below; a renderer never
formats a number. So the console, summary.md, comparison.md and the HTML report show the same text in the
same cell. Every row has one cell per column, every cell is a ``str`` (both checked when the table is made).

Renderers, each showing the title, the header, every cell and every note:

  rich_table(t)  a rich ``Table``: the title above, the notes as its caption, the footer bold after a line.
                 Text is shown as typed: rich markup in a cell (``[bold]``) is not interpreted.
  markdown(t)    GitHub-flavoured Markdown: ``## title``, a pipe table with alignment markers (``---:``:
                 right), a bold footer row, the notes as paragraphs. A cell reads back as typed: ``\\ | * `
                 ~ [ ]`` and an ``_`` at a word's edge are backslash-escaped (an ``_`` inside a word, as in
                 ``star_no_rationalization``, emphasises nothing and is left alone), ``& < >`` become entities
                 (no raw HTML), and a newline becomes a space (a pipe-table row is one line).
  html(t)        ``<h2>title</h2>``, ``<table class="metrics" id=...>`` with ``thead``, ``tbody`` and a ``tfoot``
                 for the footer, then ``<p class="note">`` per note; all text HTML-escaped. A left-aligned cell
                 has ``class="l"``; the report's stylesheet right-aligns the others.

A table without rows renders as its title and ``empty`` in all three, never as an empty grid.

Derived numbers: each is defined, and formatted, only here.

  acc(a)             accuracy "mean ± SE" in percent, one decimal each (``Accuracy.__str__``); over several
                     seeds an interval "mean [low, high]" (``maft.evaluation.statistics.Interval.__str__``)
  delta(d)           a paired difference in percentage points with its interval, signed: "+3.3 [-1.7, +8.3]",
                     followed by :data:`EXCLUDES_ZERO` ("†") when the interval excludes zero; a value that
                     rounds to zero is "+0.0"
  pct(x)             a share in [0, 1] as a percentage, one decimal
  num(x)             a diversity measure (a share, a dissimilarity or nats per token), four decimals; a value
                     that rounds to zero is "0.0000", never "-0.0000"
  count(n)           an integer with thousands separators
  secs(x)            wall time in whole seconds (``digits`` decimals where asked)
  best_iteration(a)  the iteration 0..L with the highest mean held-out accuracy, the earliest on a tie (the
                     cheaper one). It is picked on the held-out problems whose accuracy it then reports, so it
                     is descriptive (how high the curve got), not a model chosen in advance, and its accuracy
                     is optimistic; the final iteration is the unselected result. :data:`BEST_NOTE` says so
                     under every table that shows it.
  at(a, l)           an accuracy (or interval) with its iteration: "72.0 ± 5.0 (iter 2)"

A table that shows a best iteration marks its header "best %*" and carries :data:`BEST_NOTE`.

A missing value is :data:`MISSING` ("-").
"""

from __future__ import annotations

import html as _html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import rich.table

    from maft.evaluation.metrics import Accuracy
    from maft.evaluation.statistics import Interval

MISSING = "-"
EXCLUDES_ZERO = "†"
BEST_NOTE = (
    "*Best: the iteration with the highest held-out accuracy (the earliest on a tie), picked on the same "
    "held-out problems it reports, so it is descriptive and optimistic, not a model selected in advance; "
    "the final iteration is the unselected result."
)

Align = Literal["left", "right"]


@dataclass(frozen=True)
class Column:
    header: str
    align: Align = "right"


@dataclass
class Table:
    """A titled grid of preformatted cells; see the module docstring for what each renderer guarantees."""

    title: str
    columns: Sequence[Column | str]  # a plain header: left-aligned if it is the first column, else right
    rows: Sequence[Sequence[str]]
    notes: Sequence[str] = ()
    footer: Sequence[str] | None = None  # a last, emphasised row (a total)
    empty: str = "Nothing to show."  # said instead of the grid when there are no rows
    id: str = ""  # the HTML table's id

    def __post_init__(self) -> None:
        self.columns = self.specs
        self.rows = [list(r) for r in self.rows]
        self.notes = list(self.notes)
        self.footer = list(self.footer) if self.footer is not None else None
        for row in [*self.rows, *([self.footer] if self.footer is not None else [])]:
            if len(row) != len(self.columns):
                raise ValueError(
                    f"table {self.title!r}: a row of {len(row)} cells for {len(self.columns)} columns: {row}"
                )
            bad = [c for c in row if not isinstance(c, str)]
            if bad:
                raise TypeError(f"table {self.title!r}: cells are formatted strings, got {bad!r}")

    @property
    def specs(self) -> list[Column]:
        """The columns, each a :class:`Column` (a plain header gets its default alignment)."""
        return [
            c if isinstance(c, Column) else Column(c, "left" if i == 0 else "right") for i, c in enumerate(self.columns)
        ]

    @property
    def header(self) -> list[str]:
        return [c.header for c in self.specs]

    def cells(self) -> list[list[str]]:
        """The header, the rows and the footer, as text: what every renderer shows."""
        return [self.header, *map(list, self.rows), *([list(self.footer)] if self.footer is not None else [])]


# -- renderers ------------------------------------------------------------------------------------------------
def rich_table(table: Table, title: str | None = None) -> rich.table.Table:
    """The console's table; ``title`` replaces the table's own."""
    from rich.table import Table as RichTable
    from rich.text import Text

    caption = " ".join([*([] if table.rows else [table.empty]), *table.notes])
    out = RichTable(
        title=Text(table.title if title is None else title),
        caption=Text(caption) if caption else None,
        caption_justify="left",
    )
    for c in table.specs:
        out.add_column(Text(c.header), justify=c.align)
    for row in table.rows:
        out.add_row(*map(Text, row))
    if table.footer is not None:
        out.add_section()
        out.add_row(*map(Text, table.footer), style="bold")
    return out


_MD_SPECIAL = re.compile(r"[\\|*`~\[\]]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")


def md_escape(text: str) -> str:
    """Text that Markdown (GFM, also inside a pipe table) shows as typed, on one line."""
    text = _html.escape(text, quote=False).replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), text)


def markdown(table: Table, level: int = 2) -> str:
    """The table as Markdown: a heading, the pipe table (or ``empty``) and the notes, ending in a newline."""
    lines = [f"{'#' * level} {md_escape(table.title)}", ""]
    if table.rows:
        lines.append("| " + " | ".join(md_escape(h) for h in table.header) + " |")
        lines.append("|" + "".join("---:|" if c.align == "right" else "---|" for c in table.specs))
        lines += ["| " + " | ".join(map(md_escape, row)) + " |" for row in table.rows]
        if table.footer is not None:
            lines.append("| " + " | ".join(f"**{md_escape(c)}**" if c else "" for c in table.footer) + " |")
    else:
        lines.append(md_escape(table.empty))
    for note in table.notes:  # one line: a wrapped line could start like a list item ("- ")
        lines += ["", md_escape(note)]
    return "\n".join(lines) + "\n"


def html(table: Table, level: int = 2) -> str:
    """The table as an HTML fragment: a heading, the ``<table>`` (or ``empty``) and the notes."""
    e = _html.escape
    out = f"<h{level}>{e(table.title)}</h{level}>\n"
    if not table.rows:
        out += f"<p>{e(table.empty)}</p>\n"
    else:

        def row(cells: Sequence[str], tag: str = "td") -> str:
            left = ' class="l"'
            return (
                "<tr>"
                + "".join(
                    f"<{tag}{left if c.align == 'left' else ''}>{e(cell)}</{tag}>"
                    for c, cell in zip(table.specs, cells)
                )
                + "</tr>\n"
            )

        id = f' id="{e(table.id)}"' if table.id else ""
        out += f'<table class="metrics"{id}><thead>{row(table.header, "th").rstrip()}</thead>\n<tbody>\n'
        out += "".join(row(r) for r in table.rows) + "</tbody>"
        if table.footer is not None:
            out += f"\n<tfoot>{row(table.footer).rstrip()}</tfoot>"
        out += "</table>\n"
    out += "".join(f'<p class="note">{e(note)}</p>\n' for note in table.notes)
    return out


# -- derived numbers --------------------------------------------------------------------------------------------
def acc(a: Accuracy | Interval | None) -> str:
    return MISSING if a is None else str(a)


def delta(d: Interval | None) -> str:
    if d is None:
        return MISSING

    def signed(x: float) -> str:
        return f"{0.0 if abs(100 * x) < 0.05 else 100 * x:+.1f}"

    mark = f" {EXCLUDES_ZERO}" if d.excludes_zero else ""
    return f"{signed(d.mean)} [{signed(d.low)}, {signed(d.high)}]{mark}"


def pct(x: float | None) -> str:
    return MISSING if x is None else f"{100 * x:.1f}"


def num(x: float | None, digits: int = 4) -> str:
    if x is None:
        return MISSING
    return f"{0.0 if abs(x) < 0.5 * 10**-digits else x:.{digits}f}"


def count(n: int | None) -> str:
    return MISSING if n is None else f"{n:,}"


def secs(x: float | None, digits: int = 0) -> str:
    return MISSING if x is None else f"{x:.{digits}f}"


def best_iteration(accuracy: Sequence[Accuracy] | Sequence[Interval]) -> int:
    """The iteration with the highest mean accuracy, the earliest on a tie (descriptive: see BEST_NOTE)."""
    if not accuracy:
        raise ValueError("best iteration of no iterations")
    return max(range(len(accuracy)), key=lambda it: (accuracy[it].mean, -it))


def at(a: Accuracy | Interval, iteration: int) -> str:
    return f"{acc(a)} (iter {iteration})"
