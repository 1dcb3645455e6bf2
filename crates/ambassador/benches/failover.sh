#!/usr/bin/env bash
# Failover benchmark: wrk -> outbound proxy (plain HTTP) -> mTLS -> three backends, and one backend fails
# mid-run, in two ways: killed (SIGKILL: connections reset, new ones refused) and frozen (SIGSTOP: the
# kernel still accepts connections but nothing answers, like a hung node). Reports the success ratio and
# latency of the run that contains the failure, for the ambassador (P2C peak-EWMA, retries, circuit
# breaker) and for nginx and HAProxy configured with their own failover options. All three get a 1 s
# connect timeout and a 1 s per-try (read) timeout, 2 retries:
#   ambassador: --connect-timeout 1s --per-try-timeout 1s (other settings default)
#   nginx:   max_fails=1 fail_timeout=10s, proxy_next_upstream error timeout http_502 http_503 http_504,
#            proxy_next_upstream_tries 3, proxy_connect_timeout 1s, proxy_read_timeout 1s
#   HAProxy: retries 2, option redispatch, retry-on conn-failure empty-response response-timeout 502 503 504,
#            active TLS health checks every 500 ms (fall 2 rise 2), timeout connect 1s, timeout server 1s
# The backends are three nginx processes (master_process off, so SIGKILL kills the whole server) that
# terminate mTLS and answer 200.
#
# usage: crates/ambassador/benches/failover.sh [RUNS=3] [SECONDS=10] [CONNECTIONS=32] [KILL_AT=2]
#   AMB=/path/to/ambassador to use a prebuilt binary (default: cargo build --release).
# needs: nginx haproxy wrk openssl curl (apt), cargo.
set -euo pipefail

RUNS=${1:-3}
SECS=${2:-10}
CONNS=${3:-32}
KILL_AT=${4:-2}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
for tool in nginx haproxy wrk openssl curl; do
  command -v "$tool" >/dev/null || { echo "missing program: $tool (apt-get install $tool)" >&2; exit 1; }
done
if [ -z "${AMB:-}" ]; then
  (cd "$ROOT" && cargo build --release -p ambassador --bin ambassador >&2)
  AMB="$ROOT/target/release/ambassador"
fi

W=$(mktemp -d /tmp/failover.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  for i in 1 2 3; do [ -f "$W/b$i.pid" ] && kill -9 "$(cat "$W/b$i.pid")" 2>/dev/null || true; done
  sleep 0.2
  rm -rf "$W"
}
trap cleanup EXIT
cd "$W"

# ---- certificates (EC P-256) ----
source "$ROOT/crates/ambassador/benches/certs.sh"
make_bench_certs

# ---- ports ----
B=(0 19011 19012 19013)
AMB_OUT=19101; AMB_ADMIN=19102
NGX_OUT=19201
HAP_OUT=19301

# ---- the three mTLS backends ----
backend_up() { # i
  local i=$1
  mkdir -p "$W/b$i"
  cat > "$W/b$i.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $W/b$i.pid;
error_log $W/b$i.err;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:${B[$i]} ssl;
    ssl_certificate $W/server.crt; ssl_certificate_key $W/server.key;
    ssl_client_certificate $W/ca.crt; ssl_verify_client on;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { return 200 "backend $i\n"; }
  }
}
EOF
  # A subshell, so the shell does not report the SIGKILL as a dead job.
  (nginx -p "$W/b$i" -c "$W/b$i.conf" & echo $! > "$W/b$i.pid")
  for _ in $(seq 1 100); do
    curl -sk -m 1 --cert "$W/client.crt" --key "$W/client.key" "https://127.0.0.1:${B[$i]}/" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "backend $i did not start" >&2; cat "$W/b$i.err" >&2; exit 1
}
backend_fail() { # mode i
  case $1 in
    kill) kill -9 "$(cat "$W/b$2.pid")" 2>/dev/null || true; rm -f "$W/b$2.pid" ;;
    stop) kill -STOP "$(cat "$W/b$2.pid")" ;;
  esac
}
backend_heal() { # mode i
  case $1 in
    kill) backend_up "$2" ;;
    stop) kill -CONT "$(cat "$W/b$2.pid")" ;;
  esac
}
ensure_backends() { for i in 1 2 3; do [ -f "$W/b$i.pid" ] && kill -0 "$(cat "$W/b$i.pid")" 2>/dev/null || backend_up "$i"; done; }

# ---- the proxies under test ----
cat > "$W/nginx-out.conf" <<EOF
daemon off;
worker_processes 2;
pid $W/nginx-out.pid;
error_log $W/nginx-out.err;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream remote {
    server 127.0.0.1:${B[1]} max_fails=1 fail_timeout=10s;
    server 127.0.0.1:${B[2]} max_fails=1 fail_timeout=10s;
    server 127.0.0.1:${B[3]} max_fails=1 fail_timeout=10s;
    keepalive 128;
  }
  server {
    listen 127.0.0.1:$NGX_OUT;
    location / {
      proxy_pass https://remote; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_next_upstream error timeout http_502 http_503 http_504;
      proxy_next_upstream_tries 3;
      proxy_connect_timeout 1s;
      proxy_read_timeout 1s;
      proxy_ssl_certificate $W/client.crt; proxy_ssl_certificate_key $W/client.key;
      proxy_ssl_trusted_certificate $W/ca.crt; proxy_ssl_verify on; proxy_ssl_name server.bench;
      proxy_ssl_session_reuse on;
    }
  }
}
EOF
mkdir -p "$W/ngx-out"
cat > "$W/haproxy-out.cfg" <<EOF
global
  nbthread 2
  log /dev/null local0
defaults
  mode http
  timeout connect 1s
  timeout client 60s
  timeout server 1s
  option http-keep-alive
  retries 2
  option redispatch
  retry-on conn-failure empty-response response-timeout 502 503 504
frontend out
  bind 127.0.0.1:$HAP_OUT
  default_backend remote
backend remote
  balance roundrobin
  http-reuse always
  default-server ssl crt $W/client.pem ca-file $W/ca.crt verify required verifyhost server.bench sni str(server.bench) check inter 500ms fall 2 rise 2
  server r1 127.0.0.1:${B[1]}
  server r2 127.0.0.1:${B[2]}
  server r3 127.0.0.1:${B[3]}
EOF

PROXY_PID=""
proxy_up() { # name -> starts it, sets PROXY_PID and PORT
  case $1 in
    ambassador)
      "$AMB" --cert client.crt --key client.key --ca ca.crt --admin-addr 127.0.0.1:$AMB_ADMIN \
        --outbound-listen 127.0.0.1:$AMB_OUT \
        --outbound-endpoints "127.0.0.1:${B[1]},127.0.0.1:${B[2]},127.0.0.1:${B[3]}" \
        --outbound-identity spiffe://bench.local/ns/b/sa/server --connect-timeout 1s --per-try-timeout 1s \
        --log-level error 2>>"$W/amb.log" &
      PROXY_PID=$!; PORT=$AMB_OUT ;;
    nginx)
      nginx -p "$W/ngx-out" -c "$W/nginx-out.conf" &
      PROXY_PID=$!; PORT=$NGX_OUT ;;
    haproxy)
      haproxy -f "$W/haproxy-out.cfg" -db >>"$W/haproxy.log" 2>&1 &
      PROXY_PID=$!; PORT=$HAP_OUT ;;
  esac
  PIDS+=("$PROXY_PID")
  for _ in $(seq 1 100); do
    [ "$(curl -s -m 1 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/")" = 200 ] && return 0
    sleep 0.05
  done
  echo "$1 did not start" >&2; tail -5 "$W"/*.log "$W"/*.err >&2 2>/dev/null; exit 1
}
proxy_down() {
  kill -TERM "$PROXY_PID" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$PROXY_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$PROXY_PID" 2>/dev/null || true
  wait "$PROXY_PID" 2>/dev/null || true
}

to_ms() { # wrk latency like 812.00us / 1.20ms / 1.01s -> ms
  awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/,"",v); print v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v); print v+0 } else if (v ~ /s$/) { sub(/s$/,"",v); print v*1000 } else print v }'
}
median() { sort -g | awk '{a[NR]=$1} END { print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2) }'; }

SETUPS=(ambassador nginx haproxy)
for mode in kill stop; do
declare -A OK FAIL RATIO P50 P99 MAXL
OK=(); FAIL=(); RATIO=(); P50=(); P99=(); MAXL=()
for run in $(seq 1 "$RUNS"); do
  for s in "${SETUPS[@]}"; do
    ensure_backends
    proxy_up "$s"
    wrk -t2 -c"$CONNS" -d1s "http://127.0.0.1:$PORT/" >/dev/null 2>&1 || true   # warm-up: pools, health
    wrk -t2 -c"$CONNS" -d"${SECS}s" --timeout 5s --latency "http://127.0.0.1:$PORT/" >"$W/wrk.out" 2>&1 &
    WRK=$!
    sleep "$KILL_AT"
    backend_fail "$mode" 2
    wait "$WRK" || true
    out=$(cat "$W/wrk.out")
    total=$(awk '/requests in/ {print $1}' <<<"$out")
    non2xx=$(awk -F: '/Non-2xx/ {gsub(/ /,"",$2); print $2}' <<<"$out"); non2xx=${non2xx:-0}
    sockerr=$(awk '/Socket errors/ {gsub(/,/,""); print $4+$6+$8+$10}' <<<"$out"); sockerr=${sockerr:-0}
    ok=$((total - non2xx)); fail=$((non2xx + sockerr))
    OK[$s]+="$ok "; FAIL[$s]+="$fail "
    RATIO[$s]+="$(awk -v o="$ok" -v f="$fail" 'BEGIN { printf "%.5f", o / (o + f) }') "
    P50[$s]+="$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")") "
    P99[$s]+="$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")") "
    MAXL[$s]+="$(to_ms "$(awk '/^ +Latency/ {print $4}' <<<"$out")") "
    proxy_down
    backend_heal "$mode" 2
  done
  echo "$mode: run $run of $RUNS done" >&2
done

echo
case $mode in
  kill) what="SIGKILLed" ;;
  stop) what="frozen (SIGSTOP)" ;;
esac
echo "## Failover: 3 mTLS backends, backend 2 $what ${KILL_AT}s into a ${SECS}s wrk run (-t2 -c$CONNS), median of $RUNS runs"
echo
printf '| %-10s | %13s | %10s | %10s | %8s | %8s | %8s |\n' setup "success ratio" "ok" "failed" "p50 ms" "p99 ms" "max ms"
printf '|%s|%s|%s|%s|%s|%s|%s|\n' ------------ --------------- ------------ ------------ ---------- ---------- ----------
for s in "${SETUPS[@]}"; do
  printf '| %-10s | %13s | %10.0f | %10.0f | %8.2f | %8.2f | %8.1f |\n' "$s" \
    "$(tr ' ' '\n' <<<"${RATIO[$s]}" | grep . | median)" \
    "$(tr ' ' '\n' <<<"${OK[$s]}" | grep . | median)" \
    "$(tr ' ' '\n' <<<"${FAIL[$s]}" | grep . | median)" \
    "$(tr ' ' '\n' <<<"${P50[$s]}" | grep . | median)" \
    "$(tr ' ' '\n' <<<"${P99[$s]}" | grep . | median)" \
    "$(tr ' ' '\n' <<<"${MAXL[$s]}" | grep . | median)"
done
echo
echo "all runs (failed requests): $(for s in "${SETUPS[@]}"; do printf '%s=[%s] ' "$s" "${FAIL[$s]% }"; done)"
echo "all runs (p99 ms): $(for s in "${SETUPS[@]}"; do printf '%s=[%s] ' "$s" "${P99[$s]% }"; done)"
done
