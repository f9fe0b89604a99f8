"""A TLS client that leaves Nagle's algorithm on, as Python's ssl over a plain socket, Java's
classic HTTP client and many scripts do: for each of N new connections (TLS 1.3, client
certificate), the time from sending the request to the first byte of the answer, in ms.

Usage: nagle_client.py HOST PORT CA CERT KEY N  -> prints a JSON list of milliseconds.
"""
import json
import socket
import ssl
import sys
import time

host, port, ca, cert, key, n = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6], int(sys.argv[6])
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.set_alpn_protocols(["http/1.1"])
times = []
for _ in range(n):
    raw = socket.create_connection((host, port))
    assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0, "Nagle must stay on"
    tls = ctx.wrap_socket(raw, server_hostname="localhost")
    request = f"GET /ttfb HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n".encode()
    start = time.perf_counter()
    tls.sendall(request)
    first = tls.recv(1)
    times.append((time.perf_counter() - start) * 1000)
    assert first == b"H", first
    tls.close()
print(json.dumps(times))
