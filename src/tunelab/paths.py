"""Paths: containment of paths that come from files we read, and hashing of file contents."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def inside(base: Path, relative: str | Path) -> Path | None:
    """base/relative with symlinks and `..` resolved, or None when that lands outside base (or on it)."""
    root = Path(base).resolve()
    target = (root / relative).resolve()
    return target if target != root and target.is_relative_to(root) else None


def feed_file(digest: Any, path: Path) -> Any:
    """Stream a file's bytes into a hashlib digest (1 MiB at a time) and return the digest."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest
