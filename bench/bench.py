#!/usr/bin/env python3
"""certgate vs nginx vs HAProxy, configured alike, measured by proxy CPU time.

Every proxy terminates TLS 1.2+1.3 with a client certificate required against the same CA
and CRL, applies the two deny rules, sets X-SSL-Client-Verify/-DN, X-Real-IP and
X-Forwarded-For/-Proto, keeps a keep-alive pool of 32 to the backend, does not buffer
responses, and logs no access lines (except scenario g). Scenarios g, h, j, k and l compare a
certgate variant (access log, identity group, shared zone, queue, operator's page) with plain certgate
in the same run. Each proxy runs one worker pinned to CPU 0;
the load generator (oha, which presents the client certificate) and the backend (nginx serving
fixed bodies) share CPU 1. Targets run interleaved (A B C A B C ...) for several repetitions;
the report gives median, min and max of each figure and each proxy's median as a ratio to
nginx's from the same run. Figures are per proxy CPU time, so they do not depend on how fast
the load generator is: µs per request, MB per CPU-second, KiB per idle connection.

    bench/run.sh            # full run, about 15 minutes
    bench/run.sh --quick    # one short repetition: a self-test of the harness
    bench/run.sh --rsa      # RSA-2048 keys instead of ECDSA P-256
    bench/run.sh --instructions   # (a), (b), (k) and (l) as instructions per request under callgrind

CPU time on a shared 2-core machine moves by 10-30 % between runs of the same binary, which
hides the 2-5 % a single optimization is worth. `--instructions` runs each proxy under
valgrind's callgrind instead and counts the instructions it executes per request (user space
only, handshakes excluded: the count of N requests is subtracted from that of 2N on as many
connections). The counts repeat to within 0.1 %; they are not time (a cache miss costs no
instruction), so kept changes are still checked in CPU time with `--baseline`.
"""

import argparse
import atexit
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "certgate")
TICK = os.sysconf("SC_CLK_TCK")
PROCS = []
DIRS = []


def cleanup():
    for p in PROCS:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    # After the processes: nginx writes its pid and temp files into the work folder.
    for d in DIRS:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(cleanup)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def setup():
    need = [p for p, b in [("nginx", "nginx"), ("haproxy", "haproxy")] if not shutil.which(b)]
    if need:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *need], check=True)
    if not shutil.which("redis-server"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True)
    if not shutil.which("oha"):
        # The version the recorded results were made with: its --cert/--key (the client
        # certificate) and its JSON output are what this harness reads.
        subprocess.run(["cargo", "install", "oha", "--version", "1.16.0", "--locked"], check=True)
    subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True)


def port_free(port):
    """Refuses to start when something already listens on `port`: the harness would otherwise
    measure that process instead of the one it started."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise RuntimeError(f"port {port} is in use: stop whatever listens there first")


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    return total


def children(pid):
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == str(pid):
                        out.append(int(p))
            except OSError:
                pass
    return out


class Target:
    def __init__(self, name, cmd, port, env=None, workers_are_children=False):
        self.name, self.cmd, self.port, self.env = name, cmd, port, env
        self.workers_are_children = workers_are_children
        self.proc = None

    def start(self):
        port_free(self.port)
        env = dict(os.environ, **(self.env or {}))
        self.proc = subprocess.Popen(["taskset", "-c", "0", *self.cmd], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        PROCS.append(self.proc)
        wait_port(self.port)
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited at start (code {self.proc.returncode})")

    def pids(self):
        ids = [self.proc.pid]
        if self.workers_are_children:
            ids += children(self.proc.pid)
        return ids

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def oha(args, url, pki, duration):
    cmd = ["taskset", "-c", "1", "oha", "--no-tui", "--output-format", "json", "-z", f"{duration}s",
           "--cacert", pki["ca"], "--cert", pki["client_crt"], "--key", pki["client_key"], *args, url]
    out = subprocess.run(cmd, capture_output=True, text=True)
    res = json.loads(out.stdout)
    ok = int(res.get("statusCodeDistribution", {}).get("200", 0))
    return ok, res


def summary_ir(path):
    """The instructions a callgrind dump file counted."""
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"{path}: no summary line")


def callgrind_per_request(t, args, url, pki, work, n):
    """Instructions per request of target `t` (all its processes) under callgrind: the count of
    `2n` requests less that of `n`, each on a fresh set of oha's connections, so handshakes and
    start-up cancel out."""
    out_dir = tempfile.mkdtemp(prefix=f"callgrind-{t.name}-", dir=work)
    # nginx's worker drops root and then cannot take callgrind's commands; one process that
    # does the worker's job does the same work.
    extra = ["-g", "master_process off;"] if t.name == "nginx" else []
    port_free(t.port)
    env = dict(os.environ, **(t.env or {}))
    proc = subprocess.Popen(["taskset", "-c", "0", "valgrind", "--tool=callgrind",
                             f"--callgrind-out-file={out_dir}/cg.%p", *t.cmd, *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    PROCS.append(proc)
    wait_port(t.port, timeout=120)

    def load(count):
        subprocess.run(["taskset", "-c", "1", "oha", "--no-tui", "-n", str(count), "--cacert", pki["ca"],
                        "--cert", pki["client_crt"], "--key", pki["client_key"], *args, url],
                       capture_output=True, check=True)

    def measure(count):
        # By pid: without one, callgrind_control acts on every callgrind run on the machine,
        # other users' included. taskset and valgrind exec in place, so the pid is the
        # target's, and each target runs as one process under callgrind.
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True, check=True)
        load(count)
        before = set(os.listdir(out_dir))
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
        return sum(summary_ir(os.path.join(out_dir, f)) for f in set(os.listdir(out_dir)) - before)

    load(500)
    one = measure(n)
    two = measure(2 * n)
    proc.terminate()
    proc.wait(timeout=60)
    return (two - one) / n


def instructions(targets, names, pki, work, only, out, report_name, n=2000):
    """The `--instructions` report: (a) and (b) against the peers, and the certgate variants of
    (k) and (l) against their same-run counterparts, in instructions per request."""
    if not shutil.which("valgrind"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "valgrind"], check=True)
    counted = {}

    def count(key, name):
        # (l)'s counterpart is plain certgate on (a)'s path: counted once, reused.
        _, _, args, path = SCENARIOS[key]
        if (name, path, tuple(args)) not in counted:
            t = targets[name]
            per = callgrind_per_request(t, args, f"https://localhost:{t.port}{path}", pki, work, n)
            counted[(name, path, tuple(args))] = per
            print(f"{key} {name}: {per:.0f} instructions per request", flush=True)
        return counted[(name, path, tuple(args))]

    lines = ["| scenario | " + " | ".join(names) + " | certgate / nginx | certgate / HAProxy | "
             "certgate=peers / HAProxy |",
             "| --- | " + " | ".join("---" for _ in names) + " | --- | --- | --- |"]
    for key in ("a", "b"):
        if only and key not in only:
            continue
        title = SCENARIOS[key][0]
        per = {name: count(key, name) for name in names}
        cells = " | ".join(f"{per[x] / 1000:.1f} k" for x in names)
        lines.append(f"| {key}. {title} | {cells} | {ratio(per['certgate'], per['nginx'])} | "
                     f"{ratio(per['certgate'], per['haproxy'])} | "
                     f"{ratio(per['certgate=peers'], per['haproxy'])} |")
    paired = ["", "| scenario | variant | counterpart | variant / counterpart |", "| --- | --- | --- | --- |"]
    for key in ("k", "l"):
        if only and key not in only:
            continue
        variant, base, tag, against = PAIRED[key]
        v, b = count(key, variant), count(key, base)
        paired.append(f"| {key}. {SCENARIOS[key][0]} | {v / 1000:.1f} k ({tag}) | {b / 1000:.1f} k "
                      f"({against}) | {v / b:.3f} |")
    if len(lines) == 2:
        lines = []
    if len(paired) > 3:
        lines += paired
    head = (f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; instructions per request "
            f"in user space (callgrind, {n} requests less {2 * n}), handshakes excluded.\n\n")
    report = head + "\n".join(lines).lstrip("\n") + "\n"
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, report_name), "w") as f:
        f.write(report)
    print(report)


def idle_connections(port, pki, n):
    ctx = ssl.create_default_context(cafile=pki["ca"])
    ctx.load_cert_chain(pki["client_crt"], pki["client_key"])
    ctx.set_alpn_protocols(["http/1.1"])
    conns = []
    for _ in range(n):
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
        s.sendall(b"GET /100b HTTP/1.1\r\nHost: localhost\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf or len(buf.split(b"\r\n\r\n", 1)[1]) < 100:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed during the idle-connection setup")
            buf += chunk
        conns.append(s)
    return conns


SCENARIOS = {
    "a": ("HTTP/1.1 keep-alive GET 100 B, 64 connections", "us_per_req", [ "-c", "64"], "/100b"),
    "b": ("HTTP/2, 16 connections x 4 streams", "us_per_req", ["--http2", "-c", "16", "-p", "4"], "/100b"),
    "c": ("full TLS 1.3 mTLS handshake per request", "us_per_req", ["--disable-keepalive", "-c", "8"], "/100b"),
    "d1": ("1 MiB downloads, 4 connections", "mb_per_cpu_s", ["-c", "4"], "/1m"),
    "d2": ("50 MiB uploads, 2 connections", "mb_per_cpu_s", ["-c", "2", "-m", "POST"], "/upload"),
    "f": ("latency at 500 req/s, 16 connections", "latency", ["-c", "16", "-q", "500"], "/100b"),
    "g": ("as (a) with the JSON access log on", "us_per_req", ["-c", "64"], "/100b"),
    "h": ("as (a) through a two-server identity group", "us_per_req", ["-c", "64"], "/100b"),
    "i": ("first response on a new TLS 1.3 connection, Nagle on (50 in a row)", "ttfb", [], "/100b"),
    "j": ("as (a) with a rate-limit zone on every request, shared through a local Redis", "us_per_req",
          ["-c", "64"], "/zoned/100b"),
    "k": ("as (a) with every request a job of a [[queue]] (slots to spare: the bookkeeping, no wait)",
          "us_per_req", ["-c", "64"], "/queued/100b"),
    "l": ("as (a) with the operator's page on ([console]: every request recorded)", "us_per_req",
          ["-c", "64"], "/100b"),
}

# Scenarios that compare a certgate variant with another certgate in the same run rather than
# with nginx and HAProxy: the variant, what it is compared with, and how the table says it.
PAIRED = {
    "g": ("certgate+log", "certgate", "log on", "certgate without log"),
    "h": ("certgate+group", "certgate", "group", "certgate with one backend"),
    "j": ("certgate+shared", "certgate+zone", "shared", "the same zone kept locally"),
    "k": ("certgate+queue", "certgate+unqueued", "queued", "the same route unqueued"),
    "l": ("certgate+console", "certgate", "console on", "certgate without it"),
}

REDIS_PORT = 16379


def redis(work):
    """A local redis-server on CPU 1 (with the load generator and the backend), for (j)."""
    port_free(REDIS_PORT)
    proc = subprocess.Popen(["taskset", "-c", "1", "redis-server", "--bind", "127.0.0.1", "--port",
                             str(REDIS_PORT), "--save", "", "--appendonly", "no", "--dir", work],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    PROCS.append(proc)
    wait_port(REDIS_PORT)

NAGLE = os.path.join(ROOT, "tests", "e2e", "tools", "nagle_client.py")


def nagle_ttfb(port, pki, n=50):
    """Median ms from request to first byte over `n` new connections of a client that leaves
    Nagle's algorithm on (tests/e2e/tools/nagle_client.py)."""
    out = subprocess.run(["taskset", "-c", "1", "python3", NAGLE, "127.0.0.1", str(port), pki["ca"],
                          pki["client_crt"], pki["client_key"], str(n)],
                         capture_output=True, text=True, check=True)
    return statistics.median(json.loads(out.stdout))


def nginx_main(work, name):
    """The main-context lines both nginx instances (proxy and backend) share: one worker, in the
    foreground, pid and error log under `work`."""
    return (f"worker_processes 1;\npid {work}/{name}.pid;\nerror_log {work}/{name}-error.log error;\n"
            "daemon off;\nevents { worker_connections 8192; }\n")


def configs(work, pki, backend_port, ports):
    cg = os.path.join(work, "certgate.toml")
    common = f"""
[listen]
https = "127.0.0.1:{{port}}"
[tls]
cert = "{pki['server_crt']}"
key = "{pki['server_key']}"
client_ca = "{pki['ca']}"
crl = ["{pki['crl']}"]
[upstream]
url = "http://127.0.0.1:{backend_port}"
max_idle_connections = 32
[limits]
max_body = "100MiB"
max_connections_per_ip = 100000
max_connections = 100000
handshake_failures_per_ip = "1000000/m"
[[route]]
path = "/gradio_api/info"
action = "deny"
[[route]]
path = "/queue/data"
action = "deny"
"""
    with open(cg, "w") as f:
        f.write(common.format(port=ports["certgate"]) + "[log]\naccess = false\n")
    # (a=, b=): the headers nginx and HAProxy are configured with below and nothing more:
    # Verify and DN of the six identity headers, none of the three security response headers.
    # The same work on all three, where certgate's defaults do more per request.
    cg_same = os.path.join(work, "certgate-same.toml")
    with open(cg_same, "w") as f:
        f.write(common.format(port=ports["certgate=peers"]) + "[log]\naccess = false\n"
                + '[headers]\nissuer_dn = ""\ncert = ""\nserial = ""\nfingerprint = ""\n'
                + '[response_headers]\n"X-Frame-Options" = ""\n"X-Content-Type-Options" = ""\n'
                + '"Referrer-Policy" = ""\n')
    cg_log = os.path.join(work, "certgate-log.toml")
    with open(cg_log, "w") as f:
        f.write(common.format(port=ports["certgate+log"]) + "[log]\nformat = \"json\"\naccess = true\n")
    # (h): the same backend twice under two names, so the group has two servers while the
    # backend's cost stays the same; every request pays the identity lookup and binding.
    cg_group = os.path.join(work, "certgate-group.toml")
    with open(cg_group, "w") as f:
        group = (f'servers = [{{ url = "http://127.0.0.1:{backend_port}" }}, '
                 f'{{ url = "http://localhost:{backend_port}" }}]\n'
                 'balance = "identity"\nmax_idle_connections = 32\n'
                 '[upstream.health]\npath = "/100b"\n')
        f.write(common.format(port=ports["certgate+group"])
                .replace(f'url = "http://127.0.0.1:{backend_port}"\nmax_idle_connections = 32\n', group)
                + "[log]\naccess = false\n")
    ng = os.path.join(work, "nginx.conf")
    with open(ng, "w") as f:
        f.write(f"""
{nginx_main(work, "nginx")}http {{
  access_log off;
  upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 32; }}
  server {{
    # `listen ... http2` rather than `http2 on;`: Debian 12 ships nginx 1.22.
    listen 127.0.0.1:{ports['nginx']} ssl http2;
    ssl_certificate {pki['server_crt']};
    ssl_certificate_key {pki['server_key']};
    ssl_client_certificate {pki['ca']};
    ssl_verify_client on;
    ssl_crl {pki['crl']};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    keepalive_requests 1000000;
    client_max_body_size 100m;
    location /gradio_api/info {{ return 403; }}
    location /queue/data {{ return 403; }}
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto https;
      proxy_set_header X-SSL-Client-Verify $ssl_client_verify;
      proxy_set_header X-SSL-Client-DN $ssl_client_s_dn;
      proxy_buffering off;
      proxy_request_buffering off;
    }}
  }}
}}
""")
    hp = os.path.join(work, "haproxy.cfg")
    with open(os.path.join(work, "server.pem"), "w") as f:
        f.write(open(pki["server_crt"]).read() + open(pki["server_key"]).read())
    with open(hp, "w") as f:
        f.write(f"""
global
  nbthread 1
  tune.ssl.cachesize 0
  # The machine's open-file limit is 20,000: HAProxy needs two descriptors per connection.
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 75s
  timeout server 75s
  timeout http-keep-alive 75s
frontend fe
  bind 127.0.0.1:{ports['haproxy']} ssl crt {work}/server.pem ca-file {pki['ca']} verify required crl-file {pki['crl']} alpn h2,http/1.1 ssl-min-ver TLSv1.2 no-tls-tickets
  http-request deny if {{ path_beg /gradio_api/info }} || {{ path_beg /queue/data }}
  http-request set-header X-SSL-Client-Verify %[ssl_c_verify]
  http-request set-header X-SSL-Client-DN %{{+Q}}[ssl_c_s_dn]
  http-request set-header X-Real-IP %[src]
  http-request set-header X-Forwarded-For %[src]
  http-request set-header X-Forwarded-Proto https
  default_backend be
backend be
  http-reuse always
  server b1 127.0.0.1:{backend_port} pool-max-conn 32
""")
    # (j): a zone on /zoned that never refuses (the cost of counting, not of refusing), kept
    # locally in one, in Redis in the other.
    zone = ('[[rate_limit]]\nname = "z"\nkey = "ip"\nrate = "1000000/s"\nburst = 1000000\n{scope}'
            '[[route]]\npath = "/zoned"\naction = "allow"\nrate_limit = "z"\nstrip_prefix = "/zoned"\n')
    cg_zone = os.path.join(work, "certgate-zone.toml")
    with open(cg_zone, "w") as f:
        f.write(common.format(port=ports["certgate+zone"]) + zone.format(scope='scope = "local"\n')
                + "[log]\naccess = false\n")
    cg_shared = os.path.join(work, "certgate-shared.toml")
    with open(cg_shared, "w") as f:
        f.write(common.format(port=ports["certgate+shared"]) + zone.format(scope="")
                + f'[shared]\nredis = "redis://127.0.0.1:{REDIS_PORT}/0"\ntimeout = "25ms"\n'
                + "[log]\naccess = false\n")
    # (k): a route whose every request is a queue's job, with slots and a per-person limit
    # above oha's 64 connections (all one client certificate), so nothing ever waits: what is
    # measured is the queue's bookkeeping per request, against the same route without a queue.
    queued = ('{queue}[[route]]\npath = "/queued"\naction = "allow"\nstrip_prefix = "/queued"\n{use}')
    cg_queue = os.path.join(work, "certgate-queue.toml")
    with open(cg_queue, "w") as f:
        f.write(common.format(port=ports["certgate+queue"])
                + queued.format(queue='[[queue]]\nname = "gpu"\nslots = 1024\nper_identity = 1024\n',
                                use='queue = "gpu"\n')
                + "[log]\naccess = false\n")
    cg_unqueued = os.path.join(work, "certgate-unqueued.toml")
    with open(cg_unqueued, "w") as f:
        f.write(common.format(port=ports["certgate+unqueued"]) + queued.format(queue="", use="")
                + "[log]\naccess = false\n")
    # (l): the operator's page on, so every request is recorded for it (the console's path is
    # never asked for: the cost measured is the recording's).
    cg_console = os.path.join(work, "certgate-console.toml")
    with open(cg_console, "w") as f:
        f.write(common.format(port=ports["certgate+console"])
                + '[console]\nallow = { ou = ["Admin"] }\n' + "[log]\naccess = false\n")
    return (cg, cg_same, cg_log, cg_group, cg_zone, cg_shared, cg_queue, cg_unqueued, cg_console,
            ng, hp)


def make_pki(work, rsa):
    ca = os.path.join(work, "ca")
    key = ["--key", "rsa-2048"] if rsa else []
    sh([BIN, "certs", "init-ca", "--dir", ca, *key])
    sh([BIN, "certs", "server", "--dir", ca, "--name", "localhost", "--san", "localhost", "--san", "127.0.0.1", *key])
    sh([BIN, "certs", "client", "--dir", ca, "--name", "bench", *key])
    sh([BIN, "certs", "client", "--dir", ca, "--name", "gone", *key])
    sh([BIN, "certs", "revoke", "--dir", ca, "--name", "gone"])
    return {"ca": f"{ca}/ca.crt", "crl": f"{ca}/ca.crl", "server_crt": f"{ca}/localhost.crt",
            "server_key": f"{ca}/localhost.key", "client_crt": f"{ca}/bench.crt", "client_key": f"{ca}/bench.key"}


def backend(work):
    port = 18080
    with open(os.path.join(work, "1m.bin"), "wb") as f:
        f.write(os.urandom(1 << 20))
    os.chmod(os.path.join(work, "1m.bin"), 0o644)
    conf = os.path.join(work, "backend.conf")
    with open(conf, "w") as f:
        f.write(f"""
{nginx_main(work, "backend")}http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    location = /100b {{ return 200 "{'x' * 100}"; }}
    location = /1m {{ alias {work}/1m.bin; }}
    # An upload is answered once all of it has arrived, as an application that stores it
    # would: `return` alone would answer at once and discard the rest as it comes, which
    # lets each proxy stop relaying the body at a different point.
    location = /upload {{
      client_body_buffer_size 64m;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_pass http://127.0.0.1:{port}/ok;
    }}
    location = /ok {{ return 200 "ok"; }}
  }}
}}
""")
    port_free(port)
    p = subprocess.Popen(["taskset", "-c", "1", "nginx", "-c", conf, "-p", work],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    PROCS.append(p)
    wait_port(port)
    return port


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rsa", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    ap.add_argument("--only", default="", metavar="a,b,...",
                    help="run only these scenarios (e is always measured); for checking one optimization")
    ap.add_argument("--instructions", action="store_true",
                    help="count instructions per request under callgrind for (a), (b), (k) and (l) instead")
    ap.add_argument("--baseline", action="append", default=[], metavar="NAME=BIN",
                    help="another certgate binary to measure alongside (an optimization's before or after); repeatable")
    a = ap.parse_args()
    if a.quick:
        a.reps, a.duration, a.idle = 1, 2, 100
    setup()
    work = tempfile.mkdtemp(prefix="certgate-bench-")
    DIRS.append(work)
    # nginx's worker runs unprivileged and must read the 1 MiB body from here.
    os.chmod(work, 0o755)
    pki = make_pki(work, a.rsa)
    upload = os.path.join(work, "50m.bin")
    with open(upload, "wb") as f:
        f.write(b"u" * (50 << 20))
    bport = backend(work)
    ports = {"certgate": 19443, "nginx": 19444, "haproxy": 19445, "certgate+log": 19446,
             "certgate+group": 19440, "certgate+zone": 19441, "certgate+shared": 19442,
             "certgate=peers": 19439, "certgate+queue": 19438, "certgate+unqueued": 19437,
             "certgate+console": 19436}
    (cg, cg_same, cg_log, cg_group, cg_zone, cg_shared, cg_queue, cg_unqueued, cg_console,
     ng, hp) = configs(work, pki, bport, ports)
    redis(work)
    one_worker = {"TOKIO_WORKER_THREADS": "1"}
    targets = {
        "certgate": Target("certgate", [BIN, "run", "-c", cg], ports["certgate"], one_worker),
        "nginx": Target("nginx", ["nginx", "-c", ng, "-p", work], ports["nginx"], workers_are_children=True),
        "haproxy": Target("haproxy", ["haproxy", "-f", hp], ports["haproxy"]),
        "certgate=peers": Target("certgate=peers", [BIN, "run", "-c", cg_same], ports["certgate=peers"],
                                 one_worker),
        "certgate+log": Target("certgate+log", [BIN, "run", "-c", cg_log], ports["certgate+log"], one_worker),
        "certgate+group": Target("certgate+group", [BIN, "run", "-c", cg_group], ports["certgate+group"],
                                 one_worker),
        "certgate+zone": Target("certgate+zone", [BIN, "run", "-c", cg_zone], ports["certgate+zone"],
                                one_worker),
        "certgate+shared": Target("certgate+shared", [BIN, "run", "-c", cg_shared],
                                  ports["certgate+shared"], one_worker),
        "certgate+queue": Target("certgate+queue", [BIN, "run", "-c", cg_queue],
                                 ports["certgate+queue"], one_worker),
        "certgate+unqueued": Target("certgate+unqueued", [BIN, "run", "-c", cg_unqueued],
                                    ports["certgate+unqueued"], one_worker),
        "certgate+console": Target("certgate+console", [BIN, "run", "-c", cg_console],
                                   ports["certgate+console"], one_worker),
    }
    a.baselines = [b.split("=", 1) for b in a.baseline]
    for i, (name, path) in enumerate(a.baselines):
        # Each variant runs twice, as certgate does: plain, and with the access log for (g).
        for variant, src_cfg, base in ((name, cg, "certgate"), (f"{name}+log", cg_log, "certgate+log")):
            ports[variant] = 19447 + 2 * i + (variant != name)
            bcfg = os.path.join(work, f"{variant}.toml")
            with open(src_cfg) as src, open(bcfg, "w") as dst:
                dst.write(src.read().replace(f"127.0.0.1:{ports[base]}", f"127.0.0.1:{ports[variant]}"))
            targets[variant] = Target(variant, [path, "run", "-c", bcfg], ports[variant], one_worker)
    if a.instructions:
        names = ["certgate", "certgate=peers", "nginx", "haproxy", *(n for n, _ in a.baselines)]
        instructions(targets, names, pki, work, {k for k in a.only.split(",") if k}, a.out,
                     "instructions-only.md" if a.only else "instructions.md")
        return
    results = {}
    for t in targets.values():
        t.start()
    # (e) idle RSS first, on a fresh process.
    idle = {}
    for name in ["certgate", "nginx", "haproxy", *(n for n, _ in a.baselines)]:
        t = targets[name]
        base = rss_kib(t.pids())
        conns = idle_connections(t.port, pki, a.idle)
        time.sleep(1)
        loaded = rss_kib(t.pids())
        for c in conns:
            c.close()
        idle[name] = {"idle_rss_kib": base, "kib_per_conn": (loaded - base) / a.idle}
    results["e"] = idle
    if targets["certgate+log"].proc:
        # Its log goes to /dev/null; it only runs in (g).
        pass
    only = {k for k in a.only.split(",") if k}
    for key, (title, unit, args, path) in SCENARIOS.items():
        if only and key not in only:
            continue
        names = list(PAIRED[key][:2]) if key in PAIRED else ["certgate", "nginx", "haproxy"]
        if key in ("a", "b"):
            names.append("certgate=peers")
        if key in ("a", "b", "c", "d1", "d2"):
            names += [n for n, _ in a.baselines]
        elif key == "g":
            names += [v for n, _ in a.baselines for v in (f"{n}+log", n)]
        per = {n: [] for n in names}
        for _ in range(a.reps):
            for n in names:
                t = targets[n]
                extra = ["-D", upload] if key == "d2" else []
                if unit == "ttfb":
                    per[n].append(nagle_ttfb(t.port, pki))
                    continue
                before = cpu_seconds(t.pids())
                ok, res = oha(args + extra, f"https://localhost:{t.port}{path}", pki, a.duration)
                cpu = cpu_seconds(t.pids()) - before
                if unit == "us_per_req":
                    per[n].append(cpu / max(ok, 1) * 1e6)
                elif unit == "mb_per_cpu_s":
                    size = (1 << 20) if key == "d1" else (50 << 20)
                    per[n].append(ok * size / 1e6 / max(cpu, 1e-9))
                else:
                    lat = res.get("latencyPercentiles", {})
                    per[n].append({"p50_ms": lat.get("p50", 0) * 1000, "p99_ms": lat.get("p99", 0) * 1000})
                time.sleep(0.2)
        results[key] = per
    for t in targets.values():
        t.stop()
    os.makedirs(a.out, exist_ok=True)
    suffix = "-quick" if a.quick else ("-rsa" if a.rsa else "")
    if a.only:
        suffix += "-only"
    with open(os.path.join(a.out, f"latest{suffix}.json"), "w") as f:
        json.dump(results, f, indent=2)
    report = render(results, a)
    with open(os.path.join(a.out, f"latest{suffix}.md"), "w") as f:
        f.write(report)
    print(report)


def ratio(x, y):
    return f"{x / y:.2f}" if y else "n/a"


def summarize(vals):
    return statistics.median(vals), min(vals), max(vals)


def render(results, a):
    lines = []
    env = sh(["uname", "-srm"]).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    versions = {
        "certgate": sh([BIN, "--version"]).stdout.strip(),
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
        "haproxy": sh(["haproxy", "-v"]).stdout.splitlines()[0],
        "oha": sh(["oha", "--version"]).stdout.strip(),
    }
    lines.append(f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {env}, {cpu}, {os.cpu_count()} cores; "
                 f"{a.reps} repetitions x {a.duration} s, keys {'RSA-2048' if a.rsa else 'ECDSA P-256'}.")
    lines.append("Versions: " + "; ".join(versions.values()) + ".")
    lines.append("")
    lines.append("| scenario | figure | certgate | nginx | HAProxy | certgate / nginx | certgate / HAProxy |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    fmt = lambda m, lo, hi: f"{m:.1f} ({lo:.1f}–{hi:.1f})"
    for key, (title, unit, _, _) in SCENARIOS.items():
        per = results.get(key)
        if per is None:
            continue
        if key in PAIRED:
            variant, base, tag, against = PAIRED[key]
            m_v, m_b = summarize(per[variant]), summarize(per[base])
            lines.append(f"| {key}. {title} | µs/req | {fmt(*m_v)} ({tag}) | | | "
                         f"{ratio(m_v[0], m_b[0])} × {against} ({m_b[0]:.1f}) | |")
            continue
        if unit == "ttfb":
            ms = {n: summarize(per[n]) for n in ["certgate", "nginx", "haproxy"]}
            f2 = lambda m, lo, hi: f"{m:.1f} ({lo:.1f}–{hi:.1f})"
            lines.append(f"| {key}. {title} | ms (median) | {f2(*ms['certgate'])} | {f2(*ms['nginx'])} | "
                         f"{f2(*ms['haproxy'])} | {ratio(ms['certgate'][0], ms['nginx'][0])} | "
                         f"{ratio(ms['certgate'][0], ms['haproxy'][0])} |")
            continue
        if unit == "latency":
            cells = {}
            for n in ["certgate", "nginx", "haproxy"]:
                p99 = [v["p99_ms"] for v in per[n]]
                p50 = [v["p50_ms"] for v in per[n]]
                cells[n] = (statistics.median(p50), statistics.median(p99), min(p99), max(p99))
            c = lambda n: f"p50 {cells[n][0]:.2f} / p99 {cells[n][1]:.2f} ({cells[n][2]:.2f}–{cells[n][3]:.2f})"
            lines.append(f"| {key}. {title} | ms | {c('certgate')} | {c('nginx')} | {c('haproxy')} | "
                         f"p99 {ratio(cells['certgate'][1], cells['nginx'][1])} | "
                         f"p99 {ratio(cells['certgate'][1], cells['haproxy'][1])} |")
            continue
        ms = {n: summarize(per[n]) for n in ["certgate", "nginx", "haproxy"]}
        label = "µs/req (CPU)" if unit == "us_per_req" else "MB per CPU-s"
        if key == "c":
            label = "µs/handshake (CPU)"
        lines.append(f"| {key}. {title} | {label} | {fmt(*ms['certgate'])} | {fmt(*ms['nginx'])} | {fmt(*ms['haproxy'])} | "
                     f"{ratio(ms['certgate'][0], ms['nginx'][0])} | {ratio(ms['certgate'][0], ms['haproxy'][0])} |")
        if "certgate=peers" in per:
            same = summarize(per["certgate=peers"])
            lines.append(f"| {key}=. as ({key}), certgate sending only the peers' headers | {label} | "
                         f"{fmt(*same)} | {fmt(*ms['nginx'])} | {fmt(*ms['haproxy'])} | "
                         f"{ratio(same[0], ms['nginx'][0])} | {ratio(same[0], ms['haproxy'][0])} |")
    e = results["e"]
    kib = {n: e[n]["kib_per_conn"] for n in e}
    rss = {n: e[n]["idle_rss_kib"] for n in e}
    lines.append(f"| e. idle mTLS connection ({a.idle} held) | KiB/conn | {kib['certgate']:.1f} | {kib['nginx']:.1f} | {kib['haproxy']:.1f} | {kib['certgate'] / max(kib['nginx'], 1e-9):.2f} | {kib['certgate'] / max(kib['haproxy'], 1e-9):.2f} |")
    lines.append(f"| e. idle RSS | KiB | {rss['certgate']} | {rss['nginx']} (master + worker) | {rss['haproxy']} | {ratio(rss['certgate'], rss['nginx'])} | {ratio(rss['certgate'], rss['haproxy'])} |")
    for name, path in a.baselines:
        lines.append("")
        lines.append(f"Variant check, same run: certgate against `{name}` ({path}); "
                     "(a)-(c) are µs of CPU (lower is better), (d) MB per CPU-second (higher is better).")
        lines.append("")
        lines.append(f"| scenario | certgate | {name} | certgate / {name} |")
        lines.append("| --- | --- | --- | --- |")
        for key in ("a", "b", "c", "d1", "d2"):
            per = results.get(key)
            if per is None:
                continue
            m, b = statistics.median(per["certgate"]), statistics.median(per[name])
            lines.append(f"| {key} | {m:.1f} | {b:.1f} | {ratio(m, b)} |")
        if name in e:
            for fig, label in (("kib_per_conn", "e, KiB per idle connection"), ("idle_rss_kib", "e, idle RSS KiB")):
                m, b = e["certgate"][fig], e[name][fig]
                lines.append(f"| {label} | {m:.1f} | {b:.1f} | {ratio(m, b)} |")
        per = results.get("g")
        if per is not None:
            med = {n: statistics.median(per[n]) for n in ("certgate+log", "certgate", f"{name}+log", name)}
            own = lambda n: f"{med[n + '+log']:.1f} ({ratio(med[n + '+log'], med[n])} × without log)"
            lines.append(f"| g, log on | {own('certgate')} | {own(name)} | "
                         f"{ratio(med['certgate+log'], med[name + '+log'])} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
