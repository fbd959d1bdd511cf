#!/usr/bin/env bash
# Build what an offline site installs: the static binary, target/pkg/ferry_VERSION_amd64.deb
# (cargo deb; units and maintainer scripts in pkg/debian/) and, for other distributions,
# target/pkg/ferry-VERSION-x86_64-linux.tar.gz with its .sha256. Needs cargo-deb
# (`cargo install cargo-deb --locked`).
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
out=target/pkg

RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target "$target" --bin ferry
bin="target/$target/release/ferry"
if ! ldd "$bin" 2>&1 | grep -qE 'statically linked|not a dynamic executable'; then
  echo "pkg: $bin is not static" >&2
  exit 1
fi
version=$("$bin" --version | awk '{print $2}')

rm -rf "$out"
mkdir -p "$out/assets/man" "$out/assets/completions"
"$bin" man "$out/assets/man"
gzip -9n "$out"/assets/man/*.1
"$bin" completions bash >"$out/assets/completions/ferry.bash"
"$bin" completions zsh >"$out/assets/completions/_ferry"
"$bin" completions fish >"$out/assets/completions/ferry.fish"

cargo deb --no-build --locked --strip --target "$target" --output "$out/ferry_${version}_amd64.deb"

# The same files for distributions without dpkg.
name="ferry-$version-x86_64-linux"
stage="$out/$name"
mkdir -p "$stage/systemd"
strip -o "$stage/ferry" "$bin"
cp README.md README.zh-CN.md "$stage/"
cp -r "$out/assets/man" "$out/assets/completions" "$stage/"
cp pkg/debian/ferry.service pkg/debian/ferry-gc.service pkg/debian/ferry-gc.timer "$stage/systemd/"
cp pkg/debian/ferry.default "$stage/systemd/ferry.default"
tar -C "$out" --owner=0 --group=0 --numeric-owner -czf "$out/$name.tar.gz" "$name"
rm -rf "$stage"
(cd "$out" && sha256sum "$name.tar.gz" "ferry_${version}_amd64.deb" >SHA256SUMS &&
  sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
ls -l "$out"/*.deb "$out"/*.tar.gz
