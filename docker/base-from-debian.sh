#!/usr/bin/env bash
# Build a Debian Python base image from the package archive, for machines that cannot pull
# public images (python:3.12-slim, nvidia/cuda) but can reach a Debian mirror and PyPI:
#
#   sudo docker/base-from-debian.sh                       # -> image clce-base:bookworm
#   docker build --build-arg PYTHON_IMAGE=clce-base:bookworm -f docker/Dockerfile.cpu -t clce-serve-cpu .
#
# What it does: debootstrap a minimal Debian (variant minbase) with python3, python3-venv and
# python-is-python3 (so `python` exists, as in the python:* images), put this machine's CA bundle
# in the image and point pip / requests / OpenSSL at it (a TLS-intercepting proxy stays trusted),
# empty the apt caches, then `docker import` the tree.
#
# Options (environment):
#   TAG=clce-base:bookworm      image name
#   SUITE=bookworm              Debian release (bookworm has Python 3.11; the project needs >= 3.10)
#   MIRROR=URL                  Debian mirror; default: the first one in /etc/apt/sources.list*,
#                               else http://deb.debian.org/debian
#   CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt   the CA bundle copied into the image
#   WORKDIR=DIR                 where the root file system is built (default: a temporary folder)
#
# Needs root, debootstrap and a running Docker engine (Debian: apt-get install docker.io debootstrap).
set -euo pipefail

TAG=${TAG:-clce-base:bookworm}
SUITE=${SUITE:-bookworm}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

die() { echo "error: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "debootstrap needs root: run it with sudo"
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
command -v docker >/dev/null || die "docker is missing: apt-get install docker.io"
docker info >/dev/null 2>&1 || die "the Docker engine is not running: start dockerd (or systemctl start docker)"
[ -r "$CA_BUNDLE" ] || die "no CA bundle at $CA_BUNDLE: set CA_BUNDLE=/path/to/bundle.pem"

# The first Debian (not -security) mirror this machine's apt uses, deb822 or one-line format.
find_mirror() {
    local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list)
    { grep -hs -E '^\s*URIs:' "${files[@]}" | awk '{print $2}'
      grep -hs -E '^\s*deb\s' "${files[@]}" | sed -E 's/\[[^]]*\]//' | awk '{print $2}'
    } | grep -v -- '-security' | grep -E '/debian/?$' | head -n 1
}
MIRROR=${MIRROR:-$(find_mirror || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

if [ -n "${WORKDIR:-}" ]; then
    ROOT=$WORKDIR
    mkdir -p "$ROOT"
else
    ROOT=$(mktemp -d /var/tmp/clce-base.XXXXXX)
    trap 'rm -rf "$ROOT"' EXIT
fi

echo "debootstrap $SUITE from $MIRROR into $ROOT"
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3 \
    "$SUITE" "$ROOT" "$MIRROR"

install -D -m 0644 "$CA_BUNDLE" "$ROOT/etc/ssl/certs/ca-certificates.crt"
chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/log/*.log \
    "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/*
chroot "$ROOT" python3 -m venv --help >/dev/null  # the venv module and ensurepip are really there

CERT=/etc/ssl/certs/ca-certificates.crt
tar --numeric-owner -C "$ROOT" -c . | docker import \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV LANG=C.UTF-8" \
    --change "ENV PIP_CERT=$CERT" \
    --change "ENV REQUESTS_CA_BUNDLE=$CERT" \
    --change "ENV SSL_CERT_FILE=$CERT" \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase $SUITE $MIRROR + python3, python3-venv, host CA bundle" \
    - "$TAG"
docker run --rm "$TAG" python -c "import ssl, sys, venv; print('base ok: Python', sys.version.split()[0])"
docker image ls "$TAG"
