#!/usr/bin/env bash
# log-shipper vs rsyslog (imfile -> omelasticsearch) and syslog-ng (file() -> http()): a file on
# a shared directory shipped to an HTTP receiver on 127.0.0.1 that counts every line; lines/s,
# CPU per line, peak RSS, lines lost, side by side (vs_peers.py says how).
#
#   crates/log-shipper/benches/vs_peers.sh [--mb 1000] [--rounds 3] [--line-bytes 200] [--stall 30]
#
# LS_BENCH_MB and LS_BENCH_ROUNDS set the size (MB of 200-byte lines; 1000 = 1 GB, the default)
# and the rounds when the flags do not. The image's binary (static, fat LTO: what
# scripts/images.sh builds, in the same target directory), unless LS_BIN names one. The peers
# come from Debian (scripts/deps/bench.txt): rsyslog with rsyslog-elasticsearch (Debian's
# rsyslog has no omhttp), syslog-ng-core with syslog-ng-mod-http, unpacked under /opt/deb when
# rsyslog is installed (they conflict). A peer that is missing is skipped, and said so.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$ROOT"
TARGET=x86_64-unknown-linux-gnu
if [[ -z ${LS_BIN:-} ]]; then
    export CARGO_TARGET_DIR=${IMAGES_TARGET_DIR:-$ROOT/target/static}
    RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_LTO=fat \
        CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
        cargo build -q --release --locked --target "$TARGET" -p log-shipper
    LS_BIN=$CARGO_TARGET_DIR/$TARGET/release/log-shipper
fi
args=(--log-shipper "$LS_BIN" --mb "${LS_BENCH_MB:-1000}" --rounds "${LS_BENCH_ROUNDS:-3}")
for rsyslogd in /usr/sbin/rsyslogd "$(command -v rsyslogd || true)"; do
    if [[ -x $rsyslogd && -e /usr/lib/x86_64-linux-gnu/rsyslog/omelasticsearch.so ]]; then
        args+=(--rsyslogd "$rsyslogd"); break
    fi
done
if [[ -x /usr/sbin/syslog-ng ]]; then
    args+=(--syslog-ng /usr/sbin/syslog-ng)
elif [[ -x /opt/deb/syslog-ng-core/usr/sbin/syslog-ng ]]; then
    modules=/opt/deb/syslog-ng-core/usr/lib/syslog-ng/3.38
    [[ -e /opt/deb/syslog-ng-mod-http/usr/lib/syslog-ng/3.38/libhttp.so ]] \
        && modules+=:/opt/deb/syslog-ng-mod-http/usr/lib/syslog-ng/3.38
    args+=(--syslog-ng /opt/deb/syslog-ng-core/usr/sbin/syslog-ng
           --syslog-ng-root /opt/deb/syslog-ng-core --syslog-ng-modules "$modules")
fi
exec python3 "$ROOT/crates/log-shipper/benches/vs_peers.py" "${args[@]}" "$@"
