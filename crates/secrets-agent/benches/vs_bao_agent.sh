#!/usr/bin/env bash
# secrets-agent vs OpenBao Agent (`bao agent`): first render, RSS, idle CPU, rewrites of
# unchanged files, KV-write-to-file latency; printed side by side (vs_bao_agent.py says how).
#
#   crates/secrets-agent/benches/vs_bao_agent.sh [--idle 600] [--rounds 5] [--writes 10] [--poll 5]
#
# The image's binary (static, fat LTO: what scripts/images.sh builds, in the same target
# directory), unless SA_BIN names one. The idle window is 10 minutes by default; --idle 60
# gives a quick, rougher figure.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$ROOT"
TARGET=x86_64-unknown-linux-gnu
if [[ -z ${SA_BIN:-} ]]; then
    export CARGO_TARGET_DIR=${IMAGES_TARGET_DIR:-$ROOT/target/static}
    RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_LTO=fat \
        CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
        cargo build -q --release --locked --target "$TARGET" -p secrets-agent
    SA_BIN=$CARGO_TARGET_DIR/$TARGET/release/secrets-agent
fi
exec python3 "$ROOT/crates/secrets-agent/benches/vs_bao_agent.py" --agent "$SA_BIN" "$@"
