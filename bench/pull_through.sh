#!/usr/bin/env bash
# Pull-through, cold and warm: ferry (serve --upstream) vs CNCF Distribution 2.8 in proxy mode,
# both in front of the same upstream (a Distribution 2.8 holding the blobs), same client, same run.
#
#   bash bench/pull_through.sh            CONNS=200 SIZE_MIB=256 ONES=16 by default
#
# Rows: one client straight from the upstream (the reference for time to first byte); one client
# through each mirror, cold (a blob the mirror has never seen). Those three are taken blob by
# blob, interleaved (upstream and ferry on one blob, upstream and Distribution on the next), ONES
# blobs each (16 by default), so drift in the machine's state hits all alike. Which of a pair goes
# first alternates: the upstream answers the second request for a blob faster than the first
# (about 0.8x here, the same with no mirror in between), so a fixed order would flatter or
# penalise the mirror. The TTFB columns give the median and the min-max, and lines after the
# table the median of the per-blob ratios, overall and for each order. Each of those pulls
# starts after a `sync`, so no mirror's write-back of the blob before is still on the disk. CONNS
# clients at once through each mirror, cold, then again warm; CONNS clients from ferry's own store (a pushed blob) for the warm
# reference. "upstream GETs" counts the blob GETs the upstream's access log shows for that row.
# Peak RSS is each server's VmHWM, reset before the row. Needs: cargo, docker-registry.
set -euo pipefail
cd "$(dirname "$0")/.."
conns="${CONNS:-200}"
mib="${SIZE_MIB:-256}"
ones="${ONES:-16}"
. bench/lib.sh
bench_init ferry-pull

cargo build --release --quiet --bin ferry --example pullbench
registry=$(command -v docker-registry || true)
[ -n "$registry" ] || { echo "docker-registry not installed (apt-get install docker-registry)" >&2; exit 1; }
pb=./target/release/examples/pullbench

wait_up() { for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$1/v2/" >/dev/null && return 0; sleep 0.1; done; echo "server on $1 did not start" >&2; exit 1; }
peak_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
reset_peak() { sync; echo 5 > "/proc/$1/clear_refs" 2>/dev/null || true; }

# The upstream: Distribution with its access log on (to count what the mirrors fetch).
uport=$(free_port)
cat > "$work/upstream.yml" <<YML
version: 0.1
log: {level: info, formatter: text}
storage: {filesystem: {rootdirectory: $work/upstream}, delete: {enabled: true}}
http:
  addr: 127.0.0.1:$uport
YML
"$registry" serve "$work/upstream.yml" >"$work/upstream.log" 2>&1 &
pids+=($!)
wait_up "$uport"
up="http://127.0.0.1:$uport"

# Blobs: ONES per mirror for the cold single-client rows (a first byte is a few milliseconds and
# varies by as much: the median of several), one per mirror for the cold many-client rows.
one_f=(); one_d=()
for i in $(seq 1 "$ones"); do
  one_f+=("$($pb push "$up" library/big "$mib" "$((100 + i))")")
  one_d+=("$($pb push "$up" library/big "$mib" "$((200 + i))")")
done
d_many_f=$($pb push "$up" library/big "$mib" 3)
d_many_d=$($pb push "$up" library/big "$mib" 4)

fport=$(free_port)
RUST_LOG=warn ./target/release/ferry serve --listen "127.0.0.1:$fport" --data "$work/ferry" \
  --max-uploads 512 --max-uploads-per-client 512 --upstream "docker.io=$up" &
fpid=$!; pids+=("$fpid")
dport=$(free_port)
distribution_yml "$work/proxy.yml" "$work/proxy" "$dport" "proxy: {remoteurl: $up}"
"$registry" serve "$work/proxy.yml" 2>"$work/proxy.log" &
dpid=$!; pids+=("$dpid")
oport=$(free_port)
RUST_LOG=warn ./target/release/ferry serve --listen "127.0.0.1:$oport" --data "$work/own" \
  --max-uploads 512 --max-uploads-per-client 512 &
opid=$!; pids+=("$opid")
wait_up "$fport"; wait_up "$dport"; wait_up "$oport"
d_own=$($pb push "http://127.0.0.1:$oport" library/big "$mib" 5)

upstream_gets() { grep -c "\"GET /v2/library/big/blobs/$1 " "$work/upstream.log" || true; }

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, one blob of $mib MiB, $conns clients at once"
echo "# $($registry --version 2>/dev/null | head -1)"
printf '| %-38s | %5s | %6s | %7s | %9s | %9s | %7s | %8s | %9s |\n' row clients errors "wall s" "TTFB p50" "TTFB p99" "MB/s" "upstream GETs" "peak RSS"
printf '|%s|\n' "---|---|---|---|---|---|---|---|---"
row() { # NAME URL DIGEST CONNS PID
  local name=$1 url=$2 digest=$3 n=$4 pid=$5 before after out
  before=$(upstream_gets "$digest")
  [ "$pid" != - ] && reset_peak "$pid"
  sync
  out=$($pb pull "$url" library/big "$digest" "$n")
  after=$(upstream_gets "$digest")
  read -r c ok err wall p50 p99 pmax mbs <<<"$out"
  local rss=-
  [ "$pid" != - ] && rss="$(( $(peak_kib "$pid") / 1024 )) MiB"
  printf '| %-38s | %5s | %6s | %7s | %7s ms | %7s ms | %7s | %8s | %9s |\n' "$name" "$c" "$err" "$wall" "$p50" "$p99" "$mbs" "$((after - before))" "$rss"
}
# One client, one blob at a time, interleaved: the upstream directly and the same blob through
# ferry cold; the upstream directly and the same blob through Distribution cold. Even blobs: the
# upstream first; odd ones: the mirror first.
single_u=(); single_f=(); single_d=(); gets_f=0; gets_d=0
# pair UPSTREAM_FIRST DIGEST MIRROR_URL: sets $pu, $pm and $pg (the mirror's upstream GETs).
pair() {
  local before
  if [ "$1" = 1 ]; then sync; pu=$($pb pull "$up" library/big "$2" 1); fi
  before=$(upstream_gets "$2")
  sync; pm=$($pb pull "$3" library/big "$2" 1)
  pg=$(( $(upstream_gets "$2") - before ))
  if [ "$1" = 0 ]; then sync; pu=$($pb pull "$up" library/big "$2" 1); fi
}
reset_peak "$fpid"; reset_peak "$dpid"
for i in $(seq 0 $((ones - 1))); do
  first=$(( (i + 1) % 2 ))
  pair "$first" "${one_f[$i]}" "http://127.0.0.1:$fport"
  single_u+=("$pu"); single_f+=("$pm"); gets_f=$((gets_f + pg))
  pair "$first" "${one_d[$i]}" "http://127.0.0.1:$dport"
  single_u+=("$pu"); single_d+=("$pm"); gets_d=$((gets_d + pg))
done
rss_f="$(( $(peak_kib "$fpid") / 1024 )) MiB"; rss_d="$(( $(peak_kib "$dpid") / 1024 )) MiB"
# NAME GETS RSS LINE...: the median row's wall and rate, the median and min-max first byte.
single_row() {
  local name=$1 gets=$2 rss=$3; shift 3
  local n=$# out errs lo hi
  out=$(printf '%s\n' "$@" | sort -k5 -g | sed -n "$(( (n + 1) / 2 ))p")
  read -r c ok err wall p50 p99 pmax mbs <<<"$out"
  errs=$(printf '%s\n' "$@" | awk '{s += $3} END {print s}')
  lo=$(printf '%s\n' "$@" | sort -k5 -g | head -1 | awk '{print $5}')
  hi=$(printf '%s\n' "$@" | sort -k5 -g | tail -1 | awk '{print $5}')
  printf '| %-38s | %5s | %6s | %7s | %7s ms | %9s | %7s | %8s | %9s |\n' "$name (median of $n)" 1 "$errs" "$wall" "$p50" "$lo-$hi" "$mbs" "$gets" "$rss"
}
single_row "upstream directly, 1 client" "$((2 * ones))/$((2 * ones))" - "${single_u[@]}"
single_row "ferry pull-through, cold, 1 client" "$gets_f/$ones" "$rss_f" "${single_f[@]}"
single_row "Distribution proxy, cold, 1 client" "$gets_d/$ones" "$rss_d" "${single_d[@]}"
# Per blob: the mirror's first byte over the upstream's for the same blob.
ratio() { # MIRROR_LINES_VAR OFFSET (0: ferry's upstream pulls, 1: Distribution's) [PARITY]
  local -n m=$1
  local i r=()
  for i in $(seq 0 $((ones - 1))); do
    [ -n "${3:-}" ] && [ $((i % 2)) != "$3" ] && continue
    r+=("$(awk -v a="$(awk '{print $5}' <<<"${m[$i]}")" -v b="$(awk '{print $5}' <<<"${single_u[$((2 * i + $2))]}")" 'BEGIN {printf "%.2f", a / b}')")
  done
  printf '%s\n' "${r[@]}" | sort -g | sed -n "$(( (${#r[@]} + 1) / 2 ))p"
}
ratio_f=$(ratio single_f 0); ratio_d=$(ratio single_d 1)
ratio_f_u=$(ratio single_f 0 0); ratio_d_u=$(ratio single_d 1 0)
ratio_f_m=$(ratio single_f 0 1); ratio_d_m=$(ratio single_d 1 1)
row "ferry pull-through, cold"                 "http://127.0.0.1:$fport" "$d_many_f" "$conns" "$fpid"
row "ferry pull-through, warm"                 "http://127.0.0.1:$fport" "$d_many_f" "$conns" "$fpid"
row "Distribution proxy, cold"                 "http://127.0.0.1:$dport" "$d_many_d" "$conns" "$dpid"
row "Distribution proxy, warm"                 "http://127.0.0.1:$dport" "$d_many_d" "$conns" "$dpid"
row "ferry, own store (pushed blob)"           "http://127.0.0.1:$oport" "$d_own" "$conns" "$opid"
echo
echo "cold first byte over the upstream's, median of $ones per-blob ratios: ferry ${ratio_f}x, Distribution ${ratio_d}x"
echo "  upstream asked first: ferry ${ratio_f_u}x, Distribution ${ratio_d_u}x; mirror asked first: ferry ${ratio_f_m}x, Distribution ${ratio_d_m}x"
