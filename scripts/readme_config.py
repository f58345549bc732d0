"""Write `tunelab options --markdown` into README.md's config table (between its config-table markers)."""
from pathlib import Path

from tunelab.config import options_markdown

START, END = "<!-- config-table:start -->\n", "<!-- config-table:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def block(text: str) -> str:
    return text.split(START, 1)[1].split(END, 1)[0]


if __name__ == "__main__":
    text = README.read_text(encoding="utf-8")
    README.write_text(text.replace(START + block(text) + END, START + options_markdown() + END), encoding="utf-8")
