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

# cargo-nextest (on the machines this project is developed on) runs the test binaries side by
# side, each test in a process of its own, within the limits of .config/nextest.toml: the tests
# mostly wait on the servers they start, and `cargo test` runs the binaries one after another,
# each waiting for its slowest test. Arguments go to whichever runs (`-p git-sync` works for
# both; `--no-capture` is nextest's `-- --nocapture`). SIDECARS_TEST_RUNNER=cargo chooses
# `cargo test`.
if [ "${SIDECARS_TEST_RUNNER:-nextest}" = nextest ] && cargo nextest --version >/dev/null 2>&1; then
  phase "cargo nextest run" cargo nextest run --workspace "$@"
  # nextest does not run documentation examples: a full run (no arguments) runs them here.
  if [ $# -eq 0 ]; then phase "doctests" cargo test --workspace --doc; fi
else
  phase "cargo test" cargo test --workspace "$@"
fi

# The tests that need a Docker engine are #[ignore = "needs a Docker engine"]: the run above
# lists them as ignored (nextest: skipped). Run them where an engine answers, and always in CI, where a missing
# engine fails them.
if [ "${CI:-}" = "true" ] || docker info >/dev/null 2>&1; then
  phase "container tests (images included)" cargo test -p e2e --test containers -- --ignored
else
  echo "notice: the container tests did not run (no Docker engine is reachable); cargo test lists them as ignored"
fi

if [ -x scripts/validate-manifests.sh ]; then
  phase "manifests" scripts/validate-manifests.sh
fi
