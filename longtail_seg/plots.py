"""Figures: the long-tail distribution of a dataset (and, later, ablation plots)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from longtail_seg.io_utils import atomic_path  # noqa: E402

GROUP_COLOURS = {"r": "#d62728", "c": "#ff7f0e", "f": "#1f77b4"}
GROUP_NAMES = {"r": "rare", "c": "common", "f": "frequent"}


def plot_long_tail(categories: pd.DataFrame, path: str | os.PathLike) -> None:
    """Bar plot of per-category training instance counts, sorted, log scale, coloured by LVIS group."""
    ordered = categories.sort_values("instance_count", ascending=False).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for group, colour in GROUP_COLOURS.items():
        rows = ordered[ordered["frequency"] == group]
        ax.bar(rows.index, rows["instance_count"].clip(lower=0.8), width=1.0, color=colour,
               label=f"{GROUP_NAMES[group]} ({len(rows)})")
    ax.set_yscale("log")
    ax.set_xlabel("category (sorted by training instances)")
    ax.set_ylabel("training instances")
    ax.legend()
    ax.set_title("Long-tail distribution of the training split")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
