"""Standalone HTML pages of CSV tables for the Snakemake report, which shows HTML and images inline but offers CSV
files only as downloads: the ablation tables and the error/confusion summaries become readable pages."""

from __future__ import annotations

import html
import os

import pandas as pd

from longtail_seg.io_utils import atomic_write_text

PAGE_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.2em; }
p.note { color: #555; font-size: 0.9em; max-width: 60em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; position: sticky; top: 0; }
td:first-child, th:first-child { text-align: left; }
tr:hover td { background: #fafae0; }
"""


def table_page(table: pd.DataFrame, title: str, note: str = "", decimals: int = 1) -> str:
    """An HTML page of ``table`` (numbers with ``decimals`` decimals, missing values as '-'), with a title and an
    optional note under it."""
    body = table.to_html(index=False, na_rep="-", float_format=lambda value: f"{value:.{decimals}f}", border=0,
                         escape=True)
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    if table.empty:  # a header alone reads as a rendering fault
        body += '\n<p class="note">This table has no rows.</p>'
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{PAGE_STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1>{note_html}\n{body}\n"
            "</body></html>\n")


def write_table_page(csv_path: str | os.PathLike, html_path: str | os.PathLike, title: str, note: str = "",
                     decimals: int = 1) -> pd.DataFrame:
    """Read a CSV table and write it as an HTML page (atomically); returns the table."""
    try:
        table = pd.read_csv(csv_path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ValueError(f"{csv_path}: cannot read this table ({error}); rerun the job that writes it") from None
    atomic_write_text(html_path, table_page(table, title, note, decimals))
    return table
