"""Containment of paths that come from files we read (manifests, dataset metadata, service configs)."""

from __future__ import annotations

from pathlib import Path


def inside(base: Path, relative: str | Path) -> Path | None:
    """base/relative with symlinks and `..` resolved, or None when that lands outside base (or on it)."""
    root = Path(base).resolve()
    target = (root / relative).resolve()
    return target if target != root and target.is_relative_to(root) else None
