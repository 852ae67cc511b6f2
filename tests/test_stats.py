"""Paired statistics against a reference method (equimodal.bench.stats) and their tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy import stats as st

from equimodal.bench.stats import paired, paired_frame, t_interval
from equimodal.bench.tables import dataset_table, to_html, to_latex, to_markdown, transpose


def test_t_interval_matches_scipy_on_fixed_numbers() -> None:
    values = [0.012, -0.004, 0.031, 0.008, 0.019]
    mean, low, high = t_interval(values)
    n = len(values)
    sd = math.sqrt(sum((v - 0.0132) ** 2 for v in values) / (n - 1))
    ref = st.t.interval(0.95, n - 1, loc=0.0132, scale=sd / math.sqrt(n))
    assert mean == pytest.approx(0.0132)
    assert (low, high) == pytest.approx(ref, rel=1e-12)
    # Three seeds: t_{0.975, 2} = 4.302652729911275 (tables), not the normal 1.96.
    m3, lo3, hi3 = t_interval([1.0, 2.0, 3.0])
    assert (m3, hi3 - m3) == pytest.approx((2.0, 4.302652729911275 / math.sqrt(3)))
    assert lo3 == pytest.approx(2.0 - 4.302652729911275 / math.sqrt(3))


def test_t_interval_needs_two_values() -> None:
    mean, low, high = t_interval([0.3])
    assert mean == 0.3 and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(v) for v in t_interval([]))


def _frame(rows: list[tuple[str, int, float]], label: str = "d") -> pd.DataFrame:
    return pd.DataFrame([{"label": label, "method": m, "seed": s, "status": "finished",
                          "task": "classification", "test/accuracy": v,
                          "updated_at": float(i)} for i, (m, s, v) in enumerate(rows)])


def test_paired_uses_matched_seeds_only() -> None:
    df = _frame([("concat", 0, 0.50), ("concat", 1, 0.60), ("concat", 2, 0.70),
                 ("ogm", 1, 0.65), ("ogm", 2, 0.72), ("ogm", 3, 0.99)])
    p = paired(df, "d")["ogm"]
    assert p.seeds == [1, 2]  # seed 0 has no ogm run, seed 3 no concat run
    assert p.diffs == pytest.approx([0.05, 0.02])
    assert p.mean == pytest.approx(0.035)
    ref = st.t.interval(0.95, 1, loc=0.035, scale=st.sem([0.05, 0.02]))
    assert (p.low, p.high) == pytest.approx(ref)
    assert not p.significant  # one degree of freedom: t = 12.7
    assert paired(df, "d", baseline="nobody") == {}


def test_newest_run_per_seed_and_failed_runs_are_not_paired() -> None:
    df = _frame([("concat", 0, 0.5), ("concat", 1, 0.6), ("x", 0, 0.9), ("x", 0, 0.55),
                 ("x", 1, 0.7)])
    df.loc[len(df)] = {**df.iloc[4].to_dict(), "seed": 2, "status": "failed"}
    p = paired(df, "d")["x"]
    assert p.seeds == [0, 1] and p.diffs == pytest.approx([0.05, 0.1])  # newest seed-0 run


def test_marker_where_the_interval_excludes_zero() -> None:
    base = [0.60, 0.70, 0.65, 0.62]
    df = _frame([("concat", s, v) for s, v in enumerate(base)]
                + [("up", s, v + 0.05 + 0.002 * s) for s, v in enumerate(base)]
                + [("noisy", s, v + d)
                   for s, (v, d) in enumerate(zip(base, [.1, -.1, .05, -.04], strict=True))]
                + [("one", 0, 0.9)])
    got = paired(df, "d")
    assert got["up"].significant and got["up"].text().endswith("*")
    assert got["up"].text().startswith("+5.30 [")  # percentage points
    assert not got["noisy"].significant and not got["noisy"].text().endswith("*")
    assert got["one"].text() == "+30.00 (1 seed)" and not got["one"].significant
    assert got["concat"].text() == "ref."
    frame = paired_frame(df)
    assert set(frame["method"]) == {"up", "noisy", "one"}
    assert frame.set_index("method").loc["up", "sig"] == "*"


def test_tables_show_a_delta_row_or_column() -> None:
    base = [0.60, 0.70, 0.65]
    df = _frame([("concat", s, v) for s, v in enumerate(base)]
                + [("up", s, v + 0.05 + 0.001 * s) for s, v in enumerate(base)])
    df["modalities"] = [["a", "b"]] * len(df)
    table = dataset_table(df, "d")
    md = to_markdown(table)
    delta_row = [line for line in md.splitlines() if line.startswith("| Δ accuracy vs concat")]
    assert len(delta_row) == 1 and "ref." in delta_row[0] and "\\*" in delta_row[0]
    assert "Δ accuracy vs concat (pp)" in to_html(table) and r"$\Delta$" in to_latex(table)
    flipped = to_markdown(transpose(table))
    assert flipped.splitlines()[2].endswith("| Δ accuracy vs concat (pp) |")
    assert "Δ" not in to_markdown(dataset_table(df, "d", baseline=None))
    # Another reference method: the row follows it.
    assert "| Δ accuracy vs up (pp) |" in to_markdown(dataset_table(df, "d", baseline="up"))
