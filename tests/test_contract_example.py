"""The worked "how to add a method" example of docs/architecture.md is real code: it
registers, passes the method contract checker and reaches the evaluators' diagnostics."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from equimodal.eval.diagnostics import protocol_report
from equimodal.methods.base import Method
from equimodal.methods.check import check_method, easy_data
from equimodal.registry import METHODS

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def _example_code() -> str:
    text = DOC.read_text()
    section = text[text.index("### How to add a method"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "no python block under 'How to add a method'"
    return match.group(1)


def test_example_is_about_forty_lines() -> None:
    lines = [line for line in _example_code().splitlines() if line.strip()]
    assert 30 <= len(lines) <= 50, len(lines)


def test_documented_example_trains_and_passes_the_contract(monkeypatch: Any) -> None:
    METHODS.names()  # load the package's methods before swapping the table
    # Register into a copy of the table, so the example does not outlive this test.
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    monkeypatch.setattr(METHODS, "_docs", dict(METHODS._docs))
    module = types.ModuleType("docs_architecture_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look it up
    exec(compile(_example_code(), str(DOC), "exec"), module.__dict__)
    cls = METHODS.get("aux_heads")
    assert issubclass(cls, Method) and cls is module.AuxHeads
    report = check_method("aux_heads", epochs=6)
    assert report.score > report.chance + 0.15
    with pytest.raises(ValueError, match="regression_loss must be one of"):
        check_method("aux_heads", regression_loss="huber")

    # Its diagnostics hook is what `equimodal diagnose` prints.
    from equimodal.config import ModelConfig, TrainConfig
    from equimodal.engine import Trainer
    from equimodal.registry import create_method

    data = easy_data(cls)
    method = create_method("aux_heads", data.info, ModelConfig(hidden=16, layers=1))
    Trainer(method, data, TrainConfig(epochs=3, batch_size=40, progress=False,
                                      device="cpu")).fit()
    rep = protocol_report(method, data.test, data.info, ["dirichlet"])
    agreement = rep["diagnostics"]["method"]
    assert set(agreement) == {f"agreement/{m}" for m in data.info.modality_names}
    assert all(0.0 <= v <= 1.0 for v in agreement.values())
