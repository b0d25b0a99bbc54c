#!/usr/bin/env bash
# Cold pulls over a shaped link that looks like a far registry, tugboat against skopeo and the
# Python oras client, in one run on one link. Prints wall time, throughput, peak RSS, ratios.
#
# The registry and the shaping proxy (bench/shaper: a one-way delay per direction and a
# throughput bound per connection) run in their own network namespace; the clients run in a
# second one; a veth pair with a private /30 (used only inside these two namespaces) joins
# them, with a tbf qdisc capping the total bandwidth. Nothing leaves this machine.
#
#   bash bench/shaped.sh                               # 2 GiB x 1 layer and 512 MiB x 4 layers
#   RTT_MS=40 CONN_MBPS=25 TOTAL_MBPS=400 RUNS=3 bash bench/shaped.sh
#   PACKING=tar TOOLS=tugboat MODELS=4x512 bash bench/shaped.sh   # one-file tar layers (modctl's
#                                               layout, pushed with modelpack-client), tugboat only
# Tools: tugboat (into --dest, as the init container), tugboat-cache (into the cache only, as the
# CSI node plugin and the warmer), tugboat-1-stream (--streams-per-blob 1), skopeo, oras-py.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

RTT_MS=${RTT_MS:-40}          # round trip added by the proxy (half each way)
CONN_MBPS=${CONN_MBPS:-25}    # MB/s per TCP connection, each direction
TOTAL_MBPS=${TOTAL_MBPS:-400} # MB/s on the link in total (tbf)
RUNS=${RUNS:-1}
MODELS=${MODELS:-"1x2048 4x512"}  # LAYERSxMiB per model
NET=${NET:-10.213.77}             # the /30: .1 clients, .2 registry
PACKING=${PACKING:-raw}           # raw: one file per layer (tugboat push); tar: one-file tar layers
TOOLS=${TOOLS:-"tugboat tugboat-cache tugboat-1-stream skopeo oras-py"}
wants() { case " $TOOLS " in *" $1 "*) return 0 ;; esac; return 1; }

[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
need_packages skopeo time
python3 -c 'import oras' 2>/dev/null || pip install -q oras
cargo build --release --locked --quiet
(cd bench/shaper && cargo build --release --quiet --offline 2>/dev/null || cargo build --release --quiet)
TUGBOAT=$PWD/target/release/tugboat
SHAPER=$PWD/bench/shaper/target/release/tugboat-bench-shaper

ID=$$
NS_REG=tbreg$ID NS_CLI=tbcli$ID VETH_REG=tbr$ID VETH_CLI=tbc$ID
WORK=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}")
cleanup() {
  # Everything still running inside this run's namespaces was started by this script.
  for ns in "$NS_REG" "$NS_CLI"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
  done
  sleep 0.2
  ip netns del "$NS_REG" 2>/dev/null || true
  ip netns del "$NS_CLI" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$NS_REG"
ip netns add "$NS_CLI"
ip link add "$VETH_CLI" type veth peer name "$VETH_REG"
ip link set "$VETH_REG" netns "$NS_REG"
ip link set "$VETH_CLI" netns "$NS_CLI"
ip -n "$NS_REG" addr add "$NET.2/30" dev "$VETH_REG"
ip -n "$NS_CLI" addr add "$NET.1/30" dev "$VETH_CLI"
for ns_dev in "$NS_REG $VETH_REG" "$NS_CLI $VETH_CLI"; do
  set -- $ns_dev
  ip -n "$1" link set lo up
  ip -n "$1" link set "$2" up
  ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$((TOTAL_MBPS * 8))mbit" burst 2mb latency 200ms
done
in_reg() { ip netns exec "$NS_REG" "$@"; }
in_cli() { ip netns exec "$NS_CLI" "$@"; }

# The registry listens on the namespace's loopback; only the shaper faces the link.
mkdir -p "$WORK/registry/data"
cat > "$WORK/registry/config.yml" <<YAML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $WORK/registry/data}, delete: {enabled: true}}
http: {addr: 127.0.0.1:5000}
YAML
ip netns exec "$NS_REG" docker-registry serve "$WORK/registry/config.yml" > "$WORK/registry.log" 2>&1 &
ip netns exec "$NS_REG" "$SHAPER" "$NET.2:5000" 127.0.0.1:5000 "$((RTT_MS / 2))" "$CONN_MBPS" 2> "$WORK/shaper.log" &
for _ in $(seq 100); do
  in_cli curl -fsS "http://$NET.2:5000/v2/" >/dev/null 2>&1 && break
  sleep 0.1
done
in_cli curl -fsS "http://$NET.2:5000/v2/" >/dev/null

RESULTS=$WORK/results
: > "$RESULTS"
# measure MODEL NAME PREPARE CMD...: median wall time of RUNS runs and the largest peak RSS.
measure() {
  local model=$1 name=$2 prepare=$3; shift 3
  local times=() rss=0
  for _ in $(seq "$RUNS"); do
    eval "$prepare"
    in_cli /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" >/dev/null 2>"$WORK/stderr" || {
      echo "$name failed:" >&2; tail -20 "$WORK/stderr" >&2; return 1; }
    read -r seconds kib < "$WORK/time"
    times+=("$seconds")
    [ "$kib" -gt "$rss" ] && rss=$kib
  done
  local median
  median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p")
  echo "$model $name $median $rss" >> "$RESULTS"
  echo "  $model $name: ${median}s, peak RSS $((rss / 1024)) MiB" >&2
}

# check_digests DIR: every pulled file matches the file pushed.
check_digests() {
  (cd "$WORK/model" && find . -type f -exec sha256sum {} +) | sed "s|  \./|  $1/|" |
    sha256sum -c --quiet - ||
    { echo "digest mismatch in $1" >&2; exit 1; }
}

for spec in $MODELS; do
  layers=${spec%x*} mib=${spec#*x}
  model="${layers}x${mib}MiB"
  rm -rf "$WORK/model" && mkdir -p "$WORK/model"
  pushed=()
  for i in $(seq 1 "$layers"); do
    name=model-0000$i-of-0000$layers.safetensors
    if [ "$PACKING" = tar ]; then
      mkdir -p "$WORK/model/shard$i"
      write_random "$WORK/model/shard$i/$name" "$mib" "$i"
      pushed+=(--layer "$WORK/model/shard$i:application/vnd.cncf.model.weight.v1.tar")
    else
      write_random "$WORK/model/$name" "$mib" "$i"
    fi
  done
  # Pushed on the registry's own loopback (unshaped); pulled over the link.
  if [ "$PACKING" = tar ]; then
    echo '{"descriptor":{"name":"bench"},"config":{}}' > "$WORK/config.json"
    in_reg modelpack --insecure push "127.0.0.1:5000/bench/m$layers:v1" \
      --config "$WORK/config.json" "${pushed[@]}" >/dev/null
  else
    in_reg "$TUGBOAT" push "$WORK/model" "127.0.0.1:5000/bench/m$layers:v1" --plain-http >/dev/null 2>&1
  fi
  REF=$NET.2:5000/bench/m$layers:v1
  echo "== $model" >&2

  if wants tugboat; then
    measure "$model" tugboat 'rm -rf "$WORK/tc" "$WORK/td"' \
      "$TUGBOAT" pull "$REF" --plain-http --cache "$WORK/tc" --dest "$WORK/td"
    check_digests "$WORK/td"
  fi
  if wants tugboat-cache; then
    # Into the cache only, as the CSI node plugin and the cache warmer pull: no --dest copy.
    measure "$model" tugboat-cache 'rm -rf "$WORK/tc"' \
      "$TUGBOAT" pull "$REF" --plain-http --cache "$WORK/tc"
  fi
  if wants tugboat-1-stream; then
    measure "$model" tugboat-1-stream 'rm -rf "$WORK/tc" "$WORK/td"' \
      "$TUGBOAT" pull "$REF" --plain-http --cache "$WORK/tc" --dest "$WORK/td" --streams-per-blob 1
    check_digests "$WORK/td"
  fi
  if wants skopeo; then
    measure "$model" skopeo 'rm -rf "$WORK/sk"' \
      skopeo copy --quiet --src-tls-verify=false "docker://$REF" "dir:$WORK/sk"
  fi
  if wants oras-py; then
    measure "$model" oras-py 'rm -rf "$WORK/op"' \
      python3 -c "import oras.client; oras.client.OrasClient(insecure=True).pull(target='$REF', outdir='$WORK/op')"
    check_digests "$WORK/op"
  fi
  rm -rf "$WORK/tc" "$WORK/td" "$WORK/sk" "$WORK/op"
done

python3 - "$RESULTS" "$RTT_MS" "$CONN_MBPS" "$TOTAL_MBPS" "$RUNS" "$(nproc)" <<'PY'
import sys
path, rtt, conn, total, runs, cpus = sys.argv[1:7]
rows = [line.split() for line in open(path)]
models = list(dict.fromkeys(r[0] for r in rows))
print(f"\nLink: registry in its own network namespace behind a veth pair; {rtt} ms RTT and "
      f"{conn} MB/s per TCP connection (bench/shaper proxy), {total} MB/s in total (tbf); "
      f"CNCF distribution registry; median of {runs} run(s); {cpus} CPUs; digests of tugboat's "
      f"and oras' files checked against the pushed files.\n")
print("| model | tool | wall s | throughput MB/s | share of link cap | peak RSS MiB | time vs best peer |")
print("|---|---|---:|---:|---:|---:|---:|")
for model in models:
    layers, mib = model.rstrip("MiB").split("x")
    size = int(layers) * int(mib) * 2**20
    data = {r[1]: (float(r[2]), int(r[3])) for r in rows if r[0] == model}
    peers = [data[p][0] for p in ("skopeo", "oras-py") if p in data]
    best = min(peers) if peers else None
    for name, (sec, kib) in data.items():
        ratio = f"{sec / best:.2f}x" if best else "-"
        mbps = size / 1e6 / sec
        share = f"{100 * mbps / int(total):.0f}%"
        print(f"| {model} | {name} | {sec:.1f} | {mbps:,.0f} | {share} | {kib / 1024:.1f} | {ratio} |")
PY
