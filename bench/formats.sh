#!/usr/bin/env bash
# Cold pulls of one model in every packing, one run, one local registry: the same bytes as raw
# ModelPack layers, as one-file tar layers (modctl's default layout), as tar+gzip and tar+zstd,
# all pushed with the real modelpack-client (PyPI), against `dd conv=fdatasync` of the same
# size into the cache's filesystem. Prints wall time, MB/s, peak RSS, the cache's size on disk
# after the pull, and the ratios the targets are stated in (tar/raw <= 1.15, cache <= 1.05x
# the model, RSS < 64 MiB). Each pull runs RUNS times, the packings interleaved, and the
# table shows the median wall time and the largest peak RSS.
#
#   bash bench/formats.sh                  # 2 GiB in 4 layers, 3 runs
#   LAYERS=2 LAYER_MIB=64 RUNS=1 bash bench/formats.sh
#   PACKINGS="raw tar" bash bench/formats.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

LAYERS=${LAYERS:-4}
LAYER_MIB=${LAYER_MIB:-512}
PACKINGS=${PACKINGS:-raw tar tar+gzip tar+zstd}
RUNS=${RUNS:-3}

need_packages time
command -v modelpack >/dev/null || python3 -m pip install -q modelpack-client ||
  python3 -m pip install -q --break-system-packages modelpack-client
if [ -z "${TUGBOAT:-}" ]; then
  cargo build --release --locked --quiet
  TUGBOAT=${CARGO_TARGET_DIR:-$PWD/target}/release/tugboat
fi

WORK=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}")
trap 'kill "${REGISTRY_PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
start_registry "$WORK/registry"

# One folder per shard: modelpack-client packs a folder given with a tar media type as a
# tar layer holding that one file (and files given with a raw media type as raw layers).
mkdir -p "$WORK/model"
for i in $(seq 1 "$LAYERS"); do
  mkdir -p "$WORK/model/shard$i"
  write_random "$WORK/model/shard$i/model-0000$i-of-0000$LAYERS.safetensors" "$LAYER_MIB" "$i"
done
MODEL_BYTES=$(du -cb "$WORK/model" | tail -1 | cut -f1)
cat > "$WORK/config.json" <<'JSON'
{"descriptor": {"name": "bench"}, "config": {"format": "safetensors"}}
JSON

push_packing() {
  local packing=$1 layers=()
  for i in $(seq 1 "$LAYERS"); do
    if [ "$packing" = raw ]; then
      layers+=(--layer "$WORK/model/shard$i/model-0000$i-of-0000$LAYERS.safetensors:application/vnd.cncf.model.weight.v1.raw")
    else
      layers+=(--layer "$WORK/model/shard$i:application/vnd.cncf.model.weight.v1.$packing")
    fi
  done
  (cd "$WORK" && modelpack --insecure push "$REGISTRY/bench/model:${packing//+/-}" \
    --config "$WORK/config.json" "${layers[@]}" >/dev/null)
}

RESULTS=$WORK/results
: > "$RESULTS"
# measure NAME CMD...: one cold run (page cache dropped); wall seconds, peak RSS KiB and the
# cache's size on disk afterwards.
measure() {
  local name=$1; shift
  rm -rf "$WORK/cache"
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" >/dev/null 2>"$WORK/stderr" || {
    echo "$name failed:" >&2; cat "$WORK/stderr" >&2; return 1; }
  read -r seconds kib < "$WORK/time"
  local disk=0
  [ -d "$WORK/cache" ] && disk=$(du -sb "$WORK/cache" | cut -f1)
  echo "$name $seconds $kib $disk" >> "$RESULTS"
}

for packing in $PACKINGS; do
  echo "== pushing $packing with modelpack-client"
  push_packing "$packing"
done
for run in $(seq "$RUNS"); do
  for packing in $PACKINGS; do
    echo "== pulling $packing (run $run of $RUNS)"
    measure "$packing" "$TUGBOAT" pull "$REGISTRY/bench/model:${packing//+/-}" --plain-http \
      --cache "$WORK/cache"
  done
done
echo "== dd conv=fdatasync"
mkdir -p "$WORK/cache"
measure_dd() {
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %M" -o "$WORK/time" dd if=/dev/zero of="$WORK/dd.bin" bs=1M \
    count=$((MODEL_BYTES >> 20)) conv=fdatasync 2>/dev/null
  read -r seconds kib < "$WORK/time"
  echo "dd $seconds $kib $(du -sb "$WORK/dd.bin" | cut -f1)" >> "$RESULTS"
  rm -f "$WORK/dd.bin"
}
for _ in $(seq "$RUNS"); do measure_dd; done

echo
echo "model: $LAYERS layers x $LAYER_MIB MiB = $((MODEL_BYTES >> 20)) MiB; $(nproc) cores; cache on $(df --output=source "$WORK" | tail -1); median of $RUNS run(s)"
python3 - "$RESULTS" "$MODEL_BYTES" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
model = int(sys.argv[2])
runs = {}
for name, secs, kib, disk in rows:
    runs.setdefault(name, []).append((float(secs), int(kib), int(disk)))
# Median wall time, largest peak RSS, largest cache size of each packing's runs.
by = {name: (statistics.median(r[0] for r in rs), max(r[1] for r in rs), max(r[2] for r in rs))
      for name, rs in runs.items()}
raw = by.get("raw", (None,))[0]
dd = by["dd"][0]
print("| packing | wall s | MB/s | vs raw | vs dd | peak RSS MiB | cache after | cache / model |")
print("|---|---|---|---|---|---|---|---|")
for name, (secs, kib, disk) in by.items():
    mbps = model / secs / 1e6
    vs_raw = f"{secs / raw:.2f}x" if raw and name != "dd" else "-"
    cache = f"{disk / 2**20:.0f} MiB" if name != "dd" else "-"
    ratio = f"{disk / model:.3f}" if name != "dd" else "-"
    print(f"| {name} | {secs:.2f} | {mbps:.0f} | {vs_raw} | {secs / dd:.2f}x | {kib / 1024:.1f} | {cache} | {ratio} |")
print()
for name, rs in runs.items():
    print(f"{name}: " + ", ".join(f"{r[0]:.2f} s / {r[1] / 1024:.1f} MiB" for r in rs))
PY
