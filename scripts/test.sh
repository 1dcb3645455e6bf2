#!/usr/bin/env bash
# Runs every test: unit, integration (real binaries against real peers), end to end, the
# container tests (listed as ignored where no Docker engine is reachable; required in CI),
# and the offline validation of the Kubernetes manifests. Installs what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each phase says what it cost (wall and CPU time), so a slow run shows where its time went.
phase() { local TIMEFORMAT="-- $1: %0R s wall, %0U s user + %0S s system CPU"; shift; time "$@"; }

phase "installing the test dependencies" scripts/install-test-deps.sh

# The cross-crate tests spawn the binaries; build them all first.
phase "cargo build" cargo build --workspace --bins --examples
phase "cargo test" cargo test --workspace "$@"

# The tests that need a Docker engine are #[ignore = "needs a Docker engine"]: the run above
# lists them as ignored. Run them where an engine answers, and always in CI, where a missing
# engine fails them.
if [ "${CI:-}" = "true" ] || docker info >/dev/null 2>&1; then
  phase "container tests (images included)" cargo test -p e2e --test containers -- --ignored
else
  echo "notice: the container tests did not run (no Docker engine is reachable); cargo test lists them as ignored"
fi

if [ -x scripts/validate-manifests.sh ]; then
  phase "manifests" scripts/validate-manifests.sh
fi
