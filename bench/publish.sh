#!/usr/bin/env bash
# What pods cost a warm node: 50 CSI publishes of one private model (htpasswd registry, the
# credentials only in each pod's secret) under pullPolicy IfNotPresent and Always, through a
# counting proxy: connections opened, requests, authentication round trips, per-publish
# latency p50/p99, and the node daemon's RSS with 50 and 200 volumes published.
# Needs root (real bind mounts), docker-registry and htpasswd (apache2-utils).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
need_packages
command -v htpasswd >/dev/null || apt-get install -y -qq apache2-utils >/dev/null
cargo test --locked --test publish_load -- --ignored --nocapture publish_load_figures 2>&1 |
  grep -E 'warm publishes|test result'
