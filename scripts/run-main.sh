#!/usr/bin/env bash
# The main job on built-in defaults: builds auditwatch (release) and starts the
# long-running service `auditwatch run` on its embedded defaults:
#   - listens for Vault's / OpenBao's socket audit device on tcp 127.0.0.1:9090
#   - judges every entry with the built-in rule pack
#   - writes findings as JSON lines on stdout (logs go to stderr)
#   - keeps the byte-for-byte fallback archive in ./auditwatch-data
#   - serves http://127.0.0.1:9102/metrics (Prometheus) and /health
# Ctrl-C (or SIGTERM) drains and exits 0; SIGHUP reopens the archive file.
# Extra arguments are passed to `auditwatch run`, e.g. --config FILE
# (`target/release/auditwatch config example` prints a complete one).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --locked
exec target/release/auditwatch run "$@"
