"""Training loops: representation learning, classifier retraining, checkpoints and resume."""
