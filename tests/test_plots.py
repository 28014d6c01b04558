"""Figures of longtail_seg/plots.py: the training loss/LR curves draw exactly the metrics.csv series; count axes are
labelled with plain numbers; legends name and colour every LVIS group."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from longtail_seg import plots
from longtail_seg.plots import GROUP_COLOURS, plot_category_ap, plot_long_tail, plot_training_curves


@pytest.fixture
def kept_figures(monkeypatch) -> list:
    """The figures the plot functions draw, kept open to inspect (they close them after saving)."""
    kept = []
    monkeypatch.setattr(plots.plt, "close", kept.append)
    yield kept
    for figure in kept:
        plots.plt.figure(figure.number)
        plots.plt.clf()


def test_long_tail_axis_reads_as_plain_counts_and_the_legend_colours_empty_groups(tmp_path, kept_figures):
    categories = pd.DataFrame({"frequency": ["r", "r", "r", "c"], "instance_count": [0, 3, 7, 40]})
    plot_long_tail(categories, tmp_path / "long_tail.png")
    ax = kept_figures[0].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2", "5", "10", "20", "50"]
    assert ax.get_yticks()[0] == 0.5 and ax.get_ylabel().startswith("training instances")
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["rare (3)", "common (1)", "frequent (0)"]
    assert [matplotlib_colour(h.get_facecolor()) for h in legend.legend_handles] == list(GROUP_COLOURS.values())
    heights = sorted(bar.get_height() for bar in ax.patches)
    assert heights == [0.5, 3, 7, 40]  # 0 drawn at 0.5, where the "0" tick is


def test_category_ap_legend_sits_above_every_point(tmp_path, kept_figures):
    table = pd.DataFrame({"frequency": ["r", "c", "f"], "instance_count": [2, 30, 5000],
                          "AP_segm": [100.0, 50.0, 0.0], "AP_bbox": [10.0, None, 90.0]})
    plot_category_ap(table, tmp_path / "category_ap.png", "title")
    figure = kept_figures[0]
    figure.canvas.draw()
    for ax in figure.axes:
        legend_box = ax.get_legend().get_window_extent()
        points = [ax.transData.transform(xy) for c in ax.collections for xy in c.get_offsets()]
        assert points and all(y < legend_box.y0 for _, y in points)
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "10", "100", "1,000"]  # 5000: decades only
        assert ax.get_xlabel().startswith("training instances")


def matplotlib_colour(rgba) -> str:
    from matplotlib.colors import to_hex

    return to_hex(rgba)


def _metrics() -> pd.DataFrame:
    return pd.DataFrame({"iteration": [2, 4, 6], "epoch": [0, 0, 1], "lr": [0.001, 0.002, 0.0005],
                         "loss_classifier": [2.0, 1.5, 1.0], "loss_mask": [0.7, 0.6, 0.4], "loss": [2.7, 2.1, 1.4],
                         "images_per_s": [3.0, 3.1, 2.9]})


def test_training_curves_draw_each_loss_and_the_lr_against_iteration(tmp_path):
    metrics = _metrics()
    drawn = plot_training_curves(metrics, tmp_path / "curves.png", "bgs (classifier retraining)")
    assert list(drawn.index) == [2, 4, 6]
    assert set(drawn.columns) == {"total loss", "loss_classifier", "loss_mask", "lr"}  # not epoch or throughput
    assert drawn["total loss"].tolist() == [2.7, 2.1, 1.4]
    assert drawn["loss_classifier"].tolist() == [2.0, 1.5, 1.0]
    assert drawn["lr"].tolist() == pytest.approx([0.001, 0.002, 0.0005])
    with Image.open(tmp_path / "curves.png") as image:
        assert image.width > 1000 and image.height > 400


def test_training_curves_of_a_run_without_logged_iterations_still_write_a_figure(tmp_path):
    empty = _metrics().iloc[0:0]
    drawn = plot_training_curves(empty, tmp_path / "curves.png", "short run")
    assert drawn.empty or drawn.dropna(how="all").empty
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_training_curves_script_writes_the_drawn_series_and_names_a_bad_metrics_file(tmp_path):
    from tests.conftest import load_workflow_script

    script = load_workflow_script("training_curves")
    metrics = tmp_path / "metrics.csv"
    _metrics().to_csv(metrics, index=False)
    out = ["--out-png", str(tmp_path / "c.png"), "--out-csv", str(tmp_path / "c.csv")]
    script.main(script.parse_args(["--metrics", str(metrics), *out]))
    written = pd.read_csv(tmp_path / "c.csv", index_col="iteration")
    assert written["lr"].tolist() == pytest.approx(_metrics()["lr"].tolist())
    assert written["loss_mask"].tolist() == _metrics()["loss_mask"].tolist()
    with pytest.raises(SystemExit, match=r"missing\.csv does not exist; the training run writes it"):
        script.main(script.parse_args(["--metrics", str(tmp_path / "missing.csv"), *out]))
    _metrics().drop(columns="lr").to_csv(metrics, index=False)
    with pytest.raises(SystemExit, match=r"metrics\.csv has no column\(s\) \['lr'\]"):
        script.main(script.parse_args(["--metrics", str(metrics), *out]))
