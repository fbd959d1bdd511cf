#!/usr/bin/env bash
# Packing a trip into one file and unpacking it: ferry's oci-archive (one file and split at
# 256M) against skopeo copy to and from oci-archive:, docker save / docker load, and the
# machine's limit (cp + sha256sum of the same bytes), all on the same ~1 GiB image in one run.
#
#   bash bench/archive.sh            # SIZE_MIB=1024 by default
#
# The image: a busybox-static base and 8 layers of random bytes built by a private dockerd
# (Debian's docker.io 20.10), pushed to a ferry registry, copied to a directory. Wall seconds
# and peak RSS from GNU time; page cache warm for everyone (the data fits in memory). Needs
# dockerd, skopeo, busybox-static, GNU time.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_init ferry-archbench
cargo build --release --quiet --bin ferry
ferry=$PWD/target/release/ferry
size_mib=${SIZE_MIB:-1024}
layers=8

# A private dockerd, as the tests start it.
/usr/sbin/dockerd --iptables=false --ip6tables=false --bridge=none -H "unix://$work/docker.sock" \
  --data-root "$work/docker-data" --exec-root "$work/docker-exec" --pidfile "$work/docker.pid" \
  >"$work/dockerd.log" 2>&1 &
pids+=($!)
docker() { /usr/bin/docker -H "unix://$work/docker.sock" "$@"; }
for _ in $(seq 1 200); do docker version >/dev/null 2>&1 && break; sleep 0.3; done
dockerv=$(docker version -f '{{.Server.Version}}')

port=$(free_port)
$ferry serve --listen "127.0.0.1:$port" --data "$work/reg" >"$work/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
reg=127.0.0.1:$port

# The image.
mkdir -p "$work/rootfs/bin" "$work/rootfs/tmp" "$work/ctx"
cp /bin/busybox "$work/rootfs/bin/busybox"
ln -s busybox "$work/rootfs/bin/sh"
tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
docker import "$work/rootfs.tar" "$reg/base:1" >/dev/null
docker push "$reg/base:1" >/dev/null
{
  echo "FROM $reg/base:1"
  for i in $(seq 1 $layers); do
    echo "RUN busybox dd if=/dev/urandom of=/data$i bs=1048576 count=$((size_mib / layers)) 2>/dev/null"
  done
} > "$work/ctx/Dockerfile"
docker build --network=host -q -t "$reg/big:1" "$work/ctx" >/dev/null
docker push "$reg/big:1" >/dev/null
# As an OCI-typed image: skopeo's oci: reader skips Docker-typed manifests (what dockerd
# pushes), so skopeo converts it once here and everyone packs the same directory.
skopeo copy -q --src-tls-verify=false "docker://$reg/big:1" "oci:$work/src:big:1"
bytes=$(du -sb "$work/src/blobs" | cut -f1)

# timed NAME CMD...: wall seconds and peak RSS (KiB) of CMD
timed() {
  local name=$1; shift
  sync; /usr/bin/time -f "%e %M" -o "$work/t" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; echo "$name FAILED" >&2; exit 1; }
  read -r secs rss < "$work/t"
  printf '%s|%s|%s\n' "$name" "$secs" "$rss" >> "$work/results"
}

timed "limit: cp + sha256sum (the same bytes)" bash -c \
  "cp -r '$work/src/blobs' '$work/cp' && find '$work/cp' -type f -print0 | xargs -0 sha256sum"
rm -rf "$work/cp"
timed "ferry pack dir -> oci-archive" $ferry sync --json "$work/src" "oci-archive:$work/f.tar"
timed "ferry unpack oci-archive -> dir" $ferry sync --json "oci-archive:$work/f.tar" "$work/f-out"
size_f=$(stat -c %s "$work/f.tar")
rm -rf "$work/f-out" "$work/f.tar"
timed "ferry pack, --split 256M" $ferry sync --json --split 256M "$work/src" "oci-archive:$work/split/t.tar"
timed "ferry unpack 256M volumes (checked first)" $ferry sync --json "oci-archive:$work/split/t.tar.000" "$work/fs-out"
rm -rf "$work/fs-out" "$work/split"
timed "skopeo copy oci: -> oci-archive:" skopeo copy "oci:$work/src:big:1" "oci-archive:$work/s.tar"
timed "skopeo copy oci-archive: -> oci:" skopeo copy "oci-archive:$work/s.tar" "oci:$work/s-out:big"
rm -rf "$work/s-out" "$work/s.tar"
timed "docker save" /usr/bin/docker -H "unix://$work/docker.sock" save -o "$work/d.tar" "$reg/big:1"
docker rmi -f "$reg/big:1" "$reg/base:1" >/dev/null
timed "docker load" /usr/bin/docker -H "unix://$work/docker.sock" load -i "$work/d.tar"
# dockerd leaves its network namespace mounted until it stops.
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
umount -l "$work/docker-exec/netns/default" 2>/dev/null || true

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $bytes bytes in $((layers + 2)) blobs, $(skopeo --version), dockerd $dockerv"
echo "# ferry oci-archive: $size_f bytes; docker save: $(stat -c %s "$work/d.tar") bytes (uncompressed layers)"
limit=$(head -1 "$work/results" | cut -d'|' -f2)
printf '%-44s %8s %8s %10s\n' "" "seconds" "x limit" "peak RSS"
while IFS='|' read -r name secs rss; do
  printf '%-44s %8s %8s %7s MiB\n' "$name" "$secs" "$(python3 -c "print(f'{$secs/$limit:.2f}')")" "$((rss / 1024))"
done < "$work/results"
