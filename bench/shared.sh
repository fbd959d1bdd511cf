#!/usr/bin/env bash
# A shared mirror's costs (issue #6): ferry vs CNCF Distribution 2.8, both serving HTTPS with the
# same certificate (made by `ferry tls init`) and requiring credentials from the same htpasswd file.
#
#   bash bench/shared.sh [SIZE_MIB] [HEADS]      defaults: 1024 MiB, 2000 authenticated HEADs
#   FERRY_BIN=/path/to/ferry bash bench/shared.sh   measure that binary (an older build: before/after)
#
# Clients are curl (less CPU per byte than any Rust client on these 2 shared cores). Prints a
# markdown table. Figures: a blob pushed (POST, then one PUT with the body) and pulled over TLS, and
# HEAD requests on one kept-alive connection, each checked against bcrypt (cost 5, what
# `htpasswd -B` writes), first with the right password, then with a wrong one. Peak RSS is the
# server's VmHWM over the whole run.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib="${1:-1024}"
heads="${2:-2000}"
. bench/lib.sh
bench_init ferry-shared

[ -n "${FERRY_BIN:-}" ] || cargo build --release --quiet --bin ferry
registry=$(command -v docker-registry || true)
[ -n "$registry" ] || { echo "docker-registry not installed (apt-get install docker-registry)" >&2; exit 1; }
ferry=${FERRY_BIN:-./target/release/ferry}

"$ferry" tls init --host 127.0.0.1 --out "$work/tls" >/dev/null
ca="$work/tls/ca.crt"
# bcrypt at cost 5, what `htpasswd -B` writes by default.
command -v htpasswd >/dev/null || { echo "needs htpasswd (apt-get install apache2-utils)" >&2; exit 1; }
htpasswd -nbB -C 5 bench s3cret > "$work/htpasswd"

fport=$(free_port)
RUST_LOG=warn "$ferry" serve --listen "127.0.0.1:$fport" --data "$work/ferry" \
  --tls-cert "$work/tls/server.crt" --tls-key "$work/tls/server.key" --htpasswd "$work/htpasswd" &
fpid=$!; pids+=("$fpid")
dport=$(free_port)
distribution_yml "$work/distribution.yml" "$work/distribution" "$dport" "  tls:
    certificate: $work/tls/server.crt
    key: $work/tls/server.key
auth:
  htpasswd:
    realm: ferry
    path: $work/htpasswd"
"$registry" serve "$work/distribution.yml" 2>"$work/distribution.log" &
dpid=$!; pids+=("$dpid")
c=(curl -s --cacert "$ca" -u bench:s3cret)
for p in "$fport" "$dport"; do
  for _ in $(seq 1 100); do "${c[@]}" -f "https://127.0.0.1:$p/v2/" >/dev/null && break; sleep 0.1; done
done

head -c "$((size_mib * 1048576))" /dev/urandom > "$work/blob"
digest="sha256:$(sha256sum "$work/blob" | cut -d' ' -f1)"
now() { date +%s.%N; }
rate() { python3 -c "print(f'{$1 / ($3 - $2):.0f}')"; }

row() { # name port pid
  local name=$1 port=$2 pid=$3 url="https://127.0.0.1:$2" t0 t1 loc push pull okh badh
  sync
  t0=$(now)
  loc=$("${c[@]}" -X POST -D - -o /dev/null "$url/v2/bench/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
  case "$loc" in http*) ;; *) loc="$url$loc" ;; esac
  case "$loc" in *\?*) loc="$loc&digest=$digest" ;; *) loc="$loc?digest=$digest" ;; esac
  local st
  st=$("${c[@]}" -o /dev/null -w '%{http_code}' -H 'Content-Type: application/octet-stream' \
    -T "$work/blob" "$loc")
  t1=$(now)
  [ "$st" = 201 ] || { echo "$name: push answered $st" >&2; exit 1; }
  push=$(rate "$size_mib*1048576/1e6" "$t0" "$t1")
  t0=$(now)
  "${c[@]}" -o /dev/null "$url/v2/bench/blobs/$digest"
  t1=$(now)
  pull=$(rate "$size_mib*1048576/1e6" "$t0" "$t1")
  local urls=()
  for _ in $(seq 1 "$heads"); do urls+=(-I "$url/v2/bench/blobs/$digest"); done
  t0=$(now); "${c[@]}" "${urls[@]}" >/dev/null; t1=$(now)
  okh=$(rate "$heads" "$t0" "$t1")
  t0=$(now); curl -s --cacert "$ca" -u bench:wrong "${urls[@]}" >/dev/null; t1=$(now)
  badh=$(rate "$heads" "$t0" "$t1")
  local rss
  rss=$(awk '/VmHWM/{printf "%.1f MiB", $2/1024}' "/proc/$pid/status")
  echo "| $name | $push | $pull | $okh | $badh | $rss |"
}

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, ${size_mib} MiB blob, $heads HEADs, curl $(curl --version | head -1 | cut -d' ' -f2)"
echo "# ferry $("$ferry" --version | cut -d' ' -f2), $("$registry" --version 2>&1 | head -1)"
echo "| server (HTTPS + htpasswd) | push MB/s | pull MB/s | HEAD req/s, right password | HEAD req/s, wrong password | peak RSS |"
echo "|---|---:|---:|---:|---:|---:|"
row ferry "$fport" "$fpid"
row distribution "$dport" "$dpid"
