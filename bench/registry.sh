#!/usr/bin/env bash
# ferry vs CNCF Distribution (Debian's docker-registry 2.8) on this machine, same client, same run.
#
#   bash bench/registry.sh [SCALE]       SCALE 1.0 = the issue's sizes (1 GiB, 1,000 x 64 KiB, 256 MiB)
#   FERRY_BASELINE=/path/to/old/ferry bash bench/registry.sh   also runs an older ferry binary in the
#                                        same run (before/after a change; the ratio column is then left out);
#                                        FERRY_BASELINE_FIRST=1 measures it first
#
# Prints a markdown table (paste it into BENCHMARKS.md). Both servers store on the same filesystem
# (a directory under $BENCH_DIR, default /tmp). Needs: cargo, docker-registry (apt-get install
# docker-registry), root or the same user as the servers (to reset their peak RSS counters).
set -euo pipefail
cd "$(dirname "$0")/.."
scale="${1:-1.0}"
. bench/lib.sh
bench_init ferry-bench

cargo build --release --quiet --bin ferry --example regbench
registry=$(command -v docker-registry || true)
[ -n "$registry" ] || { echo "docker-registry not installed (apt-get install docker-registry)" >&2; exit 1; }

wait_up() { for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$1/v2/" >/dev/null && return 0; sleep 0.1; done; echo "server on $1 did not start" >&2; exit 1; }

fport=$(free_port)
RUST_LOG=warn ./target/release/ferry serve --listen "127.0.0.1:$fport" --data "$work/ferry" &
fpid=$!; pids+=("$fpid")

dport=$(free_port)
distribution_yml "$work/distribution.yml" "$work/distribution" "$dport"
"$registry" serve "$work/distribution.yml" 2>"$work/distribution.log" &
dpid=$!; pids+=("$dpid")
wait_up "$fport"; wait_up "$dport"
baseline=()
if [ -n "${FERRY_BASELINE:-}" ]; then
  bport=$(free_port)
  RUST_LOG=warn "$FERRY_BASELINE" serve --listen "127.0.0.1:$bport" --data "$work/baseline" &
  bpid=$!; pids+=("$bpid")
  wait_up "$bport"
  baseline=(--target "ferry-before=http://127.0.0.1:$bport,$bpid")
fi

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r), scale $scale"
echo "# ferry $(./target/release/ferry --version | cut -d' ' -f2), $("$registry" --version 2>&1 | head -1)"
targets=(--target "ferry=http://127.0.0.1:$fport,$fpid" --target "distribution=http://127.0.0.1:$dport,$dpid")
# FERRY_BASELINE_FIRST=1: the older ferry measured first (whoever goes first finds the page
# cache and the disk's write-back in another state; a reversed run shows how much that moves).
if [ -n "${FERRY_BASELINE_FIRST:-}" ]; then targets=("${baseline[@]}" "${targets[@]}"); else targets+=("${baseline[@]}"); fi
./target/release/examples/regbench --scale "$scale" "${targets[@]}"
