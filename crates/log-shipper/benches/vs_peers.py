#!/usr/bin/env python3
"""log-shipper against rsyslog and syslog-ng, side by side, in one run.

A file of LINES lines of LINE_BYTES bytes (each with its own sequence number), written in full
to a temporary directory before anything starts, is shipped by each tool in turn, from its
beginning, to the same HTTP receiver on 127.0.0.1 (this script, a thread of it):

  log-shipper  --file FILE --sink-url http://127.0.0.1:PORT/ingest (HTTP NDJSON; its default
               batches: 1000 lines, 1 MiB, 1 s; its default fields: timestamp, host, file)
  rsyslog      imfile -> omelasticsearch (Debian's rsyslog has no omhttp) to the receiver's
               /_bulk, bulkmode on, batches of 1000 from a LinkedList action queue, retries
               forever (the settings omelasticsearch's documentation advises)
  syslog-ng    file() -> http() (syslog-ng-mod-http), batch-lines(1000), batch-bytes(1MiB),
               batch-timeout(1000), workers(2), flow-control (as its documentation advises)

The receiver answers each request as the store would (200 for NDJSON; an Elasticsearch _bulk
answer with one item per document) and marks each sequence number it sees, so lines lost and
duplicated are counted exactly. A run ends when every line has arrived, or when nothing new has
arrived for STALL seconds (the rest are lost).

Measured per tool and round (one process each, read from /proc while it still runs):
  lines/s        lines received / (time of the last new line - spawn)
  CPU per line   user+system CPU-seconds of the process / lines received
  peak RSS       VmHWM
  lost, dup      sequence numbers never received; received more than once

Usage: vs_peers.py --log-shipper PATH [--rsyslogd PATH] [--syslog-ng PATH --syslog-ng-root DIR
                   --syslog-ng-modules DIRS] [--mb 1000] [--rounds 3] [--line-bytes 200]
                   [--stall 30]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CLK_TCK = os.sysconf("SC_CLK_TCK")
SEQ = re.compile(rb"seq=(\d{10})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Count:
    """What the receiver has seen in one run."""

    def __init__(self, lines: int):
        self.lines = lines
        self.seen = bytearray(lines)
        self.distinct = 0
        self.total = 0
        self.bytes = 0
        self.requests = 0
        self.last_new = time.monotonic()
        self.lock = threading.Lock()

    def add(self, body: bytes) -> None:
        numbers = [int(m) for m in SEQ.findall(body)]
        with self.lock:
            self.requests += 1
            self.bytes += len(body)
            self.total += len(numbers)
            new = 0
            seen = self.seen
            for n in numbers:
                if n < self.lines and not seen[n]:
                    seen[n] = 1
                    new += 1
            if new:
                self.distinct += new
                self.last_new = time.monotonic()


class Receiver(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", free_port()), Handler)
        self.count: Count | None = None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The headers and the body are two writes: without TCP_NODELAY the second waits for the
    # client's delayed ACK (40 ms a request), and the receiver, not the shipper, sets the pace.
    disable_nagle_algorithm = True

    def log_message(self, *args) -> None:
        pass

    def body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            data = b"".join(parts)
        else:
            data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            data = gzip.decompress(data)
        return data

    def answer(self, status: int, payload: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        # omelasticsearch checks the server's health before it sends.
        if self.path.startswith("/_cat/health"):
            self.answer(200, b"green\n", "text/plain")
        else:
            self.answer(200, b'{"version":{"number":"8.11.0"},"tagline":"You Know, for Search"}')

    def do_HEAD(self) -> None:
        self.answer(200, b"")

    def do_POST(self) -> None:
        data = self.body()
        count = self.server.count
        if count is not None:
            count.add(data)
        if self.path.split("?")[0].endswith("/_bulk"):
            docs = data.count(b"\n") // 2
            item = b'{"create":{"_index":"bench","status":201,"result":"created"}}'
            payload = b'{"took":1,"errors":false,"items":[' + b",".join([item] * docs) + b"]}"
            self.answer(200, payload)
        else:
            self.answer(200, b"{}")


def write_file(path: str, lines: int, line_bytes: int) -> None:
    filler = (b"lorem ipsum dolor sit amet consectetur adipiscing elit " * 8)
    chunk = []
    with open(path, "wb") as f:
        for i in range(lines):
            head = b"seq=%010d level=info msg=" % i
            chunk.append(head + filler[: line_bytes - len(head) - 1] + b"\n")
            if len(chunk) == 10000:
                f.write(b"".join(chunk))
                chunk.clear()
        f.write(b"".join(chunk))


def proc_tree(pid: int) -> list[int]:
    """pid and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # utime stime cutime cstime
            total += sum(int(x) for x in fields[11:15]) / CLK_TCK
        except OSError:
            pass
    return total


def peak_rss_kib(pid: int) -> int:
    peak = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
    return peak


class Tool:
    def __init__(self, name: str, argv: list[str], env: dict | None, work: str):
        self.name, self.argv, self.env, self.work = name, argv, env, work


def log_shipper(args, work: str, log: str, port: int) -> Tool:
    state = os.path.join(work, "state")
    os.makedirs(state)
    argv = [
        args.log_shipper,
        "--file", log,
        "--start-at", "beginning",
        "--sink-url", f"http://127.0.0.1:{port}/ingest",
        "--state-dir", state,
        "--admin-addr", f"127.0.0.1:{free_port()}",
        "--log-level", "warn",
    ]
    return Tool("log-shipper", argv, None, work)


def rsyslog(args, work: str, log: str, port: int) -> Tool:
    conf = os.path.join(work, "rsyslog.conf")
    with open(conf, "w") as f:
        f.write(f"""
global(workDirectory="{work}" maxMessageSize="64k")
module(load="imfile" mode="inotify")
module(load="omelasticsearch")
template(name="doc" type="string" string="{{\\"message\\":\\"%msg:::json%\\"}}")
input(type="imfile" file="{log}" tag="app" ruleset="ship" freshStartTail="off")
ruleset(name="ship") {{
  action(type="omelasticsearch" server="127.0.0.1" serverport="{port}" usehttps="off"
         searchIndex="bench" template="doc" bulkmode="on" maxbytes="1m"
         queue.type="LinkedList" queue.size="100000" queue.dequeueBatchSize="1000"
         action.resumeRetryCount="-1")
}}
""")
    argv = [args.rsyslogd, "-n", "-f", conf, "-i", os.path.join(work, "rsyslogd.pid")]
    return Tool("rsyslog", argv, None, work)


def syslog_ng(args, work: str, log: str, port: int) -> Tool:
    conf = os.path.join(work, "syslog-ng.conf")
    with open(conf, "w") as f:
        f.write(f"""@version: 3.38
options {{ stats-freq(0); log-msg-size(65536); }};
source s {{ file("{log}" flags(no-parse) follow-freq(1) log-fetch-limit(1000) log-iw-size(100000)); }};
destination d {{
  http(url("http://127.0.0.1:{port}/ingest") method("POST")
       headers("Content-Type: application/x-ndjson")
       body("$(format-json message=$MSG)")
       batch-lines(1000) batch-bytes(1048576) batch-timeout(1000)
       workers(2) persist-name("bench"));
}};
log {{ source(s); destination(d); flags(flow-control); }};
""")
    argv = [
        args.syslog_ng, "-F", "-f", conf,
        "-R", os.path.join(work, "syslog-ng.persist"),
        "-p", os.path.join(work, "syslog-ng.pid"),
        "-c", os.path.join(work, "syslog-ng.ctl"),
        "--no-caps",
    ]
    env = None
    if args.syslog_ng_root:
        argv.append(f"--module-path={args.syslog_ng_modules}")
        env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(args.syslog_ng_root, "usr/lib/syslog-ng"))
    return Tool("syslog-ng", argv, env, work)


def run(tool: Tool, receiver: Receiver, lines: int, stall: float) -> dict:
    count = Count(lines)
    receiver.count = count
    out = open(os.path.join(tool.work, "output.log"), "wb")
    start = time.monotonic()
    count.last_new = start
    proc = subprocess.Popen(tool.argv, env=tool.env, stdout=out, stderr=subprocess.STDOUT,
                            cwd=tool.work)
    cpu = rss = 0.0
    while True:
        time.sleep(0.05)
        if proc.poll() is not None:
            break
        cpu, rss = cpu_seconds(proc.pid), peak_rss_kib(proc.pid)
        with count.lock:
            done = count.distinct == lines
            idle = time.monotonic() - count.last_new
        if done or idle > stall:
            break
    exited = proc.poll()
    if exited is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    out.close()
    receiver.count = None
    with count.lock:
        received, last, total = count.distinct, count.last_new, count.total
        body, requests = count.bytes, count.requests
    if exited is not None:
        with open(os.path.join(tool.work, "output.log"), "rb") as f:
            tail = f.read()[-2000:].decode(errors="replace")
        print(f"  {tool.name} exited with {exited} before the end:\n{tail}", file=sys.stderr)
    elapsed = max(last - start, 1e-9)
    return {
        "lines_s": received / elapsed,
        "cpu_us": cpu / max(received, 1) * 1e6,
        "rss_mib": rss / 1024,
        "lost": lines - received,
        "dup": total - received,
        "seconds": elapsed,
        "bytes_line": body / max(total, 1),
        "lines_req": total / max(requests, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--log-shipper", required=True)
    p.add_argument("--rsyslogd")
    p.add_argument("--syslog-ng")
    p.add_argument("--syslog-ng-root", help="where syslog-ng-core is unpacked (/opt/deb/...)")
    p.add_argument("--syslog-ng-modules", help="its --module-path")
    p.add_argument("--mb", type=float, default=1000, help="size of the file, MB (1e6 bytes)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--line-bytes", type=int, default=200)
    p.add_argument("--stall", type=float, default=30)
    args = p.parse_args()

    lines = int(args.mb * 1e6) // args.line_bytes
    tmp = tempfile.mkdtemp(prefix="ls-bench-")
    try:
        shared = os.path.join(tmp, "shared")
        os.makedirs(shared)
        log = os.path.join(shared, "app.log")
        print(f"writing {lines} lines of {args.line_bytes} bytes ({lines * args.line_bytes / 1e6:.0f} MB)...",
              file=sys.stderr)
        write_file(log, lines, args.line_bytes)
        receiver = Receiver()
        threading.Thread(target=receiver.serve_forever, daemon=True).start()
        port = receiver.server_address[1]

        makers = [("log-shipper", log_shipper)]
        if args.rsyslogd:
            makers.append(("rsyslog", rsyslog))
        else:
            print("rsyslog: skipped (rsyslogd not found)", file=sys.stderr)
        if args.syslog_ng:
            makers.append(("syslog-ng", syslog_ng))
        else:
            print("syslog-ng: skipped (syslog-ng not found)", file=sys.stderr)
        names = [n for n, _ in makers]
        results: dict[str, list[dict]] = {n: [] for n in names}
        for r in range(args.rounds):
            for name, make in makers:
                work = os.path.join(tmp, f"{name}-{r}")
                os.makedirs(work)
                res = run(make(args, work, log, port), receiver, lines, args.stall)
                results[name].append(res)
                print(f"round {r + 1} {name}: {res['lines_s']:,.0f} lines/s, "
                      f"{res['cpu_us']:.2f} us CPU/line, {res['rss_mib']:.1f} MiB, "
                      f"lost {res['lost']}, dup {res['dup']}, {res['seconds']:.1f} s",
                      file=sys.stderr)
                shutil.rmtree(work, ignore_errors=True)
        receiver.shutdown()
        report(args, lines, names, results)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(args, lines: int, names: list[str], results: dict[str, list[dict]]) -> None:
    med = lambda name, key: statistics.median(r[key] for r in results[name])
    peers = [n for n in names if n != "log-shipper"]
    print(f"## log-shipper vs {', '.join(peers) or 'no peer'}: file -> HTTP on 127.0.0.1")
    print()
    print(f"{lines:,} lines of {args.line_bytes} bytes ({lines * args.line_bytes / 1e6:.0f} MB), "
          f"{args.rounds} rounds, medians; ratios are per round (log-shipper / the best peer "
          f"of that round), then their median.")
    print()
    print("| measure | " + " | ".join(names) + " | ratio vs best peer | target | met |")
    print("|---|" + "---|" * len(names) + "---|---|---|")

    def ratio(key: str, best) -> float | None:
        if not peers:
            return None
        per_round = []
        for i in range(args.rounds):
            ours = results["log-shipper"][i][key]
            theirs = best(results[p][i][key] for p in peers)
            per_round.append(ours / theirs if theirs else float("inf"))
        return statistics.median(per_round)

    def row(title, key, fmt, best, target_text, check) -> None:
        cells = [fmt(med(n, key)) for n in names]
        rt = ratio(key, best) if best else None
        ours = med("log-shipper", key)
        met = check(ours, rt)
        rt_text = f"{rt:.2f}x" if rt is not None else ""
        print(f"| {title} | " + " | ".join(cells) + f" | {rt_text} | {target_text} | "
              f"{'yes' if met else 'NO'} |")

    row("lines/s", "lines_s", lambda v: f"{v:,.0f}", max, ">= 2x the best peer",
        lambda v, r: r is not None and r >= 2)
    row("CPU per line", "cpu_us", lambda v: f"{v:.2f} us", min, "<= 0.5x the best peer",
        lambda v, r: r is not None and r <= 0.5)
    row("peak RSS", "rss_mib", lambda v: f"{v:.1f} MiB", min, "<= 16 MiB",
        lambda v, r: v <= 16)
    worst = {n: max(r["lost"] for r in results[n]) for n in names}
    dups = {n: max(r["dup"] for r in results[n]) for n in names}
    print("| lines lost (worst round) | " + " | ".join(f"{worst[n]:,}" for n in names)
          + f" |  | 0 | {'yes' if worst['log-shipper'] == 0 else 'NO'} |")
    print("| lines duplicated (worst round) | " + " | ".join(f"{dups[n]:,}" for n in names)
          + " |  |  |  |")
    print("| wall time to the last line | " + " | ".join(f"{med(n, 'seconds'):.1f} s" for n in names)
          + " |  |  |  |")
    print("| bytes received per line | " + " | ".join(f"{med(n, 'bytes_line'):.0f}" for n in names)
          + " |  |  |  |")
    print("| lines per request | " + " | ".join(f"{med(n, 'lines_req'):.0f}" for n in names)
          + " |  |  |  |")


if __name__ == "__main__":
    main()
