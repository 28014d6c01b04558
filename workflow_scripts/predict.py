"""Predict on new images: a trained model_final.pth over image files or folders -> LVIS results JSON, images.json
and drawn images (the same as the `longtail-predict` console script; see longtail_seg/inference/predict_cli.py).

    python workflow_scripts/predict.py --model results/demo/models/bgs/model_final.pth --images photos/ \
        --out predictions/ --test single_scale
"""

from __future__ import annotations

from longtail_seg.inference.predict_cli import main

if __name__ == "__main__":
    main()
