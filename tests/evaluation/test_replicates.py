"""Seed replicates of an ablation table: mean, sd (ddof=1), paired changes and their sign agreement on hand-made
tables with hand-computed values; one seed, missing cells, mismatched seeds; and workflow_scripts/replicate_table.py
on metrics.json files."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from longtail_seg.evaluation.replicates import replicate_markdown, replicate_summary
from tests.conftest import load_workflow_script

NAN = float("nan")


def _table(ap: list[float], apr: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"model": ["base", "+step"], "AP": ap, "APr": apr})


# AP: base 10, 12, 14 (mean 12, sd 2); +step 11, 15, 13 (mean 13, sd 2); changes 1, 3, -1 (mean 1, sd 2, 2 of 3
# positive). APr: base 5, -, 7 (n 2, mean 6, sd sqrt(2)); +step 6, 8, - (mean 7, sd sqrt(2)); one paired change, +1.
TABLES = {0: _table([10, 11], [5, 6]), 1: _table([12, 15], [NAN, 8]), 2: _table([14, 13], [7, NAN])}


def _record(summary: pd.DataFrame, step: int, metric: str) -> pd.Series:
    return summary[(summary["step"] == step) & (summary["metric"] == metric)].iloc[0]


def test_cells_are_mean_and_sample_sd_over_seeds_and_steps_paired_changes():
    summary = replicate_summary(TABLES)
    assert len(summary) == 4 and summary["model"].tolist() == ["base", "base", "+step", "+step"]
    base, step = _record(summary, 0, "AP"), _record(summary, 1, "AP")
    assert (base["n"], base["mean"], base["sd"]) == (3, 12.0, 2.0)
    assert (step["n"], step["mean"], step["sd"]) == (3, 13.0, 2.0)
    assert (step["change_n"], step["change_mean"], step["change_sd"], step["change_same_sign"]) == (3, 1.0, 2.0, 2)
    assert [step[f"seed_{s}"] for s in (0, 1, 2)] == [11, 15, 13]
    assert base["change_n"] == 0 and math.isnan(base["change_mean"])  # the first row has no previous row


def test_a_missing_cell_is_left_out_of_its_own_statistics_only():
    summary = replicate_summary(TABLES)
    base, step = _record(summary, 0, "APr"), _record(summary, 1, "APr")
    assert (base["n"], base["mean"]) == (2, 6.0) and base["sd"] == pytest.approx(math.sqrt(2))
    assert (step["n"], step["mean"]) == (2, 7.0) and step["sd"] == pytest.approx(math.sqrt(2))
    assert (step["change_n"], step["change_mean"], step["change_same_sign"]) == (1, 1.0, 1)  # seed 0 only
    assert math.isnan(step["change_sd"])


def test_same_sign_counts_seeds_moving_with_the_mean_and_not_zero_changes():
    tables = {0: _table([10, 8], [1, 1]), 1: _table([10, 10], [1, 1]), 2: _table([10, 9], [1, 1])}
    step = _record(replicate_summary(tables), 1, "AP")
    assert (step["change_mean"], step["change_sd"], step["change_same_sign"]) == (-1.0, 1.0, 2)


def test_one_seed_has_no_sd_and_says_so():
    summary = replicate_summary({4: TABLES[0]})
    step = _record(summary, 1, "AP")
    assert (step["n"], step["mean"], step["change_mean"]) == (1, 11.0, 1.0)
    assert math.isnan(step["sd"]) and math.isnan(step["change_sd"])
    markdown = replicate_markdown(summary, [4])
    assert "| base | 10.0 ± sd n/a | 5.0 ± sd n/a |" in markdown
    assert "| Δ vs previous | +1.0 ± sd n/a (1/1) | +1.0 ± sd n/a (1/1) |" in markdown


def test_markdown_shows_mean_sd_changes_and_cells_with_fewer_seeds():
    markdown = replicate_markdown(replicate_summary(TABLES), [0, 1, 2])
    lines = markdown.splitlines()
    assert "3 seeds (0, 1, 2)" in lines[0]
    assert lines[2] == "| model | AP | APr |"
    assert lines[4] == "| base | 12.0 ± 2.0 | 6.0 ± 1.4 (n=2) |"
    assert lines[5] == "| +step | 13.0 ± 2.0 | 7.0 ± 1.4 (n=2) |"
    assert lines[6] == "| Δ vs previous | +1.0 ± 2.0 (2/3) | +1.0 ± sd n/a (1/1) |"


def test_a_cell_missing_in_every_seed_reads_n_a():
    tables = {0: _table([1, 2], [NAN, NAN]), 1: _table([2, 3], [NAN, NAN])}
    summary = replicate_summary(tables)
    assert _record(summary, 1, "APr")["n"] == 0 and math.isnan(_record(summary, 1, "APr")["mean"])
    assert replicate_markdown(summary, [0, 1]).splitlines()[-1] == "| Δ vs previous | +1.0 ± 0.0 (2/2) | n/a |"


def test_seeds_must_share_rows_and_columns():
    other = pd.DataFrame({"model": ["base", "+other"], "AP": [1, 2], "APr": [1, 2]})
    with pytest.raises(ValueError, match="table of seed 1 has rows"):
        replicate_summary({0: TABLES[0], 1: other})
    with pytest.raises(ValueError, match="no seeds"):
        replicate_summary({})


def _metrics(ap: float) -> dict:
    return {"segm": {"AP": ap, "APr": ap / 2, "APc": ap, "APf": ap}, "bbox": {"AP": ap, "APr": None}}


def test_script_reads_metrics_seed_by_seed_and_writes_csv_and_markdown(tmp_path):
    script = load_workflow_script("replicate_table")
    rows = [{"label": "base", "model": "a", "test": "t"}, {"label": "+step", "model": "b", "test": "t"}]
    paths = []
    for seed, values in ((0, (10.04, 11.06)), (1, (12.04, 15.06))):  # unrounded: changes 1.02 and 3.02
        for row, ap in zip(rows, values):
            path = tmp_path / f"seed{seed}" / row["model"] / "metrics.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(_metrics(ap)))
            paths.append(str(path))
    out_csv, out_md = tmp_path / "t_replicates.csv", tmp_path / "t_replicates.md"
    script.main(script.parse_args(["--rows", json.dumps(rows), "--seeds", "0", "1", "--metrics", *paths,
                                   "--out-csv", str(out_csv), "--out-md", str(out_md)]))
    summary = pd.read_csv(out_csv)
    step = summary[(summary["model"] == "+step") & (summary["metric"] == "AP")].iloc[0]
    assert step["mean"] == pytest.approx(13.06) and step["change_mean"] == pytest.approx(2.02)
    assert step["change_sd"] == pytest.approx(math.sqrt(2)) and step["change_same_sign"] == 2
    assert set(summary["metric"]) == {"AP", "APr", "APc", "APf", "bbox_AP", "bbox_APr", "bbox_APc", "bbox_APf"}
    markdown = out_md.read_text()
    assert "| +step | 13.1 ± 2.8 |" in markdown and "| Δ vs previous | +2.0 ± 1.4 (2/2) |" in markdown
    with pytest.raises(SystemExit, match="3 metrics files for 2 seeds x 2 rows"):
        script.main(script.parse_args(["--rows", json.dumps(rows), "--seeds", "0", "1", "--metrics", *paths[:3],
                                       "--out-csv", str(tmp_path / "x.csv"), "--out-md", str(tmp_path / "x.md")]))
    with pytest.raises(SystemExit, match="replicate_table: metrics file .* does not exist"):
        script.main(script.parse_args(["--rows", json.dumps(rows), "--seeds", "0", "--metrics", "nope.json",
                                       paths[1], "--out-csv", str(tmp_path / "x.csv"),
                                       "--out-md", str(tmp_path / "x.md")]))
    assert not (tmp_path / "x.csv").exists()
