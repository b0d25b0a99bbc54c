#!/usr/bin/env bash
# Node labels against a real kube-apiserver (not run in CI): etcd and kube-apiserver on
# loopback (RBAC on, an audit log of every request the daemon makes), a Node object created by
# hand, manifests/rbac.yaml applied, and `tugboat node --advertise on` outside a pod with a
# kubeconfig holding the ServiceAccount's token (`kubectl create token`). Measures:
#   1. warm a model (the warm list changes): seconds until its labels are on the Node;
#   2. `cache gc` evicts a pulled model: seconds until its labels are gone;
#   3. `cache rm`: likewise;
#   4. labels edited by hand while the daemon is down: reconciled at start (seconds, requests);
#   5. 200 models held: apiserver requests per minute from the daemon, while labelling, in
#      steady state, and in the minute after a restart (from the audit log);
# and checks that the ServiceAccount can get and patch nodes and nothing more.
#
#   K8S_BIN=/tmp/k8s-bin bash bench/advertise.sh
#   MODELS=200 STEADY_MINUTES=11 TUGBOAT=target/debug/tugboat bash bench/advertise.sh
#
# Needs root, kube-apiserver in $K8S_BIN, and etcd (Debian's etcd-server, installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

K8S_BIN=${K8S_BIN:-/tmp/k8s-bin}
MODELS=${MODELS:-200}
STEADY_MINUTES=${STEADY_MINUTES:-3}
NODE=bench-node
SA_USER=system:serviceaccount:tugboat-system:tugboat-node

[ -x "$K8S_BIN/kube-apiserver" ] || { echo "no kube-apiserver in $K8S_BIN (K8S_BIN=...)"; exit 1; }
need_packages
command -v etcd >/dev/null || { apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null; }
command -v kubectl >/dev/null || { echo "kubectl is needed"; exit 1; }
if [ -z "${TUGBOAT:-}" ]; then
  cargo build --release --locked --quiet
  TUGBOAT=$PWD/target/release/tugboat
fi

WORK=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}" "${DAEMON_PID:-}" "${REGISTRY_PID:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

# ---- the control plane: etcd + kube-apiserver, audit log of the daemon's requests ----------------
ETCD_PORT=$(free_port); ETCD_PEER=$(free_port); API_PORT=$(free_port)
etcd --name bench --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER" > "$WORK/etcd.log" 2>&1 &
PIDS+=($!)
openssl genrsa -out "$WORK/sa.key" 2048 2>/dev/null
openssl rsa -in "$WORK/sa.key" -pubout -out "$WORK/sa.pub" 2>/dev/null
echo "admintoken,admin,admin,system:masters" > "$WORK/tokens.csv"
cat > "$WORK/audit.yaml" <<YAML
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    users: ["$SA_USER"]
  - level: None
YAML
"$K8S_BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$ETCD_PORT" --bind-address=127.0.0.1 \
  --advertise-address=127.0.0.1 --secure-port="$API_PORT" --cert-dir="$WORK/certs" \
  --token-auth-file="$WORK/tokens.csv" --authorization-mode=RBAC \
  --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$WORK/sa.pub" \
  --service-account-signing-key-file="$WORK/sa.key" --service-cluster-ip-range=10.96.0.0/24 \
  --endpoint-reconciler-type=none --enable-priority-and-fairness=false \
  --audit-policy-file="$WORK/audit.yaml" --audit-log-path="$WORK/audit.log" \
  --audit-log-mode=blocking > "$WORK/apiserver.log" 2>&1 &
PIDS+=($!)
cat > "$WORK/admin.kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters: [{name: bench, cluster: {server: "https://127.0.0.1:$API_PORT", insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: admintoken}}]
contexts: [{name: bench, context: {cluster: bench, user: admin}}]
current-context: bench
YAML
export KUBECONFIG=$WORK/admin.kubeconfig
for _ in $(seq 120); do kubectl get --raw /readyz >/dev/null 2>&1 && break; sleep 1; done
kubectl get --raw /readyz >/dev/null || { tail -20 "$WORK/apiserver.log"; exit 1; }
echo "== kube-apiserver $("$K8S_BIN/kube-apiserver" --version | awk '{print $2}') on 127.0.0.1:$API_PORT"

# ---- the Node (by hand), the namespace, the ServiceAccount and its RBAC from manifests/ ----------
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Node
metadata:
  name: $NODE
  labels: {kubernetes.io/hostname: $NODE, gpu: a100}
YAML
kubectl apply -f manifests/namespace.yaml -f manifests/serviceaccount.yaml -f manifests/rbac.yaml >/dev/null
TOKEN=$(kubectl create token tugboat-node -n tugboat-system --duration=2h)
cat > "$WORK/daemon.kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters: [{name: bench, cluster: {server: "https://127.0.0.1:$API_PORT", insecure-skip-tls-verify: true}}]
users: [{name: tugboat-node, user: {token: "$TOKEN"}}]
contexts: [{name: bench, context: {cluster: bench, user: tugboat-node}}]
current-context: bench
YAML
as_sa() { kubectl --kubeconfig "$WORK/daemon.kubeconfig" "$@"; }
echo "== RBAC of $SA_USER:"
for check in "get nodes" "patch nodes" "list nodes" "watch nodes" "update nodes" "delete nodes" \
             "get pods" "get secrets" "create nodes"; do
  printf '   can-i %-14s %s\n' "$check" "$(as_sa auth can-i $check 2>/dev/null || true)"
done
[ "$(as_sa auth can-i get nodes 2>/dev/null)" = yes ] && [ "$(as_sa auth can-i patch nodes 2>/dev/null)" = yes ]
[ "$(as_sa auth can-i list nodes 2>/dev/null || true)" = no ] && [ "$(as_sa auth can-i get secrets 2>/dev/null || true)" = no ]
# `auth can-i` itself is a request of the daemon's identity: start the audit count after it.
sleep 1; : > "$WORK/audit.log"

# ---- models in a registry ----------------------------------------------------------------------
start_registry "$WORK/registry"
echo "== pushing $MODELS small models and 3 more to $REGISTRY"
push_model() {  # push_model REPO SEED
  mkdir -p "$WORK/src/$1"
  head -c 4096 /dev/urandom > "$WORK/src/$1/model.gguf"
  "$TUGBOAT" push "$WORK/src/$1" "$REGISTRY/$1:v1" --plain-http >/dev/null 2>&1
}
for m in warm pulled removed; do push_model "bench/$m"; done
for i in $(seq -w 1 "$MODELS"); do push_model "many/m$i"; done

# ---- helpers ------------------------------------------------------------------------------------
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }
labels() { kubectl get node "$NODE" -o go-template='{{range $k, $v := .metadata.labels}}{{$k}}={{$v}}{{"\n"}}{{end}}'; }
owned() { labels | grep -E '^(tag|digest|name)\.model\.tugboat\.io/' || true; }
key_of() { "$TUGBOAT" affinity "$1" --keys; }
wait_label() {  # wait_label KEY present|absent [SECONDS]
  local deadline=$((SECONDS + ${3:-120}))
  while :; do
    # The labels are read whole first: `kubectl ... | grep -q` under pipefail fails when grep
    # stops reading early, which would read as "absent".
    local now_labels
    now_labels=$(labels) || { sleep 0.1; continue; }
    if grep -q "^$1=" <<< "$now_labels"; then [ "$2" = present ] && return 0; else [ "$2" = absent ] && return 0; fi
    [ $SECONDS -lt $deadline ] || { echo "timeout: $1 not $2"; tail -20 "$WORK/daemon.log"; return 1; }
    sleep 0.1
  done
}
requests() {  # requests [FROM_LINE]: "N get, M patch" in the audit log from line FROM_LINE on
  python3 - "$WORK/audit.log" "${1:-1}" <<'PY'
import json, sys
path, start = sys.argv[1], int(sys.argv[2])
counts = {}
with open(path) as f:
    for i, line in enumerate(f, 1):
        if i < start or not line.strip():
            continue
        e = json.loads(line)
        counts[e["verb"]] = counts.get(e["verb"], 0) + 1
print(", ".join(f"{n} {v}" for v, n in sorted(counts.items())) or "0 requests")
PY
}
audit_lines() { wc -l < "$WORK/audit.log"; }
CACHE=$WORK/cache
WARM=$WORK/warm.yaml
echo "models: []" > "$WARM"
METRICS_PORT=$(free_port)
start_daemon() {
  "$TUGBOAT" node --csi-endpoint "unix://$WORK/csi.sock" --node-id "$NODE" --cache "$CACHE" \
    --warm-config "$WARM" --plain-http --http-addr "127.0.0.1:$METRICS_PORT" --gc-interval 3600 \
    --advertise on --node-name "$NODE" --kubeconfig "$WORK/daemon.kubeconfig" \
    --advertise-max-models "$((MODELS + 10))" --log-json >> "$WORK/daemon.log" 2>&1 &
  DAEMON_PID=$!
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "daemon did not start"; tail "$WORK/daemon.log"; exit 1
}
stop_daemon() { kill "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true; DAEMON_PID=; }

start_daemon
echo "== daemon up; labels owned by tugboat: $(owned | wc -l)"

# 1. warm a model
WARM_REF=$REGISTRY/bench/warm:v1
printf 'interval: 1h\nmodels:\n  - reference: %s\n    name: bench-warm\n' "$WARM_REF" > "$WARM"
t0=$(now)
wait_label "$(key_of "$WARM_REF")" present
t_label=$(since "$t0")
wait_label name.model.tugboat.io/bench-warm present
echo "1. warm list written -> tag label on the Node: ${t_label} s (includes the warm loop noticing the file, <= 2 s, and the pull)"
t0=$(now)
PULLED_REF=$REGISTRY/bench/pulled:v1
"$TUGBOAT" pull "$PULLED_REF" --cache "$CACHE" --plain-http >/dev/null 2>&1
t_pull=$(since "$t0"); t0=$(now)
wait_label "$(key_of "$PULLED_REF")" present
echo "   tugboat pull --cache done -> label: $(since "$t0") s (pull took ${t_pull} s)"

# 2. cache gc evicts the pulled model (the warm one is leased)
t0=$(now)
"$TUGBOAT" cache gc --max-size 1 --cache "$CACHE" >/dev/null
t0=$(now)
wait_label "$(key_of "$PULLED_REF")" absent
echo "2. cache gc evicted -> label gone: $(since "$t0") s; the warm model's label stays: $(grep -c "^$(key_of "$WARM_REF")=" <<< "$(labels)")"

# 3. cache rm
REMOVED_REF=$REGISTRY/bench/removed:v1
"$TUGBOAT" pull "$REMOVED_REF" --cache "$CACHE" --plain-http >/dev/null 2>&1
wait_label "$(key_of "$REMOVED_REF")" present
"$TUGBOAT" cache rm "$REMOVED_REF" --cache "$CACHE" >/dev/null
t0=$(now)
wait_label "$(key_of "$REMOVED_REF")" absent
echo "3. cache rm -> label gone: $(since "$t0") s"

# 4. hand edits while the daemon is down
stop_daemon
kubectl label node "$NODE" "$(key_of "$WARM_REF")-" "digest.model.tugboat.io/sha256.$(printf '0%.0s' $(seq 56))=true" \
  "tag.model.tugboat.io/stale_v0-000000000000=sha256.0" name.model.tugboat.io/bench-warm=edited --overwrite >/dev/null
echo "4. edited by hand while down: $(owned | tr '\n' ' ')"
mark=$(( $(audit_lines) + 1 ))
t0=$(now)
start_daemon
wait_label "$(key_of "$WARM_REF")" present
wait_label "tag.model.tugboat.io/stale_v0-000000000000" absent
t_rec=$(since "$t0")
sleep 6
echo "   reconciled at start in ${t_rec} s (daemon start included) with $(requests "$mark"); owned now: $(owned | tr '\n' ' ')"

# 5. 200 models: requests per minute
{
  echo "interval: 1h"; echo "models:"
  echo "  - reference: $WARM_REF"; echo "    name: bench-warm"
  for i in $(seq -w 1 "$MODELS"); do echo "  - reference: $REGISTRY/many/m$i:v1"; done
} > "$WARM"
mark=$(( $(audit_lines) + 1 ))
t0=$(now)
deadline=$((SECONDS + 900))
until [ "$(owned | grep -c '^digest\.')" -ge $((MODELS + 1)) ]; do
  [ $SECONDS -lt $deadline ] || { echo "the $MODELS models were not all labelled"; exit 1; }
  sleep 1
done
t_all=$(since "$t0")
echo "5. $MODELS more models warmed and labelled in ${t_all} s with $(requests "$mark") ($(owned | wc -l) tugboat labels on the Node)"
sleep 10
mark=$(( $(audit_lines) + 1 ))
echo "   steady state: watching the audit log for $STEADY_MINUTES min"
sleep $((STEADY_MINUTES * 60))
echo "   steady state, $STEADY_MINUTES min holding $((MODELS + 1)) models: $(requests "$mark") (one GET every 10 min by design)"
stop_daemon
mark=$(( $(audit_lines) + 1 ))
start_daemon
sleep 60
echo "   the minute after a restart: $(requests "$mark")"
curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^tugboat_advertise' || true
bytes=$(kubectl get node "$NODE" -o json | wc -c)
echo "   Node object: $(owned | wc -l) tugboat labels, $bytes bytes as JSON"
