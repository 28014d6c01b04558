"""The workflow report (`snakemake --report report.html`, rules/report.smk) of the tiny run: every figure and table
with its caption and data, organised by category; the training curves drawn from each run's metrics.csv."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

# Every trained model the default tables rest on (representation learning and classifier retraining; the double
# classifiers train nothing).
TRAINED = ("representation", "bgs", "bgs_class_aware", "bgs_mosaic", "bgs_class_aware_mosaic", "bgs_pseudo",
           "bgs_class_aware_pseudo")

# Report entry -> (category, a phrase of its caption).
TABLES = {f"results/tiny/tables/{t}.{ext}": ("Ablation tables", f"Ablation table <strong>{t}</strong>")
          for t in ("table1", "table2", "table3") for ext in ("html", "csv")}
ANALYSIS = {f"results/tiny/analysis/tables/{t}/{name}": ("Analysis per table", phrase)
            for t in ("table1", "table2", "table3")
            for name, phrase in (("category_changes.png", "Per-category mask AP change of each step"),
                                 ("category_changes.csv", "Per-category mask AP change of each step"),
                                 ("errors.png", "TIDE error breakdown of each row"),
                                 ("errors.html", "TIDE error breakdown of each row"),
                                 ("confusions.html", "The most frequent mistakes on rare categories"),
                                 ("viewer.png", "the ground truth next to the predictions"))}
OTHERS = {
    "results/tiny/analysis/representation/single_scale/category_ap.png": ("Per-category AP", "Per-category AP of"),
    "results/tiny/analysis/pseudo_double/multi_scale_mask/category_ap.csv": ("Per-category AP", "Per-category AP"),
    **{f"results/tiny/figures/training/{m}.png": ("Training curves", f"Training of model <strong>{m}</strong>")
       for m in TRAINED},
    "results/tiny/stats/long_tail.png": ("Dataset", "Long-tail distribution of the <strong>tiny</strong>"),
    "results/tiny/figures/mosaic_samples.png": ("Dataset", "Balanced-mosaic samples"),
    "results/tiny/pseudo/calibration.png": ("Pseudo labels", "Score calibration of the pseudo-label teacher"),
    "results/tiny/pseudo/precision.json": ("Pseudo labels", "Precision of the pseudo labels"),
}
EXPECTED = {**TABLES, **ANALYSIS, **OTHERS}


def _script_json(page: str, name: str) -> dict:
    """The JSON object the report's page assigns to ``var NAME`` in its script of that id."""
    match = re.search(rf'<script id="{name}">\s*var {name} = (.*?);\s*</script>', page, re.S)
    assert match, f"no {name} in the report"
    return json.loads(match.group(1))


def _decoded(data_uri: str) -> bytes:
    return base64.b64decode(data_uri.split("base64,", 1)[1])


@pytest.fixture(scope="module")
def report(tiny_run: Path) -> tuple[dict, dict, str]:
    """The report of the tiny run: its results and categories as embedded in report.html, and the page."""
    result = subprocess.run(["snakemake", "--report", "report.html", "--configfile", "configs/tiny.yaml"],
                            cwd=tiny_run, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    page = (tiny_run / "report.html").read_text()
    return _script_json(page, "results"), _script_json(page, "categories"), page


@pytest.mark.slow
def test_report_holds_every_figure_and_table_with_its_caption_and_data(tiny_run, report):
    results, categories, page = report
    missing = set(EXPECTED) - set(results)
    assert not missing, f"not in the report: {sorted(missing)}"
    filed = {path: category for category, subcategories in categories.items()
             for entries in subcategories.values() for path in entries}
    for path, (category, phrase) in EXPECTED.items():
        entry = results[path]
        assert filed[path] == category, path
        assert phrase in entry["caption"], (path, entry["caption"])
        assert _decoded(entry["data_uri"]) == (tiny_run / path).read_bytes(), path  # self-contained: the file
    assert "Long-tail instance segmentation on LVIS" in page and "Default tables: table1, table2, table3" in page
    assert set(categories["Analysis per table"]) == {"table1", "table2", "table3"}
    assert set(categories["Training curves"]) == {"representation learning", "classifier retraining"}


@pytest.mark.slow
def test_report_table_pages_show_the_tables_numbers(tiny_run, report):
    results, _, _ = report
    for table in ("table1", "table2", "table3"):
        frame = pd.read_csv(tiny_run / "results" / "tiny" / "tables" / f"{table}.csv")
        shown = _decoded(results[f"results/tiny/tables/{table}.html"]["data_uri"]).decode()
        rows = [re.findall(r"<td>(.*?)</td>", row) for row in shown.split("<tbody>", 1)[1].split("</tr>")
                if "<td>" in row]
        expected = [[str(value) if isinstance(value, str) else ("-" if pd.isna(value) else f"{value:.1f}")
                     for value in record] for record in frame.itertuples(index=False)]
        assert [[cell.replace("&amp;", "&") for cell in row] for row in rows] == expected, table
        assert re.findall(r"<th>(.*?)</th>", shown) == list(frame.columns)
    errors = pd.read_csv(tiny_run / "results" / "tiny" / "analysis" / "tables" / "table2" / "errors.csv")
    shown = _decoded(results["results/tiny/analysis/tables/table2/errors.html"]["data_uri"]).decode()
    assert all(f"<td>{value:.2f}</td>" in shown for value in errors["dAP_Miss"])


@pytest.mark.slow
def test_training_curves_plot_each_trained_models_metrics(tiny_run, report):
    """Each trained model's curves are its metrics.csv: the drawn loss terms, total loss and LR by iteration."""
    results, _, _ = report
    models = tiny_run / "results" / "tiny" / "models"
    for model in TRAINED:
        metrics = pd.read_csv(models / model / "metrics.csv")
        assert len(metrics) >= 2, model  # the tiny runs log every 2 iterations
        drawn = pd.read_csv(tiny_run / "results" / "tiny" / "figures" / "training" / f"{model}.csv",
                            index_col="iteration")
        losses = [c for c in metrics.columns if c.startswith("loss_")]
        assert set(drawn.columns) == {"total loss", "lr", *losses}, model
        assert drawn.index.tolist() == metrics["iteration"].tolist()
        assert drawn["total loss"].tolist() == pytest.approx(metrics["loss"].tolist())
        assert drawn["lr"].tolist() == pytest.approx(metrics["lr"].tolist())
        for column in losses:
            assert drawn[column].tolist() == pytest.approx(metrics[column].tolist()), (model, column)
        assert results[f"results/tiny/figures/training/{model}.png"]["labels"]["model"] == model
    retrained = pd.read_csv(models / "bgs" / "metrics.csv")
    assert retrained.columns.tolist()[3:-1] == ["loss_classifier", "loss"]  # only the classifier trains
