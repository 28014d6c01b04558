"""Ablation tables: row order, rounding, missing groups, the markdown layout, and make_table.py on a broken
metrics.json."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from longtail_seg.evaluation.tables import build_table, table_to_markdown, write_table
from tests.conftest import load_workflow_script


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
    with pytest.raises(ValueError, match="2 table rows but 1 metrics"):
        build_table([{"label": "a"}, {"label": "b"}], [_metrics(1, 1)])


def test_markdown_renders_missing_values():
    table = build_table([{"label": "a"}], [_metrics(1, 1)])
    assert "nan" in table_to_markdown(table)


def _make_table_error(tmp_path, text: str) -> str:
    """workflow_scripts/make_table.py's exit message when the second metrics.json holds ``text``."""
    script = load_workflow_script("make_table")
    good, bad = tmp_path / "a" / "metrics.json", tmp_path / "b" / "metrics.json"
    for path, content in ((good, json.dumps(_metrics(1, 1))), (bad, text)):
        path.parent.mkdir()
        path.write_text(content)
    rows = json.dumps([{"label": "a", "model": "m", "test": "t"}, {"label": "b", "model": "m", "test": "t"}])
    with pytest.raises(SystemExit) as error:
        script.main(script.parse_args(["--rows", rows, "--metrics", str(good), str(bad),
                                       "--out-csv", str(tmp_path / "t.csv"), "--out-md", str(tmp_path / "t.md")]))
    assert not (tmp_path / "t.csv").exists()
    return str(error.value)


def test_a_truncated_metrics_file_names_the_file_and_the_fix(tmp_path):
    text = json.dumps(_metrics(1, 1), indent=2)
    message = _make_table_error(tmp_path, text[:len(text) // 2])
    bad = tmp_path / "b" / "metrics.json"
    assert message.startswith(f"make_table: {bad}: this metrics file is not valid JSON at line "), message
    assert "rerun the `evaluate` job" in message


def test_a_metrics_file_without_metrics_names_the_file(tmp_path):
    message = _make_table_error(tmp_path, '[1, 2]')
    bad = tmp_path / "b" / "metrics.json"
    assert message.startswith(f"make_table: {bad} is not a metrics file of workflow_scripts/evaluate.py"), message


def _challenge_metrics(base: float) -> dict:
    """metrics.json of a challenge2021 evaluation: every variant of masks, standard and fixed of boxes."""
    groups = {"AP": base, "APr": base - 10, "APc": base + 1, "APf": base + 2, "AP50": 99.0}
    segm = {name + suffix: value + offset for suffix, offset in
            (("", 0.0), ("_fixed", 0.5), ("_boundary", -20.0), ("_fixed_boundary", -19.44)) for name, value in
            groups.items()}
    bbox = {name + suffix: value + offset for suffix, offset in (("", 3.0), ("_fixed", 3.5))
            for name, value in groups.items()}
    return {"segm": segm, "bbox": bbox}


def test_protocol_variants_get_their_columns_side_by_side(tmp_path):
    """A challenge2021 row adds AP-fixed, boundary AP and boundary AP-fixed after the standard mask columns and
    box AP-fixed after the standard box columns; a standard row in the same table shows nan there."""
    rows = [{"label": "RFS"}, {"label": "standard only"}]
    table = build_table(rows, [_challenge_metrics(30.0), _metrics(25.04, 27.0)])
    groups = ["AP", "APr", "APc", "APf"]
    assert list(table.columns) == ["model", *groups, *(g + "_fixed" for g in groups),
                                   *(g + "_boundary" for g in groups), *(g + "_fixed_boundary" for g in groups),
                                   *("bbox_" + g for g in groups), *("bbox_" + g + "_fixed" for g in groups)]
    first = table.iloc[0]
    assert (first["AP"], first["APr"], first["AP_fixed"], first["APf_fixed"]) == (30.0, 20.0, 30.5, 32.5)
    assert (first["AP_boundary"], first["APc_boundary"], first["AP_fixed_boundary"]) == (10.0, 11.0, 10.6)
    assert (first["bbox_AP"], first["bbox_APr_fixed"]) == (33.0, 23.5)
    second = table.iloc[1]
    assert second["AP"] == 25.0 and math.isnan(second["AP_fixed"]) and math.isnan(second["bbox_AP_fixed"])
    assert "AP50" not in table.columns and "AP50_fixed" not in table.columns

    write_table(table, tmp_path / "t.csv", tmp_path / "t.md")
    assert pd.read_csv(tmp_path / "t.csv")["AP_fixed_boundary"].tolist()[0] == 10.6
    markdown = (tmp_path / "t.md").read_text().splitlines()
    assert markdown[0].startswith("| model | AP | APr | APc | APf | AP_fixed | APr_fixed |")
    assert markdown[1] == "|---|" + "|".join(["---:"] * 24) + "|"
    assert markdown[2].startswith("| RFS | 30.0 | 20.0 | 31.0 | 32.0 | 30.5 | 20.5 | 31.5 | 32.5 | 10.0 |")


def test_standard_tables_keep_their_columns():
    """Tables of standard-protocol rows (Tables 1-3) have exactly the mask and box AP columns, as before."""
    table = build_table([{"label": "a"}], [_metrics(1, 1)])
    assert list(table.columns) == ["model", "AP", "APr", "APc", "APf", "bbox_AP", "bbox_APr", "bbox_APc", "bbox_APf"]


def test_a_table_of_no_rows_has_the_standard_columns():
    assert list(build_table([], []).columns)[:5] == ["model", "AP", "APr", "APc", "APf"]
