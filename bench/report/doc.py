"""A report as a list of blocks, written once and rendered twice: as Markdown (GitHub) and as one self-contained
HTML page (figures inline as data URIs, tables with the same marks, no external file needed to read it).

Blocks: Heading, Text (inline Markdown: `code`, **bold**, *italic*, [links](url)), Bullets, Table (cells with their
Markdown and HTML forms), Figure (a PNG with its PDF beside it).
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Text:
    text: str


@dataclass
class Bullets:
    items: list


@dataclass
class Table:
    headers: list                 # plain text
    md: list                      # rows of Markdown cells
    html: list                    # rows of HTML cells (already escaped and marked)
    align: list = field(default_factory=list)       # "left" | "right" per column


@dataclass
class Figure:
    png: Path
    alt: str


def table(headers: list, md_rows: list, html_rows: list | None = None, align: list | None = None) -> Table:
    """A table whose HTML cells default to the escaped Markdown text."""
    if html_rows is None:
        html_rows = [[inline(c) for c in r] for r in md_rows]
    return Table(headers, md_rows, html_rows, align or ["left"] * len(headers))


# ---- Markdown ----------------------------------------------------------------------------------------------------
def to_markdown(blocks: list, root: Path) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Text):
            out += [b.text, ""]
        elif isinstance(b, Bullets):
            out += [f"- {i}" for i in b.items] + [""]
        elif isinstance(b, Table):
            out += [tabulate(b.md, headers=b.headers, tablefmt="github", disable_numparse=True,
                             colalign=b.align or None), ""]
        elif isinstance(b, Figure):
            png = Path(b.png).relative_to(root).as_posix()
            out += [f"![{b.alt}]({png}) ([PDF]({Path(png).with_suffix('.pdf').as_posix()}))", ""]
    return "\n".join(out).rstrip() + "\n"


# ---- HTML --------------------------------------------------------------------------------------------------------
_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITAL = re.compile(r"(?<![*\w])\*(?!\s)(.+?)(?<!\s)\*(?![*\w])")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_INS = re.compile(r"&lt;ins&gt;(.+?)&lt;/ins&gt;")


def inline(text: str) -> str:
    """Inline Markdown -> HTML (escaped first)."""
    s = html.escape(str(text), quote=False)
    codes = []

    def keep(m):
        codes.append(m.group(1))
        return f"\0{len(codes) - 1}\0"
    s = _CODE.sub(keep, s)
    s = _LINK.sub(lambda m: f'<a href="{_href(m.group(2))}">{m.group(1)}</a>', s)
    s = _BOLD.sub(r"<b>\1</b>", s)
    s = _ITAL.sub(r"<i>\1</i>", s)
    s = _INS.sub(r"<u>\1</u>", s)
    return re.sub(r"\0(\d+)\0", lambda m: f"<code>{codes[int(m.group(1))]}</code>", s)


def _href(url: str) -> str:
    return url[:-3] + ".html" if url.endswith(".md") and "://" not in url else url


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.6em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }
h3 { font-size: 1.08em; margin-top: 1.4em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .9em; }
th, td { border: 1px solid #d0d0d0; padding: .25em .6em; }
th { background: #f3f3f3; } td.r { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; display: block; margin: .5em 0; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; font-size: .92em; }
.fig { margin: 1em 0; } .fig a { font-size: .85em; }
nav { font-size: .9em; margin-bottom: 1.5em; }
</style></head><body>
<nav><a href="index.html">all reports</a></nav>
{{ body }}
</body></html>
"""


def _td(cell: str, align: str) -> str:
    return f'<td class="r">{cell}</td>' if align == "right" else f"<td>{cell}</td>"


def to_html(blocks: list, root: Path, title: str) -> str:
    import jinja2
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{inline(b.text)}</h{b.level}>")
        elif isinstance(b, Text):
            parts.append(f"<p>{inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in b.headers)
            rows = "".join("<tr>" + "".join(_td(c, a) for c, a in zip(r, b.align or ["left"] * len(r))) + "</tr>"
                           for r in b.html)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Figure):
            data = base64.b64encode(Path(b.png).read_bytes()).decode()
            pdf = Path(b.png).with_suffix(".pdf").relative_to(root).as_posix()
            parts.append(f'<div class="fig"><img alt="{html.escape(b.alt)}" src="data:image/png;base64,{data}">'
                         f'<a href="{pdf}">PDF</a></div>')
    return jinja2.Template(PAGE, autoescape=False).render(title=html.escape(title), body="\n".join(parts))
