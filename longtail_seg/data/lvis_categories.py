"""LVIS v1 category table shipped with the package: real LVIS v1 scale for tests and benchmarks without downloading
LVIS."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from longtail_seg.data.lvis_io import FREQUENCY_GROUPS, DatasetError

CATEGORY_TABLE_RESOURCE = "lvis_v1_categories.csv"
CATEGORY_COLUMNS = ("id", "name", "frequency", "image_count", "instance_count")
LVIS_V1_NUM_CATEGORIES = 1203
# LVIS's published rule (Gupta et al. 2019): rare 1-10 training images, common 11-100, frequent > 100. It is
# restated here rather than imported from longtail_seg.stats so that the test of stats.frequency_groups against
# LVIS's own labels compares two independent encodings of the rule. It also keeps the data layer free of stats.
_LVIS_GROUP_IMAGE_RANGES = {"r": (1, 10), "c": (11, 100), "f": (101, np.inf)}


def lvis_v1_categories() -> pd.DataFrame:
    """LVIS v1 training-set category table: id, name, frequency, image_count, instance_count (1203 rows).

    Reads the CSV shipped in ``longtail_seg/data`` through importlib.resources, so the table also loads from an
    installed wheel, not only from a source checkout.
    """
    with resources.as_file(_shipped_table()) as path:
        return read_category_table(path)


def _shipped_table() -> resources.abc.Traversable:
    """Location of the CSV inside the installed package (a plain file in a checkout or an unpacked wheel)."""
    return resources.files("longtail_seg.data").joinpath(CATEGORY_TABLE_RESOURCE)


def read_category_table(path: Path | str, expected_rows: int = LVIS_V1_NUM_CATEGORIES) -> pd.DataFrame:
    """Read and validate an LVIS category table CSV. Raise :class:`DatasetError` naming the file and the bad row.

    The public loader calls this on the shipped file. It is separate so that tests can feed it a corrupted copy.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: LVIS category table not found; reinstall longtail_seg")
    table = pd.read_csv(path, dtype={"name": str, "frequency": str})
    _check_columns(table, path)
    _check_rows(table, path, expected_rows)
    _check_counts(table, path)
    _check_frequency_groups(table, path)
    return table


def _check_columns(table: pd.DataFrame, path: Path) -> None:
    """Require exactly the documented columns, with integer ids and counts."""
    if tuple(table.columns) != CATEGORY_COLUMNS:
        raise DatasetError(f"{path}: columns must be {list(CATEGORY_COLUMNS)}, got {list(table.columns)}")
    for column in ("id", "image_count", "instance_count"):
        if not pd.api.types.is_integer_dtype(table[column]):
            raise DatasetError(f"{path}: column '{column}' must hold integers only (empty or non-numeric cell?)")


def _check_rows(table: pd.DataFrame, path: Path, expected_rows: int) -> None:
    """Require the expected number of categories, unique ids sorted in ascending order."""
    if len(table) != expected_rows:
        raise DatasetError(f"{path}: expected {expected_rows} categories, found {len(table)} rows")
    duplicated = table["id"][table["id"].duplicated()]
    if len(duplicated):
        raise DatasetError(f"{path}: category id {int(duplicated.iloc[0])} appears twice; ids must be unique")
    if not table["id"].is_monotonic_increasing:
        raise DatasetError(f"{path}: rows must be sorted by id")


def _check_counts(table: pd.DataFrame, path: Path) -> None:
    """Require 1 <= image_count <= instance_count (every instance lies in an image, and every category is used)."""
    bad = table[(table["image_count"] < 1) | (table["image_count"] > table["instance_count"])]
    if len(bad):
        row = bad.iloc[0]
        raise DatasetError(
            f"{path}: category id {row['id']} ({row['name']}): need 1 <= image_count <= instance_count, "
            f"got image_count={row['image_count']}, instance_count={row['instance_count']}"
        )


def _check_frequency_groups(table: pd.DataFrame, path: Path) -> None:
    """Require each row's frequency label to be r/c/f and to match its image_count under the LVIS rule."""
    unknown = table[~table["frequency"].isin(FREQUENCY_GROUPS)]
    if len(unknown):
        row = unknown.iloc[0]
        raise DatasetError(
            f"{path}: category id {row['id']} ({row['name']}): frequency must be one of {FREQUENCY_GROUPS}, "
            f"got {row['frequency']!r}"
        )
    for group, (low, high) in _LVIS_GROUP_IMAGE_RANGES.items():
        in_group = table[table["frequency"] == group]
        bad = in_group[(in_group["image_count"] < low) | (in_group["image_count"] > high)]
        if len(bad):
            row = bad.iloc[0]
            raise DatasetError(
                f"{path}: category id {row['id']} ({row['name']}): frequency '{group}' needs image_count in "
                f"[{low}, {high}] under the LVIS rule, got {row['image_count']}"
            )
