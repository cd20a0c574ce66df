#!/usr/bin/env bash
# The main job on built-in defaults. Until the long-running service
# (`auditwatch run`) exists, this builds auditwatch and replays the real
# OpenBao capture kept in the repository with the built-in rule pack,
# printing a readable table of findings and the run's summary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --locked
exec target/release/auditwatch replay --format text tests/data/openbao/scenarios.log "$@"
