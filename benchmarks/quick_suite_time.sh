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
equimodal results --db "$out/results.db" --format csv | cut -d, -f1-8 | awk -F, 'NR>1{print $7}' \
    | sort | uniq -c
