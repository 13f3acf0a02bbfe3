#!/usr/bin/env bash
# Build the image on a machine like the CI one: no registry, no Docker daemon, PyPI and Debian reachable
# only through the host's CA bundle, a local CPU torch wheel in pip's find-links.
#   usage: container/build.sh [TAG]      (default two-tower:latest; env ENGINE=podman|docker)
# Makes debian:bookworm-slim if missing (container/base-image.sh), links the local torch wheel into
# container/wheels/ (else the Dockerfile's default, PyTorch's CPU index, is used), passes the CA bundle as a
# build secret (never a layer), and builds with podman's docker format (OCI images drop HEALTHCHECK).
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-two-tower:latest}
ENGINE=${ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

container/base-image.sh "$ENGINE"

# The local CPU torch wheel for Debian bookworm's Python 3.11, from pip's configured find-links.
if ! ls container/wheels/torch-"$TORCH_VERSION"+cpu-cp311-*.whl >/dev/null 2>&1; then
  links="${PIP_FIND_LINKS:-} $(pip config get global.find-links 2>/dev/null || true)"
  for dir in $links; do
    dir=${dir#file://}
    wheel=$(ls "$dir"/torch-"$TORCH_VERSION"+cpu-cp311-*.whl 2>/dev/null | head -n1 || true)
    if [ -n "$wheel" ]; then
      ln -f "$wheel" container/wheels/ 2>/dev/null || cp "$wheel" container/wheels/
      echo "torch wheel: $wheel"
      break
    fi
  done
fi

args=(build --tag "$TAG" --build-arg "TORCH_VERSION=$TORCH_VERSION")
CA=${PIP_CERT:-$(pip config get global.cert 2>/dev/null || echo /etc/ssl/certs/ca-certificates.crt)}
[ -s "$CA" ] && args+=(--secret "id=cacert,src=$CA")
if [ "$ENGINE" = podman ]; then
  # This machine: runc (crun fails on its hybrid cgroups), cgroupfs, host network, explicit ulimits.
  read -r -a engine_flags <<<"${PODMAN_FLAGS:---runtime=runc --cgroup-manager=cgroupfs}"
  args=("${engine_flags[@]}" "${args[@]}" --format docker --network=host --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
else
  export DOCKER_BUILDKIT=1
fi
exec "$ENGINE" "${args[@]}" .
