#!/usr/bin/env bash
# Every benchmark, each printing its figures side by side with the peers it is measured against.
# Slow (tens of minutes) and noisy on small machines: compare medians and ratios, and record
# them in docs/benchmarks.md with the command. `scripts/bench.sh ambassador` runs one crate's.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
only="${1:-}"
for script in crates/*/benches/*.sh; do
  crate=$(basename "$(dirname "$(dirname "$script")")")
  if [ -n "$only" ] && [ "$crate" != "$only" ]; then continue; fi
  echo "=== $script"
  bash "$script"
done
