"""``vlpeft report DIR``: the comparison tables, curves and costs of a bench directory.

Per protocol: methods x datasets with mean ± std over seeds and an average column, the best mean
of each column in bold (published numbers, marked "reported", never count as best); few-shot
curves (one panel per dataset plus the average); base / new / harmonic mean; cross-dataset and
domain-generalisation transfer; a cost table. Written as ``report.md``, a self-contained
``report.html`` (images inlined, no scripts), ``curves.png`` and each table as CSV and LaTeX under
``tables/``.

Conventions (the papers'): the average column is the mean over datasets of the per-dataset means,
and its ± is the standard deviation over seeds of the per-seed averages; standard deviations are
the sample ones (n - 1) and are left out for a single seed. The base-to-new harmonic mean is
computed from the averaged base and new accuracies, HM = 2 B N / (B + N), per dataset from its
seed-means and on average from the dataset-averaged B and N — not the mean of per-dataset HMs.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import pandas as pd

from vlpeft.bench.spec import slug
from vlpeft.io import write_bytes_atomic, write_text_atomic

AVERAGE = "Average"
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
REPORTED = " (reported)"
# Backbone specs whose published numbers the report can show (the papers' names for them).
BACKBONE_NAMES = {
    "hf:openai/clip-vit-base-patch16": "ViT-B/16",
    "hf:openai/clip-vit-base-patch32": "ViT-B/32",
    "hf:openai/clip-vit-large-patch14": "ViT-L/14",
    "openclip:ViT-B-16/openai": "ViT-B/16",
    "openclip:RN50/openai": "RN50",
}
STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}"
    "td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f6f6f6}"
    "td.name{text-align:left}td.best{font-weight:bold;background:#e8f4e8}"
    "tr.reported td{color:#777;font-style:italic}"
    "img{max-width:100%;border:1px solid #eee}p.note{color:#555}"
)


@dataclass
class Table:
    """Means (rows: display names, columns) with optional standard deviations and counts."""

    title: str
    mean: pd.DataFrame
    std: pd.DataFrame | None = None
    note: str = ""
    reported: set[str] = field(default_factory=set)  # rows of published numbers
    digits: int = 1
    mark_best: bool = True  # False where a larger value is not better (costs)
    shots: int | None = None  # few-shot tables: their shot count (0: zero-shot alone)
    integer_columns: tuple[str, ...] = ()

    def cell(self, row: str, col: str) -> str:
        value = self.mean.at[row, col]
        if pd.isna(value):
            return "-"
        text = f"{value:,.0f}" if col in self.integer_columns else f"{value:,.{self.digits}f}"
        if self.std is not None and row in self.std.index and col in self.std.columns:
            spread = self.std.at[row, col]
            if not pd.isna(spread):
                text += f" ± {spread:.{self.digits}f}"
        return text

    def best(self, col: str) -> str | None:
        if not self.mark_best:
            return None
        ours = self.mean.loc[[r for r in self.mean.index if r not in self.reported], col].dropna()
        return None if len(ours) < 2 else str(ours.idxmax())  # one of ours alone is no contest

    def rows(self) -> list[tuple[str, list[tuple[str, bool]]]]:
        cols = list(self.mean.columns)
        bests = {c: self.best(c) for c in cols}
        return [(r, [(self.cell(r, c), bests[c] == r) for c in cols]) for r in self.mean.index]

    def markdown(self) -> str:
        cols = [str(c) for c in self.mean.columns]
        lines = [f"| {self.title} | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for name, cells in self.rows():
            lines.append(f"| {name} | " + " | ".join(f"**{t}**" if b else t for t, b in cells) + " |")
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in self.mean.columns)
        body = []
        for name, cells in self.rows():
            tds = "".join(
                f"<td class='best'>{html.escape(t)}</td>" if b else f"<td>{html.escape(t)}</td>"
                for t, b in cells
            )
            klass = " class='reported'" if name in self.reported else ""
            body.append(f"<tr{klass}><td class='name'>{html.escape(name)}</td>{tds}</tr>")
        return f"<table><tr><th>{html.escape(self.title)}</th>{head}</tr>{''.join(body)}</table>"

    def latex(self) -> str:
        frame = pd.DataFrame(
            [[(f"\\textbf{{{_tex(t)}}}" if b else _tex(t)) for t, b in cells] for _, cells in self.rows()],
            index=[_tex(r) for r in self.mean.index],
            columns=[_tex(str(c)) for c in self.mean.columns],
        )
        return frame.to_latex(escape=False, column_format="l" + "r" * len(frame.columns))

    def csv(self) -> str:
        frame = self.mean.copy()
        if self.std is not None:
            frame = frame.join(self.std.add_suffix(" std"))
        return frame.to_csv(index_label=self.title)


def _tex(text: str) -> str:
    for a, b in (
        ("\\", "\\textbackslash{}"),
        ("&", "\\&"),
        ("%", "\\%"),
        ("_", "\\_"),
        ("#", "\\#"),
        ("±", "$\\pm$"),
    ):
        text = text.replace(a, b)
    return text


# ---- aggregation -------------------------------------------------------------------------------


def _order(values: Sequence[str], preferred: Sequence[str]) -> list[str]:
    present = list(dict.fromkeys(values))
    return [v for v in preferred if v in present] + [v for v in present if v not in preferred]


def seed_table(
    frame: pd.DataFrame, columns: Sequence[str], names: Sequence[str], average_over: Sequence[str] | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and std over seeds of accuracy per (name, column); optionally an Average column.

    ``frame`` has columns name, column, seed, accuracy (one value per seed and cell).
    """
    grouped = frame.groupby(["name", "column"])["accuracy"]
    mean = grouped.mean().unstack("column").reindex(index=names, columns=list(columns))
    std = grouped.std(ddof=1).unstack("column").reindex(index=names, columns=list(columns))
    if average_over:
        subset = frame[frame["column"].isin(average_over)]
        per_seed = subset.groupby(["name", "seed"]).agg(acc=("accuracy", "mean"), n=("column", "nunique"))
        per_seed = per_seed[per_seed["n"] == len(average_over)]["acc"]
        mean[AVERAGE] = mean[list(average_over)].mean(axis=1, skipna=False)
        std[AVERAGE] = per_seed.groupby("name").std(ddof=1).reindex(names)
    return mean, std


def few_shot_tables(frame: pd.DataFrame, datasets: Sequence[str], names: Sequence[str]) -> dict[int, Table]:
    rows = frame[frame["split"] == "test"]
    fixed = rows[rows["shots"] == 0]  # methods that never see training images: every column
    shots = sorted(int(k) for k in rows["shots"].unique() if k)
    tables = {}
    for k in shots or [0]:
        part = pd.concat([rows[rows["shots"] == k], fixed]) if k else fixed
        part = part.assign(column=part["dataset"])
        mean, std = seed_table(part, datasets, names, datasets if len(datasets) > 1 else None)
        label = f"{k}-shot" if k else "zero-shot"
        tables[k] = Table(label, mean.dropna(how="all"), std, shots=k)
    return tables


def base_to_new_tables(frame: pd.DataFrame, datasets: Sequence[str], names: Sequence[str]) -> list[Table]:
    """Base / new / HM per dataset and on average (HM of the averaged accuracies)."""
    means = frame.groupby(["name", "dataset", "split"])["accuracy"].mean().unstack("split")
    tables = []
    for dataset in [AVERAGE, *datasets]:
        if dataset == AVERAGE:
            part = (
                means.reset_index()
                .groupby("name")[["base", "new"]]
                .agg(lambda s: s.mean() if s.notna().sum() == len(datasets) else math.nan)
            )
        else:
            part = (
                means.xs(dataset, level="dataset")[["base", "new"]]
                if dataset in means.index.get_level_values(1)
                else None
            )
        if part is None:
            continue
        part = part.reindex(names)
        table = pd.DataFrame(
            {"Base": part["base"], "New": part["new"], "HM": harmonic_mean(part["base"], part["new"])}
        )
        tables.append(Table(dataset, table.dropna(how="all")))
    return tables


def harmonic_mean(base: Any, new: Any) -> Any:
    return 2 * base * new / (base + new)


def transfer_table(
    frame: pd.DataFrame, source: str, targets: Sequence[str], names: Sequence[str], title: str
) -> Table:
    part = frame.assign(column=frame["dataset"].where(frame["split"] == "target", source))
    columns = [source, *targets]
    mean, std = seed_table(part, columns, names, targets if len(targets) > 1 else None)
    return Table(title, mean.dropna(how="all"), std, note="Average: over the target datasets.")


def cost_table(frame: pd.DataFrame, names: Sequence[str]) -> Table:
    own = frame.drop_duplicates("run_dir")
    grouped = own.groupby("name")
    table = pd.DataFrame(
        {
            "runs": grouped.size(),
            "fit time (s, mean)": grouped["fit_time_s"].mean(),
            "trainable parameters": grouped["trainable_parameters"].median(),
            "peak memory (MB, max)": grouped["peak_memory_mb"].max(),
            "image-encoder forwards (total)": grouped["image_encoder_forwards"].sum(),
        }
    ).reindex(names)
    counts = ("runs", "trainable parameters", "image-encoder forwards (total)")
    return Table("cost", table.dropna(how="all"), digits=1, mark_best=False, integer_columns=counts)


# ---- published numbers ---------------------------------------------------------------------------


def reported_numbers() -> pd.DataFrame:
    """The papers' published numbers shipped with vlpeft (``bench/reported.csv``, with sources)."""
    text = (files("vlpeft.bench") / "reported.csv").read_text()
    return pd.read_csv(io.StringIO(text))


def reported_label(method: str, source: str, sources: int) -> str:
    """``coop (reported)``; with the source's repository when a method has several published sets."""
    return f"{method}{REPORTED}" if sources == 1 else f"{method} (reported, {source.split()[0]})"


def add_reported(table: Table, rows: pd.DataFrame, column_of: dict[str, str]) -> None:
    """Rows of published numbers for the table's cells; ``column_of`` maps a CSV key to a column.

    The key is the CSV's dataset (``average`` for the Average column) or, for base-to-new, its split.
    """
    key = "split" if set(column_of) & {"base", "new", "hm"} else "dataset"
    sources = rows.groupby("method")["source"].nunique()
    extra: dict[str, dict[str, float]] = {}
    for (method, source), part in rows.groupby(["method", "source"], sort=False):
        cells = {column_of[k]: v for k, v in zip(part[key], part["accuracy"], strict=True) if k in column_of}
        if cells:
            extra[reported_label(str(method), str(source), int(sources[method]))] = cells
    if extra:
        frame = pd.DataFrame.from_dict(extra, orient="index").reindex(columns=table.mean.columns)
        table.mean = pd.concat([table.mean, frame])
        table.reported |= set(extra)


def _dataset_columns(columns: Sequence[str]) -> dict[str, str]:
    return {("average" if c == AVERAGE else c): c for c in columns}


# ---- the report ----------------------------------------------------------------------------------


def build_report(out: str | Path) -> dict[str, Path]:
    """Write report.md, report.html, curves.png and tables/*.csv|tex for a bench directory."""
    from vlpeft.bench.grid import saved_spec
    from vlpeft.bench.table import collect

    out = Path(out)
    spec = saved_spec(out)
    frame = collect(out)
    names = [m["name"] for m in spec["methods"]]
    sections: list[tuple[str, list[Table], str]] = []
    images: dict[str, bytes] = {}
    reported = reported_numbers()
    for backbone, part in frame.groupby("backbone", sort=False):
        published = reported[
            (reported["backbone"] == BACKBONE_NAMES.get(backbone, ""))
            & (reported["protocol"] == spec["protocol"])
        ]
        tables, text = _protocol_tables(spec, part, names, published)
        sections.append((f"{spec['protocol']} — {backbone}", tables, text))
        if spec["protocol"] == "few-shot" and part["shots"].nunique() > 1:
            by_shots = {t.shots: t for t in tables}
            images[backbone] = curves_png(
                part, by_shots, [d["name"] for d in spec["datasets"]], names, backbone
            )
    if not frame.empty:
        sections.append(("cost", [cost_table(frame, names)], "Per method, over its runs in this directory."))
    return _write(out, spec, sections, images, frame)


def _protocol_tables(
    spec: dict, frame: pd.DataFrame, names: list[str], published: pd.DataFrame
) -> tuple[list[Table], str]:
    protocol = spec["protocol"]
    if protocol == "few-shot":
        datasets = [d["name"] for d in spec["datasets"]]
        tables = few_shot_tables(frame, datasets, names)
        for k, t in tables.items():
            rows = published[(published["split"] == "test") & (published["shots"] == k)]
            add_reported(t, rows, _dataset_columns(t.mean.columns))
        return list(tables.values()), "Top-1 test accuracy (%), mean ± std over seeds."
    if protocol == "base-to-new":
        datasets = [d["name"] for d in spec["datasets"]]
        tables = base_to_new_tables(frame, datasets, names)
        for t in tables:
            rows = published[published["dataset"] == ("average" if t.title == AVERAGE else t.title)]
            add_reported(t, rows, {"base": "Base", "new": "New", "hm": "HM"})
        return tables, (
            "Train on the base classes (first half by label), evaluate on base and on new classes; "
            "HM = 2·B·N/(B+N) of the averaged accuracies (per dataset over seeds; on average over datasets)."
        )
    source, targets = spec["source"]["name"], [t["name"] for t in spec["targets"]]
    title = "cross-dataset" if protocol == "cross-dataset" else "domain generalisation"
    table = transfer_table(frame, source, targets, names, title)
    add_reported(table, published, _dataset_columns(table.mean.columns))
    how = (
        "with the target's class names"
        if protocol == "cross-dataset"
        else "on the source classifier's columns of the target's classes"
    )
    return [table], f"Trained on {source}, evaluated on each target {how}. {table.note}"


def curves_png(
    frame: pd.DataFrame, tables: dict[int, Table], datasets: Sequence[str], names: Sequence[str], title: str
) -> bytes:
    """Few-shot curves from the per-shots ``tables``: one panel per dataset and the average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = sorted(k for k in tables if k)
    panels = [*datasets, AVERAGE] if len(datasets) > 1 else list(datasets)
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for i, name in enumerate(names):
            means = [tables[k].mean.get(panel, pd.Series(dtype=float)).get(name, math.nan) for k in shots]
            stds = [tables[k].std.get(panel, pd.Series(dtype=float)).get(name, math.nan) for k in shots]
            if all(pd.isna(m) for m in means):
                continue
            if frame[(frame["name"] == name)]["shots"].max() == 0:  # zero-shot: a level, not a curve
                ax.axhline(means[0], ls="--", color="gray", lw=1, label=name)
                continue
            ax.errorbar(
                shots,
                means,
                yerr=[0 if pd.isna(s) else s for s in stds],
                marker=MARKERS[i % len(MARKERS)],
                ms=4,
                capsize=2,
                label=name,
                color=plt.cm.tab20(i % 20),  # 20 colours and 7 markers: no two of 12+ methods look alike
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.set_title(panel)
        ax.set_xlabel("shots per class")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, max(len(labels), 1)), frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * math.ceil(len(labels) / 6), 1, 0.97))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _write(out: Path, spec: dict, sections, images: dict[str, bytes], frame: pd.DataFrame) -> dict[str, Path]:
    title = f"vlpeft bench: {spec['name']} ({spec['protocol']})"
    seeds = ", ".join(str(s) for s in spec["seeds"])
    notes = [
        f"{frame['run_dir'].nunique()} runs; seeds {seeds}; validation policy {spec['val_policy']}; "
        "test labels read once, after fitting.",
        "Average column: mean over datasets of the per-dataset means; ± is the std over seeds (n - 1) "
        "of the per-seed averages. Rows marked (reported) are published numbers (sources in "
        "vlpeft/bench/reported.csv); they never count as best.",
    ]
    md = [f"# {title}", "", *[f"- {n}" for n in notes], ""]
    page = [
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
    ]
    page += [f"<h1>{html.escape(title)}</h1>", *[f"<p class='note'>{html.escape(n)}</p>" for n in notes]]
    written = {}
    tables_dir = out / "tables"
    for heading, tables, text in sections:
        md += [f"## {heading}", "", text, ""]
        page += [f"<h2>{html.escape(heading)}</h2>", f"<p class='note'>{html.escape(text)}</p>"]
        for table in tables:
            md += [table.markdown(), ""]
            page += [f"<h3>{html.escape(table.title)}</h3>", table.html()]
            stem = slug(f"{heading}-{table.title}").lower()
            write_text_atomic(tables_dir / f"{stem}.csv", table.csv())
            write_text_atomic(tables_dir / f"{stem}.tex", table.latex())
    for i, (backbone, png) in enumerate(images.items()):
        name = "curves.png" if i == 0 else f"curves-{slug(backbone).lower()}.png"
        write_bytes_atomic(out / name, png)
        written[name] = out / name
        md += [f"![few-shot curves, {backbone}]({name})", ""]
        data = base64.b64encode(png).decode()
        page.append(f"<h2>few-shot curves — {html.escape(backbone)}</h2>")
        page.append(f"<img alt='few-shot curves' src='data:image/png;base64,{data}'>")
    page.append("</body></html>")
    write_text_atomic(out / "report.md", "\n".join(md))
    write_text_atomic(out / "report.html", "\n".join(page))
    return {"report.md": out / "report.md", "report.html": out / "report.html", **written}
