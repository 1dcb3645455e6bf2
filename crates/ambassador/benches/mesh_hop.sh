#!/usr/bin/env bash
# The mesh-hop benchmark: wrk -> outbound proxy (plain HTTP) -> mTLS -> inbound proxy -> backend,
# all on 127.0.0.1, for the ambassador and for nginx, HAProxy and stunnel doing the same hop,
# plus the backend alone. Then handshake-per-request throughput against each inbound side.
#
# usage: crates/ambassador/benches/mesh_hop.sh [RUNS=3] [SECONDS=10] [CONNECTIONS=64]
# needs: nginx haproxy stunnel4 wrk openssl (apt), cargo.
#
# AMB_BUILD names the ambassador binaries measured, side by side in the same run (default
# "release image"):
#   release   target/release/ambassador: `cargo build --release`, what `cargo install` gives
#   image     the binary the image ships (scripts/pgo.sh, as scripts/images.sh builds it: static,
#             profile-guided; PGO=0 leaves the profile out), in target/static-pgo
#   NAME=PATH a binary built elsewhere (a variant), shown as ambassador:NAME
# SKIP_BUILD=1 uses the binaries as they are.
# JWT=1 measures JWT validation on the inbound route instead of the peers: the first build's
# pair as is, and again with a `jwt:` route (JWKS from a file, loaded once and cached) checking
# an ES256 token and an RS256 token that wrk sends on every request (the plain pair gets the
# same header, unchecked); it prints the extra proxy CPU per request and the p99 ratio, round
# by round (target: at most 3 us and 1.10x). Needs python3 besides.
# PEER_THREADS (default 2, one per core here) sets nginx's worker_processes and HAProxy's nbthread.
# LAYOUT picks where the processes run:
#   shared (default)  every process may run on every core, as the kernel schedules them
#   pinned            the load side (wrk, the handshake client, the backend) on core 0 and the
#                     proxies under test on core 1, so each proxy pair gets the same one core and
#                     the load generator never competes with it (the isolation load-testing guides
#                     ask for); it needs at least 2 cores
# SCHED_GROUPS picks the scheduling groups the processes share. With the kernel's autogroups on
# (sched_autogroup_enabled=1, Debian's default), CPU time is shared fairly between sessions first
# and between threads only within a session, so which process runs in which session changes who
# waits for a core:
#   one (default)     every process of every setup (wrk, the backend, the proxies) stays in this
#                     script's session: one group, every thread weighed alike. nginx runs with
#                     `daemon off;` for it, as HAProxy (-db) and stunnel (foreground) always do;
#                     a daemonizing nginx would start sessions of its own and get a group's share
#                     for each of its instances that the other setups do not get
#   each              every server process (the backend, each proxy process) in a session of its
#                     own, wrk in this script's: one group per process, as one cgroup per
#                     container would give in a pod
set -euo pipefail

RUNS=${1:-3}
SECS=${2:-10}
CONNS=${3:-64}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
for tool in nginx haproxy stunnel4 wrk openssl; do
  command -v "$tool" >/dev/null || { echo "missing program: $tool (apt-get install $tool)" >&2; exit 1; }
done

cd "$ROOT"
PEER_THREADS=${PEER_THREADS:-2}
AMB_BUILD=${AMB_BUILD:-release image}
LAYOUT=${LAYOUT:-shared}
case $LAYOUT in
  shared) ON_LOAD=(); ON_PROXY=() ;;
  pinned)
    command -v taskset >/dev/null || { echo "missing program: taskset (apt-get install util-linux)" >&2; exit 1; }
    [ "$(nproc)" -ge 2 ] || { echo "LAYOUT=pinned needs at least 2 cores; this machine has $(nproc)" >&2; exit 2; }
    # Children inherit the affinity: nginx's workers, HAProxy's and stunnel's threads.
    ON_LOAD=(taskset -c 0); ON_PROXY=(taskset -c 1) ;;
  *) echo "LAYOUT must be shared or pinned, not '$LAYOUT'" >&2; exit 2 ;;
esac
# build name -> binary
declare -A AMB_BIN_OF
AMB_SETUPS=()
for b in $AMB_BUILD; do
  case $b in
    release) AMB_BIN_OF[$b]="$ROOT/target/release/ambassador" ;;
    image|static) b=image; AMB_BIN_OF[$b]="${PGO_TARGET_DIR:-$ROOT/target/static-pgo}/x86_64-unknown-linux-gnu/release/ambassador" ;;
    *=*) AMB_BIN_OF[${b%%=*}]=${b#*=}; b=${b%%=*} ;;
    *) echo "AMB_BUILD entries are release, image or NAME=PATH, not '$b'" >&2; exit 2 ;;
  esac
  AMB_SETUPS+=("ambassador:$b")
done
JWT=${JWT:-0}
if [ "$JWT" = 1 ]; then
  command -v python3 >/dev/null || { echo "missing program: python3 (JWT=1 makes its tokens with it)" >&2; exit 1; }
  first=${AMB_SETUPS[0]#ambassador:}
  for alg in es256 rs256; do AMB_BIN_OF[$first+jwt-$alg]=${AMB_BIN_OF[$first]}; AMB_SETUPS+=("ambassador:$first+jwt-$alg"); done
  ONLY=${ONLY:-ambassador:$first ambassador:$first+jwt-es256 ambassador:$first+jwt-rs256}
fi
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -p ambassador --bin ambassador -p ambassador-tools --bin mtls-load >&2
  # The image's build, in its own target dir (not rebuilt when fresh).
  if [ -n "${AMB_BIN_OF[image]:-}" ]; then "$ROOT/scripts/pgo.sh" >/dev/null; fi
fi
for s in "${AMB_SETUPS[@]}"; do
  bin=${AMB_BIN_OF[${s#ambassador:}]}
  [ -x "$bin" ] || { echo "no ambassador binary at $bin ($s)" >&2; exit 1; }
  echo "$s: $bin ($(stat -c %s "$bin") bytes)" >&2
done
LOAD="$ROOT/target/release/mtls-load"

SCHED_GROUPS=${SCHED_GROUPS:-one}
case $SCHED_GROUPS in
  one) SESSION=(); NGINX_FOREGROUND="daemon off;" ;;
  each) SESSION=(setsid); NGINX_FOREGROUND="" ;;
  *) echo "SCHED_GROUPS must be one or each, not '$SCHED_GROUPS'" >&2; exit 2 ;;
esac
start_nginx() { # nginx command: in the foreground of this session (one), or daemonizing into a session of its own (each)
  if [ -n "$NGINX_FOREGROUND" ]; then "$@" & PIDS+=($!); else "$@"; fi
}

W=$(mktemp -d /tmp/mesh-hop.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  # A foreground nginx (SCHED_GROUPS=one) is among PIDS and may have removed its pid file since.
  for f in nginx-in nginx-out nginx-backend; do
    p=$(cat "$W/$f.pid" 2>/dev/null || true)
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  sleep 0.3
  rm -rf "$W"
}
trap cleanup EXIT

# ---- certificates (EC P-256, like the mesh's) ----
cd "$W"
source "$ROOT/crates/ambassador/benches/certs.sh"
make_bench_certs

# ---- JWT=1: signing keys, their JWKS, one token each (openssl signs; python3 encodes) ----
declare -A TOKEN
if [ "$JWT" = 1 ]; then
  openssl ecparam -name prime256v1 -genkey -noout -out jwt-es.key 2>/dev/null
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out jwt-rs.key 2>/dev/null
  openssl pkey -in jwt-es.key -pubout -outform DER -out jwt-es.pub.der
  openssl rsa -in jwt-rs.key -noout -modulus | sed 's/^Modulus=//' >jwt-rs.modulus
  python3 - "$W" <<'PY'
import base64, json, subprocess, sys, time
w = sys.argv[1]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
es_point = open(f"{w}/jwt-es.pub.der", "rb").read()[-64:]
n = bytes.fromhex(open(f"{w}/jwt-rs.modulus").read().strip())
keys = [
    {"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "es", "x": b64(es_point[:32]), "y": b64(es_point[32:])},
    {"kty": "RSA", "alg": "RS256", "kid": "rs", "n": b64(n), "e": "AQAB"},
]
open(f"{w}/jwks.json", "w").write(json.dumps({"keys": keys}))
now = int(time.time())
claims = {"iss": "https://bench.issuer", "aud": "bench", "sub": "user-1", "groups": ["admin", "dev"],
          "iat": now, "exp": now + 86400}
def der_to_raw(der):
    # ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } -> r || s, 32 bytes each
    i = 2 if der[1] < 0x80 else 3
    out = b""
    for _ in range(2):
        n = der[i + 1]; v = der[i + 2:i + 2 + n]; i += 2 + n
        out += v.lstrip(b"\0").rjust(32, b"\0")
    return out
for kid, alg, key in [("es", "ES256", "jwt-es.key"), ("rs", "RS256", "jwt-rs.key")]:
    signing = b64(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", f"{w}/{key}"], input=signing.encode(),
                         capture_output=True, check=True).stdout
    if alg == "ES256":
        sig = der_to_raw(sig)
    open(f"{w}/token-{kid}", "w").write(signing + "." + b64(sig))
PY
  TOKEN[es256]=$(cat token-es); TOKEN[rs256]=$(cat token-rs)
fi
wrk_header() { # setup -> wrk's -H arguments (JWT=1: every ambassador setup gets a token)
  case $1 in
    ambassador:*+jwt-*) printf '%s\n' -H "Authorization: Bearer ${TOKEN[${1##*+jwt-}]}" ;;
    ambassador:*) [ "$JWT" = 1 ] && printf '%s\n' -H "Authorization: Bearer ${TOKEN[es256]}" ;;
  esac
  true
}

# ---- ports: a free block (other programs on this machine may hold fixed ports) ----
NPORTS=$((7 + 4 * ${#AMB_SETUPS[@]}))
port_free() { ! ss -tanH "sport = :$1" | grep -q .; }  # any state: TIME_WAIT holds a port too
while :; do
  BASE=$(( 10000 + (RANDOM % 200) * 100 ))  # below the ephemeral range
  ok=1; for i in $(seq 0 $((NPORTS - 1))); do port_free $((BASE + i)) || ok=0; done
  [ $ok = 1 ] && break
done
BACKEND=$BASE
NGX_OUT=$((BASE+1)); NGX_IN=$((BASE+2))
HAP_OUT=$((BASE+3)); HAP_IN=$((BASE+4))
STN_OUT=$((BASE+5)); STN_IN=$((BASE+6))
declare -A PORT=( [backend]=$BACKEND [nginx]=$NGX_OUT [haproxy]=$HAP_OUT [stunnel]=$STN_OUT )
declare -A IN_PORT=( [nginx]=$NGX_IN [haproxy]=$HAP_IN [stunnel]=$STN_IN )
declare -A AMB_PIDS
next=$((BASE + 7))
for s in "${AMB_SETUPS[@]}"; do PORT[$s]=$next; IN_PORT[$s]=$((next + 1)); next=$((next + 4)); done

# ---- backend: nginx answering a static 200 ----
mkdir -p "$W/ngx-backend"
cat > "$W/nginx-backend.conf" <<EOF
worker_processes 1;
$NGINX_FOREGROUND
pid $W/nginx-backend.pid;
error_log $W/nginx-backend.err;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$BACKEND; location / { return 200 "hello from the backend\n"; } }
}
EOF
start_nginx "${ON_LOAD[@]}" nginx -p "$W/ngx-backend" -c "$W/nginx-backend.conf"

# ---- ambassador: a pair per build ----
# AMB_ENV (e.g. TOKIO_WORKER_THREADS=1) and AMB_OUT_ARGS (e.g. --outbound-http2=false) try variants.
for s in "${AMB_SETUPS[@]}"; do
  bin=${AMB_BIN_OF[${s#ambassador:}]}; out=${PORT[$s]}; in=${IN_PORT[$s]}; log=$W/${s//[:+]/-}
  if [[ $s == *+jwt-* ]]; then
    # The same route from a file, with JWT validation.
    cat >"$log-in.yaml" <<EOF
inbound:
  - name: inbound
    listen: 127.0.0.1:$in
    app: 127.0.0.1:$BACKEND
    allow: {spiffe: ['spiffe://bench.local/ns/a/sa/*']}
    jwt:
      issuer: https://bench.issuer
      audiences: [bench]
      jwks: {file: $W/jwks.json}
      roles_claim: groups
EOF
    in_route=(--config "$log-in.yaml")
  else
    in_route=(--inbound-listen 127.0.0.1:$in --inbound-app 127.0.0.1:$BACKEND --allow-spiffe 'spiffe://bench.local/ns/a/sa/*')
  fi
  "${ON_PROXY[@]}" "${SESSION[@]}" env ${AMB_ENV:-} "$bin" --cert server.crt --key server.key --ca ca.crt --admin-addr 127.0.0.1:$((out + 2)) \
    "${in_route[@]}" --log-level warn 2>"$log-in.log" &
  in_pid=$!; PIDS+=($in_pid)
  "${ON_PROXY[@]}" "${SESSION[@]}" env ${AMB_ENV:-} "$bin" --cert client.crt --key client.key --ca ca.crt --admin-addr 127.0.0.1:$((out + 3)) \
    --outbound-listen 127.0.0.1:$out --outbound-endpoints 127.0.0.1:$in \
    --outbound-identity spiffe://bench.local/ns/b/sa/server ${AMB_OUT_ARGS:-} --log-level warn 2>"$log-out.log" &
  PIDS+=($!); AMB_PIDS[$s]="$! $in_pid"
done

# ---- nginx: the same hop ----
mkdir -p "$W/ngx-in" "$W/ngx-out"
cat > "$W/nginx-in.conf" <<EOF
worker_processes $PEER_THREADS;
$NGINX_FOREGROUND
pid $W/nginx-in.pid;
error_log $W/nginx-in.err;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$BACKEND; keepalive 128; }
  server {
    listen 127.0.0.1:$NGX_IN ssl http2;
    ssl_certificate $W/server.crt; ssl_certificate_key $W/server.key;
    ssl_client_certificate $W/ca.crt; ssl_verify_client on;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:in:10m;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
cat > "$W/nginx-out.conf" <<EOF
worker_processes $PEER_THREADS;
$NGINX_FOREGROUND
pid $W/nginx-out.pid;
error_log $W/nginx-out.err;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream remote { server 127.0.0.1:$NGX_IN; keepalive 128; }
  server {
    listen 127.0.0.1:$NGX_OUT;
    location / {
      proxy_pass https://remote; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_ssl_certificate $W/client.crt; proxy_ssl_certificate_key $W/client.key;
      proxy_ssl_trusted_certificate $W/ca.crt; proxy_ssl_verify on; proxy_ssl_name server.bench;
      proxy_ssl_session_reuse on;
    }
  }
}
EOF
start_nginx "${ON_PROXY[@]}" nginx -p "$W/ngx-in" -c "$W/nginx-in.conf"
start_nginx "${ON_PROXY[@]}" nginx -p "$W/ngx-out" -c "$W/nginx-out.conf"

# ---- HAProxy ----
cat > "$W/haproxy-in.cfg" <<EOF
global
  nbthread $PEER_THREADS
  log /dev/null local0
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend in
  bind 127.0.0.1:$HAP_IN ssl crt $W/server.pem ca-file $W/ca.crt verify required alpn h2,http/1.1
  default_backend app
backend app
  http-reuse always
  server s1 127.0.0.1:$BACKEND
EOF
cat > "$W/haproxy-out.cfg" <<EOF
global
  nbthread $PEER_THREADS
  log /dev/null local0
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend out
  bind 127.0.0.1:$HAP_OUT
  default_backend remote
backend remote
  http-reuse always
  server r1 127.0.0.1:$HAP_IN ssl crt $W/client.pem ca-file $W/ca.crt verify required verifyhost server.bench sni str(server.bench)
EOF
"${ON_PROXY[@]}" "${SESSION[@]}" haproxy -f "$W/haproxy-in.cfg" -db >"$W/haproxy-in.log" 2>&1 &
HAP_IN_PID=$!; PIDS+=($HAP_IN_PID)
"${ON_PROXY[@]}" "${SESSION[@]}" haproxy -f "$W/haproxy-out.cfg" -db >"$W/haproxy-out.log" 2>&1 &
HAP_OUT_PID=$!; PIDS+=($HAP_OUT_PID)

# ---- stunnel (L4: one TLS connection per client connection) ----
cat > "$W/stunnel-in.conf" <<EOF
foreground = yes
pid =
debug = 3
output = $W/stunnel-in.log
[in]
accept = 127.0.0.1:$STN_IN
connect = 127.0.0.1:$BACKEND
cert = $W/server.crt
key = $W/server.key
CAfile = $W/ca.crt
verifyChain = yes
requireCert = yes
EOF
cat > "$W/stunnel-out.conf" <<EOF
foreground = yes
pid =
debug = 3
output = $W/stunnel-out.log
[out]
client = yes
accept = 127.0.0.1:$STN_OUT
connect = 127.0.0.1:$STN_IN
cert = $W/client.crt
key = $W/client.key
CAfile = $W/ca.crt
verifyChain = yes
checkHost = server.bench
EOF
"${ON_PROXY[@]}" "${SESSION[@]}" stunnel4 "$W/stunnel-in.conf" &
STN_IN_PID=$!; PIDS+=($STN_IN_PID)
"${ON_PROXY[@]}" "${SESSION[@]}" stunnel4 "$W/stunnel-out.conf" &
STN_OUT_PID=$!; PIDS+=($STN_OUT_PID)

sleep 1.5
for s in "${!PORT[@]}"; do
  port=${PORT[$s]}
  mapfile -t hdr < <(wrk_header "$s")
  out=$(curl -s -m 5 "${hdr[@]}" "http://127.0.0.1:$port/" || true)
  [ "$out" = "hello from the backend" ] || { echo "setup check failed on port $port ($s): '$out'" >&2; tail -5 "$W"/*.log "$W"/*.err 2>/dev/null >&2; exit 1; }
done

# ---- measuring ----
pids_of() { # setup -> the proxy processes' pids (nginx: master and workers)
  case $1 in
    ambassador:*) echo "${AMB_PIDS[$1]}" ;;
    nginx) echo "$(pgrep -f "nginx.*$W/nginx-(in|out).conf" | tr '\n' ' ') $(pgrep -P "$(cat "$W/nginx-in.pid")" | tr '\n' ' ') $(pgrep -P "$(cat "$W/nginx-out.pid")" | tr '\n' ' ')" ;;
    haproxy) echo "$HAP_OUT_PID $HAP_IN_PID" ;;
    stunnel) echo "$STN_OUT_PID $STN_IN_PID" ;;
    backend) echo "" ;;
  esac
}
# Where the servers landed: with SCHED_GROUPS=one, all in this script's autogroup.
if [ "$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null || echo 0)" = 1 ] && [ -r /proc/self/autogroup ]; then
  mine=$(awk '{print $1}' /proc/$$/autogroup)
  # shellcheck disable=SC2046
  server_groups=$(for p in ${AMB_PIDS[*]} $(pids_of nginx) $(pids_of haproxy) $(pids_of stunnel) $(cat "$W/nginx-backend.pid"); do
    awk '{print $1}' "/proc/$p/autogroup" 2>/dev/null; done | sort -u)
  if [ "$SCHED_GROUPS" = one ] && [ "$server_groups" != "$mine" ]; then
    echo "SCHED_GROUPS=one, but the servers are in autogroups $(echo $server_groups) and this script in $mine" >&2; exit 1
  fi
  echo "scheduling groups: $SCHED_GROUPS (the servers are in $(wc -l <<<"$server_groups") autogroup(s))" >&2
else
  echo "scheduling groups: this kernel does not group by session; SCHED_GROUPS changes nothing" >&2
fi
rss_kib() { # field pids... -> "max per process / sum" in KiB
  local field=$1; shift; local max=0 sum=0 v
  for p in "$@"; do
    v=$(awk -v f="$field:" '$1==f {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    v=${v:-0}; sum=$((sum + v)); [ "$v" -gt "$max" ] && max=$v
  done
  echo "$max $sum"
}
cpu_ticks() { # pids... -> user+system CPU of those processes so far, in clock ticks
  local sum=0 p v
  for p in "$@"; do
    # Fields after the ")" of the command name: utime and stime are the 12th and 13th.
    v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}')
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
cpu_stat() { # -> "idle total" jiffies of the whole machine so far (idle includes iowait)
  awk '$1=="cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print $5 + $6, t; exit }' /proc/stat
}
TICK_HZ=$(getconf CLK_TCK)
to_ms() { # wrk latency like 812.00us / 1.20ms / 1.01s -> ms
  awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/,"",v); print v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v); print v+0 } else if (v ~ /s$/) { sub(/s$/,"",v); print v*1000 } else print v }'
}
median() { sort -g | awk '{a[NR]=$1} END { print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2) }'; }

read -r -a SETUPS <<<"${ONLY:-backend ${AMB_SETUPS[*]} nginx haproxy stunnel}"
declare -A RPS P99 P50 RSS_MAX RSS_SUM ERRS CPU IDLE RSS_ROUNDS
for s in "${SETUPS[@]}"; do
  mapfile -t hdr < <(wrk_header "$s")
  "${ON_LOAD[@]}" wrk -t2 -c"$CONNS" -d2s "${hdr[@]}" "http://127.0.0.1:${PORT[$s]}/" >/dev/null 2>&1 || true   # warm-up
done
for run in $(seq 1 "$RUNS"); do
  for s in "${SETUPS[@]}"; do
    # shellcheck disable=SC2046
    t0=$(cpu_ticks $(pids_of "$s")); read -r i0 j0 <<<"$(cpu_stat)"
    mapfile -t hdr < <(wrk_header "$s")
    out=$("${ON_LOAD[@]}" wrk -t2 -c"$CONNS" -d"${SECS}s" --latency "${hdr[@]}" "http://127.0.0.1:${PORT[$s]}/" 2>&1)
    # shellcheck disable=SC2046
    t1=$(cpu_ticks $(pids_of "$s")); read -r i1 j1 <<<"$(cpu_stat)"
    # The share of both cores left idle while it ran: CPU the setup could not put to work.
    IDLE[$s]+="$(awk -v i=$((i1 - i0)) -v j=$((j1 - j0)) 'BEGIN { printf "%.1f", (j > 0 ? 100 * i / j : 0) }') "
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    CPU[$s]+="$(awk -v d=$((t1 - t0)) -v n="${n:-0}" -v hz="$TICK_HZ" 'BEGIN { if (n > 0) printf "%.1f", d / hz * 1e6 / n; else print 0 }') "
    RPS[$s]+="$(awk '/Requests\/sec/ {print $2}' <<<"$out") "
    P50[$s]+="$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")") "
    P99[$s]+="$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")") "
    if [[ $s == ambassador:* ]]; then
      # The peak so far after each round: where it levels is the resident memory under sustained load.
      # shellcheck disable=SC2046
      read -r max _ <<<"$(rss_kib VmHWM $(pids_of "$s"))"
      RSS_ROUNDS[$s]+="$(awk -v k="$max" 'BEGIN { printf "%.1f", int(k * 10 / 1024) / 10 }') "
    fi
    e=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
    [ -n "$e" ] && ERRS[$s]+="run$run: $e "
    true
  done
  echo "run $run of $RUNS done" >&2
done
for s in "${SETUPS[@]}"; do
  # shellcheck disable=SC2046
  read -r max sum <<<"$(rss_kib VmHWM $(pids_of "$s"))"
  RSS_MAX[$s]=$max; RSS_SUM[$s]=$sum
done

echo
echo "## Keep-alive mesh hop: wrk -t2 -c$CONNS -d${SECS}s, median of $RUNS runs (layout: $LAYOUT, scheduling groups: $SCHED_GROUPS)"
echo
printf '| %-18s | %10s | %8s | %8s | %14s | %14s | %12s | %9s |\n' setup "req/s" "p50 ms" "p99 ms" "peak RSS/proc" "peak RSS total" "proxy CPU/req" "idle CPU"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' --------------------  ------------ ---------- ---------- ---------------- ---------------- -------------- -----------
for s in "${SETUPS[@]}"; do
  rps=$(tr ' ' '\n' <<<"${RPS[$s]}" | grep . | median)
  p50=$(tr ' ' '\n' <<<"${P50[$s]}" | grep . | median)
  p99=$(tr ' ' '\n' <<<"${P99[$s]}" | grep . | median)
  cpu=$(tr ' ' '\n' <<<"${CPU[$s]}" | grep . | median)
  idle=$(tr ' ' '\n' <<<"${IDLE[$s]}" | grep . | median)
  if [ "$s" = backend ]; then rmax=-; rsum=-; cpu=-; else cpu="${cpu} us"; rmax="$((RSS_MAX[$s] / 1024)).$(( (RSS_MAX[$s] % 1024) * 10 / 1024 )) MiB"; rsum="$((RSS_SUM[$s] / 1024)).$(( (RSS_SUM[$s] % 1024) * 10 / 1024 )) MiB"; fi
  printf '| %-18s | %10.0f | %8.2f | %8.2f | %14s | %14s | %12s | %8.1f%% |\n' "$s" "$rps" "$p50" "$p99" "$rmax" "$rsum" "$cpu" "$idle"
done
for s in "${SETUPS[@]}"; do [ -n "${ERRS[$s]:-}" ] && echo "errors $s: ${ERRS[$s]}"; done
echo
echo "all runs (req/s): $(for s in "${SETUPS[@]}"; do printf '%s=[%s] ' "$s" "${RPS[$s]% }"; done)"
echo "all runs (p99 ms): $(for s in "${SETUPS[@]}"; do printf '%s=[%s] ' "$s" "${P99[$s]% }"; done)"
for s in "${SETUPS[@]}"; do
  [ -n "${RSS_ROUNDS[$s]:-}" ] && echo "$s peak RSS per process after each round (MiB): [${RSS_ROUNDS[$s]% }]"
done

# ---- against issue 3's targets: each ambassador build vs the best peer, per round and in the median ----
# A round is one wrk run of every setup, back to back, so its ratios share the machine's moment;
# the medians of the table above may pair figures of different rounds.
PEERS=()
for s in "${SETUPS[@]}"; do case $s in nginx|haproxy|stunnel) PEERS+=("$s") ;; esac; done
AMBS=()
for s in "${SETUPS[@]}"; do [[ $s == ambassador:* ]] && AMBS+=("$s"); done
if [ "${#AMBS[@]}" -gt 0 ] && [ "${#PEERS[@]}" -gt 0 ]; then
  echo
  echo "## Against the targets (issue 3; best of ${PEERS[*]} in each round)"
  for a in "${AMBS[@]}"; do
    rounds=$(for s in "$a" "${PEERS[@]}"; do echo "$s ${RPS[$s]}"; echo "$s ${P99[$s]}"; done |
      awk -v runs="$RUNS" '
        # lines alternate: name rps..., name p99...; the first name is the ambassador
        NR % 2 == 1 { for (i = 2; i <= NF; i++) rps[$1, i - 1] = $i; names[++n] = $1; next }
        { for (i = 2; i <= NF; i++) p99[$1, i - 1] = $i }
        END {
          for (r = 1; r <= runs; r++) {
            best_rps = 0; best_p99 = 0
            for (k = 2; k <= n; k++) {
              if (rps[names[k], r] > best_rps) best_rps = rps[names[k], r]
              if (best_p99 == 0 || p99[names[k], r] < best_p99) best_p99 = p99[names[k], r]
            }
            if (best_rps > 0 && best_p99 > 0)
              printf "%.3f %.3f\n", rps[names[1], r] / best_rps, p99[names[1], r] / best_p99
          }
        }')
    rps_ratios=$(awk '{print $1}' <<<"$rounds" | tr '\n' ' ')
    p99_ratios=$(awk '{print $2}' <<<"$rounds" | tr '\n' ' ')
    rps_met=$(awk '$1 >= 1.3' <<<"$rounds" | wc -l)
    p99_met=$(awk '$2 <= 0.7' <<<"$rounds" | wc -l)
    rss_mib=$(awk -v k="${RSS_MAX[$a]}" 'BEGIN { printf "%.1f", int(k * 10 / 1024) / 10 }')  # as the table: truncated
    echo
    echo "$a"
    echo "  req/s vs the best peer: median $(tr ' ' '\n' <<<"$rps_ratios" | grep . | median)x (target >= 1.3x; met in $rps_met of $RUNS rounds: $rps_ratios)"
    echo "  p99 vs the best peer:   median $(tr ' ' '\n' <<<"$p99_ratios" | grep . | median)x (target <= 0.7x; met in $p99_met of $RUNS rounds: $p99_ratios)"
    echo "  peak RSS per process:   $rss_mib MiB (target <= 12 MiB)"
  done
  # Builds of the same code, round by round: what the build alone changes.
  if [ "${#AMBS[@]}" -gt 1 ]; then
    echo
    for a in "${AMBS[@]:1}"; do
      ratio=$(paste <(tr ' ' '\n' <<<"${RPS[$a]}" | grep .) <(tr ' ' '\n' <<<"${RPS[${AMBS[0]}]}" | grep .) |
        awk '{ printf "%.3f\n", $1 / $2 }' | median)
      p99r=$(paste <(tr ' ' '\n' <<<"${P99[$a]}" | grep .) <(tr ' ' '\n' <<<"${P99[${AMBS[0]}]}" | grep .) |
        awk '{ printf "%.3f\n", $1 / $2 }' | median)
      echo "$a vs ${AMBS[0]}, median of the rounds' ratios: req/s ${ratio}x, p99 ${p99r}x"
    done
  fi
fi

# ---- JWT=1: what validation adds, round by round against the plain pair ----
if [ "$JWT" = 1 ]; then
  plain=ambassador:$first
  echo
  echo "## JWT validation on the inbound route vs none (same build, same run; target: <= 3 us CPU/request, p99 <= 1.10x)"
  for alg in es256 rs256; do
    j=ambassador:$first+jwt-$alg
    extra=$(paste <(tr ' ' '\n' <<<"${CPU[$j]}" | grep .) <(tr ' ' '\n' <<<"${CPU[$plain]}" | grep .) | awk '{ printf "%.1f\n", $1 - $2 }')
    p99r=$(paste <(tr ' ' '\n' <<<"${P99[$j]}" | grep .) <(tr ' ' '\n' <<<"${P99[$plain]}" | grep .) | awk '{ printf "%.3f\n", $1 / $2 }')
    echo "$alg: extra proxy CPU per request: median $(median <<<"$extra") us (rounds: $(tr '\n' ' ' <<<"$extra")); p99 ratio: median $(median <<<"$p99r")x (rounds: $(tr '\n' ' ' <<<"$p99r"))"
  done
  exit 0
fi

# ---- handshake per request: new TCP + full mTLS handshake + one request, against the inbound side ----
echo
echo "## Handshake per request (no resumption) against the inbound side: 32 clients, ${SECS}s, median of $RUNS runs"
echo
printf '| %-18s | %12s | %8s | %8s | %6s |\n' setup "handshakes/s" "p50 ms" "p99 ms" errors
printf '|%s|%s|%s|%s|%s|\n' -------------------- -------------- ---------- ---------- --------
for s in "${SETUPS[@]}"; do
  [ "$s" = backend ] && continue
  R=""; L50=""; L99=""; E=0
  for run in $(seq 1 "$RUNS"); do
    read -r r p50 p99 e <<<"$("${ON_LOAD[@]}" "$LOAD" "127.0.0.1:${IN_PORT[$s]}" "$W/client.crt" "$W/client.key" "$W/ca.crt" server.bench 32 "$SECS")"
    R+="$r "; L50+="$p50 "; L99+="$p99 "; E=$((E + e))
  done
  printf '| %-18s | %12.0f | %8.2f | %8.2f | %6d |\n' "$s" "$(tr ' ' '\n' <<<"$R" | grep . | median)" \
    "$(tr ' ' '\n' <<<"$L50" | grep . | median)" "$(tr ' ' '\n' <<<"$L99" | grep . | median)" "$E"
done
