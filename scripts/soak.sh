#!/usr/bin/env bash
# Soak: the demo's two pods (scripts/demo.sh: two ambassadors, xml-adapter, git-sync,
# secrets-agent per pod with OpenBao, log-shipper) for SOAK_MINUTES (default 30) under mixed
# load: requests through both ambassadors (pod A's outbound -> mTLS -> pod B's inbound),
# certificate rotation about every minute, a config commit every 10 s (each must reach the app),
# adapter scrapes at 10/s. Every 10 s it samples each process's RSS and open fds.
# Bounds (exit 1 when one fails): zero failed requests and scrapes, every commit published,
# each sidecar's RSS growth after the warm-up (the first 5 minutes, half the run when shorter)
# under 5% (SOAK_RSS_PCT), open fds flat (at most SOAK_FD_SLACK more than after the warm-up).
# Figures go to stdout and to $SOAK_DIR/report.txt; samples to $SOAK_DIR/samples.csv.
#   SOAK_MINUTES=2 scripts/soak.sh        # the short version
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_MINUTES=${SOAK_MINUTES:-30}
SOAK_DIR=$(realpath -m "${SOAK_DIR:-.soak}")
SOAK_PORT_BASE=${SOAK_PORT_BASE:-17100}
SOAK_RSS_PCT=${SOAK_RSS_PCT:-5}
SOAK_FD_SLACK=${SOAK_FD_SLACK:-2}
SOAK_RPS=${SOAK_RPS:-20}
# Renewal at 2/3 of (TTL + OpenBao's 5 s of backdating), less the backdating: every ~38 s, so
# at least one rotation a minute. (The demo hands OpenBao the TTL as humantime prints it: keep
# it under a minute or a whole number of minutes.)
export DEMO_CERT_TTL=${DEMO_CERT_TTL:-60s}
command -v python3 >/dev/null || { echo "soak.sh: python3 is needed for the load and the samples" >&2; exit 1; }
command -v git >/dev/null || { echo "soak.sh: git is needed for the config commits" >&2; exit 1; }

# demo.sh finds (or installs) OpenBao and builds the sidecars; its binary does the rest.
if [[ -z ${SOAK_NO_BUILD:-} ]]; then
    echo "Building the sidecars..."
    cargo build --quiet -p ambassador -p xml-adapter -p git-sync -p secrets-agent -p log-shipper -p demo-app -p demo
fi
mkdir -p "$SOAK_DIR"
DEMO_DIR=$SOAK_DIR/demo
DEMO_LOG=$SOAK_DIR/demo.out
# OpenBao's bao, found as demo.sh finds it (its find_bao function).
BAO_BIN=${BAO_BIN:-$(bash -c 'source <(sed -n "/^find_bao()/,/^}/p" scripts/demo.sh); find_bao')}
if [[ -z $BAO_BIN ]]; then
    echo "soak.sh: OpenBao's bao is missing: run scripts/demo.sh --check once (it installs it), or set BAO_BIN" >&2
    exit 1
fi
export BAO_BIN

target/debug/demo --dir "$DEMO_DIR" --port-base "$SOAK_PORT_BASE" >"$DEMO_LOG" 2>&1 &
DEMO_PID=$!
stop_demo() {
    if kill -0 "$DEMO_PID" 2>/dev/null; then
        kill -INT "$DEMO_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$DEMO_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$DEMO_PID" 2>/dev/null || true
    fi
}
trap stop_demo EXIT
for _ in $(seq 1 600); do
    grep -q "Press Ctrl-C to stop" "$DEMO_LOG" && break
    if grep -q "\[FAIL\]" "$DEMO_LOG"; then
        echo "soak.sh: the demo's checks failed before the soak:" >&2; grep "\[FAIL\]" -A1 "$DEMO_LOG" >&2; exit 1
    fi
    kill -0 "$DEMO_PID" 2>/dev/null || { echo "soak.sh: the demo stopped while starting:" >&2; cat "$DEMO_LOG" >&2; exit 1; }
    sleep 0.5
done
grep -q "Press Ctrl-C to stop" "$DEMO_LOG" || { echo "soak.sh: the demo did not start within 5 minutes" >&2; cat "$DEMO_LOG" >&2; exit 1; }
if grep -q "\[FAIL\]" "$DEMO_LOG"; then
    echo "soak.sh: the demo's checks failed before the soak:" >&2; grep "\[FAIL\]" -A1 "$DEMO_LOG" >&2; exit 1
fi
echo "The demo is up (log: $DEMO_LOG); soaking for $SOAK_MINUTES min..."

python3 - "$DEMO_PID" "$SOAK_DIR" "$DEMO_DIR" "$SOAK_PORT_BASE" "$SOAK_MINUTES" "$SOAK_RSS_PCT" "$SOAK_FD_SLACK" "$SOAK_RPS" <<'PY'
import http.client, os, subprocess, sys, threading, time

demo_pid, soak_dir, demo_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
base, minutes = int(sys.argv[4]), float(sys.argv[5])
rss_pct, fd_slack, rps = float(sys.argv[6]), int(sys.argv[7]), float(sys.argv[8])
outbound_a, metrics_b, app_b = base, base + 13, base + 10
admin_a, admin_b = base + 1, base + 12
duration = minutes * 60
warmup = min(300.0, duration / 2)
start = time.monotonic()
stop = threading.Event()
lock = threading.Lock()
counts = {"requests": 0, "request_failures": 0, "scrapes": 0, "scrape_failures": 0,
          "commits": 0, "commits_published": 0, "commit_failures": 0}
failures = []

def count(key, n=1):
    with lock:
        counts[key] += n

def fail(what):
    with lock:
        if len(failures) < 20:
            failures.append(f"{time.monotonic() - start:7.1f}s {what}")

def get(conn_holder, port, path):
    """One GET on a kept-alive connection (reopened after an error); (status, body)."""
    for attempt in (0, 1):
        conn = conn_holder.get(port)
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn_holder[port] = conn
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
            # a kept-alive connection the server closed between requests: one retry on a new one
            conn.close(); conn_holder.pop(port, None)
            if attempt:
                raise
        except Exception:
            conn.close(); conn_holder.pop(port, None)
            raise

def paced(rate, body):
    def run():
        conns, n = {}, 0
        t0 = time.monotonic()
        while not stop.is_set():
            body(conns, n)
            n += 1
            delay = t0 + n / rate - time.monotonic()
            if delay > 0:
                stop.wait(delay)
    return run

def request(conns, n):
    # every 10th request on a new connection: new TLS sessions between the pods too
    if n % 10 == 0 and outbound_a in conns:
        conns.pop(outbound_a).close()
    try:
        status, _ = get(conns, outbound_a, "/")
        ok = status == 200
    except Exception as e:
        ok, status = False, repr(e)
    count("requests")
    if not ok:
        count("request_failures"); fail(f"request through both ambassadors: {status}")

def scrape(conns, n):
    # Prometheus' page, and every 10th time the JSON view, which says whether the app answered
    try:
        if n % 10 == 0:
            status, body = get(conns, metrics_b, "/json")
            ok = status == 200 and b'"up":true' in body.replace(b" ", b"")
        else:
            status, body = get(conns, metrics_b, "/metrics")
            ok = status == 200 and len(body) > 0
    except Exception as e:
        ok, status = False, repr(e)
    count("scrapes")
    if not ok:
        count("scrape_failures"); fail(f"adapter scrape: {status}")

def committer():
    repo = os.path.join(demo_dir, "config-repo")
    conns, n = {}, 0
    env = dict(os.environ, GIT_AUTHOR_NAME="soak", GIT_AUTHOR_EMAIL="soak@demo.local",
               GIT_COMMITTER_NAME="soak", GIT_COMMITTER_EMAIL="soak@demo.local")
    while not stop.wait(10):
        n += 1
        text = f"greeting: soak {n}\n"
        with open(os.path.join(repo, "app.yaml"), "w") as f:
            f.write(text)
        r = subprocess.run(["git", "-C", repo, "commit", "-qam", f"soak {n}"], env=env,
                           capture_output=True)
        count("commits")
        if r.returncode != 0:
            count("commit_failures"); fail(f"git commit: {r.stderr!r}"); continue
        deadline = time.monotonic() + 9
        seen = None
        while time.monotonic() < deadline:
            try:
                status, body = get(conns, app_b, "/config/app.yaml")
                seen = body.decode(errors="replace")
                if status == 200 and seen == text:
                    count("commits_published"); break
            except Exception as e:
                seen = repr(e)
            time.sleep(0.2)
        else:
            fail(f"commit {n} not served by the app within 9 s (saw {seen!r})")

def descendants(pid):
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children = {}
    pairs = [tuple(map(int, l.split())) for l in out.strip().splitlines()]
    for p, pp in pairs:
        children.setdefault(pp, []).append(p)
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c); todo.append(c)
    return found

def name_of(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return None
    exe = os.path.basename(args[0].decode(errors="replace"))
    if exe in ("bao",):
        return "openbao"
    if "__git-sync-network-worker" in (a.decode(errors="replace") for a in args):
        return None  # the worker is restarted on purpose after failures; its parent is what lasts
    port = ""
    for i, a in enumerate(args):
        if a in (b"--admin-addr", b"--listen") and i + 1 < len(args):
            port = args[i + 1].decode(errors="replace").rsplit(":", 1)[-1]; break
    return f"{exe}:{port}" if port else f"{exe}:{pid}"

def sample(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return rss, fds
    except (OSError, StopIteration):
        return None

samples = {}  # name -> [(t, rss_kib, fds)]
def sampler():
    with open(os.path.join(soak_dir, "samples.csv"), "w") as out:
        out.write("seconds,process,rss_kib,fds\n")
        while True:
            t = time.monotonic() - start
            for pid in descendants(demo_pid):
                name = name_of(pid)
                got = name and sample(pid)
                if got:
                    samples.setdefault(name, []).append((t, *got))
                    out.write(f"{t:.0f},{name},{got[0]},{got[1]}\n")
            out.flush()
            if stop.wait(10):
                return

threads = [threading.Thread(target=f, daemon=True) for f in
           (paced(rps, request), paced(10, scrape), committer, sampler)]
for t in threads: t.start()
last_report = 0
while time.monotonic() - start < duration:
    time.sleep(1)
    if not os.path.exists(f"/proc/{demo_pid}"):
        fail("the demo exited"); break
    el = time.monotonic() - start
    if el - last_report >= 60:
        last_report = el
        with lock:
            print(f"  {el/60:4.1f} min: {counts['requests']} requests ({counts['request_failures']} failed), "
                  f"{counts['scrapes']} scrapes ({counts['scrape_failures']} failed), "
                  f"{counts['commits_published']}/{counts['commits']} commits published", flush=True)
stop.set()
for t in threads: t.join(timeout=15)

def metric(port, name):
    try:
        _, body = get({}, port, "/metrics")
        return sum(float(l.split()[-1]) for l in body.decode().splitlines()
                   if l.startswith(name) and not l.startswith("#"))
    except Exception:
        return None

lines, bad = [], []
elapsed = time.monotonic() - start
lines.append(f"soak: {elapsed/60:.1f} min, warm-up {warmup/60:.1f} min, {rps:g} requests/s through both ambassadors, 10 scrapes/s, a commit every 10 s")
lines.append(f"requests: {counts['requests']}, failed {counts['request_failures']}")
lines.append(f"adapter scrapes: {counts['scrapes']}, failed {counts['scrape_failures']}")
lines.append(f"config commits: {counts['commits']}, served by the app within 9 s: {counts['commits_published']}")
reloads = metric(admin_a, "sidecar_tls_reloads_total")
lines.append(f"certificate reloads seen by pod A's ambassador: {reloads}")
if counts["request_failures"] or counts["scrape_failures"] or counts["commit_failures"]:
    bad.append("failed requests, scrapes or commits")
if counts["commits_published"] != counts["commits"]:
    bad.append("a commit did not reach the app")
if duration >= 60 and not reloads:
    bad.append("no certificate rotation was seen")
lines.append(f"{'process':28} {'RSS warm MiB':>12} {'RSS end MiB':>11} {'growth':>7} {'fds warm':>8} {'fds max':>7} {'fds end':>7}")
for name, rows in sorted(samples.items()):
    after = [r for r in rows if r[0] >= warmup - 5]
    if len(after) < 2:
        continue
    w = after[0]
    # the end: the median of the last three samples (one sample can catch a burst)
    tail = sorted(r[1] for r in after[-3:])
    end_rss = tail[len(tail) // 2]
    growth = (end_rss - w[1]) * 100.0 / w[1]
    fd_max = max(r[2] for r in after)
    lines.append(f"{name:28} {w[1]/1024:12.1f} {end_rss/1024:11.1f} {growth:6.1f}% {w[2]:8d} {fd_max:7d} {after[-1][2]:7d}")
    if name.startswith("bao") or name.startswith("openbao") or name.startswith("demo-app"):
        continue  # not ours: reported, not bounded
    if growth >= rss_pct:
        bad.append(f"{name}: RSS grew {growth:.1f}% after the warm-up (bound {rss_pct:g}%)")
    if fd_max > w[2] + fd_slack:
        bad.append(f"{name}: open fds {w[2]} -> max {fd_max} (slack {fd_slack})")
for f in failures:
    lines.append(f"failure: {f}")
lines.append("PASS" if not bad else "FAIL: " + "; ".join(bad))
report = "\n".join(lines)
print(report)
with open(os.path.join(soak_dir, "report.txt"), "w") as f:
    f.write(report + "\n")
sys.exit(0 if not bad else 1)
PY
