"""Evaluation: held-out loss, generation metrics, and the before/after comparison."""
