"""A self-contained report of an evaluation: one HTML file (pictures embedded, readable
offline, no scripts) and the same facts as JSON.

:func:`write_report` writes ``report.html`` and ``report.json`` into a folder: the verdict
(what the alarm found and what to do, or that it found nothing), the scalars, the pictures
(the saliency grid, the mean map, every evidence picture) and, when several evaluations are
given, each scalar plotted over the steps. ``lightning-vitrcam audit`` writes one for a
checkpoint, the callback one at the end of fit under the run's log directory.

Example:
    >>> import tempfile, torch
    >>> from lightning_vitrcam.render import Picture
    >>> folder = tempfile.mkdtemp()
    >>> pic = Picture("vitrcam/saliency_grid", torch.zeros(3, 8, 8, dtype=torch.uint8))
    >>> html = write_report(folder, title="audit", verdict=None, scalars={"adcc": 0.5},
    ...                     pictures=[pic])
    >>> html.name, "no shortcut found" in html.read_text()
    ('report.html', True)
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lightning_vitrcam.render import Picture, to_png

__all__ = ["plot_history", "write_report"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
.verdict { padding: 0.8em 1em; border-radius: 6px; font-size: 1.05em; }
.warns { background: #fde8e8; border-left: 6px solid #c62828; }
.clean { background: #e8f5e9; border-left: 6px solid #2e7d32; }
table { border-collapse: collapse; } td, th { padding: 0.2em 0.8em; border-bottom: 1px solid #ddd; }
td.num { text-align: right; font-family: monospace; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #ccc; }
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def plot_history(history: Sequence[Mapping[str, Any]]) -> str | None:
    """An inline SVG of every scalar over the steps of ``history`` (dicts with ``step`` and
    the scalars), one small panel each (no plotting library: a few polylines); None with
    fewer than two evaluations.

    Example:
        >>> svg = plot_history([{"step": 1, "adcc": 0.2}, {"step": 2, "adcc": 0.4}])
        >>> svg.startswith("<svg") and "adcc" in svg and "<polyline" in svg
        True
    """
    if len(history) < 2:
        return None
    names = sorted({k for h in history for k, v in h.items() if k != "step" and _number(v)})
    if not names:
        return None
    w, h, cols, pad = 250, 110, 4, 8
    rows = -(-len(names) // cols)
    panels = []
    for i, name in enumerate(names):
        points = [(float(e["step"]), float(e[name])) for e in history if _number(e.get(name))]
        x0, y0 = (i % cols) * (w + pad), (i // cols) * (h + pad)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        lo, hi = min(ys), max(ys)
        span_x, span_y = (max(xs) - min(xs)) or 1.0, (hi - lo) or 1.0
        coords = " ".join(
            f"{x0 + 40 + (x - min(xs)) / span_x * (w - 50):.1f},"
            f"{y0 + h - 18 - (y - lo) / span_y * (h - 40):.1f}"
            for x, y in points
        )
        panels.append(
            f'<g><rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="#fafafa"'
            f' stroke="#ddd"/><text x="{x0 + 6}" y="{y0 + 14}" font-size="12">'
            f"{html.escape(name)}</text>"
            f'<text x="{x0 + 4}" y="{y0 + 30}" font-size="9" fill="#666">{hi:.3g}</text>'
            f'<text x="{x0 + 4}" y="{y0 + h - 16}" font-size="9" fill="#666">{lo:.3g}</text>'
            f'<text x="{x0 + w - 60}" y="{y0 + h - 4}" font-size="9" fill="#666">step'
            f" {max(xs):.0f}</text>"
            f'<polyline fill="none" stroke="#1565c0" stroke-width="1.5" points="{coords}"/></g>'
        )
    width, height = cols * (w + pad), rows * (h + pad)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        f' role="img" aria-label="scalars over steps">' + "".join(panels) + "</svg>"
    )


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v


def write_report(
    folder: str | Path,
    *,
    title: str,
    verdict: str | None,
    scalars: Mapping[str, float],
    pictures: Sequence[Picture],
    history: Sequence[Mapping[str, Any]] = (),
    findings: Sequence[Mapping[str, Any]] = (),
    facts: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``report.html`` (self-contained) and ``report.json`` into ``folder``; returns the
    HTML file's path. ``verdict`` is the warning's text (None: nothing found); ``findings``
    the findings as plain dicts; ``facts`` anything else worth keeping (model, images, ...)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    warns = verdict is not None
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p>{stamp}</p>",
        '<div class="verdict {}" id="verdict"><b>{}</b>{}</div>'.format(
            "warns" if warns else "clean",
            "Possible shortcut." if warns else "No shortcut found.",
            f" {html.escape(verdict)}"
            if warns
            else " The alarm ran every test and confirmed nothing (no shortcut found).",
        ),
    ]
    if facts:
        parts.append("<h2>What was audited</h2><table>")
        parts += [
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in facts.items()
        ]
        parts.append("</table>")
    parts.append('<h2>Scalars</h2><table id="scalars">')
    parts += [
        f"<tr><th>{html.escape(k)}</th><td class='num'>{v:.4f}</td></tr>"
        for k, v in sorted(scalars.items())
        if _number(v)
    ]
    parts.append("</table>")
    plot = plot_history(history)
    if plot is not None:
        parts.append(f'<h2>Over the steps</h2><figure id="history">{plot}</figure>')
    parts.append("<h2>Pictures</h2>")
    for pic in pictures:
        caption = html.escape(pic.tag)
        parts.append(
            f'<figure><img alt="{caption}" src="{_data_uri(to_png(pic.image))}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    parts.append("</body></html>")
    path = folder / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    record = {
        "title": title,
        "written": stamp,
        "warns": warns,
        "verdict": verdict,
        "scalars": dict(scalars),
        "findings": list(findings),
        "history": list(history),
        "pictures": [p.tag for p in pictures],
        **({"facts": dict(facts)} if facts else {}),
    }
    (folder / "report.json").write_text(json.dumps(record, indent=2, default=str))
    return path
