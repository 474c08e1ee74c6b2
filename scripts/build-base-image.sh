#!/usr/bin/env bash
# Build the local base image fedcoin-base:bookworm without any container registry:
# debootstrap a minimal Debian bookworm (python3, venv, pip, ca-certificates) from
# Debian's archive, copy the host's CA bundle into it (so apt and pip work inside
# `docker build` behind a TLS-intercepting proxy; harmless elsewhere) and
# `docker import` it.
#
#   scripts/build-base-image.sh [--force]
#
# Idempotent: does nothing when the image exists, unless --force.
# Environment: FEDCOIN_BASE_IMAGE (fedcoin-base:bookworm), FEDCOIN_DEBIAN_SUITE (bookworm),
# FEDCOIN_DEBIAN_MIRROR (http://deb.debian.org/debian), TMPDIR (where the rootfs is made).
set -euo pipefail

IMAGE=${FEDCOIN_BASE_IMAGE:-fedcoin-base:bookworm}
SUITE=${FEDCOIN_DEBIAN_SUITE:-bookworm}
MIRROR=${FEDCOIN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
HOST_CA=/etc/ssl/certs/ca-certificates.crt
FORCE=0

for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "base-image: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

say() { echo "base-image: $*"; }

command -v docker >/dev/null 2>&1 || { say "docker is not installed" >&2; exit 1; }
docker info >/dev/null 2>&1 || { say "the docker engine is not reachable (docker info failed)" >&2; exit 1; }

OLD_ID=$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
if [ -n "$OLD_ID" ] && [ "$FORCE" = 0 ]; then
    say "$IMAGE exists (${OLD_ID:7:12}); nothing to do (--force rebuilds it)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { say "debootstrap needs root and there is no sudo" >&2; exit 1; }
    SUDO="sudo"
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || { say "no debootstrap and no apt-get to install it" >&2; exit 1; }
    say "installing debootstrap with apt-get"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap >/dev/null
fi

ROOTFS=$(mktemp -d "${TMPDIR:-/var/tmp}/fedcoin-rootfs.XXXXXX")
cleanup() {
    # debootstrap mounts proc/sys inside the target; never delete through a mount.
    for m in dev/pts dev proc sys; do
        if mountpoint -q "$ROOTFS/$m" 2>/dev/null; then $SUDO umount -l "$ROOTFS/$m" || true; fi
    done
    $SUDO rm -rf --one-file-system "$ROOTFS"
}
trap cleanup EXIT

start=$(date +%s)
say "debootstrap $SUITE (minbase + python3, python3-venv, python3-pip, ca-certificates) from $MIRROR into $ROOTFS"
if ! $SUDO debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1; then
    tail -n 30 "$ROOTFS.log" >&2 || true
    [ -f "$ROOTFS/debootstrap/debootstrap.log" ] && tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2
    rm -f "$ROOTFS.log"
    say "debootstrap failed" >&2
    exit 1
fi
rm -f "$ROOTFS.log"

say "configuring the rootfs (apt sources, CA bundle, no daemons, no caches)"
# The archive, its updates and the security archive (debootstrap writes only the first).
$SUDO tee "$ROOTFS/etc/apt/sources.list" >/dev/null <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
# The host's CA bundle, and its local CAs where update-ca-certificates (run by apt
# triggers) looks for them, so a later regeneration of the bundle keeps them.
if [ -f "$HOST_CA" ]; then
    $SUDO install -m 0644 "$HOST_CA" "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        $SUDO mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
        $SUDO cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
    fi
    say "copied $HOST_CA ($(grep -c 'BEGIN CERTIFICATE' "$HOST_CA") certificates)"
else
    say "no $HOST_CA on this host; the image keeps Debian's CA bundle"
fi
# As in Debian's official images: no service starts inside a build, apt keeps no .debs.
printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$ROOTFS/usr/sbin/policy-rc.d" >/dev/null
$SUDO chmod 0755 "$ROOTFS/usr/sbin/policy-rc.d"
$SUDO tee "$ROOTFS/etc/apt/apt.conf.d/docker-clean" >/dev/null <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF
$SUDO find "$ROOTFS/var/cache/apt" "$ROOTFS/var/lib/apt/lists" -type f -delete
$SUDO rm -rf "$ROOTFS/debootstrap" "$ROOTFS/var/log/"*.log "$ROOTFS/var/log/apt/"* "$ROOTFS/tmp/"*
: | $SUDO tee "$ROOTFS/etc/hostname" "$ROOTFS/etc/resolv.conf" >/dev/null

say "docker import -> $IMAGE"
$SUDO tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap $SUITE minbase + python3 (scripts/build-base-image.sh)" \
    - "$IMAGE" >/dev/null

NEW_ID=$(docker image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$NEW_ID" ]; then
    # The replaced image, unless a container or an image built on it still needs it.
    docker image rm "$OLD_ID" >/dev/null 2>&1 && say "removed the previous ${OLD_ID:7:12}" || true
fi
size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
say "built $IMAGE (${NEW_ID:7:12}, $((size / 1000000)) MB) in $(( $(date +%s) - start )) s"
docker run --rm "$IMAGE" python3 -c 'import sys, ssl, venv; print("base-image: python", sys.version.split()[0], "OK")'
