"""The files an experiment leaves beside its runs: JSON, a Markdown table and an HTML page with plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.eval.report import escape, md_table, png_base64
from tunelab.rundir import write_atomic

Row = tuple[str, ...]

STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
         "td:first-child,th:first-child{text-align:left}img{max-width:100%}")


def figure(width: float = 7.0, height: float = 4.0, ncols: int = 1) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot.subplots(1, ncols, figsize=(width, height))


def save_png(fig: Any, path: Path) -> str:
    """Save a figure beside the report and return it as base64 for embedding; closes the figure."""
    from matplotlib import pyplot

    fig.savefig(path, dpi=100, bbox_inches="tight")
    encoded = png_base64(fig)
    pyplot.close(fig)
    return encoded


def html_table(rows: list[Row]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def write_pages(out_dir: Path, name: str, title: str, intro: list[str], tables: dict[str, list[Row]],
                images: dict[str, str]) -> None:
    """`<name>.md` and `<name>.html`: the intro lines, each table under its heading, then the plots."""
    md = [f"# {title}", "", *intro, ""]
    html = [f"<!doctype html><meta charset=utf-8><title>{escape(title)}</title><style>{STYLE}</style>",
            f"<h1>{escape(title)}</h1>", *(f"<p>{escape(line)}</p>" for line in intro)]
    for heading, rows in tables.items():
        md += [f"## {heading}", "", *md_table(rows), ""]
        html += [f"<h2>{escape(heading)}</h2>", html_table(rows)]
    for caption, encoded in images.items():
        html += [f"<h2>{escape(caption)}</h2>", f'<img alt="{escape(caption)}" src="data:image/png;base64,{encoded}">']
    write_atomic(out_dir / f"{name}.md", "\n".join(md) + "\n")
    write_atomic(out_dir / f"{name}.html", "\n".join(html) + "\n")
