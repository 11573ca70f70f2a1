#!/usr/bin/env bash
# The whole test suite, on a fresh machine: provides what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")"

# The dashboard's browser test drives Debian's Chromium through ChromeDriver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
fi

cargo test --workspace "$@"
