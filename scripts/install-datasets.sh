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
bash "$(dirname "$0")/apt-packages.sh" datasets dataset-fashion-mnist
if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || command -v sudo >/dev/null 2>&1; }; then
    test -f "$DIR/t10k-labels-idx1-ubyte.gz"  # installed, so it must be there
else
    echo "datasets: without Fashion-MNIST, pass --data-dir with MNIST-format IDX files" >&2
fi
