#!/usr/bin/env python3
"""Soak test: run certgate for a long time under mixed traffic and watch its memory and file
descriptors level off, with no valid request failing.

Traffic, all on loopback, all bounded by --duration: HTTP/1.1 keep-alive and new-connection
GETs, HTTP/2 bursts (oha), SSE streams, 1 MiB uploads, clients refused at the handshake (no
certificate, a foreign CA), and a SIGHUP reload every 30 s. Every 5 s the script samples the
daemon's RSS and open file descriptors into a CSV and, at the end, draws an SVG of both.

    python3 scripts/soak.py --duration 1800 --out bench/results/soak
    python3 scripts/soak.py --quick            # 60 s self-test

Needs: a release build (built if missing), openssl-free: the PKI comes from `certgate certs`.
"""

import argparse
import http.client
import http.server
import json
import os
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "certgate")


class Backend(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/sse"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(5):
                data = f"data: {i}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")
            return
        body = b"x" * 100
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        left = n
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)
        body = str(n).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sample(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


def svg(rows, path, title):
    w, h, pad = 720, 300, 50
    t0 = rows[0][0]
    xs = [r[0] - t0 for r in rows]
    rss = [r[1] / 1024 for r in rows]
    fds = [r[2] for r in rows]
    xmax = max(xs) or 1
    def line(vals, color, vmax):
        pts = " ".join(
            f"{pad + (x / xmax) * (w - 2 * pad):.1f},{h - pad - (v / vmax) * (h - 2 * pad):.1f}"
            for x, v in zip(xs, vals)
        )
        return f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>'
    rmax = max(rss) * 1.2 or 1
    fmax = max(fds) * 1.2 or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{pad}" y="20">{title}</text>',
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
        line(rss, "#1f77b4", rmax),
        line(fds, "#d62728", fmax),
        f'<text x="{pad}" y="{h - 15}">0 s</text>',
        f'<text x="{w - pad - 40}" y="{h - 15}">{xmax:.0f} s</text>',
        f'<text x="{pad + 5}" y="{pad - 5}" fill="#1f77b4">RSS, MiB (max {max(rss):.1f})</text>',
        f'<text x="{pad + 220}" y="{pad - 5}" fill="#d62728">open fds (max {max(fds)})</text>',
        "</svg>",
    ]
    with open(path, "w") as f:
        f.write("\n".join(parts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=1800)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "soak"))
    a = ap.parse_args()
    duration = 60 if a.quick else a.duration
    subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True)
    os.makedirs(a.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="certgate-soak-")
    ca, other = os.path.join(work, "ca"), os.path.join(work, "other")
    run([BIN, "certs", "init-ca", "--dir", ca])
    run([BIN, "certs", "server", "--dir", ca, "--name", "localhost", "--san", "localhost", "--san", "127.0.0.1"])
    run([BIN, "certs", "client", "--dir", ca, "--name", "soak"])
    run([BIN, "certs", "init-ca", "--dir", other])
    run([BIN, "certs", "client", "--dir", other, "--name", "stranger"])

    backend = ThreadingServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    port, admin = free_port(), free_port()
    config = os.path.join(work, "certgate.toml")
    with open(config, "w") as f:
        f.write(f"""
[listen]
https = "127.0.0.1:{port}"
[tls]
cert = "{ca}/localhost.crt"
key = "{ca}/localhost.key"
client_ca = "{ca}/ca.crt"
crl = ["{ca}/ca.crl"]
[upstream]
url = "http://127.0.0.1:{backend.server_address[1]}"
[admin]
listen = "127.0.0.1:{admin}"
[limits]
handshake_failures_per_ip = "100000/m"
[log]
access = false
""")
    daemon = subprocess.Popen([BIN, "run", "-c", config], stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)

    def ctx(cert=True, dir_=ca, name="soak"):
        c = ssl.create_default_context(cafile=f"{ca}/ca.crt")
        if cert:
            c.load_cert_chain(f"{dir_}/{name}.crt", f"{dir_}/{name}.key")
        return c

    good = ctx()
    stats = {"ok": 0, "failed": 0, "refused_as_expected": 0, "unexpected_accept": 0, "reloads": 0}
    lock = threading.Lock()
    stop = time.time() + duration
    errors = []

    def count(key, n=1):
        with lock:
            stats[key] += n

    def keepalive():
        conn = None
        while time.time() < stop:
            try:
                if conn is None:
                    conn = http.client.HTTPSConnection("localhost", port, context=good, timeout=30)
                conn.request("GET", "/ka")
                r = conn.getresponse()
                r.read()
                count("ok" if r.status == 200 else "failed")
            except Exception as e:  # a keep-alive connection closed by the idle timeout is fine to reopen
                if conn is not None and isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
                    conn = None
                    continue
                count("failed")
                errors.append(repr(e))
                conn = None

    def fresh(path="/new", method="GET", body=None):
        while time.time() < stop:
            try:
                conn = http.client.HTTPSConnection("localhost", port, context=good, timeout=30)
                conn.request(method, path, body=body)
                r = conn.getresponse()
                data = r.read()
                ok = r.status == 200 and (body is None or data == str(len(body)).encode())
                if path == "/sse":
                    ok = ok and data.count(b"data:") == 5
                count("ok" if ok else "failed")
                conn.close()
            except Exception as e:
                count("failed")
                errors.append(repr(e))

    def rejected():
        while time.time() < stop:
            for c in [ctx(cert=False), ctx(dir_=other, name="stranger")]:
                try:
                    conn = http.client.HTTPSConnection("localhost", port, context=c, timeout=30)
                    conn.request("GET", "/nope")
                    conn.getresponse().read()
                    count("unexpected_accept")
                except Exception:
                    count("refused_as_expected")
            time.sleep(0.2)

    def h2_bursts():
        while time.time() < stop:
            out = subprocess.run(
                ["oha", "--no-tui", "--http2", "-c", "4", "-p", "4", "-z", "3s", "--output-format", "json",
                 "--cacert", f"{ca}/ca.crt", "--cert", f"{ca}/soak.crt", "--key", f"{ca}/soak.key",
                 f"https://localhost:{port}/h2"],
                capture_output=True, text=True)
            try:
                res = json.loads(out.stdout)
                dist = res.get("statusCodeDistribution", {})
                count("ok", int(dist.get("200", 0)))
                count("failed", sum(int(v) for k, v in dist.items() if k != "200"))
                # Requests cut off by the end of the burst (-z) are not failures.
            except Exception as e:
                errors.append(f"oha: {e}: {out.stderr[:200]}")
            time.sleep(2)

    def reloads():
        while time.time() < stop:
            time.sleep(30)
            daemon.send_signal(signal.SIGHUP)
            count("reloads")

    threads = [threading.Thread(target=keepalive) for _ in range(4)]
    threads += [threading.Thread(target=fresh) for _ in range(2)]
    threads += [threading.Thread(target=fresh, args=("/sse",))]
    threads += [threading.Thread(target=fresh, args=("/upload", "POST", b"u" * (1 << 20)))]
    threads += [threading.Thread(target=rejected), threading.Thread(target=reloads)]
    try:
        subprocess.run(["oha", "--version"], capture_output=True, check=True)
        threads.append(threading.Thread(target=h2_bursts))
    except Exception:
        print("oha not found: no HTTP/2 bursts (cargo install oha)", file=sys.stderr)
    for t in threads:
        t.daemon = True
        t.start()
    rows = []
    csv_path = os.path.join(a.out, "samples.csv")
    with open(csv_path, "w") as f:
        f.write("seconds,rss_kib,fds,ok,failed\n")
        t0 = time.time()
        while time.time() < stop:
            rss, fds = sample(daemon.pid)
            now = time.time()
            rows.append((now, rss, fds))
            f.write(f"{now - t0:.0f},{rss},{fds},{stats['ok']},{stats['failed']}\n")
            f.flush()
            time.sleep(5)
    for t in threads:
        t.join(timeout=60)
    rss, fds = sample(daemon.pid)
    rows.append((time.time(), rss, fds))
    daemon.send_signal(signal.SIGTERM)
    code = daemon.wait(timeout=60)
    backend.shutdown()
    svg(rows, os.path.join(a.out, "rss.svg"), f"certgate soak, {duration} s: RSS and open file descriptors")
    n = len(rows)
    first_half = rows[: n // 2] or rows
    second_half = rows[n // 2 :] or rows
    summary = {
        "duration_s": duration,
        "requests_ok": stats["ok"],
        "requests_failed": stats["failed"],
        "refused_as_expected": stats["refused_as_expected"],
        "unexpected_accepts": stats["unexpected_accept"],
        "reloads": stats["reloads"],
        "rss_kib_first_sample": rows[0][1],
        "rss_kib_max_first_half": max(r[1] for r in first_half),
        "rss_kib_max_second_half": max(r[1] for r in second_half),
        "rss_kib_last": rows[-1][1],
        "fds_max_first_half": max(r[2] for r in first_half),
        "fds_max_second_half": max(r[2] for r in second_half),
        "fds_last": rows[-1][2],
        "exit_code": code,
        "errors": errors[:10],
    }
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))
    ok = stats["failed"] == 0 and stats["unexpected_accept"] == 0 and code == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
