#!/usr/bin/env bash
# Warm pulls (the model is in the cache) at several model sizes: how long `tugboat pull
# REF@digest --dest NEW --cache C` takes when nothing is downloaded, for each way of making
# --dest files, and the re-run into a destination that already holds the model (its stamp),
# beside the peer a copy answers to: `cp -r` of the snapshot's tree and `sync`, on the same
# filesystem (tugboat's copy returns only once the files are durable, so the peer syncs too).
# Each size is pushed, pulled cold once into the cache, then measured RUNS times (median).
#
#   bash bench/warm.sh                       # 100 MiB and 2 GiB
#   SIZES_MIB="100 2048 20480" bash bench/warm.sh
#
# Needs about 2x the largest size free (the model and the registry's copy, then the registry's
# copy and the cache, then the cache and a copied --dest: the registry's copy is deleted once the
# cache holds the model); a size that does not fit is skipped with a message. Model bytes are
# random.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

SIZES_MIB=${SIZES_MIB:-"100 2048"}
RUNS=${RUNS:-5}

need_packages
if [ -z "${TUGBOAT:-}" ]; then
  cargo build --release --locked --quiet
  TUGBOAT=${CARGO_TARGET_DIR:-$PWD/target}/release/tugboat
fi

WORK=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}")
trap 'kill "${REGISTRY_PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
start_registry "$WORK/registry"

# median_ms CMD...: the median wall time of RUNS runs, in milliseconds (each run's target
# directory is cleared first by the caller-provided PREPARE function).
median_ms() {
  local times=() start end
  for _ in $(seq "$RUNS"); do
    prepare
    start=$(date +%s%N)
    "$@" >/dev/null 2>&1
    end=$(date +%s%N)
    times+=($(( (end - start) / 1000000 )))
  done
  printf '%s\n' "${times[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p"
}

printf '%-10s %-12s %-14s %-12s %-12s %-10s %-10s\n' size "copy (ms)" "cp -r + sync" "copy/cp" \
  "--link hard" "stamp hit" fs
for mib in $SIZES_MIB; do
  free_mib=$(( $(df -Pk "$WORK" | awk 'NR==2 {print $4}') / 1024 ))
  if [ "$free_mib" -lt $(( mib * 2 + 1024 )) ]; then
    echo "$mib MiB: skipped, needs $(( mib * 2 + 1024 )) MiB free, $free_mib MiB are" >&2
    continue
  fi
  rm -rf "$WORK/model" "$WORK/cache" "$WORK/dest"
  mkdir -p "$WORK/model"
  write_random "$WORK/model/model.safetensors" "$mib" 7
  echo '{"architecture":"llama"}' > "$WORK/model/config.json"
  "$TUGBOAT" push "$WORK/model" "$REGISTRY/bench/warm:$mib" --plain-http --json \
    > "$WORK/push.json" 2>/dev/null
  rm -rf "$WORK/model"
  digest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["digest"])' "$WORK/push.json")
  REF=$REGISTRY/bench/warm@$digest
  "$TUGBOAT" pull "$REF" --cache "$WORK/cache" --plain-http >/dev/null 2>&1
  # The registry is stopped: a warm pull by digest must not need it.
  kill "$REGISTRY_PID"; wait "$REGISTRY_PID" 2>/dev/null || true
  rm -rf "$WORK/registry/data"

  prepare() { rm -rf "$WORK/dest"; sync; }
  copy=$(median_ms "$TUGBOAT" pull "$REF" --dest "$WORK/dest" --cache "$WORK/cache" --plain-http)
  snapshot=$WORK/cache/snapshots/${digest#sha256:}
  peer=$(median_ms bash -c 'cp -r "$1" "$2" && sync' cp "$snapshot" "$WORK/dest")
  hard=$(median_ms "$TUGBOAT" pull "$REF" --dest "$WORK/dest" --cache "$WORK/cache" --plain-http --link hard)
  "$TUGBOAT" pull "$REF" --dest "$WORK/dest" --cache "$WORK/cache" --plain-http >/dev/null 2>&1
  prepare() { :; }
  stamp=$(median_ms "$TUGBOAT" pull "$REF" --dest "$WORK/dest" --cache "$WORK/cache" --plain-http)
  fs=$(df -PT "$WORK" | awk 'NR==2 {print $2}')
  ratio=$(python3 -c 'import sys; a, b = map(int, sys.argv[1:]); print(f"{a / max(b, 1):.2f}x")' "$copy" "$peer")
  printf '%-10s %-12s %-14s %-12s %-12s %-10s %-10s\n' "${mib}MiB" "$copy" "$peer" "$ratio" \
    "$hard" "$stamp" "$fs"
  rm -rf "$WORK/cache" "$WORK/dest" "$WORK/registry/data"
  start_registry "$WORK/registry"
done
