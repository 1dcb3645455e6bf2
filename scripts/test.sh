#!/usr/bin/env bash
# Runs every test: unit, integration (real binaries against real peers), end to end, the
# container tests (listed as ignored where no Docker engine is reachable; required in CI),
# and the offline validation of the Kubernetes manifests. Installs what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

# The cross-crate tests spawn the binaries; build them all first.
cargo build --workspace --bins --examples
cargo test --workspace "$@"

# The tests that need a Docker engine are #[ignore = "needs a Docker engine"]: the run above
# lists them as ignored. Run them where an engine answers, and always in CI, where a missing
# engine fails them.
if [ "${CI:-}" = "true" ] || docker info >/dev/null 2>&1; then
  cargo test -p e2e --test containers -- --ignored
else
  echo "notice: the container tests did not run (no Docker engine is reachable); cargo test lists them as ignored"
fi

if [ -x scripts/validate-manifests.sh ]; then
  scripts/validate-manifests.sh
fi
