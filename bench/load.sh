#!/usr/bin/env bash
# Load held: ferry against CNCF Distribution 2.8 (Debian's docker-registry) in the same run, same
# client (examples/load.rs), same filesystem.
#
#   bash bench/load.sh [SCALE]     SCALE 1.0 = the issue's figures (1,000 pulls of 64 MiB at 5 MB/s)
#   FERRY_BASELINE=/path/to/old/ferry bash bench/load.sh   also runs an older ferry binary, with the
#                                  same flags, in the same run (before/after a change)
#
# Rows: 128 pulls of one 64 MiB blob at 20 MB/s each and 1,000 at 5 MB/s (every body hashed;
# time, errors, time-to-first-byte and whole-pull p50/p99, the server's peak RSS and
# descriptors); 1,000 idle keep-alive connections (RSS growth per connection); 256 connections
# for 10 s on manifest GETs (wrk) and blob HEADs (the load client) (req/s, p50/p99); 200
# concurrent 64 KiB pushes.
# Needs: cargo, docker-registry, wrk (apt-get install docker-registry wrk), root (to reset the
# servers' peak RSS counters and to raise the descriptor limit for 1,000 connections).
set -euo pipefail
cd "$(dirname "$0")/.."
scale="${1:-1.0}"
. bench/lib.sh
bench_init ferry-load
ulimit -n "$(ulimit -Hn)"

cargo build --release --quiet --bin ferry --example load
registry=$(command -v docker-registry || true)
[ -n "$registry" ] || { echo "docker-registry not installed (apt-get install docker-registry)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk not installed (apt-get install wrk)" >&2; exit 1; }

wait_up() { for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$1/v2/" >/dev/null && return 0; sleep 0.1; done; echo "server on $1 did not start" >&2; exit 1; }

fport=$(free_port)
# One client address stands in for a build farm here: ferry's caps on concurrent uploads (128 in
# all, 32 per client address, more get 429) are raised so that 200 pushes from 127.0.0.1 run at
# once, as 200 pushes from fifty build servers would under the defaults.
RUST_LOG=warn ./target/release/ferry serve --listen "127.0.0.1:$fport" --data "$work/ferry" \
  --max-uploads 512 --max-uploads-per-client 512 &
fpid=$!; pids+=("$fpid")
dport=$(free_port)
distribution_yml "$work/distribution.yml" "$work/distribution" "$dport"
"$registry" serve "$work/distribution.yml" 2>"$work/distribution.log" &
dpid=$!; pids+=("$dpid")
wait_up "$fport"; wait_up "$dport"
targets=(--target "ferry=http://127.0.0.1:$fport,$fpid" --target "distribution=http://127.0.0.1:$dport,$dpid")
wrk_targets=("ferry=$fport" "distribution=$dport")
if [ -n "${FERRY_BASELINE:-}" ]; then
  bport=$(free_port)
  RUST_LOG=warn "$FERRY_BASELINE" serve --listen "127.0.0.1:$bport" --data "$work/baseline" \
    --max-uploads 512 --max-uploads-per-client 512 &
  bpid=$!; pids+=("$bpid")
  wait_up "$bport"
  targets+=(--target "ferry-before=http://127.0.0.1:$bport,$bpid")
  wrk_targets+=("ferry-before=$bport")
fi
load=./target/release/examples/load
n() { python3 -c "print(max(1, int($1 * $scale)))"; }

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r), scale $scale"
echo "# ferry $(./target/release/ferry --version | cut -d' ' -f2), $("$registry" --version 2>&1 | head -1)"
echo
echo "| server | pulls of one 64 MiB blob | time | MB/s | errors | first byte p50 / p99 | whole pull p50 / p99 | peak RSS | peak fds |"
echo "|---|---|---|---|---|---|---|---|---|"
"$load" "${targets[@]}" pull --conns "$(n 128)" --rate-mbps 20 --size-mib 64
"$load" "${targets[@]}" pull --conns "$(n 1000)" --rate-mbps 5 --size-mib 64
echo
echo "| server | idle keep-alive connections | errors | RSS before | RSS with them open | per connection | descriptors |"
echo "|---|---|---|---|---|---|---|"
"$load" "${targets[@]}" idle --conns "$(n 1000)"
echo
echo "| server | 256 connections, 10 s | req/s | p50 | p99 | errors |"
echo "|---|---|---|---|---|---|"
for t in "${wrk_targets[@]}"; do
  name=${t%%=*}; port=${t#*=}
  read -r mpath bpath < <("$load" --target "$name=http://127.0.0.1:$port,0" seed | tail -n 1)
  out=$(wrk -t2 -c256 -d10s --latency -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://127.0.0.1:$port$mpath")
  rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errs=$(awk '/Non-2xx/ {print $NF} /Socket errors/ {sub(/.*Socket errors: /, ""); print}' <<<"$out" | tr '\n' ' ')
  echo "| $name | manifest GET (wrk) | $rps | $p50 | $p99 | ${errs:-0} |"
  # wrk cannot send HEADs (it waits for the body the answer announces); the load client does.
  "$load" --target "$name=http://127.0.0.1:$port,0" heads --conns 256 --secs 10 --path "$bpath"
done
echo
echo "| server | concurrent 64 KiB pushes | time | req/s | errors | p50 / p99 | peak RSS |"
echo "|---|---|---|---|---|---|---|"
"$load" "${targets[@]}" push --conns "$(n 200)" --size-kib 64
