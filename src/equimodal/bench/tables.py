"""Result tables in the layout of the papers (Markdown, LaTeX, HTML).

* Classification / multilabel (OGM-GE, UDI style): per dataset, one row per modality's
  unimodal score (the split read-out, ``<m> (unimodal)``), followed by its linear probe on
  frozen features (``<m> (probe)``, when runs report one) and a fusion row, one column per
  method.
* Regression (MSA style): per dataset, one row per method, columns Acc-2 and F1 (each
  ``has0 / non0``), Acc-7, MAE and Corr, plus the per-modality probe MAE when reported.

Cells are mean ± std over seeds of the test split. The best value of each comparison
(a row of the first layout, a column of the second) is bold and the second best
underlined, comparing the values as displayed, so ties share the mark.

A "Δ vs <baseline>" row (methods as columns) or column (methods as rows) gives each
method's paired difference to the reference method on matched seeds, its mean and 95 %
t-interval over seeds, ``*`` where the interval excludes 0 (:mod:`equimodal.bench.stats`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from equimodal.bench.stats import DEFAULT_BASELINE, MARK, Paired, paired
from equimodal.metrics import mean_std

#: Metric shown per task kind in the per-modality layout.
DEFAULT_METRIC = {"classification": "accuracy", "multilabel": "f1_macro"}
_LOWER_BETTER = ("mae", "mse", "loss")
_RAW = ("mae", "mse", "corr", "r2", "gap", "energy")
MSA_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Acc-2", ("acc2_has0", "acc2_non0")),
    ("F1", ("f1_has0", "f1_non0")),
    ("Acc-7", ("acc7",)),
    ("MAE", ("mae",)),
    ("Corr", ("corr",)),
)


@dataclass
class Stat:
    """Mean ± std of one metric over seeds.

    Attributes:
        mean: Mean (``nan`` when no run finished).
        std: Sample standard deviation.
        n: Number of seeds.
        metric: Metric name (decides scale and direction).
    """

    mean: float
    std: float
    n: int
    metric: str

    @property
    def higher_better(self) -> bool:
        """Direction of the metric."""
        return not self.metric.endswith(_LOWER_BETTER)

    @property
    def scale(self) -> float:
        """Percent for rates, raw for errors and correlations."""
        return 1.0 if self.metric.endswith(_RAW) else 100.0

    @property
    def decimals(self) -> int:
        """Digits shown."""
        return 3 if self.scale == 1.0 else 2

    def shown(self) -> float:
        """The mean as displayed (rounded), used for ranking."""
        return round(self.mean * self.scale, self.decimals)

    def text(self, pm: str = "±") -> str:
        """``mean ± std`` as displayed."""
        if math.isnan(self.mean):
            return "–"
        d = self.decimals
        return f"{self.mean * self.scale:.{d}f}{pm}{self.std * self.scale:.{d}f}"


@dataclass
class Table:
    """A rendered-agnostic table: rows x columns of cells, each cell one or more stats.

    Attributes:
        title: Caption.
        corner: Header of the row-name column.
        rows: Row names.
        cols: Column names.
        cells: ``cells[i][j]`` = list of :class:`Stat` (``None`` = not run / unsupported).
        rank_along: ``row`` (compare across columns) or ``col`` (compare down a column).
        marks: Filled by :func:`mark`: 1 best, 2 second, 0 none, per stat.
        notes: Footnotes (skipped and failed runs).
        ranked: Whether best / second best are marked.
        delta: Method -> paired difference to the reference method (one extra row when
            methods are columns, one extra column when they are rows).
        delta_name: Header of that row / column.
    """

    title: str
    corner: str
    rows: list[str]
    cols: list[str]
    cells: list[list[list[Stat] | None]]
    rank_along: str = "row"
    marks: dict[tuple[int, int, int], int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ranked: bool = True
    delta: dict[str, Paired] = field(default_factory=dict)
    delta_name: str = ""


def mark(table: Table) -> Table:
    """Mark best (1) and second best (2) stats of each comparison group in place."""
    groups: dict[tuple[int, int], list[tuple[int, int, int, Stat]]] = {}
    for i, row in enumerate(table.cells):
        for j, cell in enumerate(row):
            for k, stat in enumerate(cell or []):
                if math.isnan(stat.mean):
                    continue
                key = (i, k) if table.rank_along == "row" else (j, k)
                groups.setdefault(key, []).append((i, j, k, stat))
    table.marks = {}
    if not table.ranked:
        return table
    for members in groups.values():
        if len(members) < 2:
            continue
        sign = 1.0 if members[0][3].higher_better else -1.0
        order = sorted({sign * m[3].shown() for m in members}, reverse=True)
        for i, j, k, stat in members:
            rank = order.index(sign * stat.shown())
            if rank < 2:
                table.marks[(i, j, k)] = rank + 1
    return table


def _stat(runs: pd.DataFrame, key: str, metric: str) -> Stat:
    values = [float(v) for v in runs[key].tolist()
              if v is not None and not pd.isna(v)] if key in runs else []
    mean, std = mean_std(values) if values else (math.nan, math.nan)
    return Stat(mean, std, len(values), metric)


def _order(methods: Sequence[str], preferred: Sequence[str] | None) -> list[str]:
    if not preferred:
        return sorted(methods)
    first = [m for m in preferred if m in methods]
    return first + sorted(set(methods) - set(first))


def _notes(runs: pd.DataFrame) -> list[str]:
    notes = []
    for status in ("skipped", "failed"):
        part = runs[runs["status"] == status]
        for method, group in part.groupby("method"):
            reason = str(group["reason"].iloc[0] or "").splitlines()[0][:160]
            notes.append(f"{method}: {status} ({len(group)} run(s)): {reason}")
    return notes


def latest_per_point(runs: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep the newest run of each (method, label, seed); return it and how many were dropped.

    Rerunning a grid after changing its config (more epochs, another method setting) adds
    runs under new digests next to the old ones; averaging both would mix two experiments
    and overstate the number of seeds.
    """
    if runs.empty or "updated_at" not in runs:
        return runs, 0
    order = runs.sort_values("updated_at", kind="stable")
    keep = order.drop_duplicates(["method", "label", "seed"], keep="last")
    return keep.sort_index(), len(runs) - len(keep)


def _modalities(done: pd.DataFrame) -> list[str]:
    return next((list(v) for v in done.get("modalities", pd.Series(dtype=object))
                 if isinstance(v, list)), [])


def dataset_table(df: pd.DataFrame, label: str, metric: str | None = None,
                  methods: Sequence[str] | None = None,
                  baseline: str | None = DEFAULT_BASELINE) -> Table:
    """The paper table of one dataset label.

    Args:
        df: :func:`~equimodal.bench.store.load_results` frame.
        label: Dataset label.
        metric: Metric of the per-modality layout (default per task); ignored for
            regression, which uses the MSA layout.
        methods: Preferred column order (others follow, sorted).
        baseline: Reference method of the "Δ vs" row / column (``None``: none; also none
            when the reference did not run on this label).
    """
    runs, superseded = latest_per_point(df[df["label"] == label])
    done = runs[runs["status"] == "finished"]
    task = next((t for t in done.get("task", pd.Series(dtype=object)) if t), None)
    names = _order(list(runs["method"].unique()), methods)
    shown = [m for m in names if (done["method"] == m).any()] or names
    n_seeds = int(done.groupby("method").size().max()) if len(done) else 0
    if task == "regression":
        rows = shown
        cols = [c for c, _ in MSA_COLUMNS]
        cells: list[list[list[Stat] | None]] = []
        for m in rows:
            mine = done[done["method"] == m]
            cells.append([[_stat(mine, f"test/{k}", k) for k in keys] for _, keys in MSA_COLUMNS])
        mods = _modalities(done)
        probes = [f"test/{mod}/probe_mae" for mod in mods]
        if any(k in done and done[k].notna().any() for k in probes):
            # Linear-probe MAE per modality (frozen features; see equimodal.metrics.probe).
            cols.append("Probe MAE (" + " / ".join(mods) + ")")
            for m, row in zip(rows, cells, strict=True):
                mine = done[done["method"] == m]
                row.append([_stat(mine, k, "probe_mae") for k in probes])
        title = f"{label}: MSA metrics (test, mean±std over {n_seeds} seeds; Acc-2 and F1 " \
                "as has0/non0)"
        table = Table(title, "method", rows, cols, cells, rank_along="col")
    else:
        metric = metric or DEFAULT_METRIC.get(task or "classification", "accuracy")
        mods = _modalities(done)
        rows, keys = [], []
        for m in mods:
            rows.append(f"{m} (unimodal)")
            keys.append(f"test/{m}/{metric}")
            # The linear probe on the modality's frozen features, next to the read-out.
            probe = f"test/{m}/probe_{metric}"
            if probe in done and done[probe].notna().any():
                rows.append(f"{m} (probe)")
                keys.append(probe)
        rows.append("fusion")
        keys.append(f"test/{metric}")
        cells = [[[_stat(done[done["method"] == m], key, key.rsplit("/", 1)[1])] for m in shown]
                 for key in keys]
        title = f"{label}: {metric} (test, mean±std over {n_seeds} seeds)"
        table = Table(title, "", rows, shown, cells, rank_along="row")
    table.notes = _notes(runs)
    if baseline is not None:
        table.delta = paired(df, label, baseline, metric)
        if table.delta:
            first = next(iter(table.delta.values()))
            unit = " (pp)" if first.scale == 100.0 else ""
            table.delta_name = f"Δ {first.metric} vs {baseline}{unit}"
            table.notes.append(
                f"Δ: paired difference to {baseline} on matched seeds, mean [95 % t-interval "
                f"over seeds]; {MARK} where the interval excludes 0")
    if superseded:
        table.notes.append(f"{superseded} older run(s) of the same method, dataset and seed "
                           "under another config were left out (`equimodal results` lists "
                           "them)")
    return mark(table)


def transpose(table: Table) -> Table:
    """The same table with rows and columns swapped (methods as rows, for many methods).

    Best / second-best marks compare the same cells as before: the ranking direction flips
    with the layout.
    """
    cells = [[table.cells[i][j] for i in range(len(table.rows))] for j in range(len(table.cols))]
    along = "col" if table.rank_along == "row" else "row"
    corner = "method" if table.corner == "" else ""
    flipped = Table(table.title, corner, list(table.cols), list(table.rows), cells,
                    rank_along=along, notes=list(table.notes), ranked=table.ranked,
                    delta=dict(table.delta), delta_name=table.delta_name)
    return mark(flipped)


def all_tables(df: pd.DataFrame, metric: str | None = None,
               methods: Sequence[str] | None = None,
               baseline: str | None = DEFAULT_BASELINE) -> list[Table]:
    """One table per dataset label that has runs."""
    if df.empty:
        return []
    return [dataset_table(df, label, metric, methods, baseline)
            for label in sorted(df["label"].unique())]


# ----- renderers ---------------------------------------------------------------------------
def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"),
                 ("#", r"\#"), ("$", r"\$")):
        text = text.replace(a, b)
    return text


def _latex_delta(text: str) -> str:
    return _latex_escape(text).replace("Δ", r"$\Delta$")


def _html_escape(text: str) -> str:
    import html

    return html.escape(text)


def _cell(table: Table, i: int, j: int, fmt: str) -> str:
    cell = table.cells[i][j]
    if cell is None:
        return "–"
    pm = {"latex": r"$\pm$"}.get(fmt, "±")
    parts = []
    for k, stat in enumerate(cell):
        text = stat.text(pm)
        m = table.marks.get((i, j, k), 0)
        if fmt == "markdown":
            text = {1: f"**{text}**", 2: f"<u>{text}</u>"}.get(m, text)
        elif fmt == "latex":
            text = {1: rf"\textbf{{{text}}}", 2: rf"\underline{{{text}}}"}.get(m, text)
        elif fmt == "html":
            text = {1: f"<b>{text}</b>", 2: f"<u>{text}</u>"}.get(m, text)
        parts.append(text)
    return " / ".join(parts)


def _delta_layout(table: Table, fmt: str) -> tuple[list[str] | None, list[str] | None]:
    """The Δ cells: ``(extra row, None)`` when methods are columns, ``(None, extra column)``
    when they are rows, ``(None, None)`` without a reference."""
    if not table.delta:
        return None, None
    mark = {"markdown": "\\*", "latex": r"$^{*}$"}.get(fmt, MARK)

    def text(method: str) -> str:
        p = table.delta.get(method)
        return p.text(mark) if p is not None else "–"

    if table.rank_along == "row":  # methods along the columns
        return [text(c) for c in table.cols], None
    return None, [text(r) for r in table.rows]


def to_markdown(table: Table) -> str:
    """GitHub Markdown (bold best, ``<u>`` second)."""
    row, col = _delta_layout(table, "markdown")
    extra = [table.delta_name] if col else []
    lines = [f"**{table.title}**", "",
             "| " + " | ".join([table.corner] + table.cols + extra) + " |",
             "|" + "---|" * (len(table.cols) + 1 + len(extra))]
    for i, r in enumerate(table.rows):
        cells = [_cell(table, i, j, "markdown") for j in range(len(table.cols))]
        lines.append("| " + " | ".join([r] + cells + ([col[i]] if col else [])) + " |")
    if row:
        lines.append("| " + " | ".join([table.delta_name] + row) + " |")
    if table.notes:
        lines += [""] + [f"- {n}" for n in table.notes]
    return "\n".join(lines)


def to_latex(table: Table) -> str:
    """A booktabs ``table`` environment (``\\textbf`` best, ``\\underline`` second)."""
    row, col = _delta_layout(table, "latex")
    extra = [table.delta_name] if col else []
    spec = "l" + "c" * (len(table.cols) + len(extra))
    head = " & ".join([_latex_escape(table.corner)] + [_latex_escape(c) for c in table.cols]
                      + [_latex_delta(c) for c in extra])
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{_latex_escape(table.title)}}}", rf"\begin{{tabular}}{{{spec}}}",
             r"\toprule", head + r" \\", r"\midrule"]
    for i, r in enumerate(table.rows):
        if table.rank_along == "row" and r == "fusion" and i > 0:
            lines.append(r"\midrule")
        cells = [_cell(table, i, j, "latex") for j in range(len(table.cols))]
        cells += [col[i]] if col else []  # digits, signs, brackets and the mark only
        lines.append(" & ".join([_latex_escape(r)] + cells) + r" \\")
    if row:
        lines += [r"\midrule", " & ".join([_latex_delta(table.delta_name)] + row) + r" \\"]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def to_html(table: Table) -> str:
    """An HTML ``<table class="results">`` (``<b>`` best, ``<u>`` second)."""
    row, col = _delta_layout(table, "html")
    extra = [table.delta_name] if col else []
    head = "".join(f"<th>{_html_escape(c)}</th>" for c in [table.corner] + table.cols + extra)
    body = []
    for i, r in enumerate(table.rows):
        cells = "".join(f"<td>{_cell(table, i, j, 'html')}</td>"
                        for j in range(len(table.cols)))
        cells += f'<td class="delta">{_html_escape(col[i])}</td>' if col else ""
        body.append(f"<tr><th>{_html_escape(r)}</th>{cells}</tr>")
    if row:
        cells = "".join(f'<td class="delta">{_html_escape(c)}</td>' for c in row)
        body.append(f'<tr class="delta"><th>{_html_escape(table.delta_name)}</th>{cells}</tr>')
    notes = "".join(f"<li>{_html_escape(n)}</li>" for n in table.notes)
    return (f'<table class="results"><caption>{_html_escape(table.title)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            + (f'<ul class="notes">{notes}</ul>' if notes else ""))


RENDERERS = {"markdown": to_markdown, "latex": to_latex, "html": to_html}


def render(tables: Sequence[Table], fmt: str = "markdown") -> str:
    """Render tables, separated by blank lines."""
    if fmt not in RENDERERS:
        raise ValueError(f"unknown table format {fmt!r}; valid: {sorted(RENDERERS)}")
    return "\n\n".join(RENDERERS[fmt](t) for t in tables)


def runs_table(df: pd.DataFrame) -> pd.DataFrame:
    """One line per run: identity, status, headline test metrics, wall time, reason."""
    if df.empty:
        return pd.DataFrame()
    cols: dict[str, Any] = {
        "method": df["method"], "dataset": df["label"], "seed": df["seed"],
        "status": df["status"],
    }
    for key in ("test/accuracy", "test/macro_f1", "test/f1_macro", "test/mae", "test/corr",
                "test/acc2_non0"):
        if key in df and df[key].notna().any():
            cols[key.split("/", 1)[1]] = df[key]
    # Per-modality split read-out next to its linear probe (the honest weak-modality score).
    for key in [c for c in df.columns if c.startswith("test/") and "/probe_" in c]:
        mod, probe = key[len("test/"):].rsplit("/", 1)
        base = probe[len("probe_"):]
        if base == "macro_f1" or not df[key].notna().any():
            continue
        if f"test/{mod}/{base}" in df:
            cols[f"{mod}/{base}"] = df[f"test/{mod}/{base}"]
        cols[f"{mod}/{probe}"] = df[key]
    cols["wall_s"] = df["wall_seconds"].round(1)
    cols["reason"] = df["reason"].fillna("").map(lambda s: s.splitlines()[0][:60] if s else "")
    return pd.DataFrame(cols).reset_index(drop=True)
