"""Result tables, the PNG curves and the self-contained HTML report."""

from __future__ import annotations

from PIL import Image

from vlpeft.report import averaged, markdown, plot_curves, write_html

ROWS = [
    {"dataset": "A", "method": "zero-shot", "shots": 0, "accuracy": 40.0},
    {"dataset": "B", "method": "zero-shot", "shots": 0, "accuracy": 60.0},
    *(
        {"dataset": d, "method": "probe", "shots": k, "accuracy": base + 10 * i}
        for d, base in (("A", 30.0), ("B", 50.0))
        for i, k in enumerate((1, 4, 16))
    ),
]


def test_average_and_markdown():
    rows = averaged(ROWS, ["A", "B"])
    avg = {(r["method"], r["shots"]): r["accuracy"] for r in rows if r["dataset"] == "average"}
    assert avg[("zero-shot", 0)] == 50.0 and avg[("probe", 16)] == 60.0
    table = markdown(rows, ["A", "B"], ["zero-shot", "probe"], 16)
    assert "| zero-shot | 40.0 | 60.0 | 50.0 |" in table and "| probe | 50.0 | 70.0 | 60.0 |" in table


def test_plot_and_html(tmp_path):
    png = plot_curves(ROWS, ["A", "B"], ["zero-shot", "probe"], [1, 4, 16], tmp_path / "c.png", "title")
    assert Image.open(png).size[0] > 800
    page = write_html(
        tmp_path / "r.html", "Report", ROWS, ["A", "B"], ["zero-shot", "probe"], [1, 4, 16], png, ["a note"]
    ).read_text()
    assert "data:image/png;base64," in page and "<h3>16-shot</h3>" in page and "a note" in page
    assert "class='best'>70.0" in page
