"""Where base models come from: bundled aliases, local checkpoint dirs, and the rules for loading them."""

from tunelab.models.registry import BUNDLED, list_models, resolve_model

__all__ = ["BUNDLED", "list_models", "resolve_model"]
