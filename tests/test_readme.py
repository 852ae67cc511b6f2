"""README's method table is generated from the registry; this keeps the two in sync."""

from __future__ import annotations

from pathlib import Path

from equimodal.cli import methods_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_method_table_matches_the_registry() -> None:
    text = README.read_text(encoding="utf-8")
    begin, end = "<!-- methods:begin -->", "<!-- methods:end -->"
    assert begin in text and end in text, "README.md lost its method-table markers"
    table = text.split(begin, 1)[1].split(end, 1)[0].strip()
    assert table == methods_markdown().strip(), (
        "README.md's method table is stale: regenerate it with `equimodal list --markdown`")
