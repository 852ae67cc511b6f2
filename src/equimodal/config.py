"""Typed run configuration; the resolved config is saved with every run."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

C = TypeVar("C")

# Bounds of numeric fields: field -> (lower bound, whether the bound itself is allowed).
_AT_LEAST_1 = (1, True)
_POSITIVE = (0, False)
_NON_NEGATIVE = (0, True)


def _check_bounds(obj: Any, section: str, bounds: dict[str, tuple[float, bool]]) -> None:
    """Raise ``ValueError`` naming ``section.field`` when a numeric field is out of range."""
    for name, (low, inclusive) in bounds.items():
        value = getattr(obj, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{section}.{name} must be a number, got {value!r}")
        ok = value >= low if inclusive else value > low
        if not ok or value != value:  # NaN fails every bound
            op = ">=" if inclusive else ">"
            raise ValueError(f"{section}.{name} must be {op} {low:g}, got {value!r}")


@dataclass
class ModelConfig:
    """Backbone settings shared by methods that use the generic :class:`MultimodalModel`.

    Attributes:
        encoder: ``auto`` (MLP for vectors, ``seq_encoder`` for sequences), ``mlp``,
            ``conv1d`` or ``transformer``.
        seq_encoder: Encoder used for sequence modalities under ``auto``.
        hidden: Width of encoder features H.
        layers: Depth of each encoder.
        dropout: Dropout inside encoders.
        heads: Attention heads of transformer encoders.
        fusion: Fusion module name (``concat``, ``sum``, ``late``, ``gated``, ``film``).
        unimodal_heads: Add a linear head per modality for fusions that cannot be split.
        encoders: Per-modality encoder names overriding ``encoder`` (e.g.
            ``{"audio": "resnet18"}``); keys are modality names of the data.
        encoder_kwargs: Extra constructor arguments per modality (key ``"*"``: every
            modality), e.g. ``{"visual": {"image_shape": [3, 32, 32], "width": 0.5}}``.

    Raises:
        ValueError: ``hidden``, ``layers`` or ``heads`` below 1, or ``dropout`` outside
            ``[0, 1)`` (the message names the field, e.g. ``model.hidden``).
    """

    encoder: str = "auto"
    seq_encoder: str = "transformer"
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.0
    heads: int = 4
    fusion: str = "concat"
    unimodal_heads: bool = False
    encoders: dict[str, str] = field(default_factory=dict)
    encoder_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_bounds(self, "model", {"hidden": _AT_LEAST_1, "layers": _AT_LEAST_1,
                                      "heads": _AT_LEAST_1, "dropout": _NON_NEGATIVE})
        if isinstance(self.dropout, (int, float)) and self.dropout >= 1:
            raise ValueError(f"model.dropout must be < 1, got {self.dropout!r}")


@dataclass
class TrainConfig:
    """Optimisation and engine settings (the engine alone owns these).

    Attributes:
        epochs: Total epochs when the method declares one stage (stages may set their own).
        batch_size: Mini-batch size.
        lr: Learning rate of the ``main`` group (other groups may scale it).
        weight_decay: Weight decay.
        optimizer: ``adam``, ``adamw`` or ``sgd``.
        momentum: SGD momentum.
        scheduler: ``none``, ``step``, ``cosine`` or ``plateau``.
        step_size: StepLR period in epochs.
        gamma: StepLR / plateau decay factor.
        clip_norm: Gradient-norm clipping (``0`` disables).
        amp: Mixed precision on CUDA (bf16/fp16 autocast + grad scaling).
        accum_steps: Gradient accumulation steps.
        patience: Early-stopping patience in epochs on the validation metric (``0`` = off).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        seed: Random seed.
        select_metric: Validation metric for model selection (``auto`` picks per task).
        eval_every: Evaluate on validation every N epochs.
        progress: Show progress bars.
        deterministic: Ask torch for deterministic kernels.

    Raises:
        ValueError: a count (``epochs``, ``batch_size``, ``step_size``, ``accum_steps``,
            ``eval_every``) below 1, a non-positive ``gamma``, or a negative ``lr`` (``0``
            is allowed: a frozen model), ``weight_decay``, ``momentum``, ``clip_norm`` or
            ``patience``; the message names
            the field, e.g. ``train.epochs must be >= 1, got -1``.
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adam"
    momentum: float = 0.9
    scheduler: str = "none"
    step_size: int = 70
    gamma: float = 0.1
    clip_norm: float = 0.0
    amp: bool = False
    accum_steps: int = 1
    patience: int = 0
    device: str = "auto"
    seed: int = 0
    select_metric: str = "auto"
    eval_every: int = 1
    progress: bool = True
    deterministic: bool = False

    def __post_init__(self) -> None:
        _check_bounds(self, "train", {
            "epochs": _AT_LEAST_1, "batch_size": _AT_LEAST_1, "lr": _NON_NEGATIVE,
            "weight_decay": _NON_NEGATIVE, "momentum": _NON_NEGATIVE, "step_size": _AT_LEAST_1,
            "gamma": _POSITIVE, "clip_norm": _NON_NEGATIVE, "accum_steps": _AT_LEAST_1,
            "patience": _NON_NEGATIVE, "eval_every": _AT_LEAST_1})


@dataclass
class RunConfig:
    """Everything that defines one run; its hash addresses the run folder in sweeps.

    Attributes:
        method: Registered method name.
        dataset: Registered dataset name.
        data: Keyword arguments of the dataset factory.
        method_cfg: Fields of the method's ``Config``.
        model: Backbone settings.
        train: Engine settings.
    """

    method: str = "concat"
    dataset: str = "synthetic"
    data: dict[str, Any] = field(default_factory=dict)
    method_cfg: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        model = build_dataclass(ModelConfig, d.pop("model", {}) or {}, where="model")
        train = build_dataclass(TrainConfig, d.pop("train", {}) or {}, where="train")
        return cls(model=model, train=train, **d)

    def identity(self) -> dict[str, Any]:
        """The fields that change results (device and progress bars do not)."""
        d = self.to_dict()
        for k in ("device", "progress"):
            d["train"].pop(k, None)
        # Per-modality encoder settings joined the config later: left empty they are dropped
        # so that the digests (run folders, bench rows) of earlier configs stay valid.
        for k in ("encoders", "encoder_kwargs"):
            if not d["model"].get(k):
                d["model"].pop(k, None)
        return d

    def digest(self) -> str:
        """Stable 12-hex hash of :meth:`identity`."""
        import hashlib

        text = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def parse_value(text: str) -> Any:
    """Parse a CLI override value: JSON when it parses (numbers, bools, lists), else a string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _coerce(value: Any, annotation: Any, where: str, name: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if value is None:
        # ``--set x=none`` parses to None; a plain ``str`` field (e.g. scheduler, whose
        # choices include the word "none") cannot hold None, so it gets the word back.
        return "none" if annotation is str else None
    if annotation is bool or (origin is typing.Union and bool in args):
        if isinstance(value, str):
            return parse_value(value)
        return bool(value)
    if annotation is int and isinstance(value, (str, float)):
        try:
            fval = float(value)
        except ValueError as err:
            raise ValueError(f"{where}: field {name!r} expects an int, got {value!r}") from err
        if fval != int(fval):
            raise ValueError(f"{where}: field {name!r} expects an int, got {value!r}")
        return int(fval)
    if annotation is float and isinstance(value, (str, int)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError as err:
            raise ValueError(f"{where}: field {name!r} expects a float, got {value!r}") from err
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value


def build_dataclass(cls: type[C], values: dict[str, Any], where: str = "config") -> C:
    """Instantiate dataclass ``cls`` from ``values``, naming unknown fields and coercing types.

    Raises:
        KeyError: a key is not a field of ``cls`` (the message lists the valid fields).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise KeyError(f"{where}: unknown field(s) {unknown}; valid: {sorted(fields)}")
    kwargs = {k: _coerce(v, hints.get(k, Any), where, k) for k, v in values.items()}
    return cls(**kwargs)


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.key=value`` strings (sections: train, model, method, data)."""
    d = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        section, _, name = key.partition(".")
        section = {"method": "method_cfg"}.get(section, section)
        if section not in ("train", "model", "method_cfg", "data") or not name:
            raise ValueError(
                f"override {item!r} must look like section.key=value with section one of "
                "train, model, method, data"
            )
        d[section][name] = parse_value(raw)
    return RunConfig.from_dict(d)
