"""Scoring primitives every task and every piece of evidence uses: named metrics and batched generation."""
