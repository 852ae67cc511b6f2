"""Benchmark suites: a grid of methods x datasets x seeds, from a TOML file or flags.

A suite file looks like::

    name = "quick"
    description = "every method on built-in data"
    methods = "all"                 # or ["concat", "ogm_ge"]
    exclude = []                    # names dropped from "all"
    seeds = 3                       # or [0, 1, 2]
    robustness = false              # compute robustness + diagnostics per finished run

    [train]                         # overrides of TrainConfig for every run
    epochs = 5
    [model]                         # overrides of ModelConfig for every run
    hidden = 32

    [[datasets]]
    name = "synthetic"              # registered dataset
    label = "synthetic-imbalanced"  # name in tables (default: name)
    optional = false                # true: skip (not fail) when it is not registered
    kwargs = { strengths = [1.0, 0.35] }
    train = { batch_size = 32 }     # per-dataset overrides (train, model, method)
    methods = ["udi"]               # optional: only these of the suite's methods
    exclude = ["dmd"]               # optional: drop these of the suite's methods here
    seeds = [0, 1, 2]               # optional: this entry's seeds

    [per_method.ebmc.train]         # per-method overrides (train, model, method, data)
    epochs = 4

Overrides apply in order: suite ``train``/``model``, the dataset entry's, the method's,
then the command line's ``-s section.key=value``; the resolved :class:`RunConfig` is hashed
(:meth:`RunConfig.digest`) to address the run folder.
"""

from __future__ import annotations

import copy
import importlib.resources
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from equimodal.config import RunConfig, apply_overrides

DEFAULT_SEEDS = 5
_SECTIONS = ("train", "model", "method", "data")


@dataclass
class DatasetEntry:
    """One dataset configuration of a suite.

    Attributes:
        name: Registered dataset name.
        label: Name in tables and reports (two entries of one dataset need distinct labels).
        kwargs: Dataset factory arguments.
        optional: Skip the dataset's runs (recorded as skipped) when it is not registered
            or cannot be loaded, instead of failing them.
        overrides: Per-dataset overrides by section (``train``, ``model``, ``method``).
        methods: Restrict this entry to these of the suite's methods (``None``: all); lets
            one suite hold method variants (e.g. ablations) as extra labelled entries.
        seeds: This entry's seeds (``None``: the suite's).
        exclude: Methods of the suite not run on this entry (e.g. costly sequence
            baselines kept to the dataset they were designed for).
    """

    name: str
    label: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    optional: bool = False
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    methods: list[str] | None = None
    seeds: list[int] | None = None
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.label = self.label or self.name


@dataclass
class Suite:
    """A benchmark grid.

    Attributes:
        name: Suite name (default output folder ``bench/<name>``).
        methods: Method names, or ``["all"]`` for every registered method.
        datasets: Dataset entries.
        seeds: Training seeds.
        train: ``TrainConfig`` overrides for every run.
        model: ``ModelConfig`` overrides for every run.
        per_method: Method name -> section -> overrides.
        exclude: Methods dropped when ``methods`` is ``all``.
        robustness: Compute robustness protocols and diagnostics for finished runs.
        description: Free text.
    """

    name: str = "custom"
    methods: list[str] = field(default_factory=lambda: ["all"])
    datasets: list[DatasetEntry] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: list(range(DEFAULT_SEEDS)))
    train: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    per_method: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    exclude: list[str] = field(default_factory=list)
    robustness: bool = False
    description: str = ""

    def resolve_methods(self, registered: list[str]) -> list[str]:
        """Concrete method names (``all`` expands to the registry minus ``exclude``).

        Raises:
            KeyError: a named method is not registered.
        """
        if "all" in self.methods:
            return [m for m in registered if m not in set(self.exclude)]
        unknown = [m for m in self.methods if m not in registered]
        if unknown:
            raise KeyError(f"unknown method(s) {unknown}; registered: {registered}")
        return list(self.methods)


@dataclass
class GridPoint:
    """One run of the grid (before execution).

    Attributes:
        cfg: The resolved run configuration.
        label: Dataset label for tables.
        optional: Whether the dataset may be absent.
        run_id: ``cfg.digest()``.
    """

    cfg: RunConfig
    label: str
    optional: bool = False

    @property
    def run_id(self) -> str:
        """Hash of the resolved config: the run's address."""
        return self.cfg.digest()

    @property
    def folder(self) -> str:
        """Run folder name, relative to ``<out>/runs``."""
        label = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label)
        return f"{self.cfg.method}-{label}-{self.run_id}"


def _seeds(value: Any) -> list[int]:
    if isinstance(value, bool):
        raise ValueError(f"seeds must be a count or a list of ints, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"seeds must be >= 1, got {value}")
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) for s in value):
        return list(value)
    raise ValueError(f"seeds must be a count or a non-empty list of ints, got {value!r}")


def _names(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"{what} must be a string or a list of strings, got {value!r}")


def _dataset(entry: Any) -> DatasetEntry:
    if isinstance(entry, str):
        return DatasetEntry(entry)
    if not isinstance(entry, dict) or "name" not in entry:
        raise ValueError(f"dataset entry {entry!r} needs a 'name'")
    unknown = set(entry) - {"name", "label", "kwargs", "optional", "methods", "seeds",
                            "exclude", *_SECTIONS}
    if unknown:
        raise ValueError(f"dataset entry {entry['name']!r}: unknown keys {sorted(unknown)}")
    over = {s: dict(entry[s]) for s in ("train", "model", "method") if s in entry}
    methods = _names(entry["methods"], "methods") if "methods" in entry else None
    seeds = _seeds(entry["seeds"]) if "seeds" in entry else None
    exclude = _names(entry.get("exclude", []), "exclude")
    return DatasetEntry(entry["name"], entry.get("label", ""), dict(entry.get("kwargs", {})),
                        bool(entry.get("optional", False)), over, methods, seeds, exclude)


def suite_from_dict(d: dict[str, Any], default_name: str = "custom") -> Suite:
    """Build a :class:`Suite` from parsed TOML.

    Raises:
        ValueError: unknown top-level keys, bad seeds or dataset entries.
    """
    known = {"name", "description", "methods", "exclude", "seeds", "robustness", "train",
             "model", "datasets", "per_method"}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"suite: unknown keys {sorted(unknown)}; valid: {sorted(known)}")
    per_method: dict[str, dict[str, dict[str, Any]]] = {}
    for method, sections in d.get("per_method", {}).items():
        bad = set(sections) - set(_SECTIONS)
        if bad:
            raise ValueError(f"per_method.{method}: sections must be among {_SECTIONS}, "
                             f"got {sorted(bad)}")
        per_method[method] = {s: dict(v) for s, v in sections.items()}
    datasets = [_dataset(e) for e in d.get("datasets", [])]
    labels = [e.label for e in datasets]
    if len(set(labels)) != len(labels):
        raise ValueError(f"suite: dataset labels must be unique, got {labels}")
    return Suite(
        name=str(d.get("name", default_name)),
        methods=_names(d.get("methods", "all"), "methods"),
        datasets=datasets,
        seeds=_seeds(d.get("seeds", DEFAULT_SEEDS)),
        train=dict(d.get("train", {})),
        model=dict(d.get("model", {})),
        per_method=per_method,
        exclude=_names(d.get("exclude", []), "exclude"),
        robustness=bool(d.get("robustness", False)),
        description=str(d.get("description", "")),
    )


def builtin_suites() -> list[str]:
    """Names of the suites shipped in ``equimodal/bench/suites``."""
    root = importlib.resources.files("equimodal.bench") / "suites"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def load_suite(name_or_path: str) -> Suite:
    """Load a suite by built-in name (``quick``) or from a TOML file path.

    Raises:
        FileNotFoundError: neither a built-in suite nor an existing file.
    """
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"suite file {path} does not exist")
        return suite_from_dict(tomllib.loads(path.read_text()), default_name=path.stem)
    res = importlib.resources.files("equimodal.bench") / "suites" / f"{name_or_path}.toml"
    if not res.is_file():
        raise FileNotFoundError(
            f"no built-in suite {name_or_path!r} (built-in: {builtin_suites()}) and no such file"
        )
    return suite_from_dict(tomllib.loads(res.read_text()), default_name=name_or_path)


def _set(section: str, values: dict[str, Any]) -> list[str]:
    # Overrides are applied as strings so the same coercion as the CLI's -s applies; JSON
    # keeps lists and dicts intact.
    import json

    return [f"{section}.{k}={json.dumps(v)}" for k, v in values.items()]


def expand(suite: Suite, registered: list[str], cli_overrides: list[str] | None = None,
           base: RunConfig | None = None) -> list[GridPoint]:
    """Resolve the grid into run configurations (methods x datasets x seeds).

    Args:
        suite: The suite.
        registered: Registered method names (``all`` expands to these).
        cli_overrides: ``section.key=value`` strings applied last.
        base: Starting configuration of every point (e.g. from ``--config``); its
            ``data`` is updated with each dataset entry's ``kwargs``.

    Returns:
        Grid points, dataset-major then method then seed, duplicates (same digest) removed.
    """
    methods = suite.resolve_methods(registered)
    points: list[GridPoint] = []
    seen: set[str] = set()
    for entry in suite.datasets:
        # An entry's methods narrow the suite's (``--methods`` may narrow both).
        stray = sorted(set(entry.methods or []) - set(registered))
        if stray:
            raise KeyError(f"dataset entry {entry.label!r}: unknown method(s) {stray}")
        for method in methods:
            if entry.methods is not None and method not in entry.methods:
                continue
            if method in entry.exclude:
                continue
            for seed in entry.seeds if entry.seeds is not None else suite.seeds:
                cfg = copy.deepcopy(base) if base is not None else RunConfig()
                cfg.method, cfg.dataset = method, entry.name
                cfg.data = {**cfg.data, **copy.deepcopy(entry.kwargs)}
                # The base's data / method arguments only apply to its own dataset / method.
                if base is not None and base.dataset != entry.name:
                    cfg.data = copy.deepcopy(entry.kwargs)
                if base is not None and base.method != method:
                    cfg.method_cfg = {}
                sets = _set("train", suite.train) + _set("model", suite.model)
                for section in ("train", "model", "method"):
                    sets += _set(section, entry.overrides.get(section, {}))
                for section in _SECTIONS:
                    sets += _set(section, suite.per_method.get(method, {}).get(section, {}))
                sets += list(cli_overrides or [])
                sets.append(f"train.seed={seed}")
                point = GridPoint(apply_overrides(cfg, sets), entry.label, entry.optional)
                if point.run_id not in seen:
                    seen.add(point.run_id)
                    points.append(point)
    return points
