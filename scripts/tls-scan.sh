#!/usr/bin/env bash
# Scan certgate's TLS listener in its default configuration with testssl.sh (Debian package
# testssl.sh): protocols, cipher suites, forward secrecy, compression, renegotiation, known
# vulnerabilities. testssl.sh 3.0 cannot present a client certificate, so it sees the server
# side of every handshake up to the CertificateRequest — which is what it grades. Loopback only;
# writes bench/results/testssl.{txt,json}.
#   scripts/tls-scan.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v testssl >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq testssl.sh; }
cargo build --release --locked
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
bin=target/release/certgate
"$bin" certs init-ca --dir "$work/ca" >/dev/null
"$bin" certs server --dir "$work/ca" --name localhost --san localhost --san 127.0.0.1 >/dev/null
port=18443
cat > "$work/certgate.toml" <<TOML
[listen]
https = "127.0.0.1:$port"
[tls]
cert = "$work/ca/localhost.crt"
key = "$work/ca/localhost.key"
client_ca = "$work/ca/ca.crt"
crl = ["$work/ca/ca.crl"]
[limits]
handshake_failures_per_ip = "100000/m"
[log]
access = false
TOML
"$bin" run -c "$work/certgate.toml" 2>/dev/null &
pid=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
mkdir -p bench/results
rm -f bench/results/testssl.json
testssl --quiet --color 0 --warnings off \
  --jsonfile bench/results/testssl.json \
  --protocols --std --fs --server-defaults --vulnerable \
  "https://127.0.0.1:$port/" | tee bench/results/testssl.txt
