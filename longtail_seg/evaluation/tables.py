"""Ablation tables (the report's Tables 1-3, the methods table) assembled from cached metrics.json files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from longtail_seg.io_utils import atomic_path, atomic_write_text, load_json_file

TABLE_METRICS = ("AP", "APr", "APc", "APf")
# The evaluation protocols' metric suffixes (evaluation/protocols.py), in column order: standard AP, AP-fixed,
# boundary AP, boundary AP-fixed. A table shows a variant's columns when any of its rows has them.
PROTOCOL_SUFFIXES = ("", "_fixed", "_boundary", "_fixed_boundary")
# What to do about a broken metrics.json (the error names the file).
REWRITE_METRICS = ("delete it and rerun the `evaluate` job that writes it (`snakemake --cores all` rebuilds a "
                   "missing file; by hand: workflow_scripts/evaluate.py)")


def read_metrics_file(path: str | os.PathLike) -> dict:
    """A metrics.json of workflow_scripts/evaluate.py; a missing, truncated or malformed one raises ValueError naming
    the file and the fix (the table scripts exit with it)."""
    if not Path(path).is_file():
        raise ValueError(f"metrics file {path} does not exist; run the `evaluate` job first")
    metrics = load_json_file(path, "metrics file", REWRITE_METRICS)
    iou_types = [t for t in ("segm", "bbox") if isinstance(metrics, dict) and t in metrics]
    if not iou_types or not all(isinstance(metrics[t], dict) for t in iou_types):
        raise ValueError(f"{path} is not a metrics file of workflow_scripts/evaluate.py (a JSON object with 'segm' "
                         f"and/or 'bbox' metrics); {REWRITE_METRICS}")
    return metrics


def build_table(rows: Sequence[dict], metrics: Sequence[dict], decimals: int | None = 1) -> pd.DataFrame:
    """One row per ablation step: mask metrics as AP,APr,APc,APf and box metrics as bbox_AP,...; values in percent,
    rounded to ``decimals`` (None: unrounded, for the seed replicates' statistics).

    Rows evaluated under another protocol add its variants after the standard ones (mask AP_fixed, ...,
    AP_boundary, ..., AP_fixed_boundary, ..., then box bbox_AP_fixed, ...); a row without a variant shows nan there.
    """
    if len(rows) != len(metrics):
        raise ValueError(f"{len(rows)} table rows but {len(metrics)} metrics files")
    columns = [(iou_type, prefix, name + suffix)
               for iou_type, prefix in (("segm", ""), ("bbox", "bbox_"))
               for suffix in PROTOCOL_SUFFIXES
               if suffix == "" or any(f"AP{suffix}" in metric.get(iou_type, {}) for metric in metrics)
               for name in TABLE_METRICS]
    records = []
    for row, metric in zip(rows, metrics):
        record = {"model": row["label"]}
        for iou_type, prefix, name in columns:
            value = metric.get(iou_type, {}).get(name)  # None: no ground truth of that group, or not evaluated
            record[prefix + name] = float("nan") if value is None else _rounded(float(value), decimals)
        records.append(record)
    return pd.DataFrame.from_records(records, columns=["model", *(prefix + name for _, prefix, name in columns)])


def _rounded(value: float, decimals: int | None) -> float:
    return value if decimals is None else round(value, decimals)


def table_to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-markdown table, numbers with one decimal like the report."""
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" if c == "model" else "---:" for c in table.columns) + "|"
    lines = [header, rule]
    for _, row in table.iterrows():
        cells = [str(v) if isinstance(v, str) else f"{v:.1f}" for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, csv_path: str | os.PathLike, md_path: str | os.PathLike) -> None:
    """Write the table as CSV and markdown, atomically."""
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    atomic_write_text(md_path, table_to_markdown(table))
