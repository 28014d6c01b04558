"""Figures: the long-tail distribution of a dataset; per-category AP against training instances, per-category AP
changes of the ablation steps, the TIDE error breakdown of each table row, and training loss/LR curves."""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402

from longtail_seg.io_utils import atomic_path  # noqa: E402

GROUP_COLOURS = {"r": "#d62728", "c": "#ff7f0e", "f": "#1f77b4"}
GROUP_NAMES = {"r": "rare", "c": "common", "f": "frequent"}


def plot_long_tail(categories: pd.DataFrame, path: str | os.PathLike) -> None:
    """Bar plot of per-category training instance counts, sorted, log scale, coloured by LVIS group."""
    ordered = categories.sort_values("instance_count", ascending=False).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    handles = []
    for group, colour in GROUP_COLOURS.items():
        rows = ordered[ordered["frequency"] == group]
        ax.bar(rows.index, rows["instance_count"].clip(lower=0.5), width=1.0, color=colour)
        # legend patches drawn here: an empty group's bar container would take the default colour
        handles.append(plt.Rectangle((0, 0), 1, 1, color=colour, label=f"{GROUP_NAMES[group]} ({len(rows)})"))
    ax.set_yscale("log")
    _count_ticks(ax, ordered["instance_count"], axis="y")
    ax.set_xlabel("category (sorted by training instances)")
    ax.set_ylabel("training instances\n(log scale; 0 drawn at 0.5)")
    ax.legend(handles=handles, title="LVIS group (categories)", fontsize=9, title_fontsize=9)
    ax.set_title("Long-tail distribution of the training split")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_category_ap(table: pd.DataFrame, path: str | os.PathLike, title: str) -> None:
    """Per-category AP (mask and box panels) against training instances, log x-axis, coloured by LVIS group; each
    group's mean AP as a dashed line. Categories without AP (no val ground truth) are left out."""
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.4), sharey=True)
    for ax, (column, name) in zip(axes, (("AP_segm", "mask AP"), ("AP_bbox", "box AP"))):
        rows = table[table[column].notna()]
        for group, colour in GROUP_COLOURS.items():
            part = rows[rows["frequency"] == group]
            if part.empty:
                continue
            mean = part[column].mean()
            ax.scatter(part["instance_count"].clip(lower=0.5), part[column], s=14, color=colour, alpha=0.75,
                       label=f"{GROUP_NAMES[group]} ({len(part)}, mean {mean:.1f})", linewidths=0)
            ax.axhline(mean, color=colour, linestyle="--", linewidth=1)
        ax.set_xscale("log")
        _count_ticks(ax, rows["instance_count"])
        ax.set_xlabel("training instances of the category (log scale; 0 drawn at 0.5)")
        ax.set_ylabel(f"{name} (%)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        # in a band above AP 100 that no point reaches: anywhere else it hides points at LVIS's 1203 categories
        ax.set_ylim(-3, 122)
        ax.set_yticks(range(0, 101, 20))
        ax.legend(fontsize=7.5, loc="upper center", ncol=3, columnspacing=0.8, handletextpad=0.2)
    fig.suptitle(title, fontsize=10)
    _save_figure(fig, path)


def _count_ticks(ax: plt.Axes, counts: pd.Series, axis: str = "x") -> None:
    """Log-axis ticks (``axis`` x or y) at 1, 2, 5, 10, 20, 50, ... (1, 10, 100, ... from 1000 on) up to the
    largest count, as plain numbers, and at 0.5 labelled 0 when a category has no training instance; no minor
    labels (they overlap)."""
    largest = max(float(counts.max()) if len(counts) else 1.0, 1.0)
    steps = (1, 2, 5) if largest < 1000 else (1,)  # over more than three decades 1, 2, 5 labels run together
    ticks = [m * 10**e for e in range(int(math.log10(largest)) + 1) for m in steps if m * 10**e <= largest * 1.5]
    labels = [f"{t:,}" for t in ticks]
    if len(counts) and (counts < 1).any():
        ticks, labels = [0.5, *ticks], ["0", *labels]
    getattr(ax, f"set_{axis}ticks")(ticks, labels)
    getattr(ax, f"{axis}axis").set_minor_formatter(NullFormatter())


def plot_ap_changes(changes: pd.DataFrame, path: str | os.PathLike, top: int, iou_name: str = "mask AP") -> None:
    """One panel per ablation step (two columns): its ``top`` largest per-category gains and losses against the
    previous row, named, bars coloured by LVIS group; rare categories' names in bold."""

    steps = list(dict.fromkeys(changes["step"]))
    if not steps:
        raise ValueError("plot_ap_changes needs a table of two rows or more")
    columns = min(2, len(steps))
    rows = math.ceil(len(steps) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.8 * columns, rows * (1.3 + 0.2 * 2 * top)), squeeze=False)
    for ax in axes.flat[len(steps):]:
        ax.axis("off")
    for ax, step in zip(axes.flat, steps):
        _draw_step_changes(ax, changes[changes["step"] == step], step, top, iou_name)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in GROUP_COLOURS.values()]
    fig.legend(handles, [f"{name} (bold)" if g == "r" else name for g, name in GROUP_NAMES.items()],
               loc="lower center", ncol=3, fontsize=9, frameon=False)
    _save_figure(fig, path, rect=(0, 0.03, 1, 1))


def _draw_step_changes(ax: plt.Axes, rows: pd.DataFrame, step: str, top: int, iou_name: str) -> None:
    from longtail_seg.evaluation.per_category import top_changes

    gains, losses = top_changes(rows, step, top)
    shown = pd.concat([gains, losses.iloc[::-1]])
    rare = rows.loc[rows["frequency"] == "r", "change"].dropna()
    rare_text = f"rare mean {rare.mean():+.1f}, {int((rare > 0).sum())} up / {int((rare < 0).sum())} down" \
        if len(rare) else "no rare category"
    ax.set_title(f"{step}  (vs {rows['previous'].iloc[0]})\n{rare_text}", fontsize=9)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"{iou_name} change (points)")
    if shown.empty:
        ax.set_yticks([])
        ax.set_xticks([])  # an axis of 0..1 with no bar reads as a scale
        ax.text(0.5, 0.5, "no category changed", transform=ax.transAxes, ha="center", va="center")
        return
    positions = list(range(len(shown)))[::-1]
    ax.barh(positions, shown["change"], color=[GROUP_COLOURS.get(f, "grey") for f in shown["frequency"]])
    ax.set_yticks(positions)
    ax.set_yticklabels(shown["name"].astype(str).tolist(), fontsize=8)
    for label, frequency in zip(ax.get_yticklabels(), shown["frequency"]):
        if frequency == "r":
            label.set_fontweight("bold")
    ax.set_ylim(-0.7, len(shown) - 0.3)
    ax.grid(axis="x", alpha=0.3)


def plot_error_breakdown(errors: pd.DataFrame, path: str | os.PathLike, iou_name: str = "mask") -> None:
    """Per table row, the AP points (at IoU 0.5) each TIDE error type costs: grouped horizontal bars."""
    from longtail_seg.evaluation.per_category import ERROR_NAMES, ERROR_TYPES

    fig, ax = plt.subplots(figsize=(9.5, 1.2 + 0.8 * len(errors)))
    height = 0.8 / len(ERROR_TYPES)
    colours = plt.get_cmap("tab10")(range(len(ERROR_TYPES)))
    for index, (key, colour) in enumerate(zip(ERROR_TYPES, colours)):
        positions = [row * 1.0 + index * height for row in range(len(errors))]
        ax.barh(positions, errors[f"dAP_{key}"], height=height, color=colour, label=ERROR_NAMES[key])
    ax.set_yticks([row + 0.4 - height / 2 for row in range(len(errors))])
    ax.set_yticklabels([f"{m}\n(AP50 {ap:.1f})" for m, ap in zip(errors["model"], errors["AP50"])], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{iou_name} AP50 points gained if this error were fixed (TIDE)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="error type", title_fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    _save_figure(fig, path)


def _save_figure(fig: plt.Figure, path: str | os.PathLike, rect: tuple[float, ...] = (0, 0, 1, 1)) -> None:
    fig.tight_layout(rect=rect)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_calibration(table: pd.DataFrame, path: str | os.PathLike, threshold: float | None, title: str) -> None:
    """Reliability curves: per group, the true-positive fraction of each score bin against its mean score (marker
    area by detection count), the diagonal of perfect calibration and the pseudo-label ``threshold``."""
    colours = {"all": "black", **GROUP_COLOURS}
    names = {"all": "all", **GROUP_NAMES}
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfectly calibrated")
    for group, rows in table.groupby("group", sort=False):
        rows = rows[rows["count"] > 0]
        if rows.empty:
            continue
        ax.plot(rows["avg_confidence"], rows["avg_accuracy"], color=colours.get(group, "grey"), linewidth=1.2,
                marker="o", markersize=3, label=f"{names.get(group, group)} (ECE {rows['ece'].iloc[0]:.3f}, "
                f"{int(rows['count'].sum())} dets)")
        ax.scatter(rows["avg_confidence"], rows["avg_accuracy"], s=8 + 120 * rows["count"] / rows["count"].max(),
                   color=colours.get(group, "grey"), alpha=0.35, linewidths=0)
    if threshold is not None:
        ax.axvline(threshold, color="purple", linestyle="--", linewidth=1, label=f"pseudo-label threshold {threshold}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("detection score (bin mean)")
    ax.set_ylabel("fraction of true positives (IoU >= 0.5)")
    ax.set_title(f"Score calibration: {title}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    _save_figure(fig, path)


def plot_training_curves(metrics: pd.DataFrame, path: str | os.PathLike, title: str) -> pd.DataFrame:
    """Training losses (left, total loss bold, terms dashed) and learning rate (right) against iteration, from a
    training run's metrics.csv. Returns the series as drawn (read back from the plotted lines), one column each, by
    iteration."""
    losses = [c for c in metrics.columns if c == "loss" or c.startswith("loss_")]
    fig, (loss_ax, lr_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    if metrics.empty:
        for ax in (loss_ax, lr_ax):
            ax.text(0.5, 0.5, "no logged iteration (log_period longer than the run)", transform=ax.transAxes,
                    ha="center", va="center", fontsize=9)
    # the total first, thick, and each term dashed over it: a term equal to the total (retraining's classifier loss)
    # stays visible
    for column in sorted(losses, key=lambda name: name != "loss"):
        total = column == "loss"
        loss_ax.plot(metrics["iteration"], metrics[column], label="total loss" if total else column,
                     color="black" if total else None, linewidth=2.5 if total else 1.2,
                     linestyle="-" if total else "--", marker="o", markersize=3 if total else 2.5)
    lr_ax.plot(metrics["iteration"], metrics["lr"], color="tab:purple", label="lr", marker="o", markersize=2.5)
    loss_ax.set_xlabel("iteration")
    loss_ax.set_ylabel("loss (mean over the log window)")
    loss_ax.set_title("training losses", fontsize=10)
    lr_ax.set_xlabel("iteration")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_title("learning rate schedule", fontsize=10)
    lr_ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))  # 0.0002, not an offset 1e-3
    for ax in (loss_ax, lr_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    drawn = _drawn_series([loss_ax, lr_ax])
    fig.suptitle(title, fontsize=10)
    if losses and not metrics.empty:  # under the panels: inside, it hides the curves' start
        handles, labels = loss_ax.get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
    _save_figure(fig, path, rect=(0, 0.07, 1, 1))
    return drawn


def _drawn_series(axes: list[plt.Axes]) -> pd.DataFrame:
    """The lines of ``axes`` as a frame indexed by x (named 'iteration'), one column per line label."""
    series = {line.get_label(): pd.Series(line.get_ydata(), index=line.get_xdata())
              for ax in axes for line in ax.get_lines()}
    frame = pd.DataFrame(series)
    frame.index.name = "iteration"
    return frame
