"""Command line: ``equimodal list | train | eval | prepare | bench | results | report``."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from equimodal.runargs import add_run_arguments, build_run_config, format_metrics

# Sub-command providers living in their own packages: module -> function adding parsers.
_PLUGINS = {
    "equimodal.data.prepare": "add_prepare_parser",
    "equimodal.bench.cli": "add_bench_parsers",
    "equimodal.report.cli": "add_report_parser",
    "equimodal.eval.cli": "add_eval_parsers",
}


def methods_markdown() -> str:
    """The README method table: name, summary, paper, family, modalities, tasks."""
    from equimodal.methods.base import method_card
    from equimodal.registry import METHODS

    rows = ["| method | what it does | paper | family | modalities | tasks |",
            "|---|---|---|---|---|---|"]
    for name in METHODS.names():
        card = method_card(METHODS.get(name))
        tasks = ", ".join(card.tasks)
        rows.append(f"| `{name}` | {card.summary} | {card.paper} | {card.family} | "
                    f"{card.modalities} | {tasks} |")
    return "\n".join(rows)


def _cmd_list(args: argparse.Namespace) -> int:
    from equimodal.registry import list_datasets, list_methods

    if args.markdown:
        print(methods_markdown())
        return 0
    if args.what in ("methods", "all"):
        print("methods:")
        for name, doc in list_methods().items():
            print(f"  {name:<18} {doc}")
    if args.what in ("datasets", "all"):
        print("datasets:")
        for name, doc in list_datasets().items():
            print(f"  {name:<18} {doc}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from equimodal.engine import fit
    from equimodal.eval.diagnostics import method_diagnostics
    from equimodal.registry import DATASETS, METHODS, load_dataset

    cfg = build_run_config(args)
    METHODS.get(cfg.method)  # fail fast with a helpful message
    DATASETS.get(cfg.dataset)
    run_dir = Path(args.out) / f"{cfg.method}-{cfg.dataset}-{cfg.digest()}"
    data = load_dataset(cfg.dataset, **cfg.data)
    result = fit(cfg, run_dir, data=data, resume=not args.no_resume)
    info_kind = result.method.info.kind
    mods = result.method.info.modality_names
    print(f"run: {run_dir}")
    print(f"method {cfg.method} on {cfg.dataset} (seed {cfg.train.seed})")
    print("valid (used for selection):")
    print(format_metrics(result.valid, info_kind, mods))
    print("test:")
    print(format_metrics(result.test, info_kind, mods))
    # The method's diagnostics hook (e.g. SCOPE's Dirichlet energy over its semantic graph,
    # EBMC's modality contributions) on the validation split, one line each.
    device = next(iter(result.method.state_dict().values())).device
    diag = method_diagnostics(result.method, data.valid.to(device))
    if diag:
        print("diagnostics (validation split):")
        for key, value in sorted(diag.items()):
            print(f"  {key:<28}{value:.4f}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from equimodal.engine import evaluate, load_run

    result = load_run(args.run)
    info = result.method.info
    data = _run_data(result)
    split = data.split(args.split)
    keep = None
    if args.modalities is not None:
        keep = [m.strip() for m in args.modalities.split(",") if m.strip()]
        if not keep:
            raise ValueError(f"--modalities {args.modalities!r} names no modality; give at "
                             f"least one of {', '.join(info.modality_names)}")
        for m in keep:
            info.check_modality(m)
    metrics = evaluate(result.method, split, info, modalities=keep)
    label = f"{args.split} with modalities {keep}" if keep else args.split
    print(f"{label}:")
    print(format_metrics(metrics, info.kind, [] if keep else info.modality_names))
    if args.json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def _run_data(result: Any) -> Any:
    from equimodal.config import RunConfig
    from equimodal.registry import load_dataset

    raw = dict(result.config)
    raw.pop("versions", None)
    cfg = RunConfig.from_dict(raw)
    return load_dataset(cfg.dataset, **cfg.data)


def make_parser() -> argparse.ArgumentParser:
    """The full argument parser (sub-commands from plugins included)."""
    parser = argparse.ArgumentParser(
        prog="equimodal", description="Balanced multimodal learning: train, compare, diagnose."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered methods and datasets")
    p.add_argument("what", nargs="?", default="all", choices=["all", "methods", "datasets"])
    p.add_argument("--markdown", action="store_true", help="print the method table as Markdown")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("train", help="train one method on one dataset")
    p.add_argument("--method", "-m", help="registered method name (see `equimodal list`)")
    p.add_argument("--data", "-d", help="registered dataset name")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", default="runs", help="parent folder of run folders")
    p.add_argument("--no-resume", action="store_true", help="retrain even if a run exists")
    add_run_arguments(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a finished run, optionally with modalities removed")
    p.add_argument("run", help="run folder written by `equimodal train`")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--modalities", help="comma-separated modalities to keep (others missing)")
    p.add_argument("--json", action="store_true", help="also print all metrics as JSON")
    p.set_defaults(func=_cmd_eval)

    for module, fn in _PLUGINS.items():
        if importlib.util.find_spec(module) is not None:
            getattr(importlib.import_module(module), fn)(sub)
    return parser


def expand_preset(argv: list[str]) -> list[str]:
    """Replace ``--preset NAME[:SELECT]`` by the preset's own arguments.

    The preset's arguments go right after the sub-command, so the user's ``--set`` values
    (applied later) override them. ``train`` gets the preset's dataset and overrides;
    ``bench`` also its seeds (MSA: 1111-1115) unless ``--seeds`` is given.

    Raises:
        ValueError: ``--preset`` without a value, or an unknown preset.
    """
    if "--preset" not in argv:
        return argv
    i = argv.index("--preset")
    if i + 1 >= len(argv):
        raise ValueError("--preset needs a name: mosi, mosei, sims or <method>-paper")
    name, _, select = argv[i + 1].partition(":")
    rest = argv[:i] + argv[i + 2:]
    from equimodal.presets import PAPER_PRESETS, msa_preset

    command = rest[0] if rest else ""
    if name in PAPER_PRESETS:  # a paper's training recipe (train.* only), e.g. scope-paper
        if command not in ("train", "bench"):
            raise ValueError("--preset goes with `equimodal train` or `equimodal bench`")
        paper = PAPER_PRESETS[name]
        # --set outranks the --epochs / --batch-size / --lr flags (build_run_config), so a
        # recipe value the user also gives as a flag is left out: the user's flag wins.
        flags = {"--epochs": "epochs", "--batch-size": "batch_size", "--lr": "lr"}
        given = {key for flag, key in flags.items() if flag in rest}
        extra = [tok for s in paper.set_args() if s.split("=")[0][len("train."):] not in given
                 for tok in ("--set", s)]
        if command == "train" and not {"--method", "-m"} & set(rest):
            extra = ["--method", paper.method, *extra]
        return [command, *extra, *rest[1:]]
    preset = msa_preset(name, select=select or "mae")
    if command == "bench":
        extra = preset.bench_cli().split()
        if "--seeds" in rest:  # the user's seeds win: drop the preset's pair of tokens
            j = extra.index("--seeds")
            extra = extra[:j] + extra[j + 2:]
    elif command == "train":
        extra = preset.cli().split()
    else:
        raise ValueError("--preset goes with `equimodal train` or `equimodal bench`")
    return [command, *extra, *rest[1:]]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 with a one-line message on bad input)."""
    from equimodal.data.dataset import DataError

    parser = make_parser()
    try:
        argv = expand_preset(list(sys.argv[1:] if argv is None else argv))
    except ValueError as err:
        print(f"equimodal: error: {err}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here rather than at interpreter exit
    except BrokenPipeError:
        return _closed_stdout()
    except (KeyError, ValueError, DataError, FileNotFoundError, PermissionError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"equimodal: error: {msg}", file=sys.stderr)
        return 2
    return code


def _closed_stdout() -> int:
    """The reader of stdout went away (``equimodal list | head``): end quietly.

    stdout is pointed at ``/dev/null`` so that Python's final flush cannot raise again;
    the exit code is the shell's for SIGPIPE (128 + 13).
    """
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (tests)
        pass
    return 141


if __name__ == "__main__":
    sys.exit(main())
