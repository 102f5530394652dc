#!/usr/bin/env bash
# A Debian bookworm base image with Python 3.11, built from debootstrap and `docker import`,
# for hosts that reach Debian's mirror but no container registry (CI here). Where a registry
# is reachable, skip this and use the Dockerfile's default BASE_IMAGE (python:3.11-slim).
# Cached: an existing image of the same tag is kept (FORCE=1 rebuilds).
set -euo pipefail
TAG="${1:-fedlora-base:bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
DOCKER="${DOCKER:-/usr/bin/docker}"
if [[ -z "${FORCE:-}" ]] && "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG exists (FORCE=1 rebuilds)"; exit 0
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,tini,ca-certificates,iproute2 \
  bookworm "$root" "$MIRROR" >/dev/null
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | "$DOCKER" import -c 'ENV LANG=C.UTF-8' - "$TAG" >/dev/null
echo "base image $TAG built from debootstrap bookworm"
