"""Seed replicates of an ablation table: each cell's mean and standard deviation over the seeds, and each step's
paired change against the previous row, so that a step's gain can be read against seed noise."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import pandas as pd

from longtail_seg.io_utils import atomic_path, atomic_write_text

# One record per (table row, metric) in the replicate summary; then one column per seed (seed_0, seed_1, ...).
SUMMARY_COLUMNS = ["step", "model", "metric", "n", "mean", "sd",
                   "change_n", "change_mean", "change_sd", "change_same_sign"]


def replicate_summary(tables: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """Summarise one ablation table (build_table's layout: a ``model`` label column, then metric columns) run with
    several seeds (``{seed: table}``), one record per row and metric: ``n`` seeds with a value, their ``mean`` and
    ``sd`` (ddof=1; NaN with fewer than two seeds), and from the second row on the paired change against the
    previous row over the seeds that have both values: ``change_n``, ``change_mean``, ``change_sd`` and
    ``change_same_sign`` (in how many of those seeds the change has the sign of ``change_mean``). A missing cell
    (NaN) is left out of that cell's statistics only. Then each seed's own value (``seed_<N>``)."""
    seeds = list(tables)
    if not seeds:
        raise ValueError("replicate_summary: no seeds (an empty mapping of seed -> table)")
    labels, metrics = _check_same_layout(tables)
    values = np.stack([tables[seed][metrics].to_numpy(dtype=float) for seed in seeds])  # seed x row x metric
    records = []
    for step, label in enumerate(labels):
        for column, metric in enumerate(metrics):
            cell = values[:, step, column]
            change = cell - values[:, step - 1, column] if step > 0 else np.full(len(seeds), np.nan)
            record = {"step": step, "model": label, "metric": metric, **_mean_sd(cell), **_change_stats(change)}
            record.update({f"seed_{seed}": value for seed, value in zip(seeds, cell)})
            records.append(record)
    return pd.DataFrame.from_records(records, columns=[*SUMMARY_COLUMNS, *(f"seed_{seed}" for seed in seeds)])


def _check_same_layout(tables: Mapping[int, pd.DataFrame]) -> tuple[list[str], list[str]]:
    """The row labels and metric columns, which every seed's table must share (else ValueError naming the seed)."""
    first_seed, first = next(iter(tables.items()))
    labels, columns = first["model"].tolist(), list(first.columns)
    for seed, table in tables.items():
        if table["model"].tolist() != labels or list(table.columns) != columns:
            raise ValueError(f"replicate_summary: the table of seed {seed} has rows {table['model'].tolist()} and "
                             f"columns {list(table.columns)}, but the table of seed {first_seed} has rows {labels} "
                             f"and columns {columns}; every seed must run the same table")
    return labels, [c for c in columns if c != "model"]


def _mean_sd(values: np.ndarray) -> dict[str, float | int]:
    """``n``, ``mean`` and ``sd`` (ddof=1) of the non-NaN values; NaN where there are too few."""
    present = values[~np.isnan(values)]
    return {"n": len(present), "mean": float(present.mean()) if len(present) else np.nan,
            "sd": float(present.std(ddof=1)) if len(present) > 1 else np.nan}


def _change_stats(changes: np.ndarray) -> dict[str, float | int]:
    """The paired changes' ``change_n``, ``change_mean``, ``change_sd`` and ``change_same_sign``."""
    stats = _mean_sd(changes)
    present = changes[~np.isnan(changes)]
    same_sign = int(np.sum(np.sign(present) == np.sign(stats["mean"]))) if len(present) else 0
    return {"change_n": stats["n"], "change_mean": stats["mean"], "change_sd": stats["sd"],
            "change_same_sign": same_sign}


def replicate_markdown(summary: pd.DataFrame, seeds: list[int]) -> str:
    """A GitHub-markdown table of ``replicate_summary``: each row's cells as mean ± sd, and under each row after the
    first a "change" row: mean ± sd of the paired change, (k/n) = k of n seeds with the sign of the mean."""
    metrics = list(dict.fromkeys(summary["metric"]))
    lines = [f"Mean ± sd (ddof=1) over {len(seeds)} seeds ({', '.join(map(str, seeds))}). Rows \"Δ vs previous\": "
             "the paired change against the row above, mean ± sd over the seeds, (k/n): in k of n seeds the change "
             "has the sign of the mean. sd n/a: fewer than two seeds; (n=N): a cell with N seeds only.",
             "",
             "| model | " + " | ".join(metrics) + " |",
             "|---|" + "---:|" * len(metrics)]
    for step, records in summary.groupby("step", sort=True):
        records = records.set_index("metric").loc[metrics]
        cells = [_value_cell(r.n, r.mean, r.sd, len(seeds)) for r in records.itertuples()]
        lines.append(f"| {records['model'].iloc[0]} | " + " | ".join(cells) + " |")
        if step > 0:
            cells = [_change_cell(r.change_n, r.change_mean, r.change_sd, r.change_same_sign)
                     for r in records.itertuples()]
            lines.append("| Δ vs previous | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _value_cell(n: int, mean: float, sd: float, seeds: int) -> str:
    if n == 0:
        return "n/a"
    text = f"{mean:.1f} ± " + ("sd n/a" if n < 2 else f"{sd:.1f}")
    return text if n == seeds else f"{text} (n={n})"


def _change_cell(n: int, mean: float, sd: float, same_sign: int) -> str:
    if n == 0:
        return "n/a"
    return f"{mean:+.1f} ± " + ("sd n/a" if n < 2 else f"{sd:.1f}") + f" ({same_sign}/{n})"


def write_replicate_table(summary: pd.DataFrame, seeds: list[int], csv_path: str | os.PathLike,
                          md_path: str | os.PathLike) -> None:
    """Write the replicate summary as CSV (every statistic, full precision) and markdown, atomically."""
    with atomic_path(csv_path) as tmp:
        summary.to_csv(tmp, index=False)
    atomic_write_text(md_path, replicate_markdown(summary, seeds))
