"""Text cleaning that keeps meaning: Unicode NFC, no control characters, tidy whitespace.

Indentation inside a line is kept (code rows need it); only line ends, blank-line runs and the ends
of each field are trimmed. A completion keeps one leading space, since prompt/completion data often
relies on it to tokenize the answer as the model would write it.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

# C0/C1 controls except tab and newline, plus zero-width space and byte-order mark.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\ufeff]")
_TRAILING = re.compile(r"[ \t]+\n")
_BLANK_RUN = re.compile(r"\n{3,}")
KEEP_LEADING_SPACE = ("completion",)


def clean_text(text: str, keep_leading_space: bool = False) -> str:
    out = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    out = _CONTROL.sub("", out)
    out = _BLANK_RUN.sub("\n\n", _TRAILING.sub("\n", out))
    stripped = out.strip()
    if keep_leading_space and stripped and out[:1].isspace():
        return " " + stripped
    return stripped


def clean_row(fields: dict[str, Any]) -> dict[str, Any]:
    """Every string in the row cleaned, at any depth (message contents, preference turns, labels)."""
    return {key: _clean_value(value, key in KEEP_LEADING_SPACE) for key, value in fields.items()}


def _clean_value(value: Any, keep_leading_space: bool = False) -> Any:
    if isinstance(value, str):
        return clean_text(value, keep_leading_space)
    if isinstance(value, list):
        return [_clean_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean_value(v) for k, v in value.items()}
    return value
