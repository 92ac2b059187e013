"""Result tables, few-shot curves (PNG, drawn with PIL) and a self-contained HTML report.

A result row is ``{"dataset", "method", "shots", "accuracy"}`` (accuracy in percent; zero-shot
rows may have ``shots=0``). Nothing here needs matplotlib.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from vlpeft.io import write_bytes_atomic, write_text_atomic

PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (57, 59, 121),
    (173, 73, 74),
    (99, 121, 57),
    (206, 109, 189),
    (82, 84, 163),
]
ZERO_SHOT = "zero-shot"
STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}"
    "td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f6f6f6}"
    "td.best{font-weight:bold;background:#e8f4e8}img{max-width:100%;border:1px solid #eee}"
)
AVERAGE = "average"


def pivot(rows: Sequence[dict]) -> dict[tuple[str, str, int], float]:
    """``{(method, dataset, shots): accuracy}``; zero-shot rows count for every shot value."""
    return {(r["method"], r["dataset"], int(r["shots"])): float(r["accuracy"]) for r in rows}


def lookup(table: dict, method: str, dataset: str, shots: int) -> float | None:
    if method == ZERO_SHOT:
        return next((v for (m, d, _), v in table.items() if m == method and d == dataset), None)
    return table.get((method, dataset, shots))


def averaged(rows: Sequence[dict], datasets: Sequence[str]) -> list[dict]:
    """Rows plus an ``average`` dataset (mean over ``datasets``) for every method and shot count."""
    table = pivot(rows)
    keys = sorted({(r["method"], int(r["shots"])) for r in rows})
    extra = []
    for method, shots in keys:
        values = [lookup(table, method, d, shots) for d in datasets]
        if all(v is not None for v in values):
            extra.append(
                {"dataset": AVERAGE, "method": method, "shots": shots, "accuracy": sum(values) / len(values)}
            )
    return [*rows, *extra]


def markdown(rows: Sequence[dict], datasets: Sequence[str], methods: Sequence[str], shots: int) -> str:
    """A markdown table: methods x datasets (+ average) at ``shots`` shots."""
    table = pivot(averaged(rows, datasets))
    cols = [*datasets, AVERAGE]
    lines = [f"| {shots}-shot | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for method in methods:
        cells = [lookup(table, method, d, shots) for d in cols]
        lines.append(f"| {method} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in cells) + " |")
    return "\n".join(lines)


# ---- plotting ---------------------------------------------------------------------------------


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _panel(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    title: str,
    series: dict,
    shots: Sequence[int],
    colors: dict,
) -> None:
    """One panel: accuracy vs shots (log2 x axis), a line per method, zero-shot dashed."""
    left, top, right, bottom = box
    values = [v for line in series.values() for v in line if v is not None]
    lo, hi = (math.floor(min(values) / 10) * 10, math.ceil(max(values) / 10) * 10) if values else (0, 100)
    hi = max(hi, lo + 10)
    xs = [math.log2(k) for k in shots]
    px = lambda x: left + 40 + (x - xs[0]) / max(xs[-1] - xs[0], 1e-9) * (right - left - 55)  # noqa: E731
    py = lambda y: bottom - 30 - (y - lo) / (hi - lo) * (bottom - top - 55)  # noqa: E731
    font, small = _font(15), _font(11)
    draw.text((left + 40, top + 4), title, fill=(20, 20, 20), font=font)
    draw.rectangle([left + 40, top + 25, right - 15, bottom - 30], outline=(180, 180, 180))
    for y in range(lo, hi + 1, 10):
        draw.line([(left + 40, py(y)), (right - 15, py(y))], fill=(232, 232, 232))
        draw.text((left + 8, py(y) - 6), f"{y}", fill=(90, 90, 90), font=small)
    for x, k in zip(xs, shots, strict=True):
        draw.text((px(x) - 4, bottom - 25), str(k), fill=(90, 90, 90), font=small)
    for method, line in series.items():
        pts = [(px(x), py(v)) for x, v in zip(xs, line, strict=True) if v is not None]
        if method == ZERO_SHOT and pts:
            for x0 in range(int(pts[0][0]), int(pts[-1][0]), 8):
                draw.line([(x0, pts[0][1]), (x0 + 4, pts[0][1])], fill=(0, 0, 0), width=2)
            continue
        if len(pts) > 1:
            draw.line(pts, fill=colors[method], width=2)
        for x, y in pts:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colors[method])


def plot_curves(
    rows: Sequence[dict],
    datasets: Sequence[str],
    methods: Sequence[str],
    shots: Sequence[int],
    path: str | Path,
    title: str = "",
) -> Path:
    """Few-shot curves: one panel per dataset plus the average; writes a PNG atomically."""
    table = pivot(averaged(rows, datasets))
    panels = [*datasets, AVERAGE]
    cols, w, h, legend_w = 3, 360, 260, 190
    n_rows = math.ceil(len(panels) / cols)
    img = Image.new("RGB", (cols * w + legend_w, n_rows * h + 40), "white")
    draw = ImageDraw.Draw(img)
    colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}
    draw.text((10, 8), title, fill=(0, 0, 0), font=_font(18))
    for i, dataset in enumerate(panels):
        series = {m: [lookup(table, m, dataset, k) for k in shots] for m in methods}
        box = ((i % cols) * w, 40 + (i // cols) * h, (i % cols + 1) * w, 40 + (i // cols + 1) * h)
        _panel(draw, box, dataset, series, shots, colors)
    for i, method in enumerate(methods):
        y = 70 + 20 * i
        if method == ZERO_SHOT:
            draw.line([(cols * w + 10, y + 7), (cols * w + 34, y + 7)], fill=(0, 0, 0), width=2)
        else:
            draw.line([(cols * w + 10, y + 7), (cols * w + 34, y + 7)], fill=colors[method], width=3)
        draw.text((cols * w + 42, y), method, fill=(30, 30, 30), font=_font(13))
    draw.text(
        (10, n_rows * h + 22),
        "x: shots per class (log scale)   y: test accuracy (%)",
        fill=(90, 90, 90),
        font=_font(12),
    )
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
    return Path(path)


# ---- HTML ---------------------------------------------------------------------------------------


def _html_table(rows: Sequence[dict], datasets: Sequence[str], methods: Sequence[str], shots: int) -> str:
    table = pivot(averaged(rows, datasets))
    cols = [*datasets, AVERAGE]
    best = {d: max((lookup(table, m, d, shots) or -1) for m in methods) for d in cols}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for m in methods:
        cells = []
        for d in cols:
            v = lookup(table, m, d, shots)
            text = "-" if v is None else f"{v:.1f}"
            cells.append(
                f"<td class='best'>{text}</td>" if v is not None and v == best[d] else f"<td>{text}</td>"
            )
        body.append(f"<tr><th>{html.escape(m)}</th>{''.join(cells)}</tr>")
    return f"<h3>{shots}-shot</h3><table><tr><th>method</th>{head}</tr>{''.join(body)}</table>"


def write_html(
    path: str | Path,
    title: str,
    rows: Sequence[dict],
    datasets: Sequence[str],
    methods: Sequence[str],
    shots: Sequence[int],
    plot: str | Path,
    notes: Sequence[str] = (),
) -> Path:
    """A single self-contained HTML page: notes, one table per shot count (best bold), the curves."""
    png = base64.b64encode(Path(plot).read_bytes()).decode()
    tables = "".join(_html_table(rows, datasets, methods, k) for k in shots)
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1><ul>{items}</ul>{tables}
<h2>Few-shot curves</h2><img alt="few-shot curves" src="data:image/png;base64,{png}"></body></html>"""
    write_text_atomic(path, page)
    return Path(path)
