#!/usr/bin/env bash
# Fleets: N nodes pull one model at the same moment from one origin registry, through
#   origin    nothing: every node's tugboat talks to the origin;
#   nginx     a pull-through cache a platform team runs: nginx proxy_cache with proxy_cache_lock
#             (one shared cache host), tugboat --mirror ORIGIN=http://CACHE:5000;
#   dfdaemon  one Dragonfly dfdaemon per node (proxy rule for /v2/ blobs, as Dragonfly documents
#             for registry mirrors), tugboat --mirror ORIGIN=http://127.0.0.1:PORT (its proxy).
# and counts the bytes the origin served (an nginx TLS front in front of the registry logs
# $body_bytes_sent, the Range header and the client of every request). Prints the fleet table:
# origin bytes / model size, time until the last node has the model, per-node throughput.
#
# Every node is its own network namespace with its own tugboat process and cache (the cache-only
# pull the CSI node plugin and the warmer do) and a shaped link (tbf both ways) to a bridge;
# the origin sits behind its own link and a delay (bench/shaper: a far registry); the
# cache host has a node-sized link. Nothing leaves this machine; the /24 is private to the
# namespaces. All state is in a mktemp dir under /var/tmp, removed on exit with the namespaces.
#
# Dragonfly's scheduler (Go) cannot be built here: bench/dragonfly-scheduler-standin is a
# labelled stand-in for it (the first host of a task goes back to source, later hosts get
# other hosts' peers as parents). dfdaemon itself is the real one, built once per machine:
#   RUSTFLAGS="--cfg tokio_unstable" cargo install dragonfly-client --locked --root /opt/dfdaemon
# (needs Debian's protobuf-compiler libprotobuf-dev clang cmake; rocksdb builds from source).
#
#   bash bench/fleet.sh                                   # N = 1 4 16, all three routes
#   NODES="1 4" ROUTES="origin dfdaemon" bash bench/fleet.sh
#   NODE_MBPS=50 ORIGIN_MBPS=50 RTT_MS=40 MODEL=4x80 bash bench/fleet.sh
#   RANGE_MODEL="" ...                                    # skip the ranged-chunks rows
# The ranged-chunks rows pull RANGE_MODEL (default one 320 MiB layer: from an origin, tugboat
# fetches a blob of 256 MiB or more as parallel Range requests, up to 16 streams) on RANGE_NODES
# nodes directly, through dfdaemon with ranges forced (--streams-per-blob 16), and through
# dfdaemon with tugboat's default for a mirror (one stream per blob).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

NODES=${NODES:-"1 4 16"}
ROUTES=${ROUTES:-"origin nginx dfdaemon"}
MODEL=${MODEL:-4x80}                 # LAYERSxMiB
RANGE_MODEL=${RANGE_MODEL-1x320}
RANGE_NODES=${RANGE_NODES:-4}
PRIVATE_NODES=${PRIVATE_NODES-4}     # nodes for the private-model rows ("" skips them)
NODE_MBPS=${NODE_MBPS:-100}          # MB/s each way on every node's link
CACHE_MBPS=${CACHE_MBPS:-$NODE_MBPS} # MB/s each way on the cache host's link
ORIGIN_MBPS=${ORIGIN_MBPS:-100}      # MB/s each way on the origin's link
RTT_MS=${RTT_MS:-20}                 # round trip added in front of the origin (half each way)
ORIGIN_CONN_MBPS=${ORIGIN_CONN_MBPS:-1000} # MB/s per TCP connection to the origin (bench/shaper)
NET=${NET:-10.214.9}                 # a /24 used only inside this run's namespaces
DFDAEMON=${DFDAEMON:-/opt/dfdaemon/bin/dfdaemon}
wants_route() { case " $ROUTES " in *" $1 "*) return 0 ;; esac; return 1; }

[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
if wants_route dfdaemon && [ ! -x "$DFDAEMON" ]; then
  cat >&2 <<EOF
dfdaemon not found at $DFDAEMON (set DFDAEMON=/path/to/dfdaemon, or drop the route:
ROUTES="origin nginx"). Build it once per machine with:
  apt-get install -y protobuf-compiler libprotobuf-dev clang cmake
  RUSTFLAGS="--cfg tokio_unstable" cargo install dragonfly-client --locked --root /opt/dfdaemon
EOF
  exit 1
fi
need_packages
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx >/dev/null; }
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl >/dev/null; }

MAX_N=0
for n in $NODES $([ -n "$RANGE_MODEL" ] && echo "$RANGE_NODES") $PRIVATE_NODES; do [ "$n" -gt "$MAX_N" ] && MAX_N=$n; done
[ "$MAX_N" -le 200 ] || { echo "at most 200 nodes" >&2; exit 1; }

if [ -z "${TUGBOAT:-}" ]; then # TUGBOAT=/path/to/tugboat skips the build
  cargo build --release --locked --quiet
  TUGBOAT=${CARGO_TARGET_DIR:-$PWD/target}/release/tugboat
fi
(cd bench/shaper && { cargo build --release --quiet --offline 2>/dev/null || cargo build --release --quiet; })
SHAPER=${CARGO_TARGET_DIR:-$PWD/bench/shaper/target}/release/tugboat-bench-shaper
if wants_route dfdaemon; then
  (cd bench/dragonfly-scheduler-standin &&
    { cargo build --release --locked --quiet --offline 2>/dev/null || cargo build --release --locked --quiet; })
  STANDIN=${CARGO_TARGET_DIR:-$PWD/bench/dragonfly-scheduler-standin/target}/release/dragonfly-scheduler-standin
fi

ID=$$
NS_HUB=tfh$ID NS_ORIGIN=tfo$ID NS_CACHE=tfc$ID
node_ns() { echo "tfn${ID}x$1"; }
node_ip() { echo "$NET.$((10 + $1))"; }
ORIGIN_IP=$NET.1 CACHE_IP=$NET.2 HUB_IP=$NET.254
WORK=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}" fleet.XXXXXX)
ALL_NS=("$NS_HUB" "$NS_ORIGIN" "$NS_CACHE")
for i in $(seq 1 "$MAX_N"); do ALL_NS+=("$(node_ns "$i")"); done

cleanup() {
  # Everything running inside this run's namespaces was started by this script.
  for ns in "${ALL_NS[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
  done
  sleep 0.5
  for ns in "${ALL_NS[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  if [ -n "${KEEP_WORK:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the network: a bridge in the hub namespace, one shaped veth per host --------------------
for ns in "${ALL_NS[@]}"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n "$NS_HUB" link add br0 type bridge
ip -n "$NS_HUB" addr add "$HUB_IP/24" dev br0
ip -n "$NS_HUB" link set br0 up
# attach NS IP NAME QDISC...: veth NAME in NS with IP, its peer on the bridge; QDISC on both ends.
attach() {
  local ns=$1 ip=$2 name=$3; shift 3
  ip link add "$name" netns "$ns" type veth peer name "h$name" netns "$NS_HUB"
  ip -n "$ns" addr add "$ip/24" dev "$name"
  ip -n "$ns" link set "$name" up
  ip -n "$NS_HUB" link set "h$name" master br0 up
  ip netns exec "$ns" tc qdisc add dev "$name" root "$@"
  ip netns exec "$NS_HUB" tc qdisc add dev "h$name" root "$@"
}
tbf() { echo "tbf rate $(($1 * 8))mbit burst 2mb latency 200ms"; }
# shellcheck disable=SC2046
attach "$NS_ORIGIN" "$ORIGIN_IP" "o$ID" $(tbf "$ORIGIN_MBPS")
# shellcheck disable=SC2046
attach "$NS_CACHE" "$CACHE_IP" "c$ID" $(tbf "$CACHE_MBPS")
for i in $(seq 1 "$MAX_N"); do
  # shellcheck disable=SC2046
  attach "$(node_ns "$i")" "$(node_ip "$i")" "n${ID}x$i" $(tbf "$NODE_MBPS")
done
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# --- the origin: a registry on its loopback, an nginx TLS front that logs every byte ----------
mkdir -p "$WORK/tls" "$WORK/origin/data" "$WORK/tmp"
(
  cd "$WORK/tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=fleet-ca \
    -keyout ca.key -out ca.pem 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=fleet-origin \
    -keyout origin.key -out origin.csr 2>/dev/null
  printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\n' "$ORIGIN_IP" > ext.cnf
  openssl x509 -req -in origin.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile ext.cnf -out origin.pem 2>/dev/null
)
cat > "$WORK/origin/config.yml" <<YAML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $WORK/origin/data}, delete: {enabled: true}}
http: {addr: 127.0.0.1:5000}
YAML
in_ns "$NS_ORIGIN" docker-registry serve "$WORK/origin/config.yml" > "$WORK/origin/registry.log" 2>&1 &
nginx_common() { # PREFIX: the lines every nginx here shares
  cat <<EOF
daemon off;
user root;
worker_processes 2;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
EOF
}
nginx_temps() {
  echo "client_body_temp_path $1/body; proxy_temp_path $1/proxy; fastcgi_temp_path $1/fcgi;"
  echo "uwsgi_temp_path $1/uwsgi; scgi_temp_path $1/scgi;"
}
{
  nginx_common "$WORK/origin"
  cat <<EOF
http {
  $(nginx_temps "$WORK/origin")
  log_format fleet '\$msec \$remote_addr \$request_method \$uri \$status \$body_bytes_sent '
                   '"\$http_range" "\$http_user_agent"';
  access_log $WORK/origin/access.log fleet;
  client_max_body_size 0;
  upstream registry { server 127.0.0.1:5000; keepalive 64; }
  server {
    listen 127.0.0.1:8443 ssl;
    ssl_certificate $WORK/tls/origin.pem;
    ssl_certificate_key $WORK/tls/origin.key;
    # A private project: HTTP Basic (user fleet), as a registry with htpasswd asks for it.
    location /v2/fleet-private/ {
      auth_basic "fleet origin";
      auth_basic_user_file $WORK/origin/htpasswd;
      proxy_pass http://registry;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header Authorization "";
      proxy_buffering off;
      proxy_read_timeout 600s;
    }
    location / {
      proxy_pass http://registry;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 600s;
    }
  }
}
EOF
} > "$WORK/origin/nginx.conf"
echo 'fleet:{PLAIN}fleet-secret' > "$WORK/origin/htpasswd"
# The nodes' credentials for the private project (the node's docker config).
printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$ORIGIN_IP" "$(printf fleet:fleet-secret | base64)" \
  > "$WORK/docker-config.json"
in_ns "$NS_ORIGIN" nginx -c "$WORK/origin/nginx.conf" -e "$WORK/origin/error.log" &
# The far end: bench/shaper holds every byte RTT/2 each way (and paces each connection).
in_ns "$NS_ORIGIN" "$SHAPER" "$ORIGIN_IP:443" 127.0.0.1:8443 "$((RTT_MS / 2))" "$ORIGIN_CONN_MBPS" \
  2> "$WORK/origin/shaper.log" &
wait_http() { # NS URL [CURL ARGS]
  local ns=$1 url=$2; shift 2
  for _ in $(seq 100); do
    in_ns "$ns" curl -fsS -o /dev/null "$@" "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "no answer from $url" >&2; return 1
}
wait_http "$NS_ORIGIN" http://127.0.0.1:5000/v2/
wait_http "$(node_ns 1)" "https://$ORIGIN_IP/v2/" --cacert "$WORK/tls/ca.pem"

# --- the models, pushed on the origin's own loopback ------------------------------------------
# push_model SPEC [REPOSITORY]: LAYERSxMiB of random safetensors as REPOSITORY/mSPEC:v1.
push_model() {
  local spec=$1 repo=${2:-fleet} layers=${1%x*} mib=${1#*x} dir=$WORK/model-$1
  mkdir -p "$dir"
  for i in $(seq 1 "$layers"); do
    write_random "$dir/model-0000$i-of-0000$layers.safetensors" "$mib" "$((i + 100 * layers))"
  done
  in_ns "$NS_ORIGIN" "$TUGBOAT" push "$dir" "127.0.0.1:5000/$repo/m$spec:v1" --plain-http >/dev/null 2>&1
  rm -rf "$dir"
}
model_info() { # SPEC [REPOSITORY]: prints "REF BYTES DIGEST..."
  local repo=${2:-fleet}
  in_ns "$NS_ORIGIN" curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://127.0.0.1:5000/v2/$repo/m$1/manifests/v1" |
    python3 -c 'import json,sys; m=json.load(sys.stdin); L=m["layers"]
print(sys.argv[1], sum(l["size"] for l in L), *[l["digest"] for l in L])' "$ORIGIN_IP/$repo/m$1:v1"
}
echo "== pushing $MODEL${RANGE_MODEL:+ and $RANGE_MODEL}" >&2
push_model "$MODEL"
[ -n "$RANGE_MODEL" ] && [ "$RANGE_MODEL" != "$MODEL" ] && push_model "$RANGE_MODEL"
[ -n "$PRIVATE_NODES" ] && wants_route dfdaemon && push_model "$MODEL" fleet-private

# --- the pull-through cache host ---------------------------------------------------------------
start_cache() {
  local d=$WORK/cache
  rm -rf "$d" && mkdir -p "$d/store"
  {
    nginx_common "$d"
    cat <<EOF
http {
  $(nginx_temps "$d")
  access_log off;
  client_max_body_size 0;
  # Blobs are content-addressed: cache them by path (not by ?ns= or host) for a week, one
  # origin fetch per blob however many nodes ask at once (proxy_cache_lock; nginx fetches the
  # whole blob upstream and serves Range requests from it).
  proxy_cache_path $d/store levels=1:2 keys_zone=blobs:16m max_size=100g inactive=7d use_temp_path=off;
  server {
    listen $CACHE_IP:5000;
    location ~ "^/v2/.+/blobs/sha256:[0-9a-f]{64}\$" {
      proxy_pass https://$ORIGIN_IP;
      proxy_cache blobs;
      proxy_cache_key \$uri;
      proxy_cache_valid 200 7d;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 1h;
      proxy_cache_lock_age 1h;
      proxy_read_timeout 600s;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
    # Manifests, tags and the API root: passed through (a tag can move).
    location /v2/ {
      proxy_pass https://$ORIGIN_IP;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  } > "$d/nginx.conf"
  in_ns "$NS_CACHE" nginx -c "$d/nginx.conf" -e "$d/error.log" &
  wait_http "$(node_ns 1)" "http://$CACHE_IP:5000/v2/"
}
stop_cache() {
  local pid
  pid=$(cat "$WORK/cache/nginx.pid" 2>/dev/null) && kill "$pid" 2>/dev/null
  for _ in $(seq 50); do [ -e "$WORK/cache/nginx.pid" ] || break; sleep 0.1; done
}

# --- dfdaemon per node and the scheduler stand-in ----------------------------------------------
# Each start takes fresh ports: a dfdaemon that served pieces leaves its storage port in
# TIME_WAIT, and the next dfdaemon in that namespace would not bind it.
DF_RUNS=0
start_dragonfly() { # N; sets DF_PROXY_PORT
  local n=$1 i d ns base
  DF_RUNS=$((DF_RUNS + 1))
  base=$((20000 + 10 * DF_RUNS))
  DF_PROXY_PORT=$((base + 1))
  mkdir -p "$WORK/sched"
  ip netns exec "$NS_HUB" "$STANDIN" "$HUB_IP:8002" > "$WORK/sched/standin.log" 2>&1 &
  STANDIN_PID=$!
  for _ in $(seq 50); do grep -q listening "$WORK/sched/standin.log" && break; sleep 0.1; done
  for i in $(seq 1 "$n"); do
    d=$WORK/dfd/$i ns=$(node_ns "$i")
    rm -rf "$d" && mkdir -p "$d/log"
    cat > "$d/dynconfig.yaml" <<YAML
scheduler:
  addrs: ["$HUB_IP:8002"]
YAML
    cat > "$d/dfdaemon.yaml" <<YAML
host:
  hostname: node$i
  ip: $(node_ip "$i")
server:
  pluginDir: $d/plugins
  cacheDir: $d/cache
download:
  server:
    socketPath: $d/dfdaemon.sock
upload:
  server:
    port: $base
metrics:
  server:
    port: $((base + 2))
health:
  server:
    port: $((base + 3))
stats:
  server:
    port: $((base + 4))
storage:
  dir: $d/storage
  keep: false
  server:
    tcpPort: $((base + 5))
    quicPort: $((base + 6))
proxy:
  server:
    ip: 127.0.0.1
    port: $DF_PROXY_PORT
  # Dragonfly's documented registry-mirror rule: blobs go P2P, everything else is proxied.
  rules:
    - regex: 'blobs/sha256.*'
  registryMirror:
    addr: https://$ORIGIN_IP
    # The origin's CA, for what dfdaemon proxies itself (manifests); its back-to-source piece
    # downloads do not verify the origin's certificate at all.
    cert: $WORK/tls/ca.pem
YAML
    in_ns "$ns" "$DFDAEMON" --config "$d/dfdaemon.yaml" --dynconfig "$d/dynconfig.yaml" \
      --log-dir "$d/log" --log-level info > "$d/stdout.log" 2>&1 &
  done
  for i in $(seq 1 "$n"); do
    ns=$(node_ns "$i")
    for _ in $(seq 300); do
      in_ns "$ns" bash -c "exec 3<>/dev/tcp/127.0.0.1/$DF_PROXY_PORT" 2>/dev/null && break
      sleep 0.1
    done
    in_ns "$ns" bash -c "exec 3<>/dev/tcp/127.0.0.1/$DF_PROXY_PORT" 2>/dev/null ||
      { echo "dfdaemon on node $i did not start:" >&2; tail -n 20 "$WORK/dfd/$i/stdout.log" "$WORK/dfd/$i/log/dfdaemon.log" >&2; exit 1; }
  done
  for _ in $(seq 100); do
    [ "$(grep -c ' host node' "$WORK/sched/standin.log")" -ge "$n" ] && break
    sleep 0.1
  done
}
stop_dragonfly() { # N LABEL
  local n=$1 i pid
  for i in $(seq 1 "$n"); do
    for pid in $(ip netns pids "$(node_ns "$i")"); do kill "$pid" 2>/dev/null || true; done
  done
  for i in $(seq 1 "$n"); do
    for _ in $(seq 100); do [ -z "$(ip netns pids "$(node_ns "$i")")" ] && break; sleep 0.1; done
    # A dfdaemon still shutting down holds its ports: the next run's would not start.
    for pid in $(ip netns pids "$(node_ns "$i")"); do kill -9 "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do [ -z "$(ip netns pids "$(node_ns "$i")")" ] && break; sleep 0.1; done
  done
  kill "$STANDIN_PID" 2>/dev/null || true
  wait "$STANDIN_PID" 2>/dev/null || true
  cp "$WORK/sched/standin.log" "$WORK/results/standin-$2.log"
  if [ -n "${KEEP_WORK:-}" ]; then
    for i in $(seq 1 "$n"); do rm -rf "$WORK/dfd/$i/storage"; done
    mv "$WORK/dfd" "$WORK/results/dfd-$label-$n-$(date +%s)"
  fi
  rm -rf "$WORK/dfd"
}

# --- one run -------------------------------------------------------------------------------------
mkdir -p "$WORK/results"
ROWS=$WORK/results/rows
: > "$ROWS"
# run LABEL ROUTE N SPEC [TUGBOAT ARGS]: every node pulls at once; one row in $ROWS.
run() {
  local label=$1 route=$2 n=$3 spec=$4; shift 4
  local ref bytes digests mirror=() creds=() i start offset repo=fleet mirror_flag=--mirror
  case $label in
    # The private project, with the node's credentials; private-trusted declares the mirror
    # with --trusted-mirror so that it is sent them.
    private*) repo=fleet-private creds=(--docker-config "$WORK/docker-config.json") ;;
  esac
  [ "$label" = private-trusted ] && mirror_flag=--trusted-mirror
  read -r ref bytes digests < <(model_info "$spec" "$repo")
  case $route in
    nginx) start_cache; mirror=("$mirror_flag" "$ORIGIN_IP=http://$CACHE_IP:5000") ;;
    dfdaemon) start_dragonfly "$n"; mirror=("$mirror_flag" "$ORIGIN_IP=http://127.0.0.1:$DF_PROXY_PORT") ;;
  esac
  rm -rf "$WORK/nodes" && mkdir -p "$WORK/nodes"
  sync
  offset=$(stat -c %s "$WORK/origin/access.log")
  start=$(date +%s.%N)
  for i in $(seq 1 "$n"); do
    mkdir -p "$WORK/nodes/$i"
    (
      rc=0
      in_ns "$(node_ns "$i")" "$TUGBOAT" pull "$ref" --cache "$WORK/nodes/$i/cache" \
        --ca-file "$WORK/tls/ca.pem" "${mirror[@]}" "${creds[@]}" "$@" > /dev/null 2> "$WORK/nodes/$i/stderr" || rc=$?
      echo "$rc $(date +%s.%N)" > "$WORK/nodes/$i/done"
    ) &
  done
  wait_nodes "$n"
  local times=() failed=0 fallbacks=0 rc end
  for i in $(seq 1 "$n"); do
    read -r rc end < "$WORK/nodes/$i/done"
    if [ "$rc" != 0 ]; then
      failed=$((failed + 1)); echo "node $i ($label, $route, N=$n) failed:" >&2
      tail -5 "$WORK/nodes/$i/stderr" >&2
    fi
    for d in $digests; do
      [ "$rc" != 0 ] || [ -f "$WORK/nodes/$i/cache/blobs/sha256/${d#sha256:}" ] ||
        { echo "node $i: blob $d missing" >&2; failed=$((failed + 1)); }
    done
    fallbacks=$((fallbacks + $(grep -c 'falling back\|comes from the origin, not the mirror' "$WORK/nodes/$i/stderr" || true)))
    [ "$i" = 1 ] && grep -m1 'comes from the origin, not the mirror' "$WORK/nodes/$i/stderr" \
      > "$WORK/results/warning-$label-$route-$n" || true
    times+=("$(python3 -c "print(f'{$end - $start:.3f}')")")
  done
  sleep 1 # nginx writes a request's log line when it completes
  local origin
  origin=$(tail -c +"$((offset + 1))" "$WORK/origin/access.log" | python3 -c '
import sys, shlex
blob_bytes = total = gets = ranged = heads = 0
for line in sys.stdin:
    f = shlex.split(line)
    method, uri, status, sent, rng = f[2], f[3], f[4], int(f[5]), f[6]
    total += sent
    if "/blobs/" in uri:
        blob_bytes += sent
        if method == "GET": gets += 1; ranged += rng not in ("", "-")
        elif method == "HEAD": heads += 1
print(total, blob_bytes, gets, ranged, heads)')
  local btos="-"
  case $route in
    nginx) stop_cache ;;
    dfdaemon)
      stop_dragonfly "$n" "$label"
      btos=$({ grep '^summary task=' "$WORK/results/standin-$label.log" || true; } |
        sed -n 's/.*back_to_source=\([0-9]*\).*/\1/p' | awk '{s += $1} END {print s + 0}')
      ;;
  esac
  echo "$label $route $n $spec $bytes $failed $fallbacks $btos $origin ${times[*]}" >> "$ROWS"
  echo "  $label $route N=$n: last node $(printf '%s\n' "${times[@]}" | sort -n | tail -1)s," \
    "origin sent $(echo "$origin" | cut -d' ' -f1) bytes ($bytes the model), failed $failed" >&2
  if [ -n "${KEEP_WORK:-}" ]; then
    for i in $(seq 1 "$n"); do cp "$WORK/nodes/$i/stderr" "$WORK/results/tugboat-$label-$route-$n-$i.err"; done
  fi
  rm -rf "$WORK/nodes"
}
wait_nodes() {
  local n=$1 i
  while :; do
    for i in $(seq 1 "$n"); do
      [ -e "$WORK/nodes/$i/done" ] || { sleep 0.1; continue 2; }
    done
    return 0
  done
}

for n in $NODES; do
  for route in $ROUTES; do
    echo "== $route, N=$n, $MODEL" >&2
    run table "$route" "$n" "$MODEL"
  done
done
if [ -n "$RANGE_MODEL" ]; then
  echo "== ranged chunks: $RANGE_MODEL on $RANGE_NODES nodes" >&2
  run ranges origin "$RANGE_NODES" "$RANGE_MODEL"
  if wants_route dfdaemon; then
    # Ranges forced through dfdaemon (up to 16 per blob, tugboat's default towards an origin),
    # then tugboat's default through a mirror: one stream per blob.
    run ranges-forced dfdaemon "$RANGE_NODES" "$RANGE_MODEL" --streams-per-blob 16
    run ranges dfdaemon "$RANGE_NODES" "$RANGE_MODEL"
  fi
fi
if [ -n "$PRIVATE_NODES" ] && wants_route dfdaemon; then
  echo "== a private model through dfdaemon on $PRIVATE_NODES nodes, --mirror then --trusted-mirror" >&2
  run private dfdaemon "$PRIVATE_NODES" "$MODEL"
  run private-trusted dfdaemon "$PRIVATE_NODES" "$MODEL"
  for w in "$WORK"/results/warning-private-*; do
    [ -s "$w" ] && { echo "what the user sees without --trusted-mirror (node 1):" >&2; cat "$w" >&2; }
  done
fi
cp "$ROWS" "${FLEET_ROWS:-/dev/null}" 2>/dev/null || true

python3 - "$ROWS" "$NODE_MBPS" "$CACHE_MBPS" "$ORIGIN_MBPS" "$RTT_MS" "$(nproc)" <<'PY'
import statistics, sys
path, node, cache, origin, rtt, cpus = sys.argv[1:7]
rows = []
for line in open(path):
    f = line.split()
    label, route, n, spec, size, failed, fallbacks, btos = f[:8]
    total, blob, gets, ranged, heads = map(int, f[8:13])
    times = [float(t) for t in f[13:]]
    rows.append(dict(label=label, route=route, n=int(n), spec=spec, size=int(size),
                     failed=int(failed), fallbacks=int(fallbacks), btos=btos, total=total,
                     blob=blob, gets=gets, ranged=ranged, heads=heads, times=times))
print(f"\nEach node: its own network namespace, tugboat process and cache; {node} MB/s each way "
      f"per node link (tbf); origin link {origin} MB/s with {rtt} ms RTT added (bench/shaper); cache "
      f"host link {cache} MB/s; all nodes start at once; {cpus} CPUs shared by everything. "
      "Origin bytes: every body byte the origin's nginx front sent (blobs and manifests). "
      "dfdaemon parents come from a stand-in for Dragonfly's scheduler.\n")
def table(rows, title):
    if not rows:
        return
    print(f"{title}\n")
    print("| route | N | model | origin bytes / model | origin blob GETs (with Range) | blob HEADs "
          "| back-to-source peers | last node has it, s | per-node MB/s median (min) | failed | mirror fallbacks |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mbps = [r["size"] / 1e6 / t for t in r["times"]]
        extra = {"ranges-forced": ", ranges forced: --streams-per-blob 16",
                 "ranges": ", default",
                 "private": ", private, --mirror",
                 "private-trusted": ", private, --trusted-mirror"}.get(r["label"], "")
        print(f"| {r['route']}{extra} "
              f"| {r['n']} | {r['spec']} MiB | {r['total'] / r['size']:.2f}x | {r['gets']} ({r['ranged']}) "
              f"| {r['heads']} | {r['btos']} | {max(r['times']):.1f} | {statistics.median(mbps):.0f} ({min(mbps):.0f}) "
              f"| {r['failed']} | {r['fallbacks']} |")
    print()
table([r for r in rows if r["label"] == "table"], "Fleet table")
one = {r["route"]: max(r["times"]) for r in rows if r["label"] == "table" and r["n"] == 1}
if "origin" in one and "dfdaemon" in one:
    print(f"One node, one model: through dfdaemon {one['dfdaemon']:.1f} s vs direct {one['origin']:.1f} s: "
          f"{one['dfdaemon'] / one['origin']:.2f}x wall time.\n")
ranges = [r for r in rows if r["label"].startswith("ranges")]
if ranges:
    table(ranges, "Ranged chunks (tugboat's parallel Range requests per blob)")
private = [r for r in rows if r["label"].startswith("private")]
if private:
    table(private, "A private model (HTTP Basic at the origin) through dfdaemon")
PY
