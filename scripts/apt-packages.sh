#!/usr/bin/env bash
# Install Debian packages with apt-get where it is available (as root, or through sudo).
#   bash scripts/apt-packages.sh WHAT PACKAGE...
# WHAT names the purpose in messages. Without apt-get, or without root and sudo, it says what
# to install and exits 0: the caller decides whether the packages were needed.
set -euo pipefail
what=$1
shift
if ! command -v apt-get >/dev/null 2>&1; then
    echo "$what: no apt-get here; install $* yourself" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "$what: not root and no sudo; install $* yourself" >&2; exit 0; fi
fi
echo "$what: installing $* with apt-get"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
