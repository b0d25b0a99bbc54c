#!/usr/bin/env bash
# Scheduling onto warm nodes with the stock kube-scheduler (not run in CI). Needs a running
# cluster with kubelet, kube-scheduler and kube-controller-manager (KUBECONFIG, an admin), one
# Ready node whose cache the daemon here stands for (NODE, default: the first Ready node), and
# root on that node's machine (the single-node development cluster: tugboat node runs on the
# host with --kubeconfig instead of in the DaemonSet).
#
# A second Node, `decoy`, is registered by hand with the same capacity and kept Ready (its
# Lease and Ready condition renewed every 10 s), so the scheduler has a real choice; pods it
# binds there never run (no kubelet), which is fine: what is measured is where they are bound.
#   1. `tugboat node --advertise on` warms a model: the label appears on NODE;
#   2. a Deployment (REPLICAS replicas) with the affinity `tugboat affinity REF --preferred`
#      prints: where its pods are bound, against the same Deployment without it;
#   3. a Deployment with `tugboat affinity ABSENT --required` for a model no node holds: it
#      stays Pending (FailedScheduling), and is scheduled once the model is warmed.
#
#   KUBECONFIG=/tmp/k8s-run/kubeconfig TUGBOAT=target/debug/tugboat bash bench/schedule.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

REPLICAS=${REPLICAS:-4}
IMAGE=${IMAGE:-registry.k8s.io/pause:3.10}   # on every node: it is the sandbox image
NS=tugboat-schedule-bench
need_packages
command -v kubectl >/dev/null || { echo "kubectl is needed"; exit 1; }
kubectl get --raw /readyz >/dev/null || { echo "no cluster at KUBECONFIG=${KUBECONFIG:-}"; exit 1; }
if [ -z "${TUGBOAT:-}" ]; then
  cargo build --release --locked --quiet
  TUGBOAT=$PWD/target/release/tugboat
fi
NODE=${NODE:-$(kubectl get nodes -o go-template='{{range .items}}{{$n := .metadata.name}}{{range .status.conditions}}{{if and (eq .type "Ready") (eq .status "True")}}{{$n}}{{"\n"}}{{end}}{{end}}{{end}}' | head -n1)}
[ -n "$NODE" ] || { echo "no Ready node"; exit 1; }
kubectl get pods -n kube-system -o name >/dev/null
echo "== cluster $(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])'), node $NODE"

WORK=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}")
HEARTBEAT_PID=
cleanup() {
  kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  kubectl delete node decoy >/dev/null 2>&1 || true
  kubectl -n kube-node-lease delete lease decoy >/dev/null 2>&1 || true
  [ -n "${DAEMON_PID:-}" ] && kill "$DAEMON_PID" 2>/dev/null
  [ -n "$HEARTBEAT_PID" ] && kill "$HEARTBEAT_PID" 2>/dev/null
  kill "${REGISTRY_PID:-}" 2>/dev/null || true
  if [ -n "${NODE_LABELS_BEFORE:-}" ]; then   # take tugboat's labels off the node again
    for k in $(kubectl get node "$NODE" -o go-template='{{range $k, $v := .metadata.labels}}{{$k}}{{"\n"}}{{end}}' | grep -E '\.model\.tugboat\.io/' || true); do
      kubectl label node "$NODE" "$k-" >/dev/null 2>&1 || true
    done
  fi
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
kubectl create namespace "$NS" >/dev/null

# ---- the decoy node: same capacity as NODE, Ready, heartbeating -----------------------------
capacity=$(kubectl get node "$NODE" -o json | python3 -c 'import json,sys; s=json.load(sys.stdin)["status"]; print(json.dumps({"capacity": s["capacity"], "allocatable": s["allocatable"]}))')
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Node
metadata:
  name: decoy
  labels: {kubernetes.io/hostname: decoy, kubernetes.io/os: linux, kubernetes.io/arch: amd64}
YAML
heartbeat() {
  while :; do
    local t; t=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    local tm; tm=$(date -u +%Y-%m-%dT%H:%M:%S.000000Z)
    kubectl patch node decoy --subresource=status --type=merge -p "$(python3 - "$capacity" "$t" <<'PY'
import json, sys
cap, t = json.loads(sys.argv[1]), sys.argv[2]
print(json.dumps({"status": {**cap, "conditions": [
  {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "decoy", "lastHeartbeatTime": t, "lastTransitionTime": t},
  {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "lastHeartbeatTime": t, "lastTransitionTime": t},
  {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "lastHeartbeatTime": t, "lastTransitionTime": t},
  {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "lastHeartbeatTime": t, "lastTransitionTime": t}]}}))
PY
)" >/dev/null 2>&1 || true
    kubectl apply -f - >/dev/null 2>&1 <<YAML || true
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: decoy, namespace: kube-node-lease}
spec: {holderIdentity: decoy, leaseDurationSeconds: 40, renewTime: "$tm"}
YAML
    sleep 10
  done
}
heartbeat & HEARTBEAT_PID=$!
deadline=$((SECONDS + 120))
until [ "$(kubectl get node decoy -o jsonpath='{.spec.taints}')" = "" ] &&
      kubectl get node decoy -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -q True; do
  [ $SECONDS -lt $deadline ] || { echo "decoy never became schedulable: $(kubectl get node decoy -o jsonpath='{.spec.taints}')"; exit 1; }
  sleep 2
done
echo "== nodes: $(kubectl get nodes --no-headers | awk '{print $1"="$2}' | tr '\n' ' ')"

# ---- the daemon for NODE, a model warmed ----------------------------------------------------
start_registry "$WORK/registry"
mkdir -p "$WORK/src"; head -c 65536 /dev/urandom > "$WORK/src/model.gguf"
REF=$REGISTRY/bench/warm:v1
ABSENT=$REGISTRY/bench/absent:v1
"$TUGBOAT" push "$WORK/src" "$REF" --plain-http >/dev/null 2>&1
printf 'interval: 1h\nmodels:\n  - reference: %s\n' "$REF" > "$WORK/warm.yaml"
NODE_LABELS_BEFORE=1
"$TUGBOAT" node --csi-endpoint "unix://$WORK/csi.sock" --node-id "$NODE" --cache "$WORK/cache" \
  --warm-config "$WORK/warm.yaml" --plain-http --advertise on --node-name "$NODE" \
  --kubeconfig "$KUBECONFIG" > "$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!
KEY=$("$TUGBOAT" affinity "$REF" --keys)
t0=$(date +%s.%N)
until kubectl get node "$NODE" -o go-template='{{range $k, $v := .metadata.labels}}{{$k}}{{"\n"}}{{end}}' | grep -qxF "$KEY"; do
  sleep 0.2
  python3 -c "import sys,time; sys.exit(time.time() - float(sys.argv[1]) > 120)" "$t0" || { tail "$WORK/daemon.log"; exit 1; }
done
echo "1. $NODE labelled $KEY $(python3 -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$t0") s after the daemon started"

deployment() {  # deployment NAME REPLICAS AFFINITY_YAML (indented for the pod spec, may be empty)
  cat <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: $1, namespace: $NS}
spec:
  replicas: $2
  selector: {matchLabels: {app: $1}}
  template:
    metadata: {labels: {app: $1}}
    spec:
$(sed 's/^/      /' <<<"$3")
      terminationGracePeriodSeconds: 0
      containers:
        - name: c
          image: $IMAGE
          imagePullPolicy: IfNotPresent
          resources: {requests: {cpu: 10m, memory: 16Mi}}
YAML
}
placement() {  # placement NAME: "NODE=N ..." once every pod of the Deployment is bound
  local deadline=$((SECONDS + 120)) want=$2
  while :; do
    local bound; bound=$(kubectl -n "$NS" get pods -l "app=$1" -o go-template='{{range .items}}{{with .spec.nodeName}}{{.}}{{"\n"}}{{end}}{{end}}' | grep -c . || true)
    [ "$bound" -ge "$want" ] && break
    [ $SECONDS -lt $deadline ] || { echo "only $bound of $want pods of $1 bound"; break; }
    sleep 1
  done
  kubectl -n "$NS" get pods -l "app=$1" -o go-template='{{range .items}}{{with .spec.nodeName}}{{.}}{{"\n"}}{{end}}{{end}}' | sort | uniq -c | awk '{printf "%s=%s ", $2, $1}'
}
PREFERRED=$("$TUGBOAT" affinity "$REF" --preferred | grep -v '^#')
REQUIRED=$("$TUGBOAT" affinity "$ABSENT" --required | grep -v '^#')

# 2. preferred vs none
deployment plain "$REPLICAS" "" | kubectl apply -f - >/dev/null
echo "2. without affinity:          $(placement plain "$REPLICAS")"
kubectl -n "$NS" delete deployment plain --wait=true >/dev/null
deployment warm "$REPLICAS" "$PREFERRED" | kubectl apply -f - >/dev/null
echo "   with the preferred affinity: $(placement warm "$REPLICAS")"
kubectl -n "$NS" get pods -l app=warm -o wide --no-headers | awk '{print "     " $1, $3, $7}'

# 3. required, for a model no node holds
deployment pinned 1 "$REQUIRED" | kubectl apply -f - >/dev/null
sleep 30
phase=$(kubectl -n "$NS" get pods -l app=pinned -o jsonpath='{.items[0].status.phase}')
node=$(kubectl -n "$NS" get pods -l app=pinned -o jsonpath='{.items[0].spec.nodeName}')
echo "3. required affinity for $ABSENT (held nowhere): phase=$phase node='${node}' after 30 s"
kubectl -n "$NS" get events --field-selector reason=FailedScheduling -o jsonpath='{range .items[*]}{.message}{"\n"}{end}' | tail -n1 | sed 's/^/   FailedScheduling: /'
[ "$phase" = Pending ] && [ -z "$node" ]
mkdir -p "$WORK/src2"; head -c 65536 /dev/urandom > "$WORK/src2/model.gguf"
"$TUGBOAT" push "$WORK/src2" "$ABSENT" --plain-http >/dev/null 2>&1
printf 'interval: 1h\nmodels:\n  - reference: %s\n  - reference: %s\n' "$REF" "$ABSENT" > "$WORK/warm.yaml"
t0=$(date +%s.%N)
echo "   after warming it on $NODE: $(placement pinned 1) ($(python3 -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$t0") s after the warm list changed)"
