#!/usr/bin/env bash
# tugboat end to end against a real Kubernetes cluster (opt-in; see tests/e2e/README.md).
# Without KUBECONFIG it does nothing and says so.
#
# Deploys manifests/ with kustomize (image overridden, the node policy opened to the test
# registries for the test namespace only), pushes a model, and checks every example: init
# container into an emptyDir (01) and into a PVC (02), CSI inline volume (03) and the policy
# refusing it in a namespace no rule names, static PV shared by replicas (04), a private model
# through nodePublishSecretRef and refused without it (05), a mirror on the node (and a trusted
# one where the build has it), the warm-list ConfigMap reloaded, the node's labels (where the
# build has them), pod deletion unpublishing, a DaemonSet restart keeping mounted volumes
# serving, and a SIGSTOPped plugin restarted by its liveness probe with its mounts kept.
# Every step ends with a line `e2e: RESULT SECONDS s  STEP`; a summary of them closes the run.
set -euo pipefail

if [ -z "${KUBECONFIG:-}" ]; then
    echo "e2e: KUBECONFIG is not set: nothing to do (tests/e2e/README.md says how to run it)"
    exit 0
fi
: "${TUGBOAT_IMAGE:?set TUGBOAT_IMAGE to the tugboat image the nodes pull (REGISTRY/REPO:TAG)}"
: "${E2E_REGISTRY:?set E2E_REGISTRY to a registry HOST:PORT reachable from here and from the nodes}"
E2E_APP_IMAGE="${E2E_APP_IMAGE:-registry.k8s.io/e2e-test-images/busybox:1.36.1-1}"
E2E_PLAIN_HTTP="${E2E_PLAIN_HTTP:-true}"        # the registries speak plain HTTP
E2E_PRIVATE_REGISTRY="${E2E_PRIVATE_REGISTRY:-$E2E_REGISTRY}"
E2E_MIRROR="${E2E_MIRROR:-}"                    # a pull-through cache of E2E_REGISTRY
E2E_MIRROR_ORIGIN="${E2E_MIRROR_ORIGIN:-$E2E_REGISTRY}"
E2E_PRIVATE_MIRROR="${E2E_PRIVATE_MIRROR:-}"    # a pull-through cache of E2E_PRIVATE_REGISTRY
export E2E_NAMESPACE="${E2E_NAMESPACE:-tugboat-e2e}"
TIMEOUT="${E2E_TIMEOUT:-300s}"
wait_s="${TIMEOUT%s}"

root="$(cd "$(dirname "$0")/../.." && pwd)"
tugboat="${TUGBOAT_BIN:-$root/target/release/tugboat}"
[ -x "$tugboat" ] || { echo "e2e: build the binary first (scripts/build-release.sh target/release)"; exit 2; }
mkdir -p "$root/target"
work="$(mktemp -d "$root/target/e2e.XXXXXX")"
k() { kubectl "$@"; }
ns() { kubectl -n "$E2E_NAMESPACE" "$@"; }
sys() { kubectl -n tugboat-system "$@"; }

# ---- steps, their results and times --------------------------------------------------------
summary=()
cur="" cur_start=0 cur_result=""
now_ms() { echo $(($(date +%s%N) / 1000000)); }
finish_step() {
    [ -n "$cur" ] || return 0
    local ms=$(($(now_ms) - cur_start)) line
    line="$(printf 'e2e: %-7s %6s s  %s' "${cur_result%%:*}" "$((ms / 1000)).$(((ms % 1000) / 100))" "$cur")"
    [ "${cur_result#*:}" != "$cur_result" ] && line+=" (${cur_result#*: })"
    echo "$line"
    summary+=("$line")
    cur=""
}
step() {
    finish_step
    cur="$*" cur_start="$(now_ms)" cur_result=ok
    printf '\n==== e2e: %s ====\n' "$cur"
}
skip() { cur_result="SKIPPED: $*"; echo "SKIPPED: $*"; }
note() { cur_result="ok: $*"; }
print_summary() {
    echo
    echo "==== e2e: summary ($(date -u +%Y-%m-%dT%H:%M:%SZ)) ===="
    local l
    for l in "${summary[@]}"; do echo "$l"; done
}
diagnose() {
    echo "---- diagnostics" >&2
    ns get pods -o wide >&2 || true
    ns get events --sort-by=.lastTimestamp 2>/dev/null | tail -n 20 >&2 || true
    sys get pods -o wide >&2 || true
    sys logs "$(node_pod)" -c tugboat --tail=30 >&2 || true
}
fail() { echo "e2e: FAILED: $*" >&2; exit 1; }
on_exit() {
    local rc=$?
    if [ "$rc" -ne 0 ] && [ -n "$cur" ]; then
        cur_result="FAILED"
        diagnose
        finish_step
        print_summary
    fi
    rm -rf "$work"
    exit "$rc"
}
trap on_exit EXIT
trap 'echo "e2e: FAILED: line $LINENO: $BASH_COMMAND (exit $?)" >&2' ERR

node_pod() { sys get pod -l app.kubernetes.io/component=node -o name | head -n1; }
node_name() { sys get "$(node_pod)" -o jsonpath='{.spec.nodeName}'; }
restarts() { sys get "$1" -o jsonpath='{.status.containerStatuses[?(@.name=="tugboat")].restartCount}'; }
# Mounts the running plugin found at start (kept + adopted of its "leases rebuilt from the
# mount table" line); kept_detail says which.
kept_mounts() {
    local line
    line="$(sys logs "$1" -c tugboat | grep 'leases rebuilt from the mount table' | tail -n1)"
    kept_detail="$(grep -Eo '"(kept|dropped|adopted)":[0-9]+' <<<"$line" | tr -d '"' | tr ':' '=' | paste -sd' ' -)"
    echo $(($(sed -n 's/.*"kept":\([0-9]*\).*/\1/p' <<<"$line") + $(sed -n 's/.*"adopted":\([0-9]*\).*/\1/p' <<<"$line")))
}
dedup() { printf '%s\n' "$@" | awk 'NF && !seen[$0]++'; }
hosts=($(dedup "$E2E_REGISTRY" "$E2E_PRIVATE_REGISTRY" "$E2E_MIRROR_ORIGIN"))
registry_flags=()
[ "$E2E_PLAIN_HTTP" = true ] && registry_flags+=(--plain-http)
private_creds=false
[ -n "${E2E_PRIVATE_USER:-}" ] && private_creds=true

# A feature of the binary (the image is built from it), found in `tugboat node --help`: the
# long option whose name matches $1, and its environment variable.
option_of() { "$tugboat" node --help | grep -Eo -- "--[a-z-]*($1)[a-z-]*" | head -n1 || true; }
env_of() {
    "$tugboat" node --help | awk -v o="$1" '$1 ~ "^"o"( |$|=|<)" || $1 == o { f = 1 } f && /\[env: / {
        sub(/.*\[env: /, ""); sub(/=.*/, ""); print; exit }'
}

# ---- the model ---------------------------------------------------------------------------------
step "model: push a test model to $E2E_REGISTRY"
push_model() { # DIR REF [flags]: a fresh 8 MiB model; prints its sha256
    local dir="$1" ref="$2"
    shift 2
    mkdir -p "$dir"
    head -c $((8 * 1024 * 1024)) /dev/urandom >"$dir/tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"
    "$tugboat" push "$dir" "$ref" "${registry_flags[@]}" "$@" >&2
    sha256sum "$dir/tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf" | cut -d' ' -f1
}
# A tag of this run's own: a node cache that saw an earlier run's v1 would, as IfNotPresent
# says, keep serving what that tag named then.
tag="run-$(date -u +%Y%m%d%H%M%S)"
model="$E2E_REGISTRY/e2e/tinyllama:$tag"
want="$(push_model "$work/model" "$model")"
echo "model $model, file sha256 $want"

# ---- deploy ------------------------------------------------------------------------------------
step "deploy: kubectl apply -k (image $TUGBOAT_IMAGE)"
node_labels_before="$(k get nodes -o jsonpath='{range .items[*]}{.metadata.labels}{"\n"}{end}')"
rel="$(realpath --relative-to="$work" "$root/manifests")"
image_name="${TUGBOAT_IMAGE%:*}"
image_tag="${TUGBOAT_IMAGE##*:}"
mirrors=()
[ -n "$E2E_MIRROR" ] && mirrors+=("$E2E_MIRROR_ORIGIN=http://$E2E_MIRROR")
[ -n "$E2E_PRIVATE_MIRROR" ] && mirrors+=("$E2E_PRIVATE_REGISTRY=http://$E2E_PRIVATE_MIRROR")
insecure="$(IFS=,; echo "${hosts[*]}")"
refs="$(for h in "${hosts[@]}"; do printf '"%s/e2e/*"\n' "$h"; done | paste -sd, -)"
# The node policy (deny by default, as shipped) opened to the test registries for the test
# namespace and the warm list only; each host named literally, as the policy requires for
# hosts on the node's own addresses or loopback.
{
    echo "apiVersion: v1"
    echo "kind: ConfigMap"
    echo "metadata: {name: tugboat-policy, namespace: tugboat-system}"
    echo "data:"
    echo "  policy.yaml: |"
    echo "    access:"
    echo "      default: deny"
    echo "      rules:"
    echo "        - name: e2e-warm"
    echo "          modes: [warm]"
    echo "          references: [$refs]"
    echo "        - name: e2e"
    echo "          namespaces: [\"$E2E_NAMESPACE\"]"
    echo "          modes: [inline, pv]"
    echo "          references: [$refs]"
} >"$work/policy.yaml"
cat >"$work/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [$rel]
images:
  - name: harbor.example.com/platform/tugboat
    newName: $image_name
    newTag: "$image_tag"
patches:
  - path: policy.yaml
  - target: {kind: DaemonSet, name: tugboat-node}
    patch: |-
      - op: add
        path: /spec/template/metadata/annotations/e2e-policy-sha256
        value: "$(sha256sum "$work/policy.yaml" | cut -d' ' -f1)"
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {name: TUGBOAT_INSECURE_REGISTRY, value: "$insecure"}
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {name: TUGBOAT_MIRROR, value: "$(IFS=,; echo "${mirrors[*]:-}")"}
  - target: {kind: ConfigMap, name: tugboat-warm}
    patch: |-
      - op: replace
        path: /data/warm.yaml
        value: "interval: 30s\nmodels: []\n"
EOF
k apply -k "$work"
sys rollout status ds/tugboat-node --timeout="$TIMEOUT"
# the test namespace (and the static PV of example 04) start empty: nothing of an earlier run
k delete namespace "$E2E_NAMESPACE" "$E2E_NAMESPACE-denied" --ignore-not-found --wait=true --timeout="$TIMEOUT"
k delete pv tinyllama-v1 --ignore-not-found --wait=true --timeout="$TIMEOUT"
k create namespace "$E2E_NAMESPACE"
k label namespace "$E2E_NAMESPACE" pod-security.kubernetes.io/enforce=restricted --overwrite

# ---- the examples, rewritten -------------------------------------------------------------------
step "examples: rewritten to the test model, the test registries and a checking app container"
private_model="$E2E_PRIVATE_REGISTRY/e2e/private:$tag"
python3 - "$root/manifests/examples" "$work/examples" "$model" "$private_model" "$E2E_PRIVATE_REGISTRY" \
    "$E2E_APP_IMAGE" "$TUGBOAT_IMAGE" "$E2E_PLAIN_HTTP" "$insecure" <<'PY'
import copy, os, sys, yaml
src, out, model, private_model, private_registry, app, image, plain, insecure = sys.argv[1:]
os.makedirs(out)
# The app container prints each model file's sha256 once, then re-reads the model every 5 s and
# logs READ-FAILED whenever that fails.
check = ("for f in $(find /models -name '*.gguf'); do sha256sum $f; done; "
         "while true; do sleep 5; find /models -name '*.gguf' -exec sha256sum {} + "
         "> /dev/null || echo READ-FAILED; done")
def fix_pod(spec, ref):
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        if c["image"].split("@")[0].rsplit("/", 1)[-1].split(":")[0] == "tugboat":
            c["image"] = image
            c["args"] = [ref if a.startswith("harbor.") else a for a in c["args"]]
            if plain == "true":
                c["args"].append("--insecure-registry=" + insecure)
        else:
            c["name"] = "server"
            c["image"] = app
            c["command"] = ["sh", "-c", check]
            for key in ("args", "readinessProbe", "env", "ports"):
                c.pop(key, None)
            c["resources"] = {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}}
    for v in spec.get("volumes", []):
        attrs = v.get("csi", {}).get("volumeAttributes", {})
        if "reference" in attrs:
            attrs["reference"] = ref
    spec.pop("imagePullSecrets", None)
    spec["terminationGracePeriodSeconds"] = 2          # the stand-in's sh ignores SIGTERM
for name in sorted(os.listdir(src)):
    docs = [d for d in yaml.safe_load_all(open(os.path.join(src, name))) if d]
    ref = private_model if name.startswith("05-") else model
    extra = []
    for d in docs:
        d.setdefault("metadata", {}).pop("namespace", None)
        kind = d["kind"]
        if kind == "Pod":
            fix_pod(d["spec"], ref)
        elif kind in ("Deployment", "StatefulSet"):
            fix_pod(d["spec"]["template"]["spec"], ref)
        elif kind == "PersistentVolume":
            d["spec"]["csi"]["volumeHandle"] = ref
            d["spec"]["claimRef"]["namespace"] = os.environ.get("E2E_NAMESPACE", "tugboat-e2e")
        elif kind == "PersistentVolumeClaim" and d["spec"].get("storageClassName") != "":
            d["spec"]["resources"]["requests"]["storage"] = "1Gi"
        elif kind == "Secret":
            user, pw = os.environ.get("E2E_PRIVATE_USER", ""), os.environ.get("E2E_PRIVATE_PASSWORD", "")
            d["stringData"][".dockerconfigjson"] = (
                '{"auths": {"%s": {"username": "%s", "password": "%s"}}}' % (private_registry, user, pw))
    yaml.safe_dump_all(docs, open(os.path.join(out, name), "w"))
    # Variants the checks need beside the examples themselves.
    for d in docs:
        if name.startswith("03-") and d["kind"] == "Pod":
            v = copy.deepcopy(d)                       # the same pod in a namespace no rule names
            v["metadata"]["name"] = "tinyllama-csi-denied"
            extra.append(("03-denied.yaml", v))
            v = copy.deepcopy(d)                       # the origin only the node's mirror reaches
            v["metadata"]["name"] = "tinyllama-mirror"
            extra.append(("mirror.yaml", v))
        if name.startswith("05-") and d["kind"] == "Pod" and d["metadata"]["name"] == "private-model-csi":
            v = copy.deepcopy(d)                       # the private model without the secret
            v["metadata"]["name"] = "private-model-nosecret"
            for vol in v["spec"]["volumes"]:
                vol.get("csi", {}).pop("nodePublishSecretRef", None)
            extra.append(("05-nosecret.yaml", v))
    for file, d in extra:
        yaml.safe_dump(d, open(os.path.join(out, file), "w"))
PY
ls "$work/examples"

# The app container prints each model file's sha256 first: wait for ours in its log.
expect_model() { # KIND/NAME SHA256
    local what="$1" sha="$2" deadline=$((SECONDS + wait_s))
    until ns logs "$what" -c server 2>/dev/null | grep -q "$sha"; do
        [ $SECONDS -lt $deadline ] || fail "$what never showed the model's sha256 $sha"
        sleep 2
    done
    echo "ok: $what reads the model (sha256 $sha)"
}
# Every pod of label L still reads the model now (not only at start).
all_read() { # LABEL SHA256 WHY
    local p n=0
    for p in $(ns get pod -l "app.kubernetes.io/name=$1" -o name); do
        ns exec "$p" -c server -- sh -c "sha256sum \$(find /models -name '*.gguf')" | grep -q "$2" ||
            fail "$p $3"
        ! ns logs "$p" -c server | grep -q READ-FAILED || fail "$p could not read its model at some point"
        n=$((n + 1))
    done
    [ "$n" -gt 0 ] || fail "no pods labelled $1"
    echo "ok: $n pod(s) of $1 read the model"
    read_count=$n
}
# A FailedMount event for POD whose message matches RE.
expect_refused() { # [NAMESPACE] POD RE
    local namespace="$E2E_NAMESPACE"
    [ $# -eq 3 ] && { namespace="$1"; shift; }
    local pod="$1" re="$2" deadline=$((SECONDS + 120)) events
    until events="$(k -n "$namespace" get events --field-selector "involvedObject.name=$pod,reason=FailedMount" \
        -o jsonpath='{range .items[*]}{.message}{"\n"}{end}')" && grep -Eq "$re" <<<"$events"; do
        [ $SECONDS -lt $deadline ] || fail "$pod: no FailedMount matching /$re/ (events: ${events:-none})"
        sleep 3
    done
    echo "ok: $pod refused: $(grep -E "$re" <<<"$events" | head -n1 | cut -c1-200)"
    [ "$(k -n "$namespace" get pod "$pod" -o jsonpath='{.status.phase}')" != Running ] ||
        fail "$pod is running"
}

step "01: init container into an emptyDir"
ns apply -f "$work/examples/01-llama-cpp-emptydir.yaml"
ns rollout status deploy/tinyllama --timeout="$TIMEOUT"
expect_model deploy/tinyllama "$want"

step "02: init container into a PVC"
if k get storageclass -o name | grep -q .; then
    ns apply -f "$work/examples/02-vllm-pvc.yaml"
    ns rollout status deploy/qwen --timeout="$TIMEOUT"
    expect_model deploy/qwen "$want"
    echo "ok: claim $(ns get pvc qwen-model -o jsonpath='{.status.phase} {.spec.volumeName}')"
else
    skip "the cluster has no StorageClass for the PVC"
fi

step "03: CSI inline volume"
ns apply -f "$work/examples/03-csi-inline.yaml"
ns wait --for=condition=Ready pod/tinyllama-csi --timeout="$TIMEOUT"
expect_model pod/tinyllama-csi "$want"

step "policy: the same inline volume refused in a namespace no rule names"
denied_ns="$E2E_NAMESPACE-denied"
k create namespace "$denied_ns" --dry-run=client -o yaml | k apply -f -
k label namespace "$denied_ns" pod-security.kubernetes.io/enforce=restricted --overwrite
k -n "$denied_ns" apply -f "$work/examples/03-denied.yaml"
expect_refused "$denied_ns" tinyllama-csi-denied 'PermissionDenied.*access policy'
k delete namespace "$denied_ns" --wait=true --timeout="$TIMEOUT"

step "04: static PV shared by 3 replicas"
ns apply -f "$work/examples/04-static-pv-rox.yaml"
ns rollout status deploy/tinyllama-shared --timeout="$TIMEOUT"
for p in $(ns get pod -l app.kubernetes.io/name=tinyllama-shared -o name); do expect_model "$p" "$want"; done

step "05: private model through nodePublishSecretRef, refused without it"
if $private_creds; then
    printf '{"auths": {"%s": {"auth": "%s"}}}' "$E2E_PRIVATE_REGISTRY" \
        "$(printf '%s:%s' "$E2E_PRIVATE_USER" "$E2E_PRIVATE_PASSWORD" | base64 -w0)" >"$work/docker-config.json"
    private_want="$(push_model "$work/private" "$private_model" --docker-config="$work/docker-config.json")"
    if "$tugboat" inspect "$private_model" "${registry_flags[@]}" >/dev/null 2>&1; then
        fail "$private_model is readable without credentials: E2E_PRIVATE_REGISTRY must require them"
    fi
    ns apply -f "$work/examples/05-harbor-private.yaml"
    ns wait --for=condition=Ready pod/private-model-csi pod/private-model-init --timeout="$TIMEOUT"
    expect_model pod/private-model-csi "$private_want"
    expect_model pod/private-model-init "$private_want"
    ns apply -f "$work/examples/05-nosecret.yaml"
    expect_refused private-model-nosecret 'PermissionDenied'
    echo "ok: without nodePublishSecretRef the cached private model is refused"
else
    skip "set E2E_PRIVATE_USER/E2E_PRIVATE_PASSWORD (a registry requiring them)"
fi

step "mirror on the node: a model only the mirror can serve"
if [ -n "$E2E_MIRROR" ]; then
    mirror_model="$E2E_MIRROR_ORIGIN/e2e/mirrored:$tag"
    mirror_want="$(push_model "$work/mirrored" "$mirror_model")"
    sed -i "s|$model|$mirror_model|" "$work/examples/mirror.yaml"
    ns apply -f "$work/examples/mirror.yaml"
    ns wait --for=condition=Ready pod/tinyllama-mirror --timeout="$TIMEOUT"
    expect_model pod/tinyllama-mirror "$mirror_want"
    curl -sf "http://$E2E_MIRROR/v2/_catalog" | grep -q '"e2e/mirrored"' ||
        fail "the mirror $E2E_MIRROR never served e2e/mirrored"
    echo "ok: the mirror $E2E_MIRROR served e2e/mirrored"
else
    skip "set E2E_MIRROR (a pull-through cache of $E2E_MIRROR_ORIGIN reachable from the nodes)"
fi

step "mirror on the node: origin credentials never go to an untrusted mirror"
if [ -n "$E2E_PRIVATE_MIRROR" ] && $private_creds; then
    catalog="$(curl -sf -u "$E2E_PRIVATE_USER:$E2E_PRIVATE_PASSWORD" "http://$E2E_PRIVATE_MIRROR/v2/_catalog")"
    ! grep -q '"e2e/private"' <<<"$catalog" ||
        fail "the credentials-requiring mirror $E2E_PRIVATE_MIRROR served e2e/private: it got the origin's credentials"
    asked="$(sys logs "$(node_pod)" -c tugboat | grep -E '"mirror failed|not trusted with them' | grep -F "$E2E_PRIVATE_MIRROR" | tail -n1 || true)"
    [ -n "$asked" ] || fail "the node never asked the mirror $E2E_PRIVATE_MIRROR for the private model (no fallback logged)"
    echo "ok: the mirror refused the node's request without credentials and the origin served 05: $asked"
    echo "ok: the mirror's catalog is $catalog"
else
    skip "set E2E_PRIVATE_MIRROR (a pull-through cache of $E2E_PRIVATE_REGISTRY requiring its credentials) and E2E_PRIVATE_USER"
fi

step "mirror on the node: a trusted mirror gets the origin's credentials"
trusted_opt="$(option_of 'trusted-mirror|mirror-trust')"
if [ -z "$trusted_opt" ]; then
    skip "not available in this build: tugboat node --help has no trusted-mirror option"
elif [ -z "$E2E_PRIVATE_MIRROR" ] || ! $private_creds; then
    skip "set E2E_PRIVATE_MIRROR and E2E_PRIVATE_USER"
else
    trusted_env="$(env_of "$trusted_opt")"
    [ -n "$trusted_env" ] || fail "$trusted_opt has no environment variable in tugboat node --help"
    # HOST=MIRROR, as --mirror takes it; the daemon is restarted with it.
    sys set env ds/tugboat-node -c tugboat "$trusted_env=$E2E_PRIVATE_REGISTRY=http://$E2E_PRIVATE_MIRROR"
    sys rollout status ds/tugboat-node --timeout="$TIMEOUT"
    trusted_model="$E2E_PRIVATE_REGISTRY/e2e/private-trusted:$tag"
    trusted_want="$(push_model "$work/trusted" "$trusted_model" --docker-config="$work/docker-config.json")"
    sed -e "s|$private_model|$trusted_model|" -e 's/private-model-csi/private-model-trusted/' \
        "$work/examples/05-harbor-private.yaml" >"$work/examples/trusted.yaml"
    ns apply -f "$work/examples/trusted.yaml"
    ns wait --for=condition=Ready pod/private-model-trusted --timeout="$TIMEOUT"
    expect_model pod/private-model-trusted "$trusted_want"
    curl -sf -u "$E2E_PRIVATE_USER:$E2E_PRIVATE_PASSWORD" "http://$E2E_PRIVATE_MIRROR/v2/_catalog" |
        grep -q '"e2e/private-trusted"' || fail "the trusted mirror did not serve e2e/private-trusted"
    echo "ok: $trusted_opt: the mirror served the private model with the origin's credentials"
fi

step "warm list: the ConfigMap reloaded"
sys patch configmap tugboat-warm --type=merge \
    -p "{\"data\":{\"warm.yaml\":\"interval: 30s\nmodels:\n  - reference: $model\n\"}}"
deadline=$((SECONDS + 180))
until sys logs "$(node_pod)" -c tugboat | grep -F "\"reference\":\"$model\"" | grep -q '"message":"warm"'; do
    [ $SECONDS -lt $deadline ] || fail "the warm list was not reloaded"
    sleep 3
done
echo "ok: the daemon warmed the new list: $(sys logs "$(node_pod)" -c tugboat | grep -F "\"reference\":\"$model\"" | grep '"message":"warm"' | tail -n1)"

step "node labels: the node advertises its cached models"
advertise_opt="$(option_of 'advertis')"
if [ -z "$advertise_opt" ]; then
    skip "not available in this build: tugboat node --help has no --advertise option"
else
    node="$(node_name)"
    deadline=$((SECONDS + 120))
    until labels="$(k get node "$node" -o go-template='{{range $k, $v := .metadata.labels}}{{$k}}={{$v}}{{"\n"}}{{end}}' |
        grep -i tugboat)" && [ -n "$labels" ] && ! grep -qxF "$labels" <<<"$node_labels_before"; do
        [ $SECONDS -lt $deadline ] || fail "node $node has no tugboat label 120 s after warming $model ($advertise_opt)"
        sleep 5
    done
    echo "ok: node $node labelled: $labels"
fi

step "pod deletion unpublishes"
uid="$(ns get pod tinyllama-csi -o jsonpath='{.metadata.uid}')"
ns delete pod tinyllama-csi --wait=true --timeout="$TIMEOUT"
deadline=$((SECONDS + 60))
until sys logs "$(node_pod)" -c tugboat | grep 'volume unpublished' | grep -q "$uid"; do
    [ $SECONDS -lt $deadline ] || fail "no unpublish of pod $uid's volume logged after deleting the pod"
    sleep 2
done
echo "ok: $(sys logs "$(node_pod)" -c tugboat | grep 'volume unpublished' | grep "$uid" | tail -n1)"

step "DaemonSet restart keeps mounted volumes serving"
old="$(node_pod)"
sys rollout restart ds/tugboat-node
sys rollout status ds/tugboat-node --timeout="$TIMEOUT"
new="$(node_pod)"
[ "$new" != "$old" ] || fail "the DaemonSet pod was not replaced"
sys wait --for=condition=Ready "$new" --timeout="$TIMEOUT"
kept="$(kept_mounts "$new")"
kept_mounts "$new" >/dev/null
echo "ok: $new took over from $old: leases rebuilt from the mount table: $kept_detail"
all_read tinyllama-shared "$want" "lost its model across the DaemonSet restart"
[ "${kept:-0}" -ge "$read_count" ] || fail "the new plugin kept ${kept:-no} mounts, fewer than the $read_count replicas"
note "$kept mounts kept, $read_count replicas read"

step "a SIGSTOPped plugin is restarted by its liveness probe, mounts kept"
pod="$(node_pod)"
before="$(restarts "$pod")"
cid="$(sys get "$pod" -o jsonpath='{.status.containerStatuses[?(@.name=="tugboat")].containerID}')"
# SIGSTOP from the node's PID namespace: inside its container tugboat is PID 1, and the kernel
# drops a signal sent to a namespace's init from within that namespace unless init handles it,
# which SIGSTOP never can (so `kubectl debug --target=tugboat -- kill -STOP 1` stops nothing).
# A hostPID pod finds the process by its container ID in /proc/PID/cgroup.
cat >"$work/sigstop.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata: {name: e2e-sigstop, namespace: tugboat-system}
spec:
  nodeName: $(node_name)
  hostPID: true
  restartPolicy: Never
  tolerations: [{operator: Exists}]
  containers:
    - name: sigstop
      image: $E2E_APP_IMAGE
      env: [{name: CID, value: "${cid#*://}"}]
      command:
        - sh
        - -c
        - |
          n=0
          for d in /proc/[0-9]*; do
            case "\$(cat \$d/cgroup 2>/dev/null)" in *"\$CID"*) ;; *) continue ;; esac
            case "\$(cat \$d/cmdline 2>/dev/null)" in *tugboat*) ;; *) continue ;; esac
            kill -STOP "\${d#/proc/}" && echo "SIGSTOP sent to pid \${d#/proc/}" && n=\$((n + 1))
          done
          [ "\$n" -eq 1 ]
EOF
sys delete pod e2e-sigstop --ignore-not-found --wait=true
sys apply -f "$work/sigstop.yaml"
sys wait --for=jsonpath='{.status.phase}'=Succeeded pod/e2e-sigstop --timeout=60s ||
    { sys logs e2e-sigstop >&2 || true; fail "could not SIGSTOP the plugin (container $cid)"; }
stopped_at="$(now_ms)"
echo "ok: $(sys logs e2e-sigstop) (container ${cid#*://})"
sys delete pod e2e-sigstop --wait=false
deadline=$((SECONDS + 300))
until [ "$(restarts "$pod")" -gt "$before" ]; do
    [ $SECONDS -lt $deadline ] || fail "the hung plugin was not restarted within 300 s"
    sleep 1
done
restart_ms=$(($(now_ms) - stopped_at))
restart_s="$((restart_ms / 1000)).$(((restart_ms % 1000) / 100))"
echo "ok: restarted $restart_s s after SIGSTOP (liveness: $(sys get "$pod" -o jsonpath='{.spec.containers[?(@.name=="tugboat")].livenessProbe}'))"
sys wait --for=condition=Ready "$pod" --timeout="$TIMEOUT"
kept="$(kept_mounts "$pod")"
kept_mounts "$pod" >/dev/null
echo "ok: the restarted plugin rebuilt its leases from the mount table: $kept_detail"
all_read tinyllama-shared "$want" "lost its model when the plugin was restarted"
[ "${kept:-0}" -ge "$read_count" ] || fail "the restarted plugin kept ${kept:-no} mounts, fewer than the $read_count replicas"
echo "ok: mounts kept: kept=$kept"
note "restarted $restart_s s after SIGSTOP, $kept mounts kept, $read_count replicas read"

step "cleanup"
ns delete -f "$work/examples" --ignore-not-found --wait=true --timeout="$TIMEOUT" >/dev/null 2>&1 || true
ns delete pod --all --wait=true --timeout="$TIMEOUT"
finish_step
print_summary
echo "e2e: all checks passed"
