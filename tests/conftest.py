"""Shared fixtures: small hand-made LVIS-format datasets written to a temporary folder."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longtail_seg.cli import load_workflow_script  # noqa: F401 (the tests import it from here)

REPO_ROOT = Path(__file__).resolve().parents[1]


# What a fresh clone holds that the workflow runs from (tests run it in a copy, never in the checkout).
WORKFLOW_FILES = ("Snakefile", "rules", "report", "schemas", "workflow_scripts", "config.yaml", "configs", "profiles",
                  "envs", "longtail_seg")


def copy_workflow(folder: Path) -> Path:
    """A copy of the workflow in ``folder``, as a fresh clone would have it."""
    for name in WORKFLOW_FILES:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, folder / name)
    return folder


@pytest.fixture
def workflow_copy(tmp_path: Path) -> Path:
    """A copy of the workflow in a temporary folder, as a fresh clone would have it."""
    return copy_workflow(tmp_path)


@pytest.fixture(scope="module")
def shared_workflow_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy per test module for dry runs, which write nothing but Snakemake's own metadata."""
    return copy_workflow(tmp_path_factory.mktemp("workflow"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run of the whole default DAG on the tiny config, in its own copy of the workflow, shared by the tests
    that read its outputs (the tables, the analysis, the report)."""
    folder = copy_workflow(tmp_path_factory.mktemp("tiny_run"))
    result = subprocess.run(["snakemake", "--cores", "2", "--configfile", "configs/tiny.yaml"], cwd=folder,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return folder


def write_lvis(path: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    """Write an LVIS-format dict to ``path`` and return the path."""
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def box_annotation(ann_id: int, image_id: int, category_id: int, bbox: list[float]) -> dict:
    """An annotation whose polygon segmentation is its box."""
    x, y, w, h = bbox
    polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "area": w * h, "segmentation": [polygon]}


@pytest.fixture
def small_lvis(tmp_path: Path) -> tuple[Path, Path]:
    """Three 32x32 images with files on disk, three categories, four box-shaped annotations."""
    image_root = tmp_path / "images"
    image_root.mkdir()
    images = []
    for image_id in (1, 2, 3):
        name = f"{image_id:06d}.png"
        Image.fromarray(np.full((32, 32, 3), 40 * image_id, dtype=np.uint8)).save(image_root / name)
        images.append({"id": image_id, "file_name": name, "height": 32, "width": 32,
                       "neg_category_ids": [], "not_exhaustive_category_ids": []})
    categories = [{"id": c, "name": f"cat{c}", "frequency": "f", "image_count": 0, "instance_count": 0}
                  for c in (1, 2, 3)]
    annotations = [
        box_annotation(1, 1, 1, [2, 2, 10, 10]),
        box_annotation(2, 1, 1, [15, 15, 5, 5]),
        box_annotation(3, 2, 2, [0, 0, 8, 16]),
        box_annotation(4, 3, 1, [4, 4, 4, 4]),
    ]
    return write_lvis(tmp_path / "train.json", images, annotations, categories), image_root
