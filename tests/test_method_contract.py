"""Every registered method passes the public contract (timm-style tests over the registry)."""

from __future__ import annotations

import pytest

from equimodal.methods.check import check_method
from equimodal.registry import METHODS


@pytest.mark.parametrize("name", METHODS.names())
def test_method_contract(name: str) -> None:
    report = check_method(name)
    assert report.last_loss < report.first_loss


@pytest.mark.parametrize(
    "name", [n for n in METHODS.names() if METHODS.get(n).capabilities.sequences]
)
def test_method_contract_on_sequences(name: str) -> None:
    check_method(name, epochs=4, sequences=True)
