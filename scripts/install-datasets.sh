#!/usr/bin/env bash
# Install the offline default dataset: Fashion-MNIST IDX files from Debian's
# package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist).
# Nothing is downloaded from outside the distribution's package archive.
set -euo pipefail
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/t10k-labels-idx1-ubyte.gz" ]; then
    echo "datasets: Fashion-MNIST present in $DIR"
    exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
            echo "datasets: not root and no sudo; install dataset-fashion-mnist yourself" >&2; exit 0; fi
    fi
    echo "datasets: installing dataset-fashion-mnist with apt-get"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
    test -f "$DIR/t10k-labels-idx1-ubyte.gz"
else
    echo "datasets: no apt-get here; pass --data-dir with MNIST-format IDX files" >&2
fi
