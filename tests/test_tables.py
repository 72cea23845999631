"""maft.report.tables: one table, three renderers that show the same cells; escaping; the derived numbers."""

from __future__ import annotations

import re
from html import unescape
from html.parser import HTMLParser

import pytest
from markdown_it import MarkdownIt
from rich.console import Console
from rich.text import Text

from maft.evaluation.metrics import Accuracy
from maft.report.tables import (
    BEST_NOTE,
    Column,
    Table,
    acc,
    at,
    best_iteration,
    count,
    html,
    markdown,
    num,
    pct,
    rich_table,
    secs,
)

NASTY = [
    "a | b",  # a pipe splits a Markdown row
    "<b>bold?</b> & <script>x</script>",  # raw HTML
    "*not em* _nor this_ `code` ~~struck~~ [link](http://x) \\ back",  # Markdown syntax
    "[bold]rich markup[/bold]",  # rich markup
    "star_no_rationalization",  # an underscore inside a word is left alone
    "72.0 ± 5.0 (iter 2)",
]


class Grids(HTMLParser):
    """Every <table> of an HTML text as rows of cell text, with the <h2> before it and each cell's class."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.classes: list[list[list[str | None]]] = []
        self.heading, self.cell, self.text = "", None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "h2":
            self.text = ""
        elif tag == "table":
            self.tables.append((self.heading, []))
            self.classes.append([])
        elif tag == "tr":
            self.tables[-1][1].append([])
            self.classes[-1].append([])
        elif tag in ("td", "th"):
            self.cell = ""
            self.classes[-1][-1].append(dict(attrs).get("class") or dict(attrs).get("style"))

    def handle_endtag(self, tag):
        if tag == "h2":
            self.heading, self.text = self.text, None
        elif tag in ("td", "th"):
            self.tables[-1][1][-1].append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data
        if self.text is not None:
            self.text += data


MD = MarkdownIt("commonmark").enable(["table", "strikethrough"])  # CommonMark + GitHub's tables and ~~


def markdown_grids(text: str) -> Grids:
    """Markdown read by a CommonMark + GFM-tables parser, as :class:`Grids`."""
    return Grids(MD.render(text))


def rich_grid(table) -> list[list[str]]:
    columns = [[c.header, *c.cells] for c in table.columns]
    return [[cell.plain if isinstance(cell, Text) else str(cell) for cell in row] for row in zip(*columns)]


def example() -> Table:
    return Table(
        "A <title> | with *stars*",
        ["name", "value", Column("text", "left")],
        [["row 1", "0.5000", NASTY[0]], *([f"row {i + 2}", str(i), n] for i, n in enumerate(NASTY[1:]))],
        notes=["A note with <html> and | a pipe.", BEST_NOTE],
        footer=["total", "1,234", ""],
        id="example",
    )


def test_the_three_renderers_show_the_same_cells():
    table = example()
    md, page, console = markdown(table), html(table), rich_table(table)
    [(md_title, md_grid)] = markdown_grids(md).tables
    [(html_title, html_grid)] = Grids(page).tables
    assert md_grid == html_grid == rich_grid(console) == table.cells()
    assert md_title == html_title == console.title.plain == table.title
    assert md.startswith("## A &lt;title&gt; \\| with \\*stars\\*\n")
    md_paragraphs = [unescape(p) for p in re.findall(r"<p>(.*?)</p>", MD.render(md), re.DOTALL)]
    html_paragraphs = [unescape(p) for p in re.findall(r'<p class="note">(.*?)</p>', page, re.DOTALL)]
    assert md_paragraphs == html_paragraphs == table.notes  # as typed, in all three
    assert console.caption.plain == " ".join(table.notes)
    assert BEST_NOTE.startswith("*Best") and "\\*Best" in md  # the footnote mark, read as text


def test_alignment_and_footer():
    table = example()
    md = markdown(table)
    assert "|---|---:|---|" in md  # first and "text" left, "value" right
    assert md.rstrip().split("\n")[10] == "| **total** | **1,234** |  |"
    grids = markdown_grids(md)
    assert [c for c in grids.classes[0][1]] == [None, "text-align:right", None]
    page = Grids(html(table))
    assert page.classes[0][1] == ["l", None, "l"]
    assert '<tfoot><tr><td class="l">total</td><td>1,234</td>' in html(table)
    console = rich_table(table)
    assert [c.justify for c in console.columns] == ["left", "right", "left"]
    assert console.rows[-1].style == "bold" and console.rows[-2].end_section


def test_nothing_is_read_as_markup():
    table = example()
    md_html = MD.render(markdown(table))
    for tag in ("<b>", "<script>", "<em>", "<code>", "<s>", "<a ", "<html>", "<title>", "<strong>bold"):
        assert tag not in md_html
    assert md_html.count("<strong>") == 2  # the footer's two non-empty cells
    assert "star_no_rationalization" in markdown(table)  # not escaped: GFM does not emphasise inside a word
    page = html(table)
    assert "<b>" not in page and "<script>" not in page and "&lt;script&gt;" in page
    out = Console(width=300, record=True, color_system=None)
    out.print(rich_table(table))
    assert "[bold]rich markup[/bold]" in out.export_text()


def test_a_newline_in_a_cell_keeps_the_markdown_row_on_one_line():
    table = Table("t", ["a", "b"], [["x", "two\nlines"]])
    assert "| x | two lines |" in markdown(table)
    assert markdown_grids(markdown(table)).tables[0][1][1] == ["x", "two lines"]


def test_an_empty_table_says_so_in_every_renderer():
    table = Table("Nothing here", ["a", "b"], [], notes=["n"], empty="No rows were recorded.")
    assert "|" not in markdown(table) and "No rows were recorded." in markdown(table)
    assert "<table" not in html(table) and "<p>No rows were recorded.</p>" in html(table)
    assert "No rows were recorded." in rich_table(table).caption.plain


def test_rows_are_checked():
    with pytest.raises(ValueError, match="a row of 1 cells for 2 columns"):
        Table("t", ["a", "b"], [["x"]])
    with pytest.raises(TypeError, match="formatted strings"):
        Table("t", ["a", "b"], [["x", 0.5]])


def a(mean: float) -> Accuracy:
    return Accuracy(mean=mean, se=0.0125, n=40)


def test_derived_numbers():
    assert acc(a(0.725)) == "72.5 ± 1.2" == str(a(0.725)) and acc(None) == "-"
    assert at(a(0.5), 3) == "50.0 ± 1.2 (iter 3)"
    assert pct(0.25) == "25.0" and count(1234567) == "1,234,567" and secs(89.6) == "90" and secs(3.25, 1) == "3.2"
    assert num(0.00034) == "0.0003" and num(-0.00004) == "0.0000" and num(-0.0034) == "-0.0034" and num(None) == "-"
    # the highest mean, iteration 0 included, the earliest on a tie
    assert best_iteration([a(0.5), a(0.7), a(0.6), a(0.7)]) == 1
    assert best_iteration([a(0.8), a(0.7)]) == 0
    with pytest.raises(ValueError):
        best_iteration([])
