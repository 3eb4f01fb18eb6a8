#!/usr/bin/env bash
# Runs every test: unit, property and integration tests (the integration tests drive the real
# binary, as root and as other users through setpriv).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --all-targets "$@"
