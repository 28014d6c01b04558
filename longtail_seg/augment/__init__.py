"""Data augmentation: balanced mosaic and strong augmentation for pseudo-labelled images."""
