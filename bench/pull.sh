#!/usr/bin/env bash
# Cold and warm pulls of one model, tugboat against skopeo (Debian) and the Python oras client,
# on one local registry in one run. Prints wall time, throughput, peak RSS and ratios.
#
#   bash bench/pull.sh                 # 2 GiB in 4 layers (the DESIGN.md target)
#   LAYERS=1 LAYER_MIB=2048 bash bench/pull.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

LAYERS=${LAYERS:-4}
LAYER_MIB=${LAYER_MIB:-512}
RUNS=${RUNS:-3}

need_packages skopeo time
python3 -c 'import oras' 2>/dev/null || pip install -q oras
cargo build --release --locked --quiet
TUGBOAT=$PWD/target/release/tugboat

WORK=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}")
trap 'kill "${REGISTRY_PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
start_registry "$WORK/registry"

mkdir -p "$WORK/model"
for i in $(seq 1 "$LAYERS"); do
  write_random "$WORK/model/model-0000$i-of-0000$LAYERS.safetensors" "$LAYER_MIB" "$i"
done
REF=$REGISTRY/bench/model:v1
"$TUGBOAT" push "$WORK/model" "$REF" --plain-http >/dev/null 2>&1
TOTAL_BYTES=$(du -cb "$WORK/model" | tail -1 | cut -f1)

# measure NAME CMD...: runs CMD RUNS times after clearing its target; records the median
# wall time and the largest peak RSS.
RESULTS=$WORK/results
: > "$RESULTS"
measure() {
  local name=$1 prepare=$2; shift 2
  local times=() rss=0
  for _ in $(seq "$RUNS"); do
    eval "$prepare"
    # Cold runs start from a cold page cache; warm runs measure the cache hit itself.
    case "$name" in
      *warm*) ;;
      *) sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true ;;
    esac
    /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" >/dev/null 2>"$WORK/stderr" || {
      echo "$name failed:" >&2; cat "$WORK/stderr" >&2; return 1; }
    read -r seconds kib < "$WORK/time"
    times+=("$seconds")
    [ "$kib" -gt "$rss" ] && rss=$kib
  done
  local median
  median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p")
  echo "$name $median $rss" >> "$RESULTS"
}

measure "tugboat-cold" 'rm -rf "$WORK/tc" "$WORK/td"' \
  "$TUGBOAT" pull "$REF" --plain-http --cache "$WORK/tc" --dest "$WORK/td"
measure "tugboat-cold-1-stream" 'rm -rf "$WORK/tc" "$WORK/td"' \
  "$TUGBOAT" pull "$REF" --plain-http --cache "$WORK/tc" --dest "$WORK/td" --concurrency 1
measure "tugboat-warm" 'rm -rf "$WORK/td"' \
  "$TUGBOAT" pull "$REF" --plain-http --cache "$WORK/tc" --dest "$WORK/td"
measure "tugboat-warm-digest" 'rm -rf "$WORK/td"' \
  "$TUGBOAT" pull "$REGISTRY/bench/model@$("$TUGBOAT" pull "$REF" --plain-http --cache "$WORK/tc" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["digest"])')" \
  --plain-http --cache "$WORK/tc" --dest "$WORK/td"
measure "skopeo-copy" 'rm -rf "$WORK/sk"' \
  skopeo copy --quiet --src-tls-verify=false "docker://$REF" "dir:$WORK/sk"
measure "oras-py-pull" 'rm -rf "$WORK/op"' \
  python3 -c "import oras.client,sys; oras.client.OrasClient(insecure=True).pull(target='$REF', outdir='$WORK/op')"

python3 - "$RESULTS" "$TOTAL_BYTES" "$LAYERS" "$LAYER_MIB" "$RUNS" <<'PY'
import sys
path, total, layers, mib, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
rows = [line.split() for line in open(path)]
data = {name: (float(sec), int(kib)) for name, sec, kib in rows}
skopeo = data["skopeo-copy"][0]
print(f"\nModel: {layers} layer(s) x {mib} MiB = {total / 2**30:.2f} GiB, registry: CNCF distribution on loopback, median of {runs} runs, page cache dropped before each cold run when permitted\n")
print(f"| tool | wall s | throughput MiB/s | peak RSS MiB | time vs skopeo |")
print(f"|---|---:|---:|---:|---:|")
for name, (sec, kib) in data.items():
    rate = total / 2**20 / sec if sec > 0 else float("inf")
    print(f"| {name} | {sec:.2f} | {rate:,.0f} | {kib / 1024:.1f} | {sec / skopeo:.2f}x |")
PY
