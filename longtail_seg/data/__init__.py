"""Dataset reading, validation, mask decoding and the embedded synthetic long-tail dataset."""
