"""A report as a list of blocks, rendered to Markdown and to one self-contained HTML file
(figures embedded as base64, no external CSS or scripts)."""

from __future__ import annotations

import base64
import contextlib
import html
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

COMPARE_FIGURE = "compare.png"  # RUN/figures/: `segbench report --compare`'s chart, kept by a report rebuild


@dataclass
class Block:
    kind: str  # "h1" | "h2" | "h3" | "p" | "list" | "table" | "img" | "code"
    content: object
    alt: str = ""


def _md_cell(value: object) -> str:
    """One table cell: on one line (\r too ends a line), its pipes and backslashes escaped, and `<` as
    an entity outside code spans (an error's `<module>` or `vector<float>` would be taken for an HTML
    tag; inside backticks the entity would show literally)."""
    text = " ".join(str(value).splitlines())
    return _md_text(text.replace("\\", "\\\\").replace("|", "\\|"))


def _md_text(text: object) -> str:
    """Text outside tables with `<` as an entity outside code spans (an error's `<lambda>` would be
    dropped as an unknown HTML tag; inside backticks the entity would show literally)."""
    parts = str(text).split("`")
    lone = None
    if len(parts) % 2 == 0:  # an odd number of backticks (a cut message): the last opens no code span
        lone = parts.pop()
    text = "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))
    return text if lone is None else text + "`" + lone.replace("<", "&lt;")


def md_table(df: pd.DataFrame) -> str:
    header = "| " + " | ".join(_md_cell(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def to_markdown(blocks: list[Block], base: Path) -> str:
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + _md_text(b.content))
        elif b.kind == "p":
            out.append(_md_text(b.content))
        elif b.kind == "list":
            # one line each: an error's own line breaks would end the item
            out.append("\n".join(f"- {_md_text(' '.join(str(item).splitlines()))}" for item in b.content))
        elif b.kind == "table":
            out.append(md_table(b.content))
        elif b.kind == "img":
            out.append(f"![{b.alt}]({Path(os.path.relpath(b.content, base)).as_posix()})")
        elif b.kind == "code":
            out.append(f"```\n{b.content}\n```")
    return "\n\n".join(out) + "\n"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f0f0f0} tr:nth-child(even){background:#fafafa}
td.error{color:#a00} td.unavailable{color:#888} img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
code,pre{background:#f6f6f6;padding:2px 4px} pre{padding:8px;overflow-x:auto}
"""


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for row in df.itertuples(index=False):
        cells = []
        for col, value in zip(df.columns, row, strict=False):
            cls = f' class="{value}"' if col == "status" and value in ("error", "unavailable") else ""
            cells.append(f"<td{cls}>{html.escape(str(value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def to_html(blocks: list[Block], title: str) -> str:
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>"
    ]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append(f"<{b.kind}>{html.escape(str(b.content))}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{html.escape(str(b.content))}</p>")
        elif b.kind == "list":
            out.append("<ul>" + "".join(f"<li>{html.escape(str(i))}</li>" for i in b.content) + "</ul>")
        elif b.kind == "table":
            out.append(_html_table(b.content))
        elif b.kind == "img":
            data = base64.b64encode(Path(b.content).read_bytes()).decode()
            out.append(f"<img alt='{html.escape(b.alt)}' src='data:image/png;base64,{data}'>")
        elif b.kind == "code":
            out.append(f"<pre>{html.escape(str(b.content))}</pre>")
    out.append("</body></html>")
    return "\n".join(out)


def temp_name(path: Path) -> Path:
    """A temporary sibling of `path` no other writer uses (a finishing bench and a manual `segbench
    report` of one run may write at once)."""
    return path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yields a temporary sibling of `path` to write; on leaving without an error it replaces `path`.
    A failed write leaves no temporary file (their names are unique: none is reused)."""
    tmp = temp_name(path)
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> Path:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
