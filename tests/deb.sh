#!/usr/bin/env bash
# The Debian package as an offline site uses it (run by .ci/run as root, after pkg/build.sh):
# dpkg -i, the user, the files, `systemd-analyze verify` of the units, the unit's own ExecStart
# run as the ferry user against /var/lib/ferry with a push and a pull through it, then
# `dpkg -r` keeps the data and `dpkg --purge` leaves nothing behind. Any failed check exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."
deb=$(ls target/pkg/ferry_*_amd64.deb)
fail() { echo "deb: FAILED: $*" >&2; exit 1; }
ok() { echo "deb: ok: $*"; }
work=$(mktemp -d)
server=
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if dpkg -s ferry >/dev/null 2>&1; then dpkg --purge ferry >/dev/null; fi
dpkg -i "$deb" >/dev/null
ok "dpkg -i $(basename "$deb")"

# The user and its data directory.
getent passwd ferry | grep -q ':/var/lib/ferry:/usr/sbin/nologin$' || fail "no ferry system user (home /var/lib/ferry, nologin)"
[ "$(id -u ferry)" -lt 1000 ] || fail "ferry is not a system user (uid $(id -u ferry))"
[ "$(stat -c '%U:%G %a' /var/lib/ferry)" = "ferry:ferry 750" ] || fail "/var/lib/ferry is $(stat -c '%U:%G %a' /var/lib/ferry)"
ok "user ferry (uid $(id -u ferry)), /var/lib/ferry ferry:ferry 750"

# The files.
for f in /usr/bin/ferry /etc/default/ferry /lib/systemd/system/ferry.service \
  /lib/systemd/system/ferry-gc.service /lib/systemd/system/ferry-gc.timer \
  /usr/share/man/man1/ferry.1.gz /usr/share/man/man1/ferry-serve.1.gz \
  /usr/share/bash-completion/completions/ferry /usr/share/zsh/vendor-completions/_ferry \
  /usr/share/fish/vendor_completions.d/ferry.fish /usr/share/doc/ferry/copyright; do
  [ -f "$f" ] || fail "missing $f"
done
/usr/bin/ferry --version | grep -q '^ferry ' || fail "/usr/bin/ferry --version"
zcat /usr/share/man/man1/ferry-serve.1.gz | grep -q '^\.TH' || fail "ferry-serve.1 is not a man page"
grep -q 'complete -F _ferry' /usr/share/bash-completion/completions/ferry || fail "bash completion"
grep -qx 'FERRY_DATA=/var/lib/ferry' /etc/default/ferry || fail "/etc/default/ferry has no data dir"
ok "binary, units, /etc/default/ferry, man pages, completions"

# The units: systemd's own checker, and the hardening asked for.
if ! out=$(systemd-analyze verify /lib/systemd/system/ferry.service \
  /lib/systemd/system/ferry-gc.service /lib/systemd/system/ferry-gc.timer 2>&1); then
  echo "$out" >&2
  fail "systemd-analyze verify"
fi
# Anything it says is a finding (it exits 0 on some of them).
if [ -n "$out" ]; then echo "$out" >&2; fail "systemd-analyze verify printed findings"; fi
unit=/lib/systemd/system/ferry.service
for line in 'User=ferry' 'NoNewPrivileges=yes' 'ProtectSystem=strict' 'ReadWritePaths=/var/lib/ferry' \
  'PrivateTmp=yes' 'ProtectHome=yes' 'CapabilityBoundingSet=' 'Restart=on-failure' \
  'ExecReload=/bin/kill -HUP $MAINPID'; do
  grep -qxF "$line" "$unit" || fail "$unit lacks $line"
done
grep -qxF 'OnCalendar=daily' /lib/systemd/system/ferry-gc.timer || fail "timer schedule"
# systemd's own exposure score (0 best, 10 worst): 2.0 at most (a default service scores 9.6).
score=$(systemd-analyze security --offline=true "$unit" 2>&1 | sed -n 's/.*Overall exposure level for ferry.service: \([0-9.]*\).*/\1/p')
[ -n "$score" ] || fail "no exposure score from systemd-analyze security"
awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "exposure level $score > 2.0"
ok "systemd-analyze verify: clean; hardening present; exposure level $score"

# The unit's ExecStart, as the ferry user, with the unit's environment and /etc/default/ferry.
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
env_defaults=$(sed -n 's/^Environment=//p' "$unit")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
declare -A env
for kv in $env_defaults; do env[${kv%%=*}]=${kv#*=}; done
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  env[${line%%=*}]=${line#*=}
done </etc/default/ferry
env[FERRY_LISTEN]="127.0.0.1:$port" # the only change: a free port
cmd=${exec_start//\$FERRY_OPTS/${env[FERRY_OPTS]:-}}
envs=()
for k in "${!env[@]}"; do envs+=("$k=${env[$k]}"); done
# shellcheck disable=SC2086 # the command line is split as systemd splits it
setpriv --reuid=ferry --regid=ferry --init-groups --no-new-privs --bounding-set=-all \
  env -i PATH=/usr/bin:/bin "${envs[@]}" $cmd >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$work/serve.log" >&2; fail "the service exited"; }
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null || fail "registry not answering"
[ "$(ps -o user= -p "$server")" = ferry ] || fail "not running as ferry"
ok "ExecStart ($cmd) runs as ferry on 127.0.0.1:$port"

# A push and a pull through it: a one-layer image as an OCI layout, synced in and back out.
img="$work/img"
mkdir -p "$img/blobs/sha256" "$work/rootfs"
echo "hello from the package test" >"$work/rootfs/hello.txt"
tar -C "$work/rootfs" --owner=0 --group=0 --mtime=@0 -cf "$work/layer.tar" hello.txt
put() { local d; d=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$img/blobs/sha256/$d"; echo "$d $(stat -c %s "$1")"; }
read -r ld ls < <(put "$work/layer.tar")
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"config":{}}' "$ld" >"$work/config.json"
read -r cd cs < <(put "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' "$cd" "$cs" "$ld" "$ls" >"$work/manifest.json"
read -r md ms < <(put "$work/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"deb/hello:1"}}]}' "$md" "$ms" >"$img/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$img/oci-layout"
/usr/bin/ferry sync "$img" "docker://127.0.0.1:$port/deb/hello:1" >"$work/push.log" 2>&1 || { cat "$work/push.log" >&2; fail "push"; }
/usr/bin/ferry sync "docker://127.0.0.1:$port/deb/hello:1" "$work/out" >"$work/pull.log" 2>&1 || { cat "$work/pull.log" >&2; fail "pull"; }
cmp "$img/blobs/sha256/$ld" "$work/out/blobs/sha256/$ld" || fail "pulled layer differs"
cmp "$img/blobs/sha256/$md" "$work/out/blobs/sha256/$md" || fail "pulled manifest differs"
[ "$(stat -c %U "/var/lib/ferry/blobs/sha256/$ld")" = ferry ] || fail "stored blob not owned by ferry"
curl -fsS "http://127.0.0.1:$port/" | grep -q 'deb/hello' || fail "the page does not list deb/hello"
ok "push and pull through it, byte-identical; data in /var/lib/ferry owned by ferry; the page lists it"

# The timer's service, as the ferry user, with the same environment.
gc_cmd=$(sed -n 's/^ExecStart=//p' /lib/systemd/system/ferry-gc.service)
gc_cmd=${gc_cmd//\$FERRY_GC_OPTS/${env[FERRY_GC_OPTS]:-}}
# shellcheck disable=SC2086
setpriv --reuid=ferry --regid=ferry --init-groups --no-new-privs --bounding-set=-all \
  env -i PATH=/usr/bin:/bin "${envs[@]}" $gc_cmd >"$work/gc.log" 2>&1 || { cat "$work/gc.log" >&2; fail "ferry-gc ExecStart"; }
grep -q '3 reachable' "$work/gc.log" || { cat "$work/gc.log" >&2; fail "gc did not see the image"; }
ok "ferry-gc.service's ExecStart: $(tail -1 "$work/gc.log")"

kill -TERM "$server"
wait "$server" || fail "the service did not stop cleanly on SIGTERM"
server=

# Remove keeps the data and the user; purge keeps nothing.
dpkg -r ferry >/dev/null
[ ! -e /usr/bin/ferry ] || fail "dpkg -r left /usr/bin/ferry"
[ -f "/var/lib/ferry/blobs/sha256/$ld" ] || fail "dpkg -r removed the data"
getent passwd ferry >/dev/null || fail "dpkg -r removed the user"
ok "dpkg -r: binary gone, data and user kept"
dpkg --purge ferry >/dev/null
left=()
for p in /var/lib/ferry /etc/default/ferry /lib/systemd/system/ferry.service \
  /lib/systemd/system/ferry-gc.service /lib/systemd/system/ferry-gc.timer /usr/share/doc/ferry \
  /usr/share/man/man1/ferry.1.gz /etc/systemd/system/ferry.service \
  /etc/systemd/system/multi-user.target.wants/ferry.service \
  /etc/systemd/system/timers.target.wants/ferry-gc.timer; do
  [ -e "$p" ] || [ -L "$p" ] && left+=("$p")
done
getent passwd ferry >/dev/null && left+=("user ferry")
getent group ferry >/dev/null && left+=("group ferry")
ls /var/lib/systemd/deb-systemd-helper-enabled 2>/dev/null | grep -q ferry && left+=("deb-systemd-helper state")
dpkg -s ferry >/dev/null 2>&1 && left+=("dpkg still knows ferry")
[ "${#left[@]}" -eq 0 ] || fail "dpkg --purge left: ${left[*]}"
ok "dpkg --purge: nothing left"
echo "deb: all checks passed"
