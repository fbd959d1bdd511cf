#!/usr/bin/env bash
# ferry on S3 against CNCF Distribution 2.8 with its s3 driver, both on the same real 3-node Garage
# cluster (tests/garage.sh), same client, same run; and 3 ferry replicas behind nginx against 1
# behind the same nginx (the replicas' cost, with the balancer's own cost on both sides).
#
#   bash bench/s3.sh [SCALE]      SCALE 1.0 = 1 GiB push and pull, 300 x 64 KiB, 8 parallel pulls
#
# Prints a markdown table (paste it into BENCHMARKS.md). Needs: cargo, garage 2.x (cargo install
# garage --locked), docker-registry and nginx (apt-get install docker-registry nginx), root or the
# servers' user (to reset their peak RSS counters).
set -euo pipefail
cd "$(dirname "$0")/.."
scale="${1:-1.0}"
. bench/lib.sh
bench_init ferry-s3-bench

cargo build --release --quiet --bin ferry --example regbench
registry=$(command -v docker-registry || true)
[ -n "$registry" ] || { echo "docker-registry not installed (apt-get install docker-registry)" >&2; exit 1; }
nginx=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$nginx" ] || { echo "nginx not installed (apt-get install nginx)" >&2; exit 1; }

# The cluster: ports below the ephemeral range, away from the tests' (20000-32000).
bash tests/garage.sh start "$work/garage" 15000 >/dev/null
for n in 1 2 3; do pids+=("$(cat "$work/garage/node$n/pid")"); done
. "$work/garage/env"
g() { garage -c "$work/garage/node1/garage.toml" "$@"; }
g bucket create dist >/dev/null
g bucket allow --read --write --owner dist --key ferry >/dev/null

wait_up() { for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$1/v2/" >/dev/null && return 0; sleep 0.1; done; echo "server on $1 did not start" >&2; exit 1; }

fport=$(free_port)
RUST_LOG=warn ./target/release/ferry serve --listen "127.0.0.1:$fport" --data s3://ferry/single &
fpid=$!; pids+=("$fpid")

# Distribution's s3 driver, as the issue measured it: path-style endpoint, region garage, v4
# signatures, no TLS; it panics at start when AWS_CA_BUNDLE is set, so it runs without it.
# Its uploads need Content-Type: application/octet-stream on the final PUT (regbench sends it).
dport=$(free_port)
cat >"$work/distribution.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage:
  s3:
    region: garage
    regionendpoint: $AWS_ENDPOINT_URL
    bucket: dist
    accesskey: $AWS_ACCESS_KEY_ID
    secretkey: $AWS_SECRET_ACCESS_KEY
    secure: false
    v4auth: true
    rootdirectory: /registry
  delete: {enabled: true}
  # Blob GETs stream through the registry, as ferry's do (its default answers a 307 to a
  # presigned URL, which would measure Garage instead).
  redirect: {disable: true}
http:
  addr: 127.0.0.1:$dport
YML
env -u AWS_CA_BUNDLE "$registry" serve "$work/distribution.yml" 2>"$work/distribution.log" &
dpid=$!; pids+=("$dpid")

rpids=()
ups=""
for i in 1 2 3; do
  p=$(free_port)
  RUST_LOG=warn ./target/release/ferry serve --listen "127.0.0.1:$p" --data s3://ferry/replicas &
  rpid=$!; pids+=("$rpid"); rpids+=("$rpid")
  ups="$ups    server 127.0.0.1:$p;\n"
  wait_up "$p"
done
nport=$(free_port)
nport1=$(free_port)
mkdir -p "$work/nginx"
printf "daemon off; master_process off; worker_processes 1;
pid $work/nginx/pid; error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body; proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/f; uwsgi_temp_path $work/nginx/u; scgi_temp_path $work/nginx/s;
  upstream ferry {\n$ups  }
  upstream one { server 127.0.0.1:$fport; }
  server {
    listen 127.0.0.1:$nport1;
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_http_version 1.1;
    location / {
      proxy_pass http://one;
      proxy_set_header Host \$http_host;
      proxy_set_header Connection \"\";
      proxy_read_timeout 900s;
    }
  }
  server {
    listen 127.0.0.1:$nport;
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_http_version 1.1;
    location / {
      proxy_pass http://ferry;
      proxy_set_header Host \$http_host;
      proxy_set_header Connection \"\";
      proxy_read_timeout 900s;
    }
  }
}
" >"$work/nginx/nginx.conf"
"$nginx" -c "$work/nginx/nginx.conf" -p "$work/nginx" &
pids+=("$!")
wait_up "$fport"; wait_up "$dport"; wait_up "$nport"; wait_up "$nport1"

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r), scale $scale, Garage $(garage --version | cut -d' ' -f2), 3 nodes, replication 3"
echo "# ferry $(./target/release/ferry --version | cut -d' ' -f2), $("$registry" --version 2>&1 | head -1)"
small=$(python3 -c "print(max(10, int(300 * $scale)))")
./target/release/examples/regbench --scale "$scale" --small "$small" --concurrent 8 \
  --shared-mib "$(python3 -c "print(256 * $scale)")" \
  --target "ferry=http://127.0.0.1:$fport,$fpid" \
  --target "distribution=http://127.0.0.1:$dport,$dpid" \
  --target "ferry-1-behind-nginx=http://127.0.0.1:$nport1,$fpid" \
  --target "ferry-3-behind-nginx=http://127.0.0.1:$nport,$(IFS=+; echo "${rpids[*]}")"
