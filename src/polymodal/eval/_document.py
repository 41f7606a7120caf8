"""A report as a list of blocks (heading, paragraph, table, image), rendered to Markdown and to one HTML file.

Building the content once and rendering it twice keeps the two formats from drifting apart. Every text that
may come from a user (labels, run names, extra keys) is escaped here, by the renderers, so report code cannot
forget to.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric_from: int = 1
    """Columns from this index on are right-aligned numbers."""


@dataclass(frozen=True)
class Image:
    file_name: str
    """PNG next to the report, relative to its folder."""
    alt: str


Block = Heading | Paragraph | Table | Image


def table(header: Sequence[str], rows: Sequence[Sequence[object]], numeric_from: int = 1) -> Table:
    return Table(tuple(header), tuple(tuple(str(c) for c in row) for row in rows), numeric_from)


def to_markdown(title: str, blocks: Sequence[Block]) -> str:
    """GitHub-flavoured Markdown; images are linked by relative path."""
    out = [f"# {_md(title)}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            out += [f"{'#' * block.level} {_md(block.text)}", ""]
        elif isinstance(block, Paragraph):
            out += [_md(block.text), ""]
        elif isinstance(block, Table):
            align = [":--" if i < block.numeric_from else "--:" for i in range(len(block.header))]
            out.append("| " + " | ".join(_md(h) for h in block.header) + " |")
            out.append("| " + " | ".join(align) + " |")
            out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in block.rows]
            out.append("")
        else:
            out += [f"![{_md(block.alt)}]({block.file_name})", ""]
    return "\n".join(out)


def to_html(title: str, blocks: Sequence[Block], image_dir: Path) -> str:
    """One self-contained HTML page: inline CSS, PNGs from ``image_dir`` embedded as base64 data URIs."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for block in blocks:
        if isinstance(block, Heading):
            level = min(max(block.level, 2), 6)
            body.append(f"<h{level}>{html.escape(block.text, quote=False)}</h{level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{html.escape(block.text, quote=False)}</p>")
        elif isinstance(block, Table):
            body.append(_html_table(block))
        else:
            data = base64.b64encode((image_dir / block.file_name).read_bytes()).decode("ascii")
            alt = html.escape(block.alt, quote=True)
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"></figure>')
    return _PAGE.format(title=html.escape(title), body="\n".join(body))


def _html_table(block: Table) -> str:
    def cells(row: Sequence[str], tag: str) -> str:
        opens = [f'<{tag} class="num">' if i >= block.numeric_from else f"<{tag}>" for i in range(len(row))]
        return "".join(f"{o}{html.escape(c)}</{tag}>" for o, c in zip(opens, row))

    rows = "\n".join(f"<tr>{cells(row, 'td')}</tr>" for row in block.rows)
    return f"<table>\n<thead><tr>{cells(block.header, 'th')}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>"


# Markdown would render raw HTML and treat these as syntax: "_" only at a word edge, "](" as an inline link.
# Plain brackets stay as they are, so "[low, high]" intervals read naturally in the raw file.
_MD_SPECIAL = re.compile(r"[\\`*|]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])|(?<=\])\(")


def _md(text: str) -> str:
    text = " ".join(str(text).split())  # a newline would end a table row
    text = html.escape(text, quote=False)
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), text)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 960px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }}
h1 {{ border-bottom: 2px solid #ddd; padding-bottom: .3em; }}
h2 {{ margin-top: 1.8em; border-bottom: 1px solid #eee; padding-bottom: .2em; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: .95em; }}
th, td {{ border: 1px solid #ccc; padding: .3em .7em; text-align: left; }}
th {{ background: #f3f3f3; }}
td.num, th.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
tbody tr:nth-child(even) {{ background: #fafafa; }}
figure {{ margin: 1em 0; }}
img {{ max-width: 100%; height: auto; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""
