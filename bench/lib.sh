# Shared helpers for the demo and the benchmarks: install what is missing, start a throwaway
# CNCF distribution registry on a free loopback port, and clean up on exit.

need_packages() {
  local missing=()
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  for tool in "$@"; do
    case "$tool" in
      skopeo) command -v skopeo >/dev/null || missing+=(skopeo) ;;
      time) [ -x /usr/bin/time ] || missing+=(time) ;;
    esac
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "== installing ${missing[*]}"
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_registry DIR: sets REGISTRY (host:port) and REGISTRY_PID.
start_registry() {
  local dir=$1 port
  port=$(free_port)
  mkdir -p "$dir/data"
  cat > "$dir/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
YAML
  docker-registry serve "$dir/config.yml" > "$dir/registry.log" 2>&1 &
  REGISTRY_PID=$!
  REGISTRY=127.0.0.1:$port
  for _ in $(seq 100); do
    curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "registry did not start; log:" >&2
  cat "$dir/registry.log" >&2
  return 1
}

# write_random FILE MIB SEED: incompressible bytes, fast.
write_random() {
  python3 - "$1" "$2" "$3" <<'PY'
import random, sys
path, mib, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
with open(path, "wb") as f:
    for _ in range(mib):
        f.write(rng.randbytes(1 << 20))
PY
}
