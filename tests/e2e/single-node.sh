#!/usr/bin/env bash
# Pre-step for tests/e2e/run.sh on the development machine's single-node cluster (the runner's
# up.sh: etcd, kube-apiserver, kubelet and a plain-HTTP registry on 127.0.0.1:5000 on one box,
# no internet). Nothing here is needed on an ordinary cluster; it supplies what that runner
# lacks, without changing what the suite checks:
#
#   1. kubectl logs/exec/debug: the apiserver dials the kubelet at the node's Hostname address
#      (tnode), which nothing resolves ("dial tcp: lookup tnode: no such host"). An /etc/hosts
#      line maps it to the node's InternalIP (10.244.0.1).
#   2. No internet: the sidecar images the DaemonSet names (registry.k8s.io/sig-storage/...)
#      are packed from the prebuilt csi-node-driver-registrar and livenessprobe binaries in
#      $K8S_BIN and imported into the runner's containerd under exactly those names.
#   3. The registry listens on 127.0.0.1:5000 only, which pods (on the 10.244.0.0/24 bridge,
#      without hostNetwork) cannot reach. More registry processes listen on the node's bridge
#      address, so the examples keep the restricted Pod Security level (no hostNetwork) and the
#      node plugin keeps its own network namespace:
#        10.244.0.1:5000  the same storage as 127.0.0.1:5000 (E2E_REGISTRY)
#        10.244.0.1:5001  a pull-through cache of it (E2E_MIRROR, for the origin name
#                         127.0.0.1:5000, which the node plugin cannot reach: only the mirror can
#                         have served what it mounts)
#        10.244.0.1:5002  a registry requiring a user and password (E2E_PRIVATE_REGISTRY)
#        10.244.0.1:5003  a pull-through cache of that one requiring the same credentials
#                         (E2E_PRIVATE_MIRROR)
#      The tugboat image itself is pushed to and pulled by kubelet from 127.0.0.1:5000
#      (containerd speaks plain HTTP to localhost only).
#   4. No storage provisioner: a default StorageClass without provisioner and one hostPath PV
#      for example 02's claim, recreated on every `up` (which first deletes an earlier run's
#      test namespace): run `up` before every run.
#
#   tests/e2e/single-node.sh up      after the runner's up.sh; prints the variables for run.sh
#   tests/e2e/single-node.sh down    before the runner's down.sh
#   . /tmp/k8s-run/e2e/env && tests/e2e/run.sh
set -euo pipefail

R=/tmp/k8s-run
B="${K8S_BIN:-/tmp/k8s-bin}"
node_ip="${E2E_NODE_IP:-10.244.0.1}"
node_name="${E2E_NODE_NAME:-tnode}"
state="$R/e2e"
hosts_mark="# tugboat e2e (tests/e2e/single-node.sh)"
root="$(cd "$(dirname "$0")/../.." && pwd)"
C=(ctr --address "$R/containerd/containerd.sock" -n k8s.io)
export KUBECONFIG="$R/kubeconfig"

# registry NAME PORT [EXTRA-YAML]: a docker-registry on the node's bridge address
registry() {
    local name="$1" port="$2" extra="${3:-}" storage="${4:-$state/$1}"
    curl -s -o /dev/null "http://$node_ip:$port/v2/" && return 0
    cat >"$state/$name.yml" <<EOF
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $storage}}
http: {addr: "$node_ip:$port"}
$extra
EOF
    setsid docker-registry serve "$state/$name.yml" >"$state/$name.log" 2>&1 </dev/null &
    echo $! >"$state/$name.pid"
    for _ in $(seq 1 30); do curl -s -o /dev/null "http://$node_ip:$port/v2/" && break; sleep 1; done
    curl -s -o /dev/null "http://$node_ip:$port/v2/" || { echo "single-node: no registry on $node_ip:$port"; exit 1; }
    echo "single-node: $name on $node_ip:$port (pid $(cat "$state/$name.pid"))"
}

up() {
    [ -S "$R/containerd/containerd.sock" ] || { echo "single-node: the runner is not up ($R)"; exit 1; }
    mkdir -p "$state"

    # 1. the node's Hostname address resolves to its InternalIP
    if ! getent hosts "$node_name" >/dev/null; then
        echo "$node_ip $node_name $hosts_mark" >>/etc/hosts
        echo "single-node: /etc/hosts: $node_ip $node_name"
    fi

    # 2. sidecar images from the prebuilt binaries (static Go executables)
    local name bin img version
    for name in csi-node-driver-registrar livenessprobe; do
        bin="$B/$name"
        [ -x "$bin" ] || { echo "single-node: missing $bin"; exit 1; }
        version="$(sed -n "s|.*image: registry.k8s.io/sig-storage/$name:\(v[0-9.]*\).*|\1|p" \
            "$root/manifests/daemonset.yaml")"
        img="registry.k8s.io/sig-storage/$name:$version"
        if ! "${C[@]}" images ls -q | grep -qx "$img"; then
            rm -rf "$state/$name.root"
            mkdir -p "$state/$name.root"
            install -m 0755 "$bin" "$state/$name.root/$name"
            python3 "$R/img/mkoci.py" "$img" "$state/$name.tar" "$state/$name.root" "[\"/$name\"]"
            "${C[@]}" images import "$state/$name.tar" >/dev/null
            echo "single-node: imported $img (from $bin)"
        fi
    done

    # 3. registries the pods can reach
    [ -f "$state/password" ] || head -c 12 /dev/urandom | base64 | tr -d '/+=' >"$state/password"
    local password
    password="$(cat "$state/password")"
    [ -f "$state/htpasswd" ] || htpasswd -Bbn e2e "$password" >"$state/htpasswd"
    registry origin 5000 "" "$(sed -n 's/.*rootdirectory: *\([^}]*\)}.*/\1/p' "$R/registry.yml" | tr -d ' ')"
    registry mirror 5001 "proxy: {remoteurl: \"http://$node_ip:5000\"}"
    registry private 5002 "auth: {htpasswd: {realm: e2e, path: $state/htpasswd}}"
    registry private-mirror 5003 "auth: {htpasswd: {realm: e2e, path: $state/htpasswd}}
proxy: {remoteurl: \"http://$node_ip:5002\", username: e2e, password: \"$password\"}"

    # 4. a default StorageClass and a fresh hostPath PV for example 02 (no provisioner recycles
    # it: an earlier run's test namespace goes first, so that its claim lets go of the PV)
    kubectl delete namespace "${E2E_NAMESPACE:-tugboat-e2e}" --ignore-not-found --wait=true --timeout=300s >/dev/null
    kubectl delete pv e2e-hostpath --ignore-not-found --wait=true --timeout=60s >/dev/null
    rm -rf "$state/pv"
    mkdir -p "$state/pv"
    chmod 0777 "$state/pv"                 # hostPath ignores fsGroup: the init container is 65532
    kubectl apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: e2e-hostpath
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: e2e-hostpath}
spec:
  capacity: {storage: 50Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: e2e-hostpath
  hostPath: {path: $state/pv, type: Directory}
EOF
    echo "single-node: StorageClass e2e-hostpath (default), PV e2e-hostpath at $state/pv"

    cat >"$state/env" <<EOF
export KUBECONFIG=$R/kubeconfig
export TUGBOAT_IMAGE=127.0.0.1:5000/tugboat:e2e
export E2E_APP_IMAGE=docker.io/library/busybox:test
export E2E_REGISTRY=$node_ip:5000
export E2E_MIRROR=$node_ip:5001 E2E_MIRROR_ORIGIN=127.0.0.1:5000
export E2E_PRIVATE_REGISTRY=$node_ip:5002 E2E_PRIVATE_MIRROR=$node_ip:5003
export E2E_PRIVATE_USER=e2e E2E_PRIVATE_PASSWORD=$password
EOF
    echo "single-node: variables for tests/e2e/run.sh in $state/env:"
    sed 's/PASSWORD=.*/PASSWORD=.../' "$state/env"
}

down() {
    local f p
    for f in "$state"/*.pid; do
        [ -f "$f" ] || continue
        p="$(cat "$f")"
        kill "$p" 2>/dev/null || true
        rm -f "$f"
    done
    if [ -S "$R/containerd/containerd.sock" ] && kubectl get pv e2e-hostpath >/dev/null 2>&1; then
        kubectl delete pv e2e-hostpath --wait=false >/dev/null || true
        kubectl delete storageclass e2e-hostpath --wait=false >/dev/null || true
    fi
    if grep -qF "$hosts_mark" /etc/hosts; then
        # /etc/hosts may be a bind mount: rewrite it in place rather than replace it
        grep -vF "$hosts_mark" /etc/hosts >"$state/hosts" || true
        cat "$state/hosts" >/etc/hosts
    fi
    rm -rf "$state"
    echo "single-node: down"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    *) sed -n '2,32p' "$0" >&2; exit 2 ;;
esac
