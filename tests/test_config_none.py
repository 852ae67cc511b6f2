"""``--set key=none``: the word "none" on a plain string field stays the string."""

from __future__ import annotations

from equimodal.config import RunConfig, apply_overrides, build_dataclass
from equimodal.methods.ebmc import EBMCConfig


def test_none_word_on_string_field_is_the_string() -> None:
    cfg = apply_overrides(RunConfig(), ["train.scheduler=cosine", "train.scheduler=none"])
    assert cfg.train.scheduler == "none"
    ebmc = build_dataclass(EBMCConfig, {"teacher_calibration": None, "stage1_epochs": None})
    assert ebmc.teacher_calibration == "none"
    assert ebmc.stage1_epochs is None  # an Optional field still takes None
