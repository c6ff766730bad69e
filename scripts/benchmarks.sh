#!/usr/bin/env bash
# Every benchmark of BENCHMARKS.md, one after the other in one run, with the machine and the date,
# into target/benchmarks-<UTC date>.txt (and the terminal). About 6 minutes after the build;
# extra arguments after the bench names are not supported (run cargo bench by hand for that).
#   bash scripts/benchmarks.sh            # all
#   bash scripts/benchmarks.sh allocate   # only the benches named
set -euo pipefail
cd "$(dirname "$0")/.."
benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(preferred metrics allocate list_and_watch health_storm soak restarts)
log="target/benchmarks-$(date -u +%Y%m%dT%H%M%SZ).txt"
mkdir -p target
cargo bench --locked --no-run >/dev/null 2>&1 || cargo bench --locked --no-run
{
  echo "date: $(date -u)"
  echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(free -g | awk '/^Mem:/{print $2}') GiB"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (modified)')"
  echo "rustc: $(rustc --version)"
} | tee "$log"
for bench in "${benches[@]}"; do
  echo "=== cargo bench --bench $bench" | tee -a "$log"
  # Criterion's progress lines and its comparisons with an earlier run are left out.
  cargo bench --locked --bench "$bench" 2>&1 \
    | grep -Ev -e '^Benchmarking ' -e '^\s*$' -e '^ *change: ' -e 'Performance has|No change in performance|Change within noise' \
      -e '^Found [0-9]+ outliers' -e '^ *[0-9]+ \(.*%\) (high|low) (mild|severe)$' \
    | tee -a "$log"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$log"
echo "saved: $log"
