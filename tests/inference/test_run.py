"""The inference entry point under an AP-fixed protocol: each category's top k over the split, the rest as the
standard run."""

from __future__ import annotations

from collections import Counter

from longtail_seg.evaluation.protocols import top_per_category
from longtail_seg.inference.config import TestConfig
from longtail_seg.inference.run import predict_annotation_file
from longtail_seg.models.detector import save_checkpoint
from tests.inference.test_tta import _model


def test_fixed_protocols_keep_each_categorys_top_k_over_the_split(small_lvis, tmp_path):
    annotations, image_root = small_lvis
    model = _model()
    checkpoint = tmp_path / "model.pth"
    save_checkpoint(checkpoint, model, model.model_cfg, [1, 2, 3])
    base = {"min_size": 32, "max_size": 200, "batch_size": 2, "max_dets": 20}
    standard, _, _ = predict_annotation_file(checkpoint, annotations, image_root, TestConfig.from_dict(base))
    per_category = Counter(r["category_id"] for r in standard)
    assert max(per_category.values()) > 2  # the cap below binds
    for protocol in ("fixed", "challenge2021"):
        cfg = TestConfig.from_dict({**base, "protocol": protocol, "dets_per_category": 2})
        fixed, _, _ = predict_annotation_file(checkpoint, annotations, image_root, cfg)
        assert fixed == top_per_category(standard, 2)
        assert max(Counter(r["category_id"] for r in fixed).values()) == 2
    boundary, _, _ = predict_annotation_file(checkpoint, annotations, image_root,
                                             TestConfig.from_dict({**base, "protocol": "boundary"}))
    assert boundary == standard
