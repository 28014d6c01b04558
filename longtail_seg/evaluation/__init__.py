"""LVIS evaluation (hotcoco) and ablation tables."""
