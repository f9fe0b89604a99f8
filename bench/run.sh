#!/usr/bin/env bash
# Benchmark certgate against nginx and HAProxy on this machine (see bench/bench.py).
#   bench/run.sh            full run (about 15 minutes; needs both cores, do not run in CI)
#   bench/run.sh --quick    one short repetition: a self-test of the harness
#   bench/run.sh --rsa      RSA-2048 keys instead of ECDSA P-256
#   bench/run.sh --instructions   (a), (b), (k) and (l) as instructions per request under callgrind
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/bench.py "$@"
