"""Long-tail instance segmentation on LVIS: balanced mosaic and double classifier (LVIS Challenge 2020)."""

__version__ = "0.1.0"
