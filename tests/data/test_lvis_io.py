"""Bad-input errors of the dataset reader: each names the file, the record and what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longtail_seg.data.lvis_io import DatasetError, image_path, load_lvis
from tests.conftest import box_annotation


def _rewrite(path: Path, edit) -> Path:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def test_valid_file_loads(small_lvis):
    annotations, image_root = small_lvis
    data = load_lvis(annotations, image_root=image_root)
    assert len(data["annotations"]) == 4


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.json: annotation file not found"):
        load_lvis(tmp_path / "nope.json")


def test_invalid_json_names_file_and_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [}')
    with pytest.raises(DatasetError, match=r"broken\.json: invalid JSON at line 1, column 13"):
        load_lvis(path)


def test_missing_top_level_key(small_lvis):
    path = _rewrite(small_lvis[0], lambda d: d.pop("categories"))
    with pytest.raises(DatasetError, match="missing top-level key 'categories'"):
        load_lvis(path)


def test_annotation_with_unknown_image(small_lvis):
    path = _rewrite(small_lvis[0], lambda d: d["annotations"].append(box_annotation(99, 42, 1, [0, 0, 2, 2])))
    with pytest.raises(DatasetError, match=r"train\.json: annotation id 99: image_id 42 is not in 'images'"):
        load_lvis(path)


def test_annotation_with_unknown_category(small_lvis):
    path = _rewrite(small_lvis[0], lambda d: d["annotations"].append(box_annotation(77, 1, 9, [0, 0, 2, 2])))
    with pytest.raises(DatasetError, match=r"annotation id 77: category_id 9 is not in 'categories'"):
        load_lvis(path)


@pytest.mark.parametrize("bbox", [[0, 0, 0, 5], [0, 0, 5, -1]])
def test_non_positive_box(small_lvis, bbox):
    path = _rewrite(small_lvis[0], lambda d: d["annotations"].append(box_annotation(55, 1, 1, bbox)))
    with pytest.raises(DatasetError, match=r"annotation id 55: bbox .* non-positive width or height"):
        load_lvis(path)


def test_duplicate_image_id(small_lvis):
    path = _rewrite(small_lvis[0], lambda d: d["images"].append(dict(d["images"][0])))
    with pytest.raises(DatasetError, match="images id 1 appears twice"):
        load_lvis(path)


def test_missing_image_file(small_lvis):
    annotations, image_root = small_lvis
    (image_root / "000002.png").unlink()
    with pytest.raises(DatasetError, match=r"image id 2: image file .*000002\.png not found"):
        load_lvis(annotations, image_root=image_root)


def test_lvis_v1_image_path_from_coco_url(tmp_path):
    record = {"id": 5, "coco_url": "http://images.cocodataset.org/val2017/000000000139.jpg"}
    assert image_path(record, tmp_path) == tmp_path / "val2017" / "000000000139.jpg"
    with pytest.raises(DatasetError, match="neither 'file_name' nor 'coco_url'"):
        image_path({"id": 6}, tmp_path)


def test_coco_record_with_bare_file_name_resolves_through_coco_url(tmp_path):
    """COCO's unlabeled / train records: bare file_name plus coco_url; the path that exists under the COCO root wins."""
    record = {"id": 7, "file_name": "000000000007.jpg",
              "coco_url": "http://images.cocodataset.org/unlabeled2017/000000000007.jpg"}
    assert image_path(record, tmp_path) == tmp_path / "000000000007.jpg"  # neither exists: file_name's path
    (tmp_path / "unlabeled2017").mkdir()
    (tmp_path / "unlabeled2017" / "000000000007.jpg").write_bytes(b"x")
    assert image_path(record, tmp_path) == tmp_path / "unlabeled2017" / "000000000007.jpg"
    (tmp_path / "000000000007.jpg").write_bytes(b"x")  # an image_root that is the folder itself: file_name first
    assert image_path(record, tmp_path) == tmp_path / "000000000007.jpg"
