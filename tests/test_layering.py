"""Import direction: every ``equimodal`` module imports only its own layer or layers below.

The layer order (``docs/architecture.md``, "Layering")::

    base -> leaves -> data -> models -> methods -> engine -> eval -> bench -> report -> cli

Every ``import`` of ``src/equimodal`` is read with :mod:`ast` (module level, inside
functions and under ``TYPE_CHECKING``; absolute and relative), mapped to the layer of the
module it names, and an edge to a higher layer fails the test with its file, line and edge.
Imports by name at run time (the registries loading ``equimodal.methods`` /
``equimodal.data.builtin``, the CLI loading its sub-command plugins) are strings, not edges.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "equimodal"

#: Layers, lowest first: a module may import its own layer and the layers before it. A module
#: belongs to the layer of its longest matching prefix (``PACKAGE`` itself matches only the
#: package's ``__init__``).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # Shared vocabulary: containers and errors, paths, configs, registries, CLI arguments.
    ("base", ("equimodal", "equimodal.types", "equimodal.paths", "equimodal.config",
              "equimodal.registry", "equimodal.runargs")),
    # Pure functions and named recipes: losses, metrics, presets.
    ("leaves", ("equimodal.losses", "equimodal.metrics", "equimodal.presets")),
    ("data", ("equimodal.data",)),
    ("models", ("equimodal.models",)),
    # The step API the engine hands to a method (StepContext) is part of the method contract:
    # it lives in engine/ but sits with the methods, below the engine that drives them.
    ("methods", ("equimodal.methods", "equimodal.engine.context", "equimodal.engine.optim")),
    ("engine", ("equimodal.engine",)),
    # The contract checker trains a method through the engine: it is evaluation tooling.
    ("eval", ("equimodal.eval", "equimodal.methods.check")),
    ("bench", ("equimodal.bench",)),
    ("report", ("equimodal.report",)),
    ("cli", ("equimodal.cli",)),
]

#: Back edges still present, each with why; the test also fails when one of them is gone, so
#: this list only shrinks. Both are method files reaching into the engine (issue 16, method
#: contract half): G-Blending builds its own optimiser, UDI predicts a split itself.
KNOWN_BACK_EDGES: dict[tuple[str, str], str] = {}


def layer_of(module: str) -> int | None:
    """Index in :data:`LAYERS` of ``module`` (longest matching prefix), ``None`` if none."""
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            hit = module == prefix or (prefix != PACKAGE and module.startswith(prefix + "."))
            if hit and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def module_name(path: Path, root: Path = SRC) -> str:
    """Dotted module name of a source file under ``root``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_sources(root: Path = SRC) -> dict[str, tuple[str, str]]:
    """Module name -> (path relative to the repository, source) of every package file."""
    return {module_name(p, root): (str(p.relative_to(root.parent)), p.read_text())
            for p in sorted((root / PACKAGE).rglob("*.py"))}


def imports(module: str, source: str, is_package: bool,
            known: set[str]) -> Iterator[tuple[int, str]]:
    """``(line, imported module)`` of every import in ``source`` that names the package.

    ``from a import b`` names ``a.b`` when that is a module of ``known``, else ``a``; each
    (line, module) pair comes once.
    """
    seen = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (node.lineno, alias.name) not in seen:
                    seen.add((node.lineno, alias.name))
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importing module's package
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                hit = (node.lineno, sub if sub in known else target)
                if hit not in seen:
                    seen.add(hit)
                    yield hit


def back_edges(sources: Mapping[str, tuple[str, str]]) -> list[str]:
    """One line per import that goes to a higher layer or involves a module without one.

    Args:
        sources: module name -> (file path, source text), as from :func:`package_sources`.
    """
    known = set(sources)
    problems = []
    for module, (path, text) in sorted(sources.items()):
        own = layer_of(module)
        if own is None:
            problems.append(f"{path}: module {module} has no layer (add it to LAYERS)")
            continue
        for line, target in imports(module, text, path.endswith("__init__.py"), known):
            if target != PACKAGE and not target.startswith(PACKAGE + "."):
                continue
            dest = layer_of(target)
            if dest is None:
                problems.append(f"{path}:{line}: {module} imports {target}, which has no layer")
            elif dest > own and (module, target) not in KNOWN_BACK_EDGES:
                problems.append(f"{path}:{line}: {module} ({LAYERS[own][0]}) imports {target} "
                                f"({LAYERS[dest][0]}), a higher layer")
    return problems


def test_imports_go_down_the_layers() -> None:
    sources = package_sources()
    assert len(sources) > 100  # the walk found the package
    assert back_edges(sources) == []


def test_known_back_edges_still_exist() -> None:
    """A fixed back edge must leave :data:`KNOWN_BACK_EDGES` (the list only shrinks)."""
    sources = package_sources()
    known = set(sources)
    found = {(m, t) for m, (path, text) in sources.items()
             for _, t in imports(m, text, path.endswith("__init__.py"), known)}
    stale = sorted(set(KNOWN_BACK_EDGES) - found)
    assert not stale, f"remove these fixed back edges from KNOWN_BACK_EDGES: {stale}"


def _fake(module: str, text: str, package: bool = False) -> dict[str, tuple[str, str]]:
    """The real package plus one injected module."""
    sources = package_sources()
    rel = module.replace(".", "/") + ("/__init__.py" if package else ".py")
    sources[module] = (f"src/{rel}", text)
    return sources


@pytest.mark.parametrize(("module", "text", "line", "edge"), [
    # a function-level absolute import from data/ into the engine
    ("equimodal.data.fake", "import torch\n\n\ndef f():\n    from equimodal.engine import fit\n",
     5, "equimodal.data.fake (data) imports equimodal.engine (engine)"),
    # a relative import from metrics/ into data/
    ("equimodal.metrics.fake", "from ..data import dataset\n",
     1, "equimodal.metrics.fake (leaves) imports equimodal.data.dataset (data)"),
    # `from equimodal import cli` names the cli module, not the package
    ("equimodal.engine.fake", "from equimodal import cli\n",
     1, "equimodal.engine.fake (engine) imports equimodal.cli (cli)"),
    # a relative import in a package __init__ from bench/ into report/
    ("equimodal.bench.fake", "import os\nfrom ...report import html\n",
     2, "equimodal.bench.fake (bench) imports equimodal.report.html (report)"),
    # an import only for type checking still counts
    ("equimodal.models.fake",
     "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import equimodal.methods.base\n",
     3, "equimodal.models.fake (models) imports equimodal.methods.base (methods)"),
])
def test_an_injected_back_edge_fails_with_file_line_and_edge(
        module: str, text: str, line: int, edge: str) -> None:
    package = module == "equimodal.bench.fake"
    problems = back_edges(_fake(module, text, package=package))
    rel = module.replace(".", "/") + ("/__init__.py" if package else ".py")
    assert problems == [f"src/{rel}:{line}: {edge}, a higher layer"]


def test_downward_imports_and_modules_without_a_layer() -> None:
    ok = "from equimodal.data.dataset import MultimodalData\nfrom . import context\n"
    assert back_edges(_fake("equimodal.engine.fake", ok)) == []
    assert back_edges(_fake("equimodal.newtop", "x = 1\n")) == [
        "src/equimodal/newtop.py: module equimodal.newtop has no layer (add it to LAYERS)"]
    assert layer_of("equimodal") == 0 and layer_of("equimodal.engine.context") == 4
    assert layer_of("equimodal.engine.contextual") == 5  # prefixes match whole names only


#: The user-facing commands, each with exactly one ``main()``: module -> how it is run.
COMMANDS = {
    "equimodal.cli": "equimodal (console script)",
    "equimodal.engine.distributed": "torchrun ... -m equimodal.engine.distributed",
    "equimodal.presets": "python -m equimodal.presets",
    "equimodal.bench.cards": "python -m equimodal.bench.cards",
}


def test_one_main_per_user_facing_command() -> None:
    """``main()`` is defined once per command, in the command's module, and nowhere else."""
    mains = {}
    for module, (path, text) in package_sources().items():
        tree = ast.parse(text)
        defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
        if defs:
            mains[module] = len(defs)
            assert "if __name__ == \"__main__\":" in text, f"{path}: main() but no __main__"
    assert mains == dict.fromkeys(COMMANDS, 1)
    pyproject = (SRC.parent / "pyproject.toml").read_text()
    assert 'equimodal = "equimodal.cli:main"' in pyproject
