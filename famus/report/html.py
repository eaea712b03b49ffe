"""``index.html``: one self-contained page; figures are embedded as base64 ``data:`` URIs."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from html import escape
from typing import Any

from famus.report.summary import COLUMNS, table_cells

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1250px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child, td:nth-child(2), td:nth-child(3) { text-align: left; }
th { background: #f3f3f3; }
figure { margin: 2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.92em; max-width: 60em; }
.missing { background: #fff6e0; border-left: 4px solid #e6a700; padding: 0.5em 1em; }
.left-out { color: #8a5a00; }
code { background: #f3f3f3; padding: 0 3px; }
li.warn { color: #a33; font-weight: 600; }
.cards { display: flex; flex-wrap: wrap; gap: 8px; margin: 1em 0; }
.card { width: 118px; border: 1px solid #ddd; padding: 4px; font-size: 0.8em; text-align: center; }
.card img { width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated; background: #000; }
.card .path { color: #666; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
"""


@dataclass
class PageFigure:
    """A rendered figure for the page: file name, title, caption, PNG bytes, runs left out."""

    filename: str
    title: str
    caption: str
    png: bytes
    left_out: list[str] = field(default_factory=list)
    html_after: str = ""  # escaped HTML shown under the figure (e.g. the run's suspects)


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def page(rows: list[dict[str, Any]], problems: dict[str, list[str]], figures: list[PageFigure],
         skipped: list[str], title: str = "famus report", sections: str = "") -> str:
    """The whole HTML page.

    Args:
        rows: summary rows (:func:`famus.report.summary.summarize`).
        problems: run name (or ``"report"``) -> what is missing or partial.
        figures: rendered figures, in page order.
        skipped: figures not drawn, with the reason (e.g. "meta gradient: no run has tracking.jsonl").
        sections: escaped HTML placed before the figures (the health check).
    """
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>", f"<h1>{escape(title)}</h1>"]
    out.append("<h2>Runs</h2><table><thead><tr>" + "".join(f"<th>{escape(c)}</th>" for c in COLUMNS)
               + "</tr></thead><tbody>")
    for r in rows:
        cells = table_cells(r)
        cells[0] = f'<span title="{escape(r["path"])}">{escape(cells[0])}</span>'
        out.append("<tr>" + "".join(f"<td>{c if j == 0 else escape(c)}</td>" for j, c in enumerate(cells))
                   + "</tr>")
    out.append("</tbody></table><p>Numbers as in each run's <code>metrics.jsonl</code>: test accuracy of the "
               "model chosen on validation data (<i>(last)</i>: no validation data, the last epoch), of the last "
               "epoch, and the best over epochs (the paper's metric, chosen on the test labels; n/a: no test split); "
               "mean time per iteration over epochs, training wall time; the chosen epoch's validation accuracy.</p>")
    if any(problems.values()) or skipped:
        out.append('<div class="missing"><h2>Missing or partial data</h2><ul>')
        for name, msgs in problems.items():
            out += [f"<li><code>{escape(name)}</code>: {escape(m)}</li>" for m in msgs]
        out += [f"<li>not drawn: {escape(s)}</li>" for s in skipped]
        out.append("</ul></div>")
    out.append(sections)
    for f in figures:
        out.append(f'<figure id="{escape(f.filename)}"><h2>{escape(f.title)}</h2>')
        out.append(f'<img src="{data_uri(f.png)}" alt="{escape(f.title)}">')
        out.append(f"<figcaption>{escape(f.caption)} <code>{escape(f.filename)}</code>")
        if f.left_out:
            out.append('<br><span class="left-out">Not shown: ' + "; ".join(escape(s) for s in f.left_out)
                       + "</span>")
        out.append("</figcaption>" + f.html_after + "</figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
