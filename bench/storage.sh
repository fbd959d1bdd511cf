#!/usr/bin/env bash
# Storage benchmarks: GC mark+sweep over 100,000 blobs / 10,000 manifests, verify throughput
# against sha256sum on the same files, and server start-up time with that store.
#
#   bash bench/storage.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d "${BENCH_DIR:-/tmp}/ferry-storagebench.XXXXXX")"
trap 'pkill -f "ferry serve --listen 127.0.0.1:5188" 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build --release --quiet --bin ferry --example genstore --example gendata
ferry=./target/release/ferry

# 10,000 manifests x (8 layers + config) + the manifests = 100,000 blobs, plus 10,000 old orphans.
./target/release/examples/genstore "$work/big" 10000 8 256 10000
sync
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores"
t() { local s e; s=$(date +%s.%N); "$@" > "$work/out" 2>&1; e=$(date +%s.%N); python3 -c "print(f'{$e-$s:.2f}')"; }
echo "| run | seconds | notes |"
echo "|---|---:|---|"
echo "| gc --dry-run (mark + sweep scan), 110,000 blobs / 10,000 manifests | $(t $ferry gc --data "$work/big" --dry-run) | $(tail -1 "$work/out") |"
echo "| gc (sweeps 10,000 orphans) | $(t $ferry gc --data "$work/big") | $(tail -1 "$work/out") |"

# Start-up: process start to the first answer of /v2/ and of a tag.
s=$(date +%s.%N)
$ferry serve --listen 127.0.0.1:5188 --data "$work/big" >/dev/null 2>&1 &
until curl -fs http://127.0.0.1:5188/v2/ >/dev/null; do sleep 0.005; done
e=$(date +%s.%N)
curl -fs -o /dev/null http://127.0.0.1:5188/v2/bench/r9999/manifests/1
e2=$(date +%s.%N)
echo "| serve start-up to first /v2/ answer (10,000-tag store) | $(python3 -c "print(f'{$e-$s:.3f}')") | first tag lookup done at $(python3 -c "print(f'{$e2-$s:.3f}')") s |"
pkill -f "ferry serve --listen 127.0.0.1:5188" || true

# Verify throughput: 2 GiB in 32 blobs of 64 MiB.
./target/release/examples/gendata "$work/v" 4 8 67108864 67108864 3 >/dev/null 2>&1
bytes=$(du -sb "$work/v/blobs" | cut -f1)
sync
vs=$(t $ferry verify --data "$work/v")
ss=$(t bash -c "find '$work/v/blobs' -type f -print0 | xargs -0 sha256sum")
echo "| verify, $bytes bytes | $vs | $(python3 -c "print(f'{$bytes/1e9/$vs:.2f}')") GB/s |"
echo "| one sha256sum over the same files | $ss | $(python3 -c "print(f'{$bytes/1e9/$ss:.2f}')") GB/s; ferry is $(python3 -c "print(f'{$ss/$vs:.1f}')")x |"
