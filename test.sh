#!/usr/bin/env bash
# The whole test suite, on a fresh machine: provides what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")"

# What the tests need from Debian: Chromium and ChromeDriver for the dashboard's browser test;
# PostgreSQL's server programs for the PostgreSQL store's tests, which start a throwaway
# cluster of their own (initdb in a temporary folder; nothing is installed as a service that
# runs); iproute2 for the many-machines test's network namespaces; util-linux's `script` for
# the pseudo-terminal the colour test needs.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v ip >/dev/null || missing+=(iproute2)
command -v script >/dev/null || missing+=(bsdutils)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    # policy-rc.d: the package's own cluster is not started (the tests start their own).
    if [ ! -e /usr/sbin/policy-rc.d ] && [ "$(id -u)" = 0 ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo test --workspace "$@"
