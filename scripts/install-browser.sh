#!/usr/bin/env bash
# Install a headless browser for the explorer's browser tests: Debian's chromium and
# chromium-driver (Selenium drives them). Nothing is downloaded from outside the
# distribution's package archive.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "browser: chromium and chromedriver present"
    exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
            echo "browser: not root and no sudo; install chromium and chromium-driver yourself" >&2; exit 0; fi
    fi
    echo "browser: installing chromium and chromium-driver with apt-get"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
    command -v chromedriver >/dev/null
else
    echo "browser: no apt-get here; the explorer's browser tests need chromium and chromedriver" >&2
fi
