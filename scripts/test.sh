#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need, then
# checks formatting and lints, runs every test, builds the docs, and checks
# that the benchmarks and fuzz targets compile (running them is not part of CI).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
# The installer may put bao in pip's script directory.
export PATH="$PATH:$HOME/.local/bin:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)"

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked
cargo bench --no-run --locked
cargo check --manifest-path fuzz/Cargo.toml --bins
