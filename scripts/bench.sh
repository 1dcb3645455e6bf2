#!/usr/bin/env bash
# Every benchmark, each printing its figures side by side with the peers it is measured against.
# Slow (tens of minutes) and noisy on small machines: compare medians and ratios, and record
# them in docs/benchmarks.md with the command. `scripts/bench.sh ambassador` runs one sidecar's.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-bench-deps.sh
only="${1:-}"
want() { [ -z "$only" ] || [ "$only" = "$1" ]; }

if want ambassador; then
  echo "=== ambassador: mesh hop vs nginx, HAProxy, stunnel (cargo's release build and the image's)"; crates/ambassador/benches/mesh_hop.sh 7 8 64
  echo "=== ambassador: failover vs nginx, HAProxy";           crates/ambassador/benches/failover.sh 3 10 32 2
fi
if want xml-adapter; then
  echo "=== xml-adapter: throughput vs bare quick-xml, memory, added latency"; crates/xml-adapter/benches/run.sh
fi
if want git-sync; then
  echo "=== git-sync: vs the git CLI";                         cargo bench -p git-sync --bench sync
fi
if want log-shipper; then
  echo "=== log-shipper: vs rsyslog, syslog-ng (file -> HTTP)"; crates/log-shipper/benches/vs_peers.sh
fi
if want secrets-agent; then
  echo "=== secrets-agent: vs OpenBao Agent (bao agent)";      crates/secrets-agent/benches/vs_bao_agent.sh
fi
if want images; then
  echo "=== image sizes";                                      scripts/images.sh ambassador xml-adapter git-sync secrets-agent
fi
