#!/usr/bin/env bash
# tugboat end to end against a real Kubernetes cluster (opt-in; see tests/e2e/README.md).
# Without KUBECONFIG it does nothing and says so.
#
# Deploys manifests/ with kustomize (image overridden), pushes a model, and checks every
# example: init container into an emptyDir (01) and into a PVC (02), CSI inline volume (03),
# static PV shared by replicas (04), a private model through nodePublishSecretRef and refused
# without it (05), the warm-list ConfigMap reloaded, pod deletion unpublishing, a DaemonSet
# restart keeping mounted volumes serving, and a SIGSTOPped plugin restarted by its liveness
# probe with its mounts kept.
set -euo pipefail

if [ -z "${KUBECONFIG:-}" ]; then
    echo "e2e: KUBECONFIG is not set: nothing to do (tests/e2e/README.md says how to run it)"
    exit 0
fi
: "${TUGBOAT_IMAGE:?set TUGBOAT_IMAGE to the tugboat image the nodes pull (REGISTRY/REPO:TAG)}"
: "${E2E_REGISTRY:?set E2E_REGISTRY to a registry HOST:PORT reachable from here and from the nodes}"
E2E_APP_IMAGE="${E2E_APP_IMAGE:-registry.k8s.io/e2e-test-images/busybox:1.36.1-1}"
E2E_PLAIN_HTTP="${E2E_PLAIN_HTTP:-true}"        # the registry speaks plain HTTP
export E2E_NAMESPACE="${E2E_NAMESPACE:-tugboat-e2e}"
TIMEOUT="${E2E_TIMEOUT:-300s}"

root="$(cd "$(dirname "$0")/../.." && pwd)"
tugboat="${TUGBOAT_BIN:-$root/target/release/tugboat}"
[ -x "$tugboat" ] || { echo "e2e: build the binary first (scripts/build-release.sh target/release)"; exit 2; }
work="$(mktemp -d "$root/target/e2e.XXXXXX")"
trap 'rm -rf "$work"' EXIT
k() { kubectl "$@"; }
ns() { kubectl -n "$E2E_NAMESPACE" "$@"; }
step() { printf '\n==== e2e: %s ====\n' "$*"; }
fail() { echo "e2e: FAILED: $*" >&2; ns get pods -o wide >&2 || true; exit 1; }

registry_flags=()
[ "$E2E_PLAIN_HTTP" = true ] && registry_flags+=(--plain-http)

step "model: push a test model to $E2E_REGISTRY"
mkdir -p "$work/model"
head -c $((8 * 1024 * 1024)) /dev/urandom >"$work/model/tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"
want="$(sha256sum "$work/model/tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf" | cut -d' ' -f1)"
model="$E2E_REGISTRY/e2e/tinyllama:v1"
"$tugboat" push "$work/model" "$model" "${registry_flags[@]}"

step "deploy: kubectl apply -k (image $TUGBOAT_IMAGE)"
rel="$(realpath --relative-to="$work" "$root/manifests")"
image_name="${TUGBOAT_IMAGE%:*}"
image_tag="${TUGBOAT_IMAGE##*:}"
cat >"$work/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [$rel]
images:
  - name: harbor.example.com/platform/tugboat
    newName: $image_name
    newTag: "$image_tag"
patches:
  - target: {kind: DaemonSet, name: tugboat-node}
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {name: TUGBOAT_INSECURE_REGISTRY, value: "$E2E_REGISTRY"}
  - target: {kind: ConfigMap, name: tugboat-warm}
    patch: |-
      - op: replace
        path: /data/warm.yaml
        value: "interval: 30s\nmodels: []\n"
EOF
k apply -k "$work"
k -n tugboat-system rollout status ds/tugboat-node --timeout="$TIMEOUT"
k create namespace "$E2E_NAMESPACE" --dry-run=client -o yaml | k apply -f -
k label namespace "$E2E_NAMESPACE" pod-security.kubernetes.io/enforce=restricted --overwrite

step "examples: rewritten to the test model, the test registry and a checking app container"
python3 - "$root/manifests/examples" "$work/examples" "$model" "$E2E_REGISTRY" "$E2E_APP_IMAGE" \
    "$TUGBOAT_IMAGE" "$E2E_PLAIN_HTTP" <<'PY'
import os, sys, yaml
src, out, model, registry, app, image, plain = sys.argv[1:]
os.makedirs(out)
check = ("for f in $(find /models -name '*.gguf'); do sha256sum $f; done; "
         "while true; do sleep 5; find /models -name '*.gguf' -exec sha256sum {} + "
         "> /tmp/now 2>&1 || echo READ-FAILED; done")
def fix_pod(spec):
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        if c["image"].split("@")[0].rsplit("/", 1)[-1].split(":")[0] == "tugboat":
            c["image"] = image
            c["args"] = [model if a.startswith("harbor.") else a for a in c["args"]]
            if plain == "true":
                c["args"].append("--insecure-registry=" + registry)
        else:
            c["image"] = app
            c["command"] = ["sh", "-c", check]
            c.pop("args", None); c.pop("readinessProbe", None); c.pop("env", None)
            c["resources"] = {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}}
            c.setdefault("securityContext", {})["readOnlyRootFilesystem"] = False
    for v in spec.get("volumes", []):
        attrs = v.get("csi", {}).get("volumeAttributes", {})
        if "reference" in attrs:
            attrs["reference"] = model
    spec.pop("imagePullSecrets", None)
for name in sorted(os.listdir(src)):
    docs = [d for d in yaml.safe_load_all(open(os.path.join(src, name))) if d]
    for d in docs:
        d.setdefault("metadata", {}).pop("namespace", None)
        kind = d["kind"]
        if kind == "Pod":
            fix_pod(d["spec"])
        elif kind in ("Deployment", "StatefulSet"):
            fix_pod(d["spec"]["template"]["spec"])
        elif kind == "PersistentVolume":
            d["spec"]["csi"]["volumeHandle"] = model
            d["spec"]["claimRef"]["namespace"] = os.environ.get("E2E_NAMESPACE", "tugboat-e2e")
        elif kind == "PersistentVolumeClaim" and d["spec"].get("storageClassName") != "":
            d["spec"]["resources"]["requests"]["storage"] = "1Gi"
        elif kind == "Secret":
            user, pw = os.environ.get("E2E_PRIVATE_USER", ""), os.environ.get("E2E_PRIVATE_PASSWORD", "")
            d["stringData"][".dockerconfigjson"] = (
                '{"auths": {"%s": {"username": "%s", "password": "%s"}}}' % (registry, user, pw))
    yaml.safe_dump_all(docs, open(os.path.join(out, name), "w"))
PY

# The app container prints each model file's sha256 first: wait for ours in its log.
expect_model() { # KIND/NAME [container]
    local what="$1" deadline=$((SECONDS + 300))
    until ns logs "$what" -c server 2>/dev/null | grep -q "$want"; do
        [ $SECONDS -lt $deadline ] || fail "$what never showed the model's sha256 $want"
        sleep 5
    done
    echo "ok: $what reads the model (sha256 $want)"
}

step "01: init container into an emptyDir"
ns apply -f "$work/examples/01-llama-cpp-emptydir.yaml"
ns rollout status deploy/tinyllama --timeout="$TIMEOUT"
expect_model deploy/tinyllama

step "02: init container into a PVC"
if k get storageclass -o name | grep -q .; then
    ns apply -f "$work/examples/02-vllm-pvc.yaml"
    ns patch deploy qwen --type=json -p '[{"op":"remove","path":"/spec/template/spec/containers/0/resources/limits/nvidia.com~1gpu"}]' || true
    ns rollout status deploy/qwen --timeout="$TIMEOUT"
    expect_model deploy/qwen
else
    echo "SKIPPED 02: the cluster has no StorageClass for the PVC"
fi

step "03: CSI inline volume"
ns apply -f "$work/examples/03-csi-inline.yaml"
ns wait --for=condition=Ready pod/tinyllama-csi --timeout="$TIMEOUT"
expect_model pod/tinyllama-csi

step "04: static PV shared by 3 replicas"
ns apply -f "$work/examples/04-static-pv-rox.yaml"
ns rollout status deploy/tinyllama-shared --timeout="$TIMEOUT"
expect_model deploy/tinyllama-shared

step "05: private model through nodePublishSecretRef, refused without it"
if [ -n "${E2E_PRIVATE_USER:-}" ]; then
    ns apply -f "$work/examples/05-harbor-private.yaml"
    ns wait --for=condition=Ready pod/private-model-csi --timeout="$TIMEOUT"
    expect_model pod/private-model-csi
    ns get pod private-model-csi -o yaml | sed -e 's/name: private-model-csi/name: private-model-nosecret/' \
        -e '/nodePublishSecretRef:/,+1d' -e '/resourceVersion\|uid:/d' | ns apply -f -
    sleep 30
    ns get events --field-selector involvedObject.name=private-model-nosecret -o text 2>/dev/null |
        grep -qi "FailedMount" || fail "a pod without the secret got the private model"
    echo "ok: without nodePublishSecretRef the mount is refused"
else
    echo "SKIPPED 05: set E2E_PRIVATE_USER/E2E_PRIVATE_PASSWORD (a registry requiring them)"
fi

node_pod() { k -n tugboat-system get pod -l app.kubernetes.io/component=node -o name | head -n1; }

step "warm list: the ConfigMap reloaded"
k -n tugboat-system patch configmap tugboat-warm --type=merge \
    -p "{\"data\":{\"warm.yaml\":\"interval: 30s\nmodels:\n  - reference: $model\n\"}}"
deadline=$((SECONDS + 180))
until k -n tugboat-system logs "$(node_pod)" -c tugboat | grep -q "$model"; do
    [ $SECONDS -lt $deadline ] || fail "the warm list was not reloaded"
    sleep 10
done
echo "ok: the daemon picked up the new warm list"

step "pod deletion unpublishes"
ns delete pod tinyllama-csi --wait=true --timeout="$TIMEOUT"
k -n tugboat-system logs "$(node_pod)" -c tugboat | grep -q "volume unpublished" ||
    fail "no unpublish logged after deleting the pod"
echo "ok: unpublished"

step "DaemonSet restart keeps mounted volumes serving"
k -n tugboat-system rollout restart ds/tugboat-node
k -n tugboat-system rollout status ds/tugboat-node --timeout="$TIMEOUT"
sleep 10
for p in $(ns get pod -l app.kubernetes.io/name=tinyllama-shared -o name); do
    ns exec "$p" -c server -- sh -c "sha256sum \$(find /models -name '*.gguf')" | grep -q "$want" ||
        fail "$p lost its model across the DaemonSet restart"
done
echo "ok: every replica still reads the model"

step "a SIGSTOPped plugin is restarted by its liveness probe, mounts kept"
pod="$(node_pod)"
before="$(k -n tugboat-system get "$pod" -o jsonpath='{.status.containerStatuses[?(@.name=="tugboat")].restartCount}')"
k -n tugboat-system debug "$pod" --image="$E2E_APP_IMAGE" --target=tugboat --profile=general -- kill -STOP 1
stopped_at=$SECONDS
deadline=$((SECONDS + 300))
until [ "$(k -n tugboat-system get "$pod" -o jsonpath='{.status.containerStatuses[?(@.name=="tugboat")].restartCount}')" -gt "$before" ]; do
    [ $SECONDS -lt $deadline ] || fail "the hung plugin was not restarted within 300 s"
    sleep 10
done
echo "ok: restarted about $((SECONDS - stopped_at)) s after SIGSTOP"
for p in $(ns get pod -l app.kubernetes.io/name=tinyllama-shared -o name); do
    ns exec "$p" -c server -- sh -c "sha256sum \$(find /models -name '*.gguf')" | grep -q "$want" ||
        fail "$p lost its model when the plugin was restarted"
done
echo "ok: mounts kept"

step "cleanup"
ns delete -f "$work/examples" --ignore-not-found --wait=false || true
echo "e2e: all checks passed"
