"""How UDI's summed color follower outvotes its gray anchor on CG-MNIST (finding 1).

For each finished run folder given (a two-branch model with summed logits, e.g. UDI's), it
reloads the selected model and prints one Markdown row per split (OOD validation, test):
each branch's accuracy, the fused accuracy, the samples the anchor gets right that the sum
gets wrong (*outvoted*) and the reverse (*rescued*), the branches' median top-1 logit
margins overall and on the outvoted samples, their logit scale, and the fused accuracy with
the follower at half its vote (a diagnostic, not a selected model: nothing here selects).

Usage (after the suites of ``docs/reproductions/cgmnist.md``)::

    python benchmarks/reproductions/cgmnist_votes.py \
        bench/cgmnist-udi/runs/udi-long30-follower30-* bench/cgmnist-udi/runs/udi-full6-*
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from equimodal.data.dataset import MultimodalData
from equimodal.engine.run import load_run
from equimodal.eval.votes import branch_votes, outvoted, top1_margin, weighted_sum_accuracy
from equimodal.methods.inference import predict_split
from equimodal.registry import load_dataset

HEADER = ("| run | split | anchor / follower acc | fused | anchor outvoted / rescued "
          "| median margin anchor / follower | on outvoted: anchor / follower "
          "| logit std anchor / follower | fused, follower x 0.5 |")


def rows(run_dir: Path, data: MultimodalData, anchor: str) -> list[str]:
    """One Markdown row per split of ``run_dir``'s selected model."""
    res = load_run(run_dir, data=data, check=False)
    cfg = res.config
    label = f"{run_dir.name.rsplit('-', 1)[0]} seed {cfg['train']['seed']}"
    out = []
    for split_name in ("valid", "test"):
        fused, uni, target = predict_split(res.method, getattr(data, split_name))
        follower = next(k for k in uni if k != anchor)
        votes = branch_votes(fused, uni, target)
        a, f = votes["branches"][anchor], votes["branches"][follower]
        lost = outvoted(fused, uni[anchor], target)
        rival = top1_margin(uni[follower])[lost].median().item() if bool(lost.any()) else 0.0
        half = weighted_sum_accuracy(uni, target, {follower: 0.5})
        out.append(
            f"| {label} | {split_name} | {100 * a['accuracy']:.2f} / {100 * f['accuracy']:.2f} "
            f"| {100 * votes['fused_accuracy']:.2f} | {a['outvoted']} / {a['rescued']} "
            f"| {a['median_margin']:.1f} / {f['median_margin']:.1f} "
            f"| {a['median_margin_outvoted']:.1f} / {rival:.1f} "
            f"| {a['logit_std']:.1f} / {f['logit_std']:.1f} | {100 * half:.2f} |")
    return out


def main() -> None:
    """Print the table for the run folders on the command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished run folders")
    p.add_argument("--anchor", default="gray", help="the anchor branch (default: gray)")
    args = p.parse_args()
    torch.set_num_threads(1)
    cache: dict[str, MultimodalData] = {}
    print(HEADER)
    print("|" + "---|" * HEADER.count(" | ") + "---|")
    for run_dir in args.runs:
        cfg = json.loads((run_dir / "config.json").read_text())
        key = json.dumps([cfg["dataset"], cfg["data"]], sort_keys=True)
        if key not in cache:
            cache[key] = load_dataset(cfg["dataset"], **cfg["data"])
        print("\n".join(rows(run_dir, cache[key], args.anchor)), flush=True)


if __name__ == "__main__":
    main()
