#!/usr/bin/env bash
# A good user's latency while 16 clients send wrong passwords (issue #25, item 6), with
# FERRY_BASELINE (an older ferry) beside in the same run.
#
#   FERRY_BASELINE=/path/to/old/ferry bash bench/auth_flood.sh [SECONDS]
#
# Each server in turn, alone on the machine: `ferry serve --htpasswd` (bcrypt cost 10), then
#   idle:  200 sequential GET /v2/ with the right password (one keep-alive connection);
#   flood: the same while 16 clients (a keep-alive connection each) send GET /v2/ with a wrong
#          password as fast as they are answered, for SECONDS (default 10).
# Prints the good user's median and p95 latency, the wrong-password requests answered per second
# and the server's CPU seconds per second of flood. Needs: htpasswd (apt-get install apache2-utils).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
. bench/lib.sh
bench_init ferry-auth
command -v htpasswd >/dev/null || { echo "needs htpasswd (apt-get install apache2-utils)" >&2; exit 1; }
cargo build --release --quiet --bin ferry
htpasswd -nbB -C 10 bench s3cret > "$work/htpasswd"

cat > "$work/flood.py" <<'PY'
import base64, http.client, statistics, sys, threading, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
def auth(pw):
    return {"Authorization": "Basic " + base64.b64encode(f"bench:{pw}".encode()).decode()}
def get(c, h):
    c.request("GET", "/v2/", headers=h)
    r = c.getresponse(); r.read()
    return r.status
def good(n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        assert get(c, auth("s3cret")) == 200
        out.append((time.perf_counter() - t) * 1000)
    return out
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / 100
pid = int(sys.argv[3])
idle = good(200)
stop, wrong = threading.Event(), [0]
def flooder():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while not stop.is_set():
        try:
            s = get(c, auth("wrong"))
        except Exception:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60); continue
        assert s == 401, s
        wrong[0] += 1
ts = [threading.Thread(target=flooder) for _ in range(16)]
c0, t0 = cpu(pid), time.perf_counter()
for t in ts: t.start()
time.sleep(1)  # the flood under way
flood, deadline = [], time.perf_counter() + secs - 1
while time.perf_counter() < deadline:
    flood += good(20)
stop.set()
for t in ts: t.join()
el = time.perf_counter() - t0
q = lambda v, p: sorted(v)[min(len(v) - 1, int(len(v) * p))]
print(f"{statistics.median(idle):.1f} | {q(idle, .95):.1f} | {statistics.median(flood):.1f} | {q(flood, .95):.1f} | {wrong[0] / el:.0f} | {(cpu(pid) - c0) / el:.2f}")
PY

run() { # name binary
  local port; port=$(free_port)
  RUST_LOG=error "$2" serve --listen "127.0.0.1:$port" --data "$work/data-$1" --htpasswd "$work/htpasswd" &
  local pid=$!; pids+=("$pid")
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/v2/" && break; sleep 0.1; done
  echo "| $1 | $(python3 "$work/flood.py" "$port" "$secs" "$pid") |"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "bcrypt cost 10; 16 wrong-password clients for ${secs} s; $(nproc) cores"
echo
echo "| server | good user idle, median ms | idle p95 ms | good user under flood, median ms | flood p95 ms | wrong answered /s | server CPU s/s |"
echo "|---|---:|---:|---:|---:|---:|---:|"
if [ -n "${FERRY_BASELINE:-}" ]; then run ferry-before "$FERRY_BASELINE"; fi
run ferry ./target/release/ferry
if [ -n "${FERRY_BASELINE:-}" ]; then run ferry-before "$FERRY_BASELINE"; fi
