"""HTML pages of CSV tables for the workflow report (longtail_seg/report_pages.py)."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from longtail_seg.report_pages import table_page, write_table_page


def _cells(page: str) -> list[list[str]]:
    """The text of each body row's cells."""
    body = page.split("<tbody>", 1)[1]
    return [re.findall(r"<td>(.*?)</td>", row, re.S) for row in body.split("</tr>") if "<td>" in row]


def test_table_page_shows_every_value_with_the_given_decimals():
    table = pd.DataFrame({"model": ["Representation learning", "+BGS retraining"], "AP": [12.34, 15.0],
                          "APr": [math.nan, 3.06]})
    page = table_page(table, "table1 (demo)", note="mask AP in %")
    assert _cells(page) == [["Representation learning", "12.3", "-"], ["+BGS retraining", "15.0", "3.1"]]
    assert "<h1>table1 (demo)</h1>" in page and "mask AP in %" in page
    assert re.findall(r"<th>(.*?)</th>", page) == ["model", "AP", "APr"]


def test_table_page_escapes_labels_and_titles():
    table = pd.DataFrame({"model": ["<script>alert(1)</script> & co"], "AP": [1.0]})
    page = table_page(table, "a <b> title", decimals=2)
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert "<h1>a &lt;b&gt; title</h1>" in page
    assert _cells(page)[0][1] == "1.00"


def test_write_table_page_names_an_unreadable_csv(tmp_path):
    empty = tmp_path / "table1.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="table1.csv: cannot read this table"):
        write_table_page(empty, tmp_path / "table1.html", "table1")
    assert not (tmp_path / "table1.html").exists()


def test_write_table_page_round_trips_the_csv(tmp_path):
    table = pd.DataFrame({"model": ["a", "b"], "AP": [1.25, 2.5]})
    table.to_csv(tmp_path / "t.csv", index=False)
    written = write_table_page(tmp_path / "t.csv", tmp_path / "t.html", "t", decimals=2)
    pd.testing.assert_frame_equal(written, table)
    assert _cells((tmp_path / "t.html").read_text()) == [["a", "1.25"], ["b", "2.50"]]


def test_an_empty_table_says_it_has_no_rows():
    page = table_page(pd.DataFrame(columns=["model", "count"]), "confusions")
    assert _cells(page) == [] and "This table has no rows." in page
    assert "no rows" not in table_page(pd.DataFrame({"model": ["a"], "count": [1]}), "confusions")
