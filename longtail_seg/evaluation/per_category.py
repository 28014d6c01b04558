"""Per-category analysis of evaluated models: each category's AP against its training instance count, the
per-category AP change of each ablation step against the previous row, and the TIDE-style error breakdown of each
row. Pure pandas on the evaluate rule's per_category.csv / errors.json and the statistics' category_stats.csv."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import pandas as pd

from longtail_seg.io_utils import atomic_path

IOU_TYPES = ("bbox", "segm")
PER_CATEGORY_COLUMNS = ("category_id", "name", "frequency", "AP_bbox", "AP_segm")
CATEGORY_AP_COLUMNS = ("category_id", "name", "frequency", "instance_count", "AP_bbox", "AP_segm")
CHANGE_COLUMNS = ("step", "previous", "category_id", "name", "frequency", "instance_count", "AP_previous", "AP",
                  "change", "rank")
ERROR_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
ERROR_NAMES = {"Cls": "classification", "Loc": "localisation", "Both": "cls + loc", "Dupe": "duplicate",
               "Bkg": "background", "Miss": "missed"}


def per_category_frame(categories: Sequence[Mapping], ap_by_type: Mapping[str, Mapping[int, float | None]]
                       ) -> pd.DataFrame:
    """One row per category (sorted by id): id, name, r/c/f frequency and AP per IoU type in percent (NaN: no
    ground truth, the category is in no AP); a column for an IoU type not evaluated is all NaN."""
    records = []
    for category in sorted(categories, key=lambda c: c["id"]):
        record = {"category_id": int(category["id"]), "name": str(category.get("name", category["id"])),
                  "frequency": category.get("frequency", "")}
        for iou_type in IOU_TYPES:
            value = ap_by_type.get(iou_type, {}).get(int(category["id"]))
            record[f"AP_{iou_type}"] = math.nan if value is None else float(value)
        records.append(record)
    return pd.DataFrame.from_records(records, columns=list(PER_CATEGORY_COLUMNS))


def category_ap(per_category: pd.DataFrame, category_stats: pd.DataFrame) -> pd.DataFrame:
    """Per-category AP with the category's training instance count (0 for a category missing from the statistics),
    sorted by instance count (most first), then id."""
    missing = {"category_id", "instance_count"} - set(category_stats.columns)
    if missing:
        raise ValueError(f"category statistics lack the columns {sorted(missing)}; use the dataset_stats rule's "
                         "category_stats.csv")
    counts = category_stats.set_index("category_id")["instance_count"]
    table = per_category.copy()
    table["instance_count"] = table["category_id"].map(counts).fillna(0).astype(int)
    table = table.sort_values(["instance_count", "category_id"], ascending=[False, True], kind="stable")
    return table.loc[:, list(CATEGORY_AP_COLUMNS)].reset_index(drop=True)


def ap_changes(rows: Sequence[tuple[str, pd.DataFrame]], iou_type: str = "segm") -> pd.DataFrame:
    """For each row after the first, every category's AP change against the previous row: ``(label,
    category_ap table)`` per row, in table order. ``rank`` orders each step's categories by change (1 = largest
    gain); categories without AP in either row get NaN change and no rank."""
    column = f"AP_{iou_type}"
    frames = []
    for (previous_label, previous), (label, current) in zip(rows, rows[1:]):
        merged = current.loc[:, ["category_id", "name", "frequency", "instance_count", column]].merge(
            previous.loc[:, ["category_id", column]], on="category_id", how="left", suffixes=("", "_previous"))
        frame = pd.DataFrame({
            "step": label, "previous": previous_label, "category_id": merged["category_id"],
            "name": merged["name"], "frequency": merged["frequency"], "instance_count": merged["instance_count"],
            "AP_previous": merged[f"{column}_previous"], "AP": merged[column],
        })
        frame["change"] = frame["AP"] - frame["AP_previous"]
        frame = frame.sort_values(["change", "category_id"], ascending=[False, True], kind="stable",
                                  na_position="last")
        frame["rank"] = pd.array([*range(1, frame["change"].notna().sum() + 1),
                                  *[pd.NA] * int(frame["change"].isna().sum())], dtype="Int64")
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=list(CHANGE_COLUMNS))
    return pd.concat(frames, ignore_index=True).loc[:, list(CHANGE_COLUMNS)]


def top_changes(changes: pd.DataFrame, step: str, count: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A step's ``count`` largest gains (positive changes, largest first) and losses (negative, most negative
    first)."""
    rows = changes[(changes["step"] == step) & changes["change"].notna()]
    gains = rows[rows["change"] > 0].nlargest(count, "change")
    losses = rows[rows["change"] < 0].nsmallest(count, "change")
    return gains, losses


def error_table(rows: Sequence[tuple[str, Mapping]], iou_type: str = "segm") -> pd.DataFrame:
    """One row per table row: AP at IoU 0.5 and, per error type, the AP points fixing it would add and its count
    (``errors.json`` of the evaluate rule)."""
    records = []
    for label, errors in rows:
        if iou_type not in errors:
            raise ValueError(f"errors of {label!r} have no {iou_type!r} entry (has {sorted(errors)}); rerun evaluate "
                             "with that IoU type")
        breakdown = errors[iou_type]
        record = {"model": label, "AP50": breakdown["ap50"]}
        record.update({f"dAP_{key}": breakdown["delta_ap"][key] for key in ERROR_TYPES})
        record.update({f"count_{key}": breakdown["counts"][key] for key in ERROR_TYPES})
        records.append(record)
    return pd.DataFrame.from_records(records)


CONFUSION_COLUMNS = ("model", "gt_category_id", "gt_name", "predicted_category_id", "predicted_name",
                     "predicted_frequency", "count")


def confusion_table(rows: Sequence[tuple[str, Mapping]], iou_type: str = "segm") -> pd.DataFrame:
    """Per table row, its most frequent mistakes on rare ground truth (``rare_confusions`` of ``errors.json``),
    most frequent first."""
    records = [{"model": label, **confusion} for label, errors in rows
               for confusion in errors.get(iou_type, {}).get("rare_confusions", [])]
    return pd.DataFrame.from_records(records, columns=list(CONFUSION_COLUMNS))


def write_csv(table: pd.DataFrame, path: str | os.PathLike, decimals: int = 2) -> None:
    """Write a table as CSV atomically, floats rounded."""
    with atomic_path(path) as tmp:
        table.round(decimals).to_csv(tmp, index=False)
