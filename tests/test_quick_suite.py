"""README's main job: the quick suite trains to a validation plateau on honest validation."""

from __future__ import annotations

from equimodal.bench.suite import expand, load_suite


def test_quick_suite_stops_on_validation_plateau_and_validates_out_of_distribution() -> None:
    suite = load_suite("quick")
    points = expand(suite, ["concat"])
    by_label = {p.label: p.cfg for p in points if p.cfg.train.seed == 0}
    assert set(by_label) >= {"synthetic", "mfeat", "cgdigits", "synthetic-msa"}
    for cfg in by_label.values():
        assert cfg.train.patience > 0  # early stopping on the validation score
        assert cfg.train.epochs >= 5 * cfg.train.patience  # a ceiling, not a budget
    entries = {d.label: d for d in suite.datasets}
    assert entries["cgdigits"].kwargs["valid_colors"] == "random"
    assert entries["mfeat"].optional  # skipped when absent
    assert len(suite.seeds) >= 3  # paired t-intervals need at least 2; 3 is the minimum used
