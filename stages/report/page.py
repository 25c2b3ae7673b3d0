"""The report's sections and how they are written: Markdown (figures as files) and self-contained HTML."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Section:
    title: str
    rows: list[list[str]] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    images: list[tuple[str, bytes]] = field(default_factory=list)
    text: str = ""
    figures: list[tuple[str, str]] = field(default_factory=list)  # (caption, SVG text)


_NUMBER = re.compile(r"^[+-]?(\d[\d.,]*|\.\d+)(e[+-]?\d+)?( ± [\d.]+)?( \(.*\))?( GB| s| %)?$")


def _is_number(cell: str) -> bool:
    return cell == "-" or bool(_NUMBER.match(cell))


def markdown_page(sections: list[Section], image_dir: Path) -> str:
    lines = ["# chddl report", ""]
    counter = 0
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.text:
            lines += [s.text, ""]
        if s.rows:
            numeric = [all(_is_number(row[i]) for row in s.rows) for i in range(len(s.header))]
            lines.append("| " + " | ".join(s.header) + " |")
            lines.append("|" + "".join("---:|" if n else ":---|" for n in numeric))
            lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in s.rows]
            lines.append("")
        for caption, svg in s.figures:
            counter += 1
            name = f"figure_{counter:03d}.svg"
            (image_dir / name).write_text(svg)
            lines += [f"![{caption}]({image_dir.name}/{name})", f"*{caption}*", ""]
        for caption, png in s.images:
            counter += 1
            name = f"image_{counter:03d}.png"
            (image_dir / name).write_bytes(png)
            lines += [f"![{caption}]({image_dir.name}/{name})", f"*{caption}*", ""]
    return "\n".join(lines)


def inline_svg(svg: str) -> str:
    """An SVG for embedding in HTML: no metadata block and no namespace
    declarations (HTML5 needs neither), so the page names no URL at all."""
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    return svg.replace("xlink:href=", "href=")


def html_page(sections: list[Section]) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        "<title>chddl report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}td.num,th.num{text-align:right}"
        "img{image-rendering:pixelated;max-width:100%;border:1px solid #eee}figure{margin:1em 0}"
        "figure svg{max-width:100%;height:auto}figcaption{font-size:90%;color:#444}</style>",
        "</head>",
        "<body>",
        "<h1>chddl report</h1>",
    ]
    for s in sections:
        parts.append(f"<h2>{esc(s.title)}</h2>")
        if s.text:
            parts.append(f"<p>{esc(s.text)}</p>")
        if s.rows:
            numeric = [all(_is_number(row[i]) for row in s.rows) for i in range(len(s.header))]
            cls = [' class="num"' if n else "" for n in numeric]
            parts.append(
                "<table><thead><tr>"
                + "".join(f"<th{c}>{esc(h)}</th>" for c, h in zip(cls, s.header))
                + "</tr></thead><tbody>"
            )
            parts += ["<tr>" + "".join(f"<td{c}>{esc(v)}</td>" for c, v in zip(cls, row)) + "</tr>" for row in s.rows]
            parts.append("</tbody></table>")
        for caption, svg in s.figures:
            parts.append(f"<figure>{inline_svg(svg)}<figcaption>{esc(caption)}</figcaption></figure>")
        for caption, png in s.images:
            data = base64.b64encode(png).decode()
            parts.append(
                f'<figure><img alt="{esc(caption)}" '
                f'src="data:image/png;base64,{data}"><figcaption>{esc(caption)}</figcaption></figure>'
            )
    parts += ["</body>", "</html>"]
    return "\n".join(parts)
