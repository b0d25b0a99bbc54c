#!/usr/bin/env bash
# The whole job on a laptop-sized default: start a local registry, push a generated model with
# `tugboat push`, pull it cold into a fresh cache and destination, then pull it again (a cache
# hit), and show what landed. Installs docker-registry from Debian if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

need_packages
echo "== building tugboat (release)"
cargo build --release --locked --quiet
# cargo puts the binary under $CARGO_TARGET_DIR when it is set (relative to this directory).
TARGET_DIR=${CARGO_TARGET_DIR:-target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$PWD/$TARGET_DIR ;; esac
TUGBOAT=$TARGET_DIR/release/tugboat

WORK=$(mktemp -d)
trap 'kill "${REGISTRY_PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
start_registry "$WORK/registry"
echo "== registry on $REGISTRY"

MODEL=$WORK/tinyllama
mkdir -p "$MODEL"
write_random "$MODEL/tinyllama-1.1b-chat.Q4_K_M.gguf" "${DEMO_MODEL_MIB:-256}" 1
echo '{"architecture":"llama","quantization":"Q4_K_M"}' > "$MODEL/config.json"
REF=$REGISTRY/ml-models/tinyllama:v1.0.0-gguf

echo "== push $REF"
"$TUGBOAT" push "$MODEL" "$REF" --plain-http --annotation org.cnai.model.name=tinyllama

echo "== cold pull (empty cache)"
"$TUGBOAT" pull "$REF" --plain-http --cache "$WORK/cache" --dest "$WORK/models-a"
echo "== warm pull (cache hit, no blob downloads)"
"$TUGBOAT" pull "$REF" --plain-http --cache "$WORK/cache" --dest "$WORK/models-b"
echo "== what the inference server sees"
ls -l "$WORK/models-b"
echo "== verified:"
(cd "$MODEL" && sha256sum ./*) | sed 's|\./||' > "$WORK/pushed.sha256"
(cd "$WORK/models-b" && sha256sum -c "$WORK/pushed.sha256")
"$TUGBOAT" cache ls --cache "$WORK/cache"
