#!/usr/bin/env bash
# Make the base image `debian:bookworm-slim` locally when no registry is reachable (this machine):
# debootstrap a minimal Debian bookworm root file system from the mirror in the machine's apt sources
# and import it under the tag the Dockerfile's FROM names. Does nothing when the tag already exists.
# Needs root and apt-get (installs podman, runc and debootstrap if missing).
#   usage: container/base-image.sh [ENGINE]     (ENGINE: podman (default) or docker)
set -euo pipefail
ENGINE=${1:-podman}
TAG=debian:bookworm-slim

if [ "$ENGINE" = podman ]; then
  missing=()
  for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
else
  missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "error: ${missing[*]} missing and no root apt-get to install them" >&2
    exit 2
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# docker: a client without a daemon would make every check below look like "image missing" and fail only at the
# import, after a whole debootstrap.
if [ "$ENGINE" = docker ] && ! docker info >/dev/null 2>&1; then
  echo "error: docker cannot reach its daemon (docker info fails): start it, or use ENGINE=podman" >&2
  exit 2
fi
if "$ENGINE" image inspect "$TAG" >/dev/null 2>&1; then
  echo "$TAG: present"
  exit 0
fi
if "$ENGINE" pull "$TAG" >/dev/null 2>&1; then  # a machine that reaches Docker Hub
  echo "$TAG: pulled"
  exit 0
fi

# The Debian mirror the machine's apt uses (deb822 "URIs:" or one-line "deb URL suite ...").
MIRROR=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
  | grep -E '/debian/?( |$)' | head -n1 | sed -E 's/^URIs:[[:space:]]*//; s/^deb (\[[^]]*\] )?//; s/[[:space:]].*//' || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOTFS=$(mktemp -d /tmp/bookworm-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
echo "debootstrap bookworm from $MIRROR ..."
debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >/dev/null
# Like the official slim image: no downloaded packages, apt lists, docs or man pages.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/*
tar -C "$ROOTFS" -c . | "$ENGINE" import --change 'CMD ["bash"]' - "$TAG" >/dev/null
echo "$TAG: made with debootstrap"
