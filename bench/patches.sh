#!/usr/bin/env bash
# Layer patches (issue #27): bytes a trip carries for a changed layer, whole (what every peer
# carries) against ferry's patch against `zstd -19 --long=31 --patch-from=old.tar new.tar` (the
# limit the issue sets), and the time and peak RSS to make and to apply a patch next to one
# encode of the layer by the bare Go-gzip encoder, in the same run.
#
#   bash bench/patches.sh                 all scenarios (~15 minutes on 2 cores, ~4 GB of /tmp)
#   bash bench/patches.sh one50k log      only these
#   LIMIT=0 bash bench/patches.sh         without the zstd limit (minutes of zstd -19; the data, and
#                                         so the limit, is the same every run)
#
# Scenarios (text-like files, as source trees and node_modules compress, ~4x):
#   one50k   one 50 KB file changed in a 200 MB layer
#   pct5     5% of the files of a 200 MB layer changed
#   log      1 MB appended to a 100 MB log-like file in a 200 MB layer
#   npm      one dependency bumped in a node_modules-like tree of 20,000 files (~100 MB)
#   seed     the first users' case: an ~800 MB image of 6 layers where ~5 MB of files changed
#            across two layers (deps 250 MB: 3 MB; app 200 MB: 2 MB); the other four are on the
#            far side already and cost nothing with or without patches
# Layers are gzipped as docker 20.10 pushes them (Go's classic gzip, level 6, through
# `ferry debug gozip encode`); patches are made and applied by `ferry debug patch make|apply`,
# the per-layer work of `ferry sync --have` and of syncing the delta in.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_init ferry-patches
cargo build --release --quiet --bin ferry
ferry=$PWD/target/release/ferry
command -v zstd >/dev/null || { echo "needs zstd (apt-get install zstd)"; exit 1; }
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(one50k pct5 log npm seed)

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r), $(zstd --version | head -1)"

# gen.py SCENARIO DIR: writes DIR/<layer>.v1.tar and DIR/<layer>.v2.tar for each changed layer.
cat > "$work/gen.py" <<'PY'
import io, os, random, sys, tarfile
scenario, out = sys.argv[1], sys.argv[2]
rng = random.Random(27)
# A pool of "source lines": files are lines drawn from it, so they compress as code does.
alphabet = b"abcdefghijklmnopqrstuvwxyz_(){};=.,'0123456789        \t"
pool = [bytes(rng.choice(alphabet) for _ in range(rng.randint(10, 90))) + b"\n" for _ in range(20000)]
def text(n, seed):
    r = random.Random(seed)
    out, size = [], 0
    while size < n:
        l = r.choice(pool)
        out.append(l)
        size += len(l)
    return b"".join(out)[:n]
def write(path, files):
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as t:
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), 1700000000, 0o644
            t.addfile(ti, io.BytesIO(data))
def tree(prefix, n, size, seed):
    return [(f"{prefix}/f{i:05}.js", text(size, seed * 1000003 + i)) for i in range(n)]
def changed(files, idx, seed):
    files = list(files)
    for i in idx:
        files[i] = (files[i][0], text(len(files[i][1]), seed + i))
    return files
if scenario in ("one50k", "pct5"):
    v1 = tree("app/src", 4000, 50_000, 1)
    idx = [1234] if scenario == "one50k" else rng.sample(range(4000), 200)
    write(f"{out}/layer.v1.tar", v1); write(f"{out}/layer.v2.tar", changed(v1, idx, 77))
elif scenario == "log":
    v1 = tree("srv/data", 100, 1_000_000, 2)
    log = text(100_000_000, 3)
    write(f"{out}/layer.v1.tar", v1 + [("var/log/app.log", log)])
    write(f"{out}/layer.v2.tar", v1 + [("var/log/app.log", log + text(1_000_000, 4))])
elif scenario == "npm":
    files = []
    for p in range(400):
        files.append((f"node_modules/pkg{p:03}/package.json", b'{"name":"pkg%d","version":"1.0.0"}\n' % p))
        files += [(f"node_modules/pkg{p:03}/lib/m{i:02}.js", text(rng.randint(2000, 8000), p * 100 + i)) for i in range(49)]
    v2 = list(files)
    for i, (name, data) in enumerate(files):
        if name.startswith("node_modules/pkg123/"):
            v2[i] = (name, b'{"name":"pkg123","version":"1.0.1"}\n' if name.endswith("package.json") else text(len(data) + 300, 555 + i))
    write(f"{out}/layer.v1.tar", files); write(f"{out}/layer.v2.tar", v2)
elif scenario == "seed":
    deps = tree("usr/lib/node_modules", 5000, 50_000, 5)       # 250 MB, 3 MB changed
    app = tree("app", 4000, 50_000, 6)                           # 200 MB, 2 MB changed
    write(f"{out}/deps.v1.tar", deps); write(f"{out}/deps.v2.tar", changed(deps, range(100, 160), 88))
    write(f"{out}/app.v1.tar", app); write(f"{out}/app.v2.tar", changed(app, range(2000, 2040), 99))
PY

# timed OUT_PREFIX CMD...: runs CMD, leaves "seconds maxrss_kib" in OUT_PREFIX.t
timed() {
  local out=$1; shift
  local t0=$EPOCHREALTIME
  /usr/bin/time -f "%M" -o "$out.rss" "$@"
  local t1=$EPOCHREALTIME
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b - a}') $(cat "$out.rss")" >"$out.t"
}
mb() { awk -v b="$1" 'BEGIN{ if (b >= 1e6) printf "%.1f MB", b/1e6; else printf "%.1f kB", b/1e3 }'; }

printf '%-8s %-6s %12s %12s %12s %8s | %7s %7s %7s | %9s %9s | %8s %8s\n' \
  scenario layer "whole" "ferry patch" "zstd limit" "ratio" "encode" "make" "apply" "make RSS" "apply RSS" "enc MB/s" "app MB/s"
for sc in "${scenarios[@]}"; do
  d="$work/$sc"; mkdir -p "$d"
  python3 "$work/gen.py" "$sc" "$d"
  tot_whole=0; tot_patch=0; tot_limit=0; layers=0
  for v1 in "$d"/*.v1.tar; do
    name=$(basename "$v1" .v1.tar); v2="$d/$name.v2.tar"
    "$ferry" debug gozip encode --generation classic --level 6 <"$v1" >"$d/$name.v1.gz"
    timed "$d/enc" "$ferry" debug gozip encode --generation classic --level 6 <"$v2" >"$d/$name.v2.gz"
    timed "$d/make" "$ferry" debug patch make --base "$d/$name.v1.gz" --target "$d/$name.v2.gz" --out "$d/$name.patch" 2>/dev/null
    timed "$d/apply" "$ferry" debug patch apply --base "$d/$name.v1.gz" --patch "$d/$name.patch" --out "$d/$name.rebuilt.gz" 2>/dev/null
    cmp -s "$d/$name.rebuilt.gz" "$d/$name.v2.gz" || { echo "$sc/$name: the rebuilt layer differs"; exit 1; }
    if [ "${LIMIT:-1}" = 1 ]; then
      zstd -q -19 --long=31 --patch-from="$v1" "$v2" -o "$d/$name.zst" -f 2>/dev/null
    else
      : >"$d/$name.zst"   # LIMIT=0: the limit is not computed (the data is the same every run)
    fi
    whole=$(stat -c %s "$d/$name.v2.gz"); patch=$(stat -c %s "$d/$name.patch"); limit=$(stat -c %s "$d/$name.zst")
    tar_size=$(stat -c %s "$v2")
    read -r et _ <"$d/enc.t"; read -r mt mr <"$d/make.t"; read -r at ar <"$d/apply.t"
    printf '%-8s %-6s %12s %12s %12s %7sx | %6ss %6ss %6ss | %6d MiB %6d MiB | %8.1f %8.1f\n' \
      "$sc" "$name" "$(mb "$whole")" "$(mb "$patch")" "$(mb "$limit")" \
      "$(awk -v p="$patch" -v l="$limit" 'BEGIN{if (l > 0) printf "%.2f", p/l; else printf "-"}')" \
      "$et" "$mt" "$at" $((mr / 1024)) $((ar / 1024)) \
      "$(awk -v s="$tar_size" -v t="$et" 'BEGIN{printf "%.1f", s/1e6/t}')" \
      "$(awk -v s="$tar_size" -v t="$at" 'BEGIN{printf "%.1f", s/1e6/t}')"
    tot_whole=$((tot_whole + whole)); tot_patch=$((tot_patch + patch)); tot_limit=$((tot_limit + limit)); layers=$((layers + 1))
    rm -f "$d/$name.rebuilt.gz" "$d/$name.zst"
  done
  if [ "$layers" -gt 1 ]; then
    printf '%-8s %-6s %12s %12s %12s %7sx\n' "$sc" "trip" "$(mb "$tot_whole")" "$(mb "$tot_patch")" "$(mb "$tot_limit")" \
      "$(awk -v p="$tot_patch" -v l="$tot_limit" 'BEGIN{if (l > 0) printf "%.2f", p/l; else printf "-"}')"
  fi
  rm -rf "$d"
done
echo "# whole: the changed layer(s) as every peer carries them; ratio: ferry's patch / the zstd limit"
echo "# (target: <= 1.25x + 8 KiB per layer); encode: one Go-classic level-6 encode of the new layer"
echo "# by ferry's encoder alone; make/apply: ferry debug patch (make = decompress both, diff,"
echo "# rebuild and compare; apply = decompress the base, rebuild, verify); MB/s of tar."
