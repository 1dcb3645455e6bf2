#!/usr/bin/env bash
# Runs every test: unit, integration (real binaries against real peers), end to end, the
# container tests (skipped with a notice where no Docker engine is reachable; required in CI),
# and the offline validation of the Kubernetes manifests. Installs what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

# The cross-crate tests spawn the binaries; build them all first.
cargo build --workspace --bins --examples
cargo test --workspace "$@"

if [ -x scripts/validate-manifests.sh ]; then
  scripts/validate-manifests.sh
fi
