#!/usr/bin/env bash
# Extra wall time of the node policy on the warm path: a warm pull (cache hit into a fresh
# --dest) and a warm CSI publish (cached model, bind mount), each with and without a policy
# that has access rules, a cosign requirement and a model-signing requirement. The figures are
# medians over ROUNDS (default 20) of a SIZE_MIB (default 64) model; verdicts are remembered,
# so the policy's cost on this path is the rule matching, the host check and a verdict lookup.
# Needs root for the publish half (real bind mounts), docker-registry, model-signing (pip),
# openssl. Usage: bench/policy.sh   (ROUNDS=50 SIZE_MIB=256 bench/policy.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --test signatures -- --ignored --nocapture bench_warm_pull_and_publish_overhead 2>&1 \
  | grep -E '^warm (pull|publish)'
