#!/usr/bin/env bash
# Signed multi-platform images (issue #28), the row bench/sync.sh points to: 50 images, each an
# index of 4 platforms (linux/amd64, linux/arm64/v8, linux/s390x, linux/ppc64le; config + two
# 256 KiB layers each) with 3 referrers (a cosign-style signature, an SPDX SBOM, an in-toto
# statement), served by `ferry serve` (a registry with the referrers API) on loopback;
# registry -> directory with and without `--platform linux/amd64`. Columns: bytes written, wall
# seconds, peak RSS, the requests the source served (its /metrics), the referrers carried, and
# whether the tag's digest is the source's. The peer in the same run: skopeo 1.9 `sync --all`
# (every platform, no referrers) and `sync` (the host's platform only; the tag then names that
# platform's manifest, so its digest differs).
#
#   bash bench/multi.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_init ferry-multibench
cargo build --release --quiet --bin ferry
ferry=$PWD/target/release/ferry
command -v skopeo >/dev/null || { echo "needs skopeo"; exit 1; }

port=$(free_port)
$ferry serve --listen "127.0.0.1:$port" --data "$work/src" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
src="127.0.0.1:$port"

python3 - "$src" <<'PY'
import hashlib, json, os, random, sys, urllib.request
host = sys.argv[1]
rng = random.Random(28)
def push_blob(repo, data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    req = urllib.request.Request(f"http://{host}/v2/{repo}/blobs/uploads/?digest={d}", data=data, method="POST",
                                 headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(req).read()
    return {"digest": d, "size": len(data)}
def put(repo, ref, mt, body):
    req = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{ref}", data=body, method="PUT",
                                 headers={"Content-Type": mt})
    urllib.request.urlopen(req).read()
    return {"mediaType": mt, "digest": "sha256:" + hashlib.sha256(body).hexdigest(), "size": len(body)}
M = "application/vnd.oci.image.manifest.v1+json"
platforms = [("amd64", None), ("arm64", "v8"), ("s390x", None), ("ppc64le", None)]
for i in range(50):
    repo = f"multi/app{i:02d}"
    children = []
    for arch, variant in platforms:
        layers = [push_blob(repo, rng.randbytes(256 << 10)) for _ in range(2)]
        cfg = {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]}}
        if variant: cfg["variant"] = variant
        c = push_blob(repo, json.dumps(cfg).encode())
        m = json.dumps({"schemaVersion": 2, "mediaType": M,
                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **c},
                        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **l} for l in layers]}).encode()
        d = put(repo, "sha256:" + hashlib.sha256(m).hexdigest(), M, m)
        p = {"architecture": arch, "os": "linux"}
        if variant: p["variant"] = variant
        children.append({**d, "platform": p})
    idx = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": children}).encode()
    subject = put(repo, "1", "application/vnd.oci.image.index.v1+json", idx)
    empty = push_blob(repo, b"{}")
    for at, body in [("application/vnd.dev.cosign.artifact.sig.v1+json", b'{"critical":{"type":"cosign container image signature"}}'),
                     ("application/spdx+json", json.dumps({"spdxVersion": "SPDX-2.3", "name": repo, "n": i}).encode()),
                     ("application/vnd.in-toto+json", json.dumps({"_type": "https://in-toto.io/Statement/v0.1", "n": i}).encode())]:
        l = push_blob(repo, body)
        r = json.dumps({"schemaVersion": 2, "mediaType": M, "artifactType": at,
                        "config": {"mediaType": "application/vnd.oci.empty.v1+json", **empty},
                        "layers": [{"mediaType": at, **l}], "subject": subject}).encode()
        put(repo, "sha256:" + hashlib.sha256(r).hexdigest(), M, r)
PY

requests() { curl -fs "http://$src/metrics" | awk '/^ferry_http_requests_total/ {s += $NF} END {print s+0}'; }
printf 'multi/app%02d:1\n' $(seq 0 49) > "$work/refs"
# row NAME DIR CMD...: bytes, seconds, RSS, source requests, referrers, digest kept
row() {
  local name=$1 dir=$2; shift 2
  local before after; before=$(requests)
  sync; /usr/bin/time -f "%e %M" -o "$work/t" "$@" > "$work/out" 2>"$work/err" || { cat "$work/err" >&2; echo "$name FAILED" >&2; }
  after=$(requests)
  read -r secs rss < "$work/t"
  local bytes; bytes=$(du -sb "$dir" | cut -f1)
  local refs; refs=$(python3 -c "import json,sys; print(len(json.load(open('$work/out')).get('referrers', [])))" 2>/dev/null || echo "-")
  local kept; kept=$(python3 - "$dir" "$src" <<'PY'
import json, os, sys, urllib.request, hashlib
d, host = sys.argv[1], sys.argv[2]
req = urllib.request.Request(f"http://{host}/v2/multi/app00/manifests/1", headers={"Accept": "application/vnd.oci.image.index.v1+json"})
want = "sha256:" + hashlib.sha256(urllib.request.urlopen(req).read()).hexdigest()
if os.path.exists(os.path.join(d, "index.json")):
    idx = json.load(open(os.path.join(d, "index.json")))
    got = [m["digest"] for m in idx["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "multi/app00:1"]
    print("yes" if got == [want] else "no")
else:  # skopeo's dir layout: one directory per image, its manifest.json
    for root, _, files in os.walk(d):
        if "manifest.json" in files and "app00" in root:
            b = open(os.path.join(root, "manifest.json"), "rb").read()
            print("yes" if "sha256:" + hashlib.sha256(b).hexdigest() == want else "no"); break
    else:
        print("?")
PY
)
  printf '| %s | %.1f MB | %s s | %.0f MiB | %s | %s | %s |\n' "$name" "$(python3 -c "print($bytes/1e6)")" "$secs" "$(python3 -c "print($rss/1024)")" "$((after - before))" "$refs" "$kept" >> "$work/results"
}
row "ferry, every platform + referrers" "$work/f-all" $ferry sync --json --refs-file "$work/refs" "docker://$src" "$work/f-all"
row "ferry --platform linux/amd64 + referrers" "$work/f-amd64" $ferry sync --json --platform linux/amd64 --refs-file "$work/refs" "docker://$src" "$work/f-amd64"
row "ferry --platform linux/amd64 --referrers none" "$work/f-none" $ferry sync --json --platform linux/amd64 --referrers none --refs-file "$work/refs" "docker://$src" "$work/f-none"
{
  echo "$src:"; echo "  tls-verify: false"; echo "  images:"
  for i in $(seq -f '%02g' 0 49); do echo "    multi/app$i: [\"1\"]"; done
} > "$work/skopeo.yml"
row "skopeo sync --all (every platform, no referrers)" "$work/s-all" skopeo sync --all --src yaml --dest dir "$work/skopeo.yml" "$work/s-all"
row "skopeo sync (the host's platform, no referrers)" "$work/s-host" skopeo sync --src yaml --dest dir "$work/skopeo.yml" "$work/s-host"

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, 50 images x (index of 4 platforms + 3 referrers), $(skopeo --version)"
echo "| run | bytes written | seconds | peak RSS | requests to the source | referrers carried | tag digest as the source's |"
echo "|---|---:|---:|---:|---:|---:|---|"
cat "$work/results"
