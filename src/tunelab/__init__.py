"""tunelab: fine-tune language models with evidence."""

__version__ = "0.1.0"
