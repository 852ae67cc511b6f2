#!/usr/bin/env bash
# Ablations behind the health panel's misses (docs/health.md, "Why the misses miss").
#
# Usage: bash benchmarks/health_ablations.sh [OUT]
#   OUT      bench folder shared with the panel (default runs/health): concat and the
#            default variants are read back from OUT/results.db when the panel ran there.
#   WORKERS  processes (default 1); SEEDS (default 0,1,2); ONLY: regex of ablation names
#            to run (the summary still lists every ablation with results).
#
# Every ablation is `python benchmarks/health.py` with `--set method.KEY=VALUE` on the
# specification method only, so data, recipe, epochs and early stopping are exactly the
# panel's. The summary prints, per ablation and dataset@recipe, fusion accuracy and the weak
# modality's linear probe (mean±std and the per-seed values, in seed order) next to concat's.
set -euo pipefail
OUT=${1:-runs/health}
WORKERS=${WORKERS:-1}
SEEDS=${SEEDS:-0,1,2}
ONLY=${ONLY:-.}

# name | method | datasets | recipes | method overrides (space separated); a name ending in
# "*" also changes a train.* setting of the method (not concat's): a diagnostic only. A token
# starting with "--" is a health.py option (e.g. --paper-epochs=60: concat reruns with it).
export ABLATIONS='
ebmc/default            | ebmc       | synthetic,avmnist | paper  |
ebmc/calibration=none   | ebmc       | synthetic,avmnist | paper  | method.teacher_calibration=none
ebmc/calibration=trust  | ebmc       | synthetic,avmnist | paper  | method.teacher_calibration=trust
ebmc/no-imtd            | ebmc       | synthetic,avmnist | paper  | method.use_imtd=false
ebmc/60-epochs          | ebmc       | synthetic,avmnist | paper  | --paper-epochs=60
decalign/default        | decalign   | avmnist,mfeat     | shared |
decalign/no-mfd         | decalign   | avmnist           | shared | method.use_mfd=false
decalign/no-hete        | decalign   | avmnist,mfeat     | shared | method.use_hete=false
decalign/no-proto-ot    | decalign   | mfeat             | shared | method.use_proto_ot=false
decalign/cost=mean      | decalign   | mfeat             | shared | method.cost_reduction=mean
decalign/no-homo        | decalign   | avmnist           | shared | method.use_homo=false
decalign/no-ct          | decalign   | avmnist           | shared | method.use_ct=false
decalign/vector-encoder | decalign   | avmnist,mfeat     | shared | method.vector_encoder=true
decalign/paper-default  | decalign   | avmnist           | paper  |
decalign/paper-vec-enc  | decalign   | avmnist           | paper  | method.vector_encoder=true
scope/default           | scope      | synthetic         | shared |
scope/no-mid            | scope      | synthetic         | shared | method.use_mid=false
scope/no-align          | scope      | synthetic         | shared | method.use_align=false
scope/fixed-weights     | scope      | synthetic         | shared | method.loss_weighting=fixed
scope/fusion=mlp        | scope      | synthetic         | shared | method.fusion=mlp
scope/no-early-stop*    | scope      | synthetic         | shared | train.patience=0
udi/default             | udi        | avmnist           | shared |
udi/no-controller       | udi        | avmnist           | shared | method.dynamic_controller=false
udi/select=follower     | udi        | avmnist           | shared | method.follower_selection=follower
udi/no-early-stop*      | udi        | avmnist           | shared | train.patience=0
udi/no-ctrl+no-stop*    | udi        | avmnist           | shared | method.dynamic_controller=false train.patience=0
infobridge/default      | infobridge | avmnist           | shared |
infobridge/no-cmi       | infobridge | avmnist           | shared | method.use_cmi=false
infobridge/alpha=0      | infobridge | avmnist           | shared | method.alpha=0.0
'

trim() { local s=$1; s=${s#"${s%%[![:space:]]*}"}; echo "${s%"${s##*[![:space:]]}"}"; }

while IFS='|' read -r name method data recipes sets; do
  name=$(trim "$name")
  [[ -z $name || ! $name =~ $ONLY ]] && continue
  args=()
  for s in $sets; do
    if [[ $s == --* ]]; then args+=("$s"); else args+=(--set "$s"); fi
  done
  echo "== $name" >&2
  python benchmarks/health.py --methods "$(trim "$method")" --datasets "$(trim "$data")" \
    --recipes "$(trim "$recipes")" --seeds "$SEEDS" --workers "$WORKERS" --out "$OUT" \
    ${args[@]+"${args[@]}"} > /dev/null
done <<< "$ABLATIONS"

python - "$OUT" "$SEEDS" <<'PY'
"""Summary: fusion and weak-modality probe per ablation, next to concat (same recipe)."""
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
import health  # noqa: E402
from equimodal.bench.store import load_results  # noqa: E402

out, seeds = sys.argv[1], sys.argv[2]
db = Path(out) / "results.db"
df = load_results(db) if db.exists() else None


def cell(rows, col):
    vals = [float(v) for v in rows.sort_values("seed")[col]] if col in rows else []
    vals = [v for v in vals if not math.isnan(v)]
    if not vals:
        return math.nan, "–"
    mean = sum(vals) / len(vals)
    std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0
    seeds_txt = "/".join(f"{100 * v:.1f}" for v in vals)
    return mean, f"{100 * mean:.1f}±{100 * std:.1f} ({seeds_txt})"


groups: dict[str, list[str]] = {}
for line in os.environ["ABLATIONS"].strip().splitlines():
    name, method, data, recipes, sets = (x.strip() for x in line.split("|"))
    argv = ["--methods", method, "--datasets", data, "--recipes", recipes, "--seeds", seeds,
            "--out", out]
    for s in sets.split():
        argv += [s] if s.startswith("--") else ["--set", s]
    points = health.grid(health.parse(argv))
    if df is None:
        continue
    opts = " ".join(s for s in sets.split() if s.startswith("--"))
    for label in dict.fromkeys(p.label for p in points):
        ids = {p.run_id for p in points if p.label == label}
        runs = df[df["run_id"].isin(ids) & (df["status"] == "finished")]
        base, mine = runs[runs["method"] == "concat"], runs[runs["method"] == method]
        if mine.empty or base.empty:
            continue
        mods = next((list(v) for v in base["modalities"] if isinstance(v, list)), [])
        weak = min(mods, key=lambda m: base[f"test/{m}/probe_accuracy"].mean())
        bf, bf_txt = cell(base, "test/accuracy")
        bp, bp_txt = cell(base, f"test/{weak}/probe_accuracy")
        key = f"{label} {opts}".strip()
        rows = groups.setdefault(key, [f"| concat | {key} ({weak}) | {len(base)} | "
                                      f"{bf_txt} | – | {bp_txt} | – | reference |"])
        f, f_txt = cell(mine, "test/accuracy")
        p, p_txt = cell(mine, f"test/{weak}/probe_accuracy")
        ok = f - bf >= -health.FUSION_TOL and (math.isnan(p) or p - bp >= -health.PROBE_TOL)
        rows.append(f"| {name} | {key} | {len(mine)} | {f_txt} | {100 * (f - bf):+.1f} | "
                    f"{p_txt} | {100 * (p - bp):+.1f} | {'PASS' if ok else 'FAIL'} |")

print("| ablation | data@recipe (weak) | n | fusion (per seed) | Δ | weak probe (per seed) "
      "| Δprobe | target |")
print("|---|---|---|---|---|---|---|---|")
for rows in groups.values():
    print("\n".join(rows))
PY
