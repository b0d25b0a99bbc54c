#!/bin/sh
# The Dockerfile's build stage: builds the release binary and installs it as OUT_DIR/tugboat.
# The same script runs here in tests/manifests.rs (into target/image/), so the binary the
# image ships is the one the manifests are checked against.
# Needs only a Rust toolchain and a C compiler: the CSI protos compile with protox (no protoc).
set -eu

out="${1:?usage: scripts/build-release.sh OUT_DIR}"
cd "$(dirname "$0")/.."

cargo build --release --locked --bin tugboat
mkdir -p "$out"
built="${CARGO_TARGET_DIR:-target}/release/tugboat"
# OUT_DIR may be cargo's own release directory (target/release): then the binary is in place.
[ "$built" -ef "$out/tugboat" ] || install -m 0755 "$built" "$out/tugboat"
"$out/tugboat" --version
