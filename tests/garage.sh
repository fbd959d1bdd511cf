#!/usr/bin/env bash
# A real 3-node Garage cluster on loopback, for ferry's S3 tests and benchmarks.
#
#   tests/garage.sh start DIR [BASE_PORT]   start it; writes DIR/env (AWS_* variables to source)
#   tests/garage.sh stop DIR                stop it (kill -9 is fine too: nothing outlives DIR)
#   tests/garage.sh kill DIR N              kill -9 node N (1..3)
#   tests/garage.sh restart DIR N           start node N again and reconnect it
#
# Node N listens on BASE+10N (RPC) and BASE+10N+1 (S3), BASE 23900 by default; replication factor 3, one zone per
# node, a key `ferry` and a bucket `ferry` (more with `garage -c DIR/nodeN/garage.toml bucket
# create …`). Needs `garage` 2.x on PATH (`cargo install garage --locked`). With
# GARAGE_PARENT_PID set, the nodes are killed when that process exits (the test harness).
set -euo pipefail

cmd=${1:?usage: garage.sh start|stop|kill|restart DIR}
dir=${2:?usage: garage.sh start|stop|kill|restart DIR}
GARAGE=${GARAGE:-garage}
# Fixed test credentials: the cluster lives and dies with DIR, on loopback only.
KEY_ID=GK0123456789abcdef01234567
SECRET=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
RPC_SECRET=4425f5c26c5e11581d3223904324dcb5b5d5dfb14e5e7f35e38c595424f5f1e6

cfg() { echo "$dir/node$1/garage.toml"; }
g() { local n=$1; shift; "$GARAGE" -c "$(cfg "$n")" "$@"; }

start_node() {
    local n=$1
    "$GARAGE" -c "$(cfg "$n")" server >"$dir/node$n/log" 2>&1 &
    echo $! >"$dir/node$n/pid"
    local base port
    base=$(cat "$dir/base")
    # Ready when its S3 port accepts connections (it binds RPC first).
    port=$((base + 10 * n + 1))
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "garage node $n did not start; its log:" >&2
    cat "$dir/node$n/log" >&2
    return 1
}

case "$cmd" in
start)
    # Below the ephemeral range (32768+): an outgoing connection cannot be holding the port.
    base=${3:-23900}
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    # A start that fails half-way leaves no node behind.
    trap 'for n in 1 2 3; do [ -f "$dir/node$n/pid" ] && kill -9 "$(cat "$dir/node$n/pid")" 2>/dev/null; done' ERR
    for n in 1 2 3; do
        mkdir -p "$dir/node$n/meta" "$dir/node$n/data"
        cat >"$(cfg "$n")" <<EOF
metadata_dir = "$dir/node$n/meta"
data_dir = "$dir/node$n/data"
db_engine = "sqlite"
replication_factor = 3
rpc_secret = "$RPC_SECRET"
rpc_bind_addr = "127.0.0.1:$((base + 10 * n))"
rpc_public_addr = "127.0.0.1:$((base + 10 * n))"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$((base + 10 * n + 1))"
EOF
        echo "$base" >"$dir/base"
        start_node "$n"
    done
    ids=()
    for n in 1 2 3; do ids+=("$(g "$n" node id -q)"); done
    g 1 node connect "${ids[1]}" >/dev/null
    g 1 node connect "${ids[2]}" >/dev/null
    for n in 1 2 3; do
        g 1 layout assign -z "dc$n" -c 1G "${ids[$((n - 1))]%%@*}" >/dev/null
    done
    g 1 layout apply --version 1 >/dev/null
    g 1 key import --yes -n ferry "$KEY_ID" "$SECRET" >/dev/null
    g 1 bucket create ferry >/dev/null
    g 1 bucket allow --read --write --owner ferry --key ferry >/dev/null
    cat >"$dir/env" <<EOF
export AWS_ENDPOINT_URL=http://127.0.0.1:$((base + 11))
export AWS_ACCESS_KEY_ID=$KEY_ID
export AWS_SECRET_ACCESS_KEY=$SECRET
export AWS_REGION=garage
export AWS_ALLOW_HTTP=true
EOF
    trap - ERR
    if [ -n "${GARAGE_PARENT_PID:-}" ]; then
        # Tied to a test process: the nodes go when it goes, however it ends.
        (
            while kill -0 "$GARAGE_PARENT_PID" 2>/dev/null; do sleep 1; done
            for n in 1 2 3; do kill -9 "$(cat "$dir/node$n/pid")" 2>/dev/null || true; done
        ) </dev/null >/dev/null 2>&1 &
    fi
    echo "garage: 3 nodes up; source $dir/env"
    ;;
stop)
    for n in 1 2 3; do
        [ -f "$dir/node$n/pid" ] && kill -9 "$(cat "$dir/node$n/pid")" 2>/dev/null || true
    done
    ;;
kill)
    n=${3:?node number}
    kill -9 "$(cat "$dir/node$n/pid")"
    ;;
restart)
    n=${3:?node number}
    start_node "$n"
    # A survivor connects to it at once (otherwise the cluster notices it within ~30 s).
    other=$((n % 3 + 1))
    g "$other" node connect "$(g "$n" node id -q)" >/dev/null
    ;;
*)
    echo "unknown command $cmd" >&2
    exit 2
    ;;
esac
