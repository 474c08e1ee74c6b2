#!/usr/bin/env bash
# Install a headless browser for the explorer's browser tests: Debian's chromium and
# chromium-driver (Selenium drives them). Nothing is downloaded from outside the
# distribution's package archive.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "browser: chromium and chromedriver present"
    exit 0
fi
bash "$(dirname "$0")/apt-packages.sh" browser chromium chromium-driver
if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || command -v sudo >/dev/null 2>&1; }; then
    command -v chromedriver >/dev/null  # installed, so it must be there
fi
