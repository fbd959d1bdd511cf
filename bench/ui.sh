#!/usr/bin/env bash
# The web page's server time on large stores (issue: "10,000 tags render in under 200 ms server
# time"): one repository of 10,000 tags, and 10,000 repositories of one tag each. Server time is
# the page's own Server-Timing header (the store walk and the rendering, not the network); the
# total is curl's. Beside each page: the registry API's answer over the same data (a tag list of
# 10,000, the catalog), ferry's own, since no peer registry has a page to compare with.
#
#   bash bench/ui.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bench_init ferry-uibench
cargo build --release --quiet --bin ferry --example genstore
ferry=./target/release/ferry

GENSTORE_REPO=big/app ./target/release/examples/genstore "$work/tags" 10000 2 1024 0 2>/dev/null
./target/release/examples/genstore "$work/repos" 10000 2 1024 0 2>/dev/null
sync
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores; server time (Server-Timing) / total (curl), ms"

# One request: "server total" in ms.
get() {
  curl -fsS -o /dev/null -D "$work/h" -w '%{time_total}' "$1" >"$work/t"
  local st
  st=$(tr -d '\r' <"$work/h" | sed -n 's/^server-timing: render;dur=//Ip')
  echo "${st:--} $(python3 -c "print(f'{$(cat "$work/t")*1000:.1f}')")"
}
# Median of 20 warm requests: "server total".
warm() {
  for _ in $(seq 20); do get "$1"; done | sort -n -k1 | sed -n 10p
}

run() {
  local store=$1 label=$2
  shift 2
  local port
  port=$(free_port)
  local t0
  t0=$(date +%s.%N)
  $ferry serve --listen "127.0.0.1:$port" --data "$work/$store" >"$work/$store.log" 2>&1 &
  pids+=($!)
  until curl -fs "http://127.0.0.1:$port/healthz" >/dev/null; do sleep 0.01; done
  local base="http://127.0.0.1:$port"
  # First request straight after start-up (the catalog may still be warming in the background).
  read -r cs ct < <(get "$base/")
  echo "| $label | first page after start | $cs | $ct |"
  for page in "$@"; do
    read -r ws wt < <(warm "$base$page")
    echo "| $label | $page (median of 20) | $ws | $wt |"
  done
  # A push changes index.json: the next page walks the store again (summaries stay cached).
  cfg='{"architecture":"amd64","os":"linux"}'
  d=$(printf %s "$cfg" | sha256sum | cut -d' ' -f1)
  curl -fsS -X POST -H 'Content-Type: application/octet-stream' --data-binary "$cfg" \
    "$base/v2/new/one/blobs/uploads/?digest=sha256:$d" >/dev/null
  m=$(printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[]}' "$d" "${#cfg}")
  curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary "$m" \
    "$base/v2/new/one/manifests/1" >/dev/null
  read -r rs rt < <(get "$base/")
  echo "| $label | / right after a push (catalog rebuilt) | $rs | $rt |"
  echo "| $label | RSS after the pages | $(ps -o rss= -p "${pids[-1]}" | awk '{printf "%.0f MiB", $1/1024}') | |"
}

echo "| store | page | server ms | total ms |"
echo "|---|---|---:|---:|"
run tags "1 repository, 10,000 tags" / "/ui/repo?name=big/app" "/ui/repo?name=big/app&sort=size&dir=desc&page=73" \
  "/ui/repo?name=big/app&q=t99" "/ui/tag?repo=big/app&tag=t5000" "/v2/big/app/tags/list?n=10000"
run repos "10,000 repositories, 1 tag each" / "/?sort=size&dir=desc&page=42" "/?q=r99" \
  "/ui/repo?name=bench/r5000" "/ui/tag?repo=bench/r5000&tag=1" "/v2/_catalog?n=10000"
