#!/usr/bin/env bash
# Wall time of README's main command (`equimodal bench --suite quick && equimodal report`)
# from an empty output folder. Usage: benchmarks/quick_suite_time.sh [OUT] [WORKERS]
# Prints the machine's core count and load average too: timings on a shared machine are
# only comparable at similar load.
set -euo pipefail
out="${1:-bench/quick-timing}"
workers="${2:-2}"
rm -rf "$out"
echo "cores: $(nproc)  load before: $(cut -d' ' -f1-3 /proc/loadavg)"
start=$(date +%s)
equimodal bench --suite quick --out "$out" --workers "$workers" --quiet
mid=$(date +%s)
equimodal report --db "$out/results.db"
end=$(date +%s)
echo "bench: $((mid - start))s  report: $((end - mid))s  total: $((end - start))s"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
# On a shared machine wall time measures the neighbours: the CPU seconds of the runs divided
# by the workers estimate the bench on an idle machine (each run uses one thread).
python - "$out/results.db" "$workers" <<'PY'
import sys
from equimodal.bench.store import load_results
df = load_results(sys.argv[1])
cpu = sum(float((t or {}).get("job_cpu_seconds") or 0.0) for t in df["timings"])
print(f"runs: {len(df)}  CPU seconds: {cpu:.0f}  idle-machine estimate of the bench: "
      f"{cpu / int(sys.argv[2]):.0f}s with {sys.argv[2]} workers")
PY
equimodal results --db "$out/results.db" --format csv | cut -d, -f1-8 | awk -F, 'NR>1{print $7}' \
    | sort | uniq -c
