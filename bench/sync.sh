#!/usr/bin/env bash
# ferry sync vs skopeo sync, against the machine's limit, on the same data in the same run.
#
#   bash bench/sync.sh
#   FERRY_BASELINE=/path/to/old/ferry bash bench/sync.sh   also runs an older ferry's rows in the
#                                        same run (before/after a change)
#
# Data: 20 images x (config + 9 layers) = 200 blobs, sizes 16 KiB..40 MiB log-uniform (~1 GiB),
# served by CNCF Distribution 2.8 (docker-registry) on loopback. Then a no-op re-sync of 1,000
# blobs (100 images x 10 small blobs). Peak RSS from GNU time. Needs docker-registry, skopeo, curl.
# Signed multi-platform images (referrers, --platform, requests to the source): bench/multi.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_init ferry-syncbench
cargo build --release --quiet --bin ferry --example gendata
ferry=./target/release/ferry
base="${FERRY_BASELINE:-}"

registry() { # registry NAME: starts Distribution, sets $reg to host:port
  local port; port=$(free_port)
  distribution_yml "$work/$1.yml" "$work/$1" "$port"
  docker-registry serve "$work/$1.yml" >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
  reg="127.0.0.1:$port"
}
# timed NAME CMD...: wall seconds and peak RSS (KiB) of CMD
timed() {
  local name=$1; shift
  sync; /usr/bin/time -f "%e %M" -o "$work/t" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; echo "$name FAILED" >&2; }
  read -r secs rss < "$work/t"
  printf '%s|%s|%s\n' "$name" "$secs" "$rss" >> "$work/results"
}

./target/release/examples/gendata "$work/data" 20 9 16384 41943040 7 2>&1
./target/release/examples/gendata "$work/many" 100 9 4096 4096 9 bench/many 2>&1
bytes=$(du -sb "$work/data/blobs" | cut -f1)
registry src; src=$reg
$ferry sync --json "$work/data" "docker://$src" >/dev/null
$ferry sync --json "$work/many" "docker://$src" >/dev/null

# Registry -> directory.
printf 'bench/img%02d\n' $(seq 0 19) > "$work/refs20"
timed "ferry registry->dir" $ferry sync --json "docker://$src" "$work/f-dir" --refs-file "$work/refs20"
[ -z "$base" ] || timed "ferry-before registry->dir" "$base" sync --json "docker://$src" "$work/b-dir" --refs-file "$work/refs20"
{
  echo "$src:"; echo "  tls-verify: false"; echo "  images:"
  for i in $(seq -f '%02g' 0 19); do echo "    bench/img$i: []"; done
} > "$work/skopeo.yml"
timed "skopeo registry->dir" skopeo sync --src yaml --dest dir "$work/skopeo.yml" "$work/s-dir"

# Directory -> registry.
registry dst1; dst1=$reg; registry dst2; dst2=$reg
timed "ferry dir->registry" $ferry sync --json "$work/f-dir" "docker://$dst1"
if [ -n "$base" ]; then registry dst3; timed "ferry-before dir->registry" "$base" sync --json "$work/f-dir" "docker://$reg"; fi
timed "skopeo dir->registry" skopeo sync --src dir --dest docker --dest-tls-verify=false "$work/s-dir" "$dst2/bench"

# The machine's limit: copy the same bytes and hash them.
timed "limit: cp -r + sha256sum" bash -c "cp -r '$work/data/blobs' '$work/cp' && find '$work/cp' -type f -print0 | xargs -0 -P 2 -n 20 sha256sum"

# No-op re-sync of 1,000 blobs (100 images x 10).
$ferry sync --json "$work/many" "$work/many-dir" >/dev/null
timed "ferry no-op re-sync registry->dir (1,000 blobs)" $ferry sync --json "docker://$src" "$work/many-dir" --tags '^1$' --refs-file <(printf 'bench/many%02d\n' $(seq 0 99))
[ -z "$base" ] || timed "ferry-before no-op re-sync registry->dir (1,000 blobs)" "$base" sync --json "docker://$src" "$work/many-dir" --tags '^1$' --refs-file <(printf 'bench/many%02d\n' $(seq 0 99))

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $bytes bytes in 200 blobs, $(skopeo --version)"
echo "| run | seconds | MB/s | peak RSS |"
echo "|---|---:|---:|---:|"
while IFS='|' read -r name secs rss; do
  mbps=$(python3 -c "print(f'{$bytes/1e6/max($secs,0.001):.0f}')")
  case "$name" in *no-op*) mbps="-";; esac
  printf '| %s | %s | %s | %.1f MiB |\n' "$name" "$secs" "$mbps" "$(python3 -c "print($rss/1024)")"
done < "$work/results"
