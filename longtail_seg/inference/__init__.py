"""Inference: single-scale prediction to LVIS results JSON, test-time augmentation."""
