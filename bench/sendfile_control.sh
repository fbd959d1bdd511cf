#!/usr/bin/env bash
# Control experiment for BENCHMARKS.md ("Single-stream pulls on loopback"): is sendfile(2) slower
# than read + write on this machine's loopback, whoever calls it? A minimal HTTP responder in
# Python serves one 1 GiB file to curl, four times with os.sendfile and four times with
# preadv + send of 1 MiB; it prints its own CPU seconds per transfer, curl prints bytes/s.
#
#   bash bench/sendfile_control.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_init ferry-sendfile
head -c $((1 << 30)) /dev/urandom > "$work/blob"
cat "$work/blob" > /dev/null # into the page cache
cat > "$work/srv.py" <<'PY'
import os, socket, sys, resource
mode, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port)); s.listen(8)
fd = os.open(path, os.O_RDONLY); size = os.fstat(fd).st_size
for _ in range(4):
    c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.recv(65536)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
    off = 0
    if mode == "sendfile":
        while off < size:
            off += os.sendfile(c.fileno(), fd, off, min(4 << 20, size - off))
    else:
        buf = bytearray(1 << 20); mv = memoryview(buf)
        while off < size:
            n = os.preadv(fd, [mv], off); c.sendall(mv[:n]); off += n
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    print(f"{mode}: server CPU {cpu:.2f} s", end=" ", flush=True)
    c.close()
PY
for mode in sendfile write; do
  port=$(free_port)
  python3 "$work/srv.py" "$mode" "$port" "$work/blob" &
  pids+=($!)
  sleep 0.5
  for _ in 1 2 3 4; do
    curl -s -o /dev/null -w "%{speed_download} bytes/s\n" "http://127.0.0.1:$port/"
  done
  wait "${pids[-1]}"
done
