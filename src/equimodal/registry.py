"""Name -> factory registries for methods, datasets, encoders and fusions.

Adding a method is one file under ``equimodal/methods/`` with ``@register_method("name")``;
the package imports every module there, so the registry (and the tests parametrised over
it) pick it up automatically.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to registered objects with helpful lookup errors."""

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self._package = package
        self._items: dict[str, T] = {}
        self._docs: dict[str, str] = {}
        self._loaded = package is None

    def register(self, name: str, doc: str | None = None) -> Callable[[T], T]:
        """Decorator registering an object under ``name``."""

        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            text = doc or (getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._docs[name] = text if isinstance(text, str) else (text[0] if text else "")
            return obj

        return deco

    def _load(self) -> None:
        # Import every module of the package once so their decorators run.
        if self._loaded or self._package is None:
            return
        self._loaded = True
        pkg = importlib.import_module(self._package)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg.__name__ + "."):
            importlib.import_module(info.name)

    def get(self, name: str) -> T:
        """Return the object registered as ``name`` or raise ``KeyError`` naming close matches."""
        self._load()
        if name not in self._items:
            close = self.suggest(name)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(
                f"unknown {self.kind} {name!r}{hint} (known: {', '.join(sorted(self._items))})"
            )
        return self._items[name]

    def suggest(self, name: str) -> list[str]:
        """Registered names close to ``name``, compared case-insensitively with ``-`` read as
        ``_`` (``OGM-GE`` suggests ``ogm_ge``)."""
        self._load()
        key = str(name).lower().replace("-", "_")
        folded = {n.lower().replace("-", "_"): n for n in self._items}
        if key in folded:
            return [folded[key]]
        return [folded[k] for k in difflib.get_close_matches(key, list(folded), n=3)]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._load()
        return sorted(self._items)

    def describe(self) -> dict[str, str]:
        """Name -> one-line description."""
        self._load()
        return {n: self._docs.get(n, "") for n in sorted(self._items)}

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._items)


METHODS: Registry[Any] = Registry("method", "equimodal.methods")
DATASETS: Registry[Any] = Registry("dataset", "equimodal.data.builtin")
ENCODERS: Registry[Any] = Registry("encoder")
FUSIONS: Registry[Any] = Registry("fusion")



def register_method(name: str, doc: str | None = None) -> Callable[[Any], Any]:
    """Register a :class:`~equimodal.methods.base.Method` subclass and set its ``name``."""

    def deco(cls: Any) -> Any:
        cls.name = name
        return METHODS.register(name, doc)(cls)

    return deco

register_dataset = DATASETS.register


def list_methods() -> dict[str, str]:
    """Registered methods with one-line descriptions."""
    return METHODS.describe()


def list_datasets() -> dict[str, str]:
    """Registered datasets with one-line descriptions."""
    return DATASETS.describe()


def check_kwargs(factory: Any, kwargs: dict[str, Any], what: str) -> None:
    """Refuse keyword arguments that ``factory`` does not accept, listing the valid ones.

    Raises:
        KeyError: an unknown argument (factories taking ``**kwargs`` accept any).
    """
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = sorted(n for n, p in params.items()
                   if p.kind in (inspect.Parameter.KEYWORD_ONLY,
                                 inspect.Parameter.POSITIONAL_OR_KEYWORD))
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise KeyError(f"{what}: unknown argument(s) {unknown}; valid: {valid}")


def load_dataset(name: str, /, **kwargs: Any) -> Any:
    """Build the registered dataset ``name``; returns a :class:`~equimodal.data.MultimodalData`.

    Raises:
        KeyError: an unknown dataset, or an argument its factory does not take (``data.X``).
        ValueError: an argument of the wrong kind (the message names the ``data.`` fields
            whose values it mentions); ``DataError`` from the loader passes through.
    """
    from equimodal.types import DataError

    factory = DATASETS.get(name)
    check_kwargs(factory, kwargs, f"dataset {name!r} (data.*)")
    try:
        return factory(**kwargs)
    except DataError:
        raise
    except (TypeError, ValueError) as err:
        if not kwargs:
            raise
        # e.g. float("abc") deep in a factory: name the argument(s) the message is about.
        text = str(err)
        named = [k for k, v in kwargs.items()
                 if (isinstance(v, str) and repr(v) in text)
                 or (len(str(v)) > 1 and str(v) in text)]
        fields = ", ".join(f"data.{k}={kwargs[k]!r}" for k in (named or sorted(kwargs)))
        raise ValueError(f"dataset {name!r}: invalid argument {fields or '(none)'}: "
                         f"{text}") from err


class UnsupportedTaskError(ValueError):
    """A method cannot run on a task (its ``check_task`` refused it); the message says why."""


def method_config(name: str, info: Any, **overrides: Any) -> tuple[Any, Any]:
    """Method class and validated ``Config`` for a task: what :func:`create_method` checks
    before it builds anything (the bench calls it to skip a grid point early).

    Args:
        name: Registered method name.
        info: The dataset's :class:`~equimodal.types.TaskInfo`.
        **overrides: Fields of the method's ``Config`` dataclass.

    Returns:
        ``(method class, config instance)``.

    Raises:
        KeyError: an unknown method or ``Config`` field.
        ValueError: a field of the wrong kind.
        UnsupportedTaskError: the method's ``check_task`` refuses the task (same message).
    """
    from equimodal.config import build_dataclass

    cls = METHODS.get(name)
    cfg = build_dataclass(cls.Config, overrides, where=f"method {name!r}")
    try:
        cls.check_task(info, cfg)
    except UnsupportedTaskError:
        raise
    except ValueError as err:
        raise UnsupportedTaskError(*err.args) from err
    return cls, cfg


def create_method(name: str, info: Any, model_cfg: Any = None, **overrides: Any) -> Any:
    """Build method ``name`` for a task: its model (through ``build_model``) and extra modules.

    Args:
        name: Registered method name.
        info: The dataset's :class:`~equimodal.types.TaskInfo`.
        model_cfg: A :class:`~equimodal.config.ModelConfig`; defaults when ``None``.
        **overrides: Fields of the method's ``Config`` dataclass.
    """
    from equimodal.config import ModelConfig

    cls, cfg = method_config(name, info, **overrides)
    mcfg = model_cfg if model_cfg is not None else ModelConfig()
    model = cls.build_model(info, mcfg, cfg)
    return cls(model, info, cfg)
