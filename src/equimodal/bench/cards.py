"""Dataset-card numbers: unimodal and concat-fusion test accuracy of the built-in datasets.

Run as a module; every number in the dataset cards of ``docs/datasets.md`` / README comes
from it::

    python -m equimodal.bench.cards --datasets avmnist,avmnist-seq,cgmnist,mfeat --seeds 3

For each dataset preset and seed ``s`` it loads the data with ``seed=s`` (split / pairing /
colors) and trains, with ``train.seed=s`` and the default model / training settings (or
``--epochs`` / ``--set`` overrides), one ``unimodal`` model per modality and one ``concat``
model, then prints test accuracy as mean ± std over the seeds (sample std, as everywhere in
equimodal) as a Markdown table. Runs are saved under ``--out`` and reused when the command
is repeated.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Preset label -> (registered dataset, kwargs). ``seed`` is added per seed.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "avmnist": ("avmnist", {"progress": False}),
    "avmnist-seq": ("avmnist", {"view": "sequence", "progress": False}),
    "avmnist-speaker": ("avmnist", {"protocol": "speaker", "progress": False}),
    "cgmnist": ("cgmnist", {}),
    "cgdigits": ("cgdigits", {}),
    "mfeat": ("mfeat", {}),
    "mfeat-mor-pix": ("mfeat", {"views": "mor,pix"}),
}


def measure(
    label: str,
    seeds: Sequence[int],
    overrides: Sequence[str] = (),
    out: Path | None = None,
) -> dict[str, list[float]]:
    """Test accuracy of each unimodal model and of concat fusion, per seed.

    Args:
        label: A key of :data:`PRESETS`.
        seeds: Data and training seeds.
        overrides: ``section.key=value`` strings applied to every run (e.g. ``train.epochs=5``,
            ``data.n_train=500``).
        out: Folder of run folders (reused when present); ``None`` keeps nothing.

    Returns:
        ``"<modality> (unimodal)"`` / ``"concat"`` -> accuracies in seed order.
    """
    from equimodal.config import RunConfig, apply_overrides
    from equimodal.engine import fit
    from equimodal.registry import load_dataset

    dataset, kwargs = PRESETS[label]
    scores: dict[str, list[float]] = {}
    for seed in seeds:
        base = apply_overrides(RunConfig("concat", dataset, data={**kwargs, "seed": seed}),
                               [f"train.seed={seed}", "train.progress=false", *overrides])
        data = load_dataset(dataset, **base.data)
        runs: list[tuple[str, str, dict[str, Any]]] = [
            (f"{m} (unimodal)", "unimodal", {"modality": m}) for m in data.info.modality_names
        ]
        runs.append(("concat", "concat", {}))
        for row, method, method_cfg in runs:
            cfg = RunConfig.from_dict({**base.to_dict(), "method": method,
                                       "method_cfg": method_cfg})
            run_dir = out / f"{label}-{method}-{cfg.digest()}" if out is not None else None
            acc = float(fit(cfg, run_dir, data=data).test["accuracy"])
            log.info("%s seed %d %s: %.4f", label, seed, row, acc)
            scores.setdefault(row, []).append(acc)
    return scores


def markdown(results: dict[str, dict[str, list[float]]]) -> str:
    """A Markdown table: dataset, model, test accuracy mean ± std over seeds."""
    from equimodal.metrics import mean_std

    lines = ["| dataset | model | test accuracy | seeds |", "|---|---|---|---|"]
    for label, rows in results.items():
        for row, accs in rows.items():
            mean, std = mean_std(accs)
            lines.append(f"| `{label}` | {row} | {mean:.3f} ± {std:.3f} | {len(accs)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m equimodal.bench.cards", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="avmnist,avmnist-seq,cgmnist,mfeat",
                   help=f"comma-separated presets among {list(PRESETS)}")
    p.add_argument("--seeds", default="3", help="number of seeds (0..n-1) or a list '0,1,2'")
    p.add_argument("--epochs", type=int, help="training epochs (default: TrainConfig's)")
    p.add_argument("--set", "-s", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override for every run, e.g. data.n_train=500, model.hidden=32")
    p.add_argument("--out", default="runs/cards", help="run folders (reused when present)")
    p.add_argument("--json", help="also write the raw accuracies to this JSON file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    seeds = (list(range(int(args.seeds))) if "," not in args.seeds
             else [int(s) for s in args.seeds.split(",")])
    labels = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in labels if d not in PRESETS]
    if unknown:
        p.error(f"unknown presets {unknown}; choose among {list(PRESETS)}")
    overrides = list(args.set) + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    results = {d: measure(d, seeds, overrides, Path(args.out)) for d in labels}
    sys.stdout.write(markdown(results) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
