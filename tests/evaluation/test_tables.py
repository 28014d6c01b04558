"""Ablation tables: row order, rounding, missing groups and the markdown layout."""

from __future__ import annotations

import math

import pandas as pd

from longtail_seg.evaluation.tables import build_table, table_to_markdown, write_table


def _metrics(segm_ap: float, bbox_ap: float, apr=5.0) -> dict:
    return {
        "segm": {"AP": segm_ap, "APr": apr, "APc": 20.04, "APf": 30.06, "AP50": 99.0},
        "bbox": {"AP": bbox_ap, "APr": None, "APc": 21.0, "APf": 31.0},
    }


def test_table_has_one_row_per_step_with_mask_and_box_columns(tmp_path):
    rows = [{"label": "Representation learning"}, {"label": "+BGS retraining"}]
    table = build_table(rows, [_metrics(25.04, 27.0), _metrics(26.26, 28.0)])
    assert list(table.columns) == ["model", "AP", "APr", "APc", "APf", "bbox_AP", "bbox_APr", "bbox_APc", "bbox_APf"]
    assert table["model"].tolist() == ["Representation learning", "+BGS retraining"]
    assert table["AP"].tolist() == [25.0, 26.3]
    assert math.isnan(table.loc[0, "bbox_APr"])  # a group without ground truth stays empty, not 0

    write_table(table, tmp_path / "t.csv", tmp_path / "t.md")
    assert pd.read_csv(tmp_path / "t.csv")["APc"].tolist() == [20.0, 20.0]
    markdown = (tmp_path / "t.md").read_text().splitlines()
    assert markdown[0].startswith("| model | AP | APr")
    assert markdown[2].startswith("| Representation learning | 25.0 | 5.0 | 20.0 | 30.1 |")


def test_row_and_metrics_count_must_match():
    import pytest

    with pytest.raises(ValueError, match="2 table rows but 1 metrics"):
        build_table([{"label": "a"}, {"label": "b"}], [_metrics(1, 1)])


def test_markdown_renders_missing_values():
    table = build_table([{"label": "a"}], [_metrics(1, 1)])
    assert "nan" in table_to_markdown(table)
