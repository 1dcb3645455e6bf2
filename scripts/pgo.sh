#!/usr/bin/env bash
# Builds the ambassador's static binary, the one its image ships, with profile-guided
# optimisation, and prints the binary's path on stdout (everything else goes to stderr).
#
#   scripts/pgo.sh
#
# Three steps, as rustc's PGO guide has them: an instrumented build (target/pgo-gen), a training
# run of that build under a mesh sidecar's traffic (tools/ambassador-tools, pgo-train: an ambassador pair in
# front of a small app; each process writes its profile as it exits), and the final build with
# the merged profile (target/static-pgo). The static build flags and the release profile are
# those of scripts/images.sh.
#
# PGO=auto (default) falls back to a build without a profile, with a warning, where no
# llvm-profdata that reads this rustc's profiles is installed (Debian 12: scripts/install-bench-deps.sh, or apt install llvm-19);
# PGO=1 fails instead; PGO=0 skips the profile. TRAIN_SECONDS (default 10) sets the training run.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET=x86_64-unknown-linux-gnu
PGO=${PGO:-auto}
OUT_DIR=${PGO_TARGET_DIR:-$ROOT/target/static-pgo}
GEN_DIR=$ROOT/target/pgo-gen
TRAIN_DIR=$ROOT/target/pgo-train
PROFILES=$ROOT/target/pgo-profiles
case $PGO in auto|0|1) ;; *) echo "pgo.sh: PGO must be auto, 0 or 1, not '$PGO'" >&2; exit 2 ;; esac

# An llvm-profdata whose LLVM reads the raw profiles of this rustc's LLVM: rustup's llvm-tools
# if installed, else the newest versioned one (a version behind may read them too; the merge
# below is the real check).
find_profdata() {
    local sysroot candidate
    sysroot=$(rustc --print sysroot)
    for candidate in "$sysroot/lib/rustlib/$TARGET/bin/llvm-profdata" \
        $(compgen -c llvm-profdata- | sort -t- -k3 -n -r | uniq) llvm-profdata; do
        if command -v "$candidate" >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

build_static() { # target dir, extra RUSTFLAGS
    CARGO_TARGET_DIR=$1 RUSTFLAGS="-C target-feature=+crt-static${2:+ $2}" \
        cargo build --release --locked --target "$TARGET" -p ambassador --bin ambassador >&2
}

without_profile() {
    build_static "$OUT_DIR" ""
    echo "$OUT_DIR/$TARGET/release/ambassador"
}

fallback() { # why
    if [[ $PGO == 1 ]]; then
        echo "pgo.sh: $1 (PGO=1)" >&2
        exit 1
    fi
    echo "pgo.sh: WARNING: $1; building the ambassador without a profile (Debian 12: scripts/install-bench-deps.sh installs llvm-19)" >&2
    without_profile
    exit 0
}

if [[ $PGO == 0 ]]; then
    without_profile
    exit 0
fi
PROFDATA=$(find_profdata) || fallback "no llvm-profdata found"

echo "==> instrumented build (target/pgo-gen)" >&2
mkdir -p "$PROFILES"
build_static "$GEN_DIR" "-Cprofile-generate=$PROFILES"
INSTRUMENTED=$GEN_DIR/$TARGET/release/ambassador
# The profile of an unchanged binary is kept: training again would only change the counts, and
# with them the profile's name below, which rebuilds every crate.
stamp=$(sha256sum "$INSTRUMENTED" | cut -c1-16)
profile=$(compgen -G "$PROFILES/ambassador-$stamp-*.profdata" | head -1 || true)
if [[ -z $profile ]]; then
    echo "==> training run" >&2
    rm -f "$PROFILES"/*.profraw "$PROFILES"/*.profdata
    # The traffic's client, in a directory of its own (a caller's CARGO_TARGET_DIR may be any);
    # the ci profile: it needs to be optimised, not whole-program optimised.
    CARGO_TARGET_DIR=$TRAIN_DIR cargo build --profile ci --locked -p ambassador-tools --bin pgo-train >&2
    # One file per process: the two ambassadors of the pair.
    LLVM_PROFILE_FILE="$PROFILES/ambassador-%p.profraw" \
        "$TRAIN_DIR/ci/pgo-train" "$INSTRUMENTED" "${TRAIN_SECONDS:-10}" >&2
    compgen -G "$PROFILES/*.profraw" >/dev/null || fallback "the training run wrote no profile"
    "$PROFDATA" merge -o "$PROFILES/merged.profdata" "$PROFILES"/*.profraw >&2 ||
        fallback "$PROFDATA cannot read this rustc's profiles"
    # Named by the binary and the profile's content: cargo tracks RUSTFLAGS, not the file they
    # name, so a new profile must come with a new name to be used.
    profile=$PROFILES/ambassador-$stamp-$(sha256sum "$PROFILES/merged.profdata" | cut -c1-16).profdata
    mv "$PROFILES/merged.profdata" "$profile"
    rm -f "$PROFILES"/*.profraw
else
    echo "==> the instrumented binary is unchanged: reusing $profile" >&2
fi

echo "==> optimised build with the profile (target/static-pgo)" >&2
build_static "$OUT_DIR" "-Cprofile-use=$profile"
echo "$OUT_DIR/$TARGET/release/ambassador"
