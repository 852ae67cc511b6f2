"""`equimodal results --transpose`: methods as rows, the same best / second-best cells."""

from __future__ import annotations

from equimodal.bench.tables import Stat, Table, mark, to_markdown, transpose


def _table() -> Table:
    acc = [[0.50, 0.70, 0.60], [0.90, 0.80, 0.95]]  # rows: modality a, fusion; cols: 3 methods
    cells = [[[Stat(v, 0.01, 3, "accuracy")] for v in row] for row in acc]
    return mark(Table("t", "", ["a (unimodal)", "fusion"], ["m1", "m2", "m3"], cells))


def test_transpose_swaps_layout_and_keeps_the_marked_cells() -> None:
    table = _table()
    flipped = transpose(table)
    assert flipped.rows == ["m1", "m2", "m3"] and flipped.cols == ["a (unimodal)", "fusion"]
    assert flipped.rank_along == "col" and flipped.corner == "method"
    assert {(j, i, k): v for (i, j, k), v in table.marks.items()} == flipped.marks
    # best of fusion is m3 (0.95), second m1 (0.90); best of a is m2, second m3
    assert flipped.marks[(2, 1, 0)] == 1 and flipped.marks[(0, 1, 0)] == 2
    assert flipped.marks[(1, 0, 0)] == 1 and flipped.marks[(2, 0, 0)] == 2
    text = to_markdown(flipped)
    assert "| m3 | <u>60.00±1.00</u> | **95.00±1.00** |" in text
    assert transpose(flipped).cells == table.cells


def test_tables_keep_only_the_newest_run_of_each_grid_point() -> None:
    import pandas as pd

    from equimodal.bench.tables import dataset_table, latest_per_point

    def row(run_id: str, seed: int, acc: float, when: str) -> dict[str, object]:
        return {"run_id": run_id, "method": "concat", "label": "d", "seed": seed,
                "status": "finished", "task": "classification", "modalities": ["a"],
                "updated_at": when, "test/accuracy": acc, "test/a/accuracy": acc}

    df = pd.DataFrame([row("old0", 0, 0.5, "2026-01-01"), row("new0", 0, 0.9, "2026-01-02"),
                       row("new1", 1, 0.7, "2026-01-02")])
    kept, dropped = latest_per_point(df)
    assert dropped == 1 and sorted(kept["run_id"]) == ["new0", "new1"]
    table = dataset_table(df, "d")
    fusion = table.cells[table.rows.index("fusion")][0]
    assert fusion is not None and fusion[0].n == 2 and abs(fusion[0].mean - 0.8) < 1e-12
    assert any("1 older run(s)" in note for note in table.notes)
