#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of outside input (the fuzz/ crate, cargo-afl on the
# stable toolchain): installs cargo-afl if missing, builds the targets, runs each for
# FUZZ_SECONDS (default 60) from a seed corpus taken from the repository (fixtures, mappings,
# deployed configs, the docs' examples, certificates made here), prints per target the
# executions, crashes and hangs, and exits non-zero when any target crashed. A crash's input
# is kept under fuzz/out/<target>/default/crashes; replay it with
#   fuzz/target/release/<target> < fuzz/out/<target>/default/crashes/<file>
#
#   scripts/fuzz.sh                      # every target, 60 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh xml_document tls_pem
#   FUZZ_JOBS=1 scripts/fuzz.sh          # one target at a time (default: one per core)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
OUT=${FUZZ_OUT:-$ROOT/fuzz/out}

ALL=(ambassador_config git_sync_flags log_shipper_config secrets_agent_config xml_mapping
  xml_path xml_transforms xml_document json_document xml_probe spiffe_dns_patterns xfcc tls_pem git_sync_webhook
  log_parsers log_container log_syslog secrets_template)
if [ $# -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL[@]}"); fi

if ! cargo afl --version >/dev/null 2>&1; then
  echo "== installing cargo-afl"
  cargo install cargo-afl --locked
fi
# AFL++ itself is built once per toolchain; "already built" is not an error.
cargo afl config --build >/dev/null 2>&1 || true

echo "== building the fuzz targets (cargo afl build --release)"
(cd fuzz && cargo afl build --release --quiet)

SEEDS=$OUT/seeds
rm -rf "$SEEDS"
mkdir -p "$SEEDS"

# seed TARGET NAME: stdin becomes one seed file.
seed() { mkdir -p "$SEEDS/$1"; cat >"$SEEDS/$1/$2"; }
# seed_files TARGET FILE...: existing files as seeds.
seed_files() {
  local t=$1 f; shift
  mkdir -p "$SEEDS/$t"
  for f in "$@"; do [ -f "$f" ] && cp "$f" "$SEEDS/$t/$(echo "$f" | tr / _)"; done
  return 0
}
# seed_doc_yaml TARGET DOC: each ```yaml block of a doc page as a seed.
seed_doc_yaml() {
  mkdir -p "$SEEDS/$1"
  awk -v dir="$SEEDS/$1" -v base="$(basename "$2" .md)" '
    /^```yaml/ { n++; f = dir "/" base "-" n ".yaml"; on = 1; next }
    /^```/ { on = 0; next }
    on { print > f }' "$2"
}

XA=crates/xml-adapter
seed_files ambassador_config deploy/kubernetes/config/ambassador/*.yaml deploy/compose/ambassador-pod-*.yaml
seed_doc_yaml ambassador_config docs/ambassador.md
seed_doc_yaml ambassador_config docs/ambassador-resilience.md
seed_files secrets_agent_config deploy/kubernetes/config/secrets-agent/secrets-agent.yaml deploy/compose/secrets-agent-pod-*.yaml
seed_doc_yaml secrets_agent_config docs/secrets-agent.md
seed_doc_yaml log_shipper_config docs/log-shipper.md
printf 'inputs:\n  - {name: app, paths: [/var/log/app/*.log]}\n' | seed log_shipper_config minimal.yaml
seed_files xml_mapping $XA/examples/mappings/*.yaml $XA/tests/mappings/*.yaml deploy/kubernetes/config/xml-adapter/mapping.yaml
seed_doc_yaml xml_mapping docs/xml-adapter.md

# Every path of the mappings, one per seed.
mkdir -p "$SEEDS/xml_path"
grep -hoE '(path|value): *"?[^"{}]+' $XA/examples/mappings/*.yaml $XA/tests/mappings/*.yaml \
  | sed -E 's/^(path|value): *"?//' | sort -u | head -200 \
  | awk -v dir="$SEEDS/xml_path" '{ f = dir "/p" NR; printf "%s", $0 > f; close(f) }'
printf '//p:item[@id="1"][name!=""]/value' | seed xml_path namespaced
printf 'ancestor::view/@name' | seed xml_path ancestor

printf '[trim]\0 42 ' | seed xml_transforms trim
printf '[bytes]\0019968 MiB' | seed xml_transforms bytes
printf '[duration]\0000d 1h 3m 2s' | seed xml_transforms duration
printf '[{date: rfc3339}]\0002024-02-29T23:59:60.5+01:00' | seed xml_transforms rfc3339
printf '%%m/%%d/%%Y %%H:%%M:%%S\00012/31/2023 23:59:59' | seed xml_transforms strf
printf '[{map: {UP: 1, DOWN: 0, "*": -1}}]\0UP' | seed xml_transforms map
printf "[{regex: 'up (\\\\d+) days'}, {scale: 86400}, floor]\\0up 3 days" | seed xml_transforms regex
printf "[{replace: {from: '(\\\\d+)ms', to: '\$1'}}, {scale: 0.001}, {add: 1}]\\0250ms" | seed xml_transforms replace

# The first byte picks the mapping: 0 BIND, 1 QuakeML, 2 Passenger (lenient, small caps).
mkdir -p "$SEEDS/xml_document"
for f in $XA/tests/fixtures/bind9/*.xml; do
  [ "$(stat -c %s "$f")" -lt 65536 ] || continue
  { printf '\0'; cat "$f"; } >"$SEEDS/xml_document/bind-$(basename "$f")"
done
for f in $XA/tests/fixtures/xpath-cases/*.quakeml; do
  { printf '\1'; cat "$f"; } >"$SEEDS/xml_document/quakeml-$(basename "$f")"
done
for f in $XA/tests/fixtures/misc/passenger_status.xml; do
  { printf '\2'; cat "$f"; } >"$SEEDS/xml_document/passenger-$(basename "$f")"
done

# The first byte picks the mapping: 0 BIND's JSON, 1 HAProxy's JSON, 2 a small one (tight caps).
mkdir -p "$SEEDS/json_document"
{ printf '\0'; cat $XA/tests/fixtures/bind9/live-9.18.json; } >"$SEEDS/json_document/bind.json"
{ printf '\1'; cat $XA/tests/fixtures/haproxy/live-2.6.json; } >"$SEEDS/json_document/haproxy.json"
printf '\2{"items": [{"name": "a", "v": 1}, {"name": "b"}, null], "x": {"y": [true, 2.5e3]}}' |
  seed json_document small

# Probe file, NUL, an allow-list entry, NUL, a target.
seed_doc_yaml xml_probe docs/xml-adapter.md
printf 'allowed_targets: [legacy.internal:8080]\nmodules:\n  m: {mapping: m.yaml, http: {timeout: 2s}}\n\0legacy.internal:8080\0http://LEGACY.internal:8080/status' | seed xml_probe host
printf '\0http://10.0.0.1/app/\0http://10.0.0.1/app/../admin' | seed xml_probe prefix
printf '\0https://[::1]:8443/\0https://user@[::1]:8443/%%2e%%2e/x#f' | seed xml_probe ipv6

printf 'spiffe://td/ns/*/sa/web\0spiffe://td/ns/prod/sa/web' | seed spiffe_dns_patterns one
printf 'spiffe://*/ns/prod/**\0spiffe://other.td/ns/prod/sa/a/b' | seed spiffe_dns_patterns rest
printf '*.example.com\0api.Example.com' | seed spiffe_dns_patterns dns-wildcard
printf 'api.example.com\0API.EXAMPLE.COM' | seed spiffe_dns_patterns dns

# Certificates made here (never committed): odd subjects and SANs for XFCC's quoting.
CERTS=$OUT/certs
rm -rf "$CERTS" && mkdir -p "$CERTS"
cert() { # name subject san
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "$2" -addext "subjectAltName=$3" -keyout "$CERTS/$1.key" -out "$CERTS/$1.pem" 2>/dev/null
  openssl x509 -in "$CERTS/$1.pem" -outform DER -out "$CERTS/$1.der"
}
cert plain "/CN=web" "URI:spiffe://td/ns/a/sa/web,DNS:web.example.com"
cert quoted '/CN=a\,b;c=d/O=x"y' 'URI:spiffe://td/ns/a;b/sa/"q",DNS:a.example.com,DNS:b.example.com'
cert many "/CN=many/OU=one/OU=two" "URI:https://example.com/x=y,IP:127.0.0.1,email:a@b.c"
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=rsa" \
  -keyout "$CERTS/rsa.key" -out "$CERTS/rsa.pem" 2>/dev/null
for c in plain quoted many rsa; do
  [ -f "$CERTS/$c.der" ] && seed_files xfcc "$CERTS/$c.der"
  { cat "$CERTS/$c.pem"; printf '\0'; cat "$CERTS/$c.key"; } | seed tls_pem "$c"
done
{ cat "$CERTS/plain.pem" "$CERTS/rsa.pem"; printf '\0'; cat "$CERTS/plain.key"; } | seed tls_pem chain

sig=$(printf '{"ref":"refs/heads/main"}' | openssl dgst -sha256 -hmac s3cret | sed 's/^.*= //')
printf 's3cret\0sha256=%s\0{"ref":"refs/heads/main"}' "$sig" | seed git_sync_webhook hmac
printf 's3cret\0Bearer s3cret\0' | seed git_sync_webhook bearer
printf 's3cret\nwrong\0s3cret\0' | seed git_sync_webhook token

printf -- '--repo\0https://git.example.com/team/config.git\0--ref\0main\0--root\0/tmp/fuzz-root\0--period\0030s' | seed git_sync_flags https
printf -- '--repo\0git@example.com:team/config.git\0--root\0/tmp/fuzz-root\0--depth\0000\0--symlinks\0refuse\0--max-file-size\00010MiB' | seed git_sync_flags ssh

printf 'level=info msg="hello \\"world\\"" n=1 flag empty=' | seed log_parsers logfmt
printf '{"message":"hi","n":1,"nested":{"a":[1,2]}}' | seed log_parsers json
printf 'INFO net: connected to 10.0.0.1' | seed log_parsers regex

printf '2024-01-01T00:00:00.000000000Z stdout P part one \n2024-01-01T00:00:00.1Z stdout F and two\n2024-01-01T00:00:01Z stderr F whole\n' | seed log_container cri
printf '{"log":"first half ","stream":"stdout","time":"2024-01-01T00:00:00.5Z"}\n{"log":"second\\n","stream":"stdout","time":"2024-01-01T00:00:00.6Z"}\n' | seed log_container docker

printf "<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"App\"] 'su root' failed\n" | seed log_syslog rfc5424
printf '<13>Oct 11 22:14:15 host app[123]: a message\n' | seed log_syslog rfc3164
printf '59 <13>1 2024-01-01T00:00:00Z host app - - - octet counted message67 <13>1 2024-01-01T00:00:01Z host app - - - another one' | seed log_syslog octets

printf '{{ db.username }}:{{ db.password | uri_component }}\n\0{"username":"u","password":"p@ss w/rd"}' | seed secrets_template fields
printf '{%% for k, v in db | items %%}{{ k }}={{ v | tojson }}\n{%% endfor %%}\0{"a":1,"b":[true,null],"c":{"d":"e"}}' | seed secrets_template loop
printf '{%% if db.x is defined %%}{{ db.x }}{%% else %%}none{%% endif %%}\0"plain text"' | seed secrets_template cond

export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_SKIP_CRASHES=1 AFL_QUIET=1

# One afl-fuzz per core (FUZZ_JOBS): the targets are independent, and CI's budget is wall time.
JOBS=${FUZZ_JOBS:-$(nproc)}
run_target() { # target
  local t=$1 bin=$ROOT/fuzz/target/release/$1
  rm -rf "${OUT:?}/$t"
  cargo afl fuzz -V "$SECONDS_PER_TARGET" -t 2000 -i "$SEEDS/$t" -o "$OUT/$t" -- "$bin" \
    >"$OUT/$t.log" 2>&1 || { echo "afl-fuzz failed on $t:"; tail -20 "$OUT/$t.log"; return 2; }
}
for t in "${TARGETS[@]}"; do
  [ -x "$ROOT/fuzz/target/release/$t" ] || { echo "no target $t" >&2; exit 2; }
  [ -n "$(ls -A "$SEEDS/$t" 2>/dev/null)" ] || { echo "no seeds for $t" >&2; exit 2; }
done
echo "== fuzzing ${#TARGETS[@]} targets, $SECONDS_PER_TARGET s each, $JOBS at a time"
pids=()
for t in "${TARGETS[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  run_target "$t" &
  pids+=($!)
done
broken=0
for p in "${pids[@]}"; do wait "$p" || broken=1; done
[ "$broken" = 0 ] || exit 2

failed=0
summary=$OUT/summary.txt
printf '%-22s %12s %8s %6s %6s\n' target executions execs/s crashes hangs | tee "$summary"
for t in "${TARGETS[@]}"; do
  bin=$ROOT/fuzz/target/release/$t
  stats=$OUT/$t/default/fuzzer_stats
  stat() { sed -n "s/^$1 *: *//p" "$stats"; }
  crashes=$(stat saved_crashes) hangs=$(stat saved_hangs)
  printf '%-22s %12s %8s %6s %6s\n' "$t" "$(stat execs_done)" "$(stat execs_per_sec)" \
    "$crashes" "$hangs" | tee -a "$summary"
  if [ "${crashes:-0}" != 0 ]; then
    failed=1
    for f in "$OUT/$t"/default/crashes/id*; do
      echo "   crash: $bin < $f"
    done
  fi
done
exit $failed
