#!/usr/bin/env bash
# The main job: the sidecars working together as local processes. Pod B runs a legacy demo app
# with an inbound ambassador (mTLS), an xml-adapter and git-sync; pod A calls it through its
# outbound ambassador. Certificates and a git repository are generated in .demo/.
# Needs only the Rust toolchain. `scripts/demo.sh --check` runs the checks and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "Building the sidecars (first build takes a few minutes)..."
cargo build --quiet -p ambassador -p xml-adapter -p git-sync -p demo-app -p demo
exec target/debug/demo "$@"
