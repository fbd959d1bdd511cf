#!/usr/bin/env bash
# A soak that loses nothing: one ferry under a mixed workload (pushes of images and caches,
# chunked and monolithic, pulls that re-hash every blob, HEADs, tag lists, referrers, deletes,
# ferry sync out and back in), GC every 30 s with a 20 s grace and retention on, while a chaos
# loop kill -9s and restarts the server at random moments (and, with --s3, a Garage storage
# node). At the end every tag a client was told exists must be served with the right bytes,
# `ferry verify` must be clean, no upload session or temp file may be left after expiry, and (on
# runs of 10 minutes and more) RSS in the last 10% of the run within 1.1x of RSS at 10%,
# descriptors flat. Before the clock starts, every worker pushes its steady-state set of images
# and caches, so the store is as large at 10% as at the end. See examples/soak.rs.
#
#   bash bench/soak.sh [DURATION] [--s3] [--kill-every 40s] [--gc-every 20s] [--workers 6]
#                                             DURATION like 3m or 60m (default 60m)
#   FERRY_BIN=path/to/ferry bash bench/soak.sh 3m   soak that binary (CI: the static release
#                                             build), the workload client built in the dev profile
#
# Prints one line per minute and a summary table; the last line starts `soak: PASS` or
# `soak: FAIL` (exit status 0 or 1). --s3 runs ferry on a 3-node Garage cluster (tests/garage.sh,
# needs `garage` 2.x) and kills one of its nodes for 20-40 s every 1-2 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-60m}"
shift || true
s3=""
extra=()
for a in "$@"; do case "$a" in --s3) s3=--s3 ;; *) extra+=("$a") ;; esac; done
. bench/lib.sh
bench_init ferry-soak

if [ -n "${FERRY_BIN:-}" ]; then
  cargo build --quiet --example soak
  ferry=$FERRY_BIN; soak=./target/debug/examples/soak
else
  cargo build --release --quiet --bin ferry --example soak
  ferry=./target/release/ferry; soak=./target/release/examples/soak
fi
args=(--ferry "$ferry" --work "$work/run" --duration "$duration")
if [ "$s3" = "--s3" ]; then
  export GARAGE_PARENT_PID=$$
  bash tests/garage.sh start "$work/garage" >/dev/null
  trap 'bash tests/garage.sh stop "$work/garage" >/dev/null 2>&1 || true; bench_cleanup' EXIT
  # shellcheck disable=SC1091
  . "$work/garage/env"
  args+=(--data "s3://ferry/soak-$(date +%s)" --garage "$work/garage" --garage-script tests/garage.sh)
else
  args+=(--data "$work/data")
fi
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r), ferry $("$ferry" --version | cut -d' ' -f2)"
status=0
"$soak" "${args[@]}" "${extra[@]}" || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- the server's log (last 40 lines)"
  tail -n 40 "$work/run/ferry.log" || true
fi
exit "$status"
