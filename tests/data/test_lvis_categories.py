"""The shipped LVIS v1 category table: LVIS's published facts, our frequency rule against LVIS's labels, and the
loader's errors on a corrupted copy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from longtail_seg.data.lvis_categories import (
    CATEGORY_COLUMNS,
    LVIS_V1_NUM_CATEGORIES,
    lvis_v1_categories,
    read_category_table,
)
from longtail_seg.data.lvis_io import DatasetError
from longtail_seg.stats import frequency_groups


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return lvis_v1_categories()


def _corrupted_copy(tmp_path: Path, table: pd.DataFrame, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    """Write ``edit(copy of table)`` to a CSV in tmp_path and return its path."""
    path = tmp_path / "lvis_v1_categories.csv"
    edit(table.copy()).to_csv(path, index=False)
    return path


def test_table_has_one_row_per_lvis_v1_category_sorted_by_id(table):
    assert len(table) == LVIS_V1_NUM_CATEGORIES == 1203
    assert tuple(table.columns) == CATEGORY_COLUMNS
    assert table["id"].tolist() == list(range(1, 1204))
    assert table["name"].is_unique


def test_frequency_group_sizes_match_lvis_v1_publication(table):
    assert table["frequency"].value_counts().to_dict() == {"c": 461, "f": 405, "r": 337}


def test_known_rows(table):
    rows = table.set_index("id")
    assert rows.loc[1].tolist() == ["aerosol_can", "c", 64, 109]
    assert rows.loc[1203].tolist() == ["zucchini", "c", 81, 798]


def test_every_category_has_images_and_no_more_images_than_instances(table):
    assert (table["image_count"] >= 1).all()
    assert (table["image_count"] <= table["instance_count"]).all()
    assert table["instance_count"].sum() == 1_270_141


def test_stats_frequency_rule_reproduces_lvis_labels(table):
    """Our own r/c/f rule (longtail_seg.stats) applied to LVIS's image counts must give LVIS's own labels."""
    assert frequency_groups(table["image_count"].to_numpy()).tolist() == table["frequency"].tolist()


def test_shipped_file_is_a_packaged_resource(table):
    from importlib import resources

    resource = resources.files("longtail_seg.data") / "lvis_v1_categories.csv"
    assert resource.is_file()
    with resources.as_file(resource) as path:
        pd.testing.assert_frame_equal(read_category_table(path), table)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.drop(index=5), r"expected 1203 categories, found 1202 rows"),
        (lambda t: t.assign(id=t["id"].where(t["id"] != 2, 1)), r"category id 1 appears twice"),
        (lambda t: t.drop(columns="instance_count"), r"columns must be"),
        (lambda t: t.assign(frequency=t["frequency"].where(t["id"] != 1, "r")),
         r"category id 1 \(aerosol_can\): frequency 'r' needs image_count in \[1, 10\].*got 64"),
        (lambda t: t.assign(frequency=t["frequency"].where(t["id"] != 1, "x")),
         r"category id 1 \(aerosol_can\): frequency must be one of"),
        (lambda t: t.assign(image_count=t["image_count"].where(t["id"] != 1, 500)),
         r"category id 1 \(aerosol_can\): need 1 <= image_count <= instance_count"),
        (lambda t: t.iloc[::-1], r"sorted by id"),
    ],
    ids=["missing-row", "duplicate-id", "missing-column", "wrong-group", "unknown-group", "images-over-instances",
         "unsorted"],
)
def test_corrupted_copy_is_rejected_with_a_clear_message(tmp_path, table, edit, message):
    path = _corrupted_copy(tmp_path, table, edit)
    with pytest.raises(DatasetError, match=message) as error:
        read_category_table(path)
    assert str(path) in str(error.value)


def test_non_numeric_count_is_rejected(tmp_path, table):
    path = _corrupted_copy(tmp_path, table, lambda t: t.astype({"image_count": object}).assign(
        image_count=lambda d: d["image_count"].where(d["id"] != 3, "many")))
    with pytest.raises(DatasetError, match=r"column 'image_count' must hold integers"):
        read_category_table(path)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.csv: LVIS category table not found"):
        read_category_table(tmp_path / "nope.csv")


def test_public_loader_validates_what_it_reads(tmp_path, table, monkeypatch):
    """lvis_v1_categories() goes through the same validation: a corrupted shipped file fails loudly."""
    import longtail_seg.data.lvis_categories as module

    corrupted = _corrupted_copy(tmp_path, table, lambda t: t.drop(index=0))
    monkeypatch.setattr(module, "_shipped_table", lambda: corrupted)
    with pytest.raises(DatasetError, match=r"found 1202 rows"):
        module.lvis_v1_categories()
