"""Detector construction: backbones, Mask R-CNN with FPN, replaceable box classifiers."""
