#!/usr/bin/env bash
# ferry's own share of a cold pull-through first byte, from a packet capture on loopback: N cold
# pulls (one client, one blob at a time) through each ferry build given, against one Distribution
# 2.8 upstream. For each pull, from the timestamps of the packets:
#   before: the client's request reaches ferry -> ferry's request leaves for the upstream
#   upstream: ferry's request -> the upstream's first body byte
#   after: the upstream's first body byte -> ferry's first body byte to the client
# ferry's share is before + after; the upstream's part is the same work it does for a client that
# asks it directly. Builds take turns, blob by blob, so drift hits all alike.
#
#   bash bench/pull_through_share.sh                       N=100 SIZE_MIB=4, the tree's build
#   FERRIES="/tmp/ferry-old ./target/release/ferry" bash bench/pull_through_share.sh
#
# Needs: cargo, docker-registry, tcpdump, python3. Run as root (tcpdump on lo).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${N:-100}"
mib="${SIZE_MIB:-4}"
. bench/lib.sh
bench_init ferry-share

cargo build --release --quiet --bin ferry --example pullbench
read -r -a ferries <<<"${FERRIES:-./target/release/ferry}"
for tool in docker-registry tcpdump python3; do
  command -v "$tool" >/dev/null || { echo "$tool not installed" >&2; exit 1; }
done
pb=./target/release/examples/pullbench
wait_up() { for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$1/v2/" >/dev/null && return 0; sleep 0.1; done; echo "server on $1 did not start" >&2; exit 1; }

uport=$(free_port)
distribution_yml "$work/upstream.yml" "$work/upstream" "$uport"
docker-registry serve "$work/upstream.yml" >"$work/upstream.log" 2>&1 &
pids+=($!)
wait_up "$uport"
up="http://127.0.0.1:$uport"

ports=()
for i in "${!ferries[@]}"; do
  p=$(free_port); ports+=("$p")
  RUST_LOG=warn "${ferries[$i]}" serve --listen "127.0.0.1:$p" --data "$work/ferry$i" \
    --upstream "docker.io=$up" 2>"$work/ferry$i.log" &
  pids+=($!)
  wait_up "$p"
done

# One blob per build and pull, plus one pull per build first (it opens the kept-alive upstream
# connection, which the others reuse; it is left out).
blobs=()
for i in $(seq 0 $(( (n + 1) * ${#ferries[@]} - 1 ))); do
  blobs+=("$($pb push "$up" library/big "$mib" "$((40000 + i))")")
done
filter="tcp port $uport"
for p in "${ports[@]}"; do filter="$filter or tcp port $p"; done
tcpdump -Z root -i lo -tt -nn -s 400 -w "$work/cap.pcap" "$filter" 2>/dev/null &
tpid=$!; pids+=("$tpid")
sleep 1
k=0
for round in $(seq 0 "$n"); do
  for i in "${!ferries[@]}"; do
    sync
    $pb pull "http://127.0.0.1:${ports[$i]}" library/big "${blobs[$k]}" 1 >/dev/null
    k=$((k + 1))
  done
done
sleep 0.5
kill "$tpid"; wait "$tpid" 2>/dev/null || true

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $n cold pulls of $mib MiB per build, one at a time"
UPORT=$uport PORTS="${ports[*]}" NAMES="${ferries[*]}" python3 - "$work/cap.pcap" <<'PY'
import os, struct, sys

up = int(os.environ["UPORT"])
ports = [int(p) for p in os.environ["PORTS"].split()]
names = os.environ["NAMES"].split()

# pcap (libpcap format, Ethernet link type on lo): time, ports, payload head and length.
packets = []
with open(sys.argv[1], "rb") as f:
    head = f.read(24)
    nano = struct.unpack("<I", head[:4])[0] == 0xA1B23C4D
    while True:
        h = f.read(16)
        if len(h) < 16:
            break
        sec, frac, caplen, _ = struct.unpack("<IIII", h)
        data = f.read(caplen)
        ip = data[14:]
        if not ip or ip[0] >> 4 != 4:
            continue
        ihl = (ip[0] & 15) * 4
        total = struct.unpack(">H", ip[2:4])[0]
        tcp = ip[ihl:]
        sport, dport = struct.unpack(">HH", tcp[:4])
        off = (tcp[12] >> 4) * 4
        size = total - ihl - off
        if size > 0:
            packets.append((sec + frac / (1e9 if nano else 1e6), sport, dport, tcp[off:], size))

def first_body(t0, client, server):
    """The first packet from server to client after t0 that carries a body byte."""
    headers_seen = False
    for t, s, d, payload, size in packets:
        if t < t0 or s != server or d != client:
            continue
        if headers_seen:
            return t
        end = payload.find(b"\r\n\r\n")
        if (end >= 0 and size > end + 4) or (end < 0 and size > 2000):
            return t
        headers_seen = True
    return None

def blob_gets(server):
    return [(t, s) for t, s, d, p, _ in packets if d == server and p.startswith(b"GET /v2/library/big/blobs/")]

upstream_gets = blob_gets(up)
def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]
print("| ferry build | pulls | before p50 | after p50 | ferry's share p50 (p10-p90) | upstream p50 |")
print("|---|---|---|---|---|---|")
for name, port in zip(names, ports):
    before, after, share, upstream = [], [], [], []
    for t0, client in blob_gets(port)[1:]:
        t1, uclient = next((t, c) for t, c in upstream_gets if t > t0)
        t2 = first_body(t1, uclient, up)
        t3 = first_body(t0, client, port)
        if t2 is None or t3 is None:
            continue
        before.append((t1 - t0) * 1e3)
        after.append((t3 - t2) * 1e3)
        share.append((t1 - t0 + t3 - t2) * 1e3)
        upstream.append((t2 - t1) * 1e3)
    print("| %s | %d | %.2f ms | %.2f ms | %.2f ms (%.2f-%.2f) | %.2f ms |" % (
        name, len(share), pct(before, 0.5), pct(after, 0.5), pct(share, 0.5),
        pct(share, 0.1), pct(share, 0.9), pct(upstream, 0.5)))
PY
