#!/usr/bin/env bash
# The soak: for SOAK_SECONDS (default 600) everything that touches a node cache runs at once on
# one cache: two `tugboat pull --dest` loops, CSI publish / read / unpublish through the node
# daemon, the daemon's warm loop following a warm list rewritten every 3 s, `cache gc --max-size
# 1KiB` (far below the working set of five 21-45 MiB models) and `cache rm` of random models.
# Then every model is pulled once more and compared with what was pushed, `cache verify` must be
# clean, and no partial download, lease or mount may be left. The second run adds a killer that
# SIGKILLs a random participant (a pull, a gc, an rm, the node daemon) every 0.5-2 s: killed
# work counts as killed, every survivor must succeed and the cache must still verify.
# Prints, per run, a table of rounds, failures and kills per participant, every failure's text
# and the end checks; the goal is 0 failures. Not part of CI.
#
#   sudo bench/soak.sh                       # 600 s each
#   SOAK_SECONDS=60 sudo bench/soak.sh       # shorter
#   SOAK_SEED=123 sudo bench/soak.sh         # replay a run's choices of models and victims
#
# Needs root (real bind mounts) and docker-registry. The full log goes to target/soak.log.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
need_packages
export SOAK_SECONDS=${SOAK_SECONDS:-600}
log=target/soak.log
mkdir -p target
cargo test --release --locked --test soak --no-run
status=0
: > "$log"
for test in soak soak_with_kills; do
  cargo test --release --locked --test soak -- --ignored --nocapture --exact "$test" 2>&1 |
    tee -a "$log" || status=1
done
echo
echo "== tables (full log: $log)"
grep -E '^(== soak|participant +rounds|(pull [AB]|csi publish|warm (list|passes)|cache (gc|rm)|killer|node daemon|final pulls) +[0-9]|soak[a-z_]*: [0-9]+ failures|-- .* failures:|   ! |end check|note: the|note: hidden|test result)' "$log" || true
exit "$status"
