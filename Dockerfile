# The two-tower search service (default command) and the train/index/evaluate/search scripts, CPU only.
#   docker build -t two-tower .                     # torch from PyTorch's CPU wheel index (default)
#   docker run -p 8000:8000 -v $PWD/indexes/marco7k:/index:ro two-tower
# Layout, volumes, user, ports, env and build args: docs/container.md. On a machine without a registry or
# Docker daemon (podman, local torch wheel, CA bundle as a build secret): container/build.sh.

ARG BASE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------- builder
FROM ${BASE} AS builder
# Where torch comes from: PyTorch's CPU wheel index (PyPI's default Linux wheel is the multi-GB CUDA
# build), or torch wheels placed in container/wheels/ (then the index is not used; see container/build.sh): only a CPU
# wheel (+cpu) for the image's Python is taken (any torch-VERSION*-cp3* was, a CUDA or another Python's wheel too).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL=https://pypi.org/simple
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
# Debian's Python refuses system-wide pip installs (PEP 668): everything goes into a virtualenv.
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_DEFAULT_TIMEOUT=180
# A CA bundle for pip behind a TLS-inspecting proxy comes in as a build secret (`--secret id=cacert,src=FILE`),
# never as a layer.
RUN --mount=type=secret,id=cacert --mount=type=bind,source=container/wheels,target=/wheels \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi; \
    set -e; \
    py=$(python3 -c 'import sys; print("cp%d%d" % sys.version_info[:2])'); \
    wheel=$(ls /wheels/torch-"${TORCH_VERSION}"+cpu-"$py"-*.whl 2>/dev/null | head -n1); \
    if [ -n "$wheel" ]; then \
      echo "torch from $wheel"; pip install --index-url "$PIP_INDEX_URL" "$wheel"; \
    else \
      echo "torch from $TORCH_INDEX_URL"; pip install --index-url "$TORCH_INDEX_URL" --extra-index-url "$PIP_INDEX_URL" "torch==${TORCH_VERSION}"; \
    fi
# The project's dependencies (with the [serve] extra) in their own layer: code changes do not reinstall them.
# An editable install: the package (with its configs, two_tower/conf/) stays in /app next to the scripts.
COPY pyproject.toml /app/
RUN --mount=type=secret,id=cacert \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi; \
    set -e; mkdir -p /app/two_tower; touch /app/README.md /app/two_tower/__init__.py; \
    pip install --index-url "$PIP_INDEX_URL" -e "/app[serve]"
COPY two_tower /app/two_tower
COPY train.py index.py evaluate.py search.py serve.py /app/
COPY container/entrypoint.sh container/healthcheck.py /app/container/
# Third-party test suites and C++ headers are never run or compiled here (~0.2 GB).
RUN find /opt/venv/lib -depth -type d -name tests -path "*/site-packages/*" -exec rm -rf {} + \
 && rm -rf /opt/venv/lib/python3*/site-packages/torch/include \
 && python -m compileall -q /app/two_tower /app/*.py

# ------------------------------------------------------------------------------------------------ final
FROM ${BASE}
# tini: PID 1 passes SIGTERM on to the command (a Python PID 1 ignored it until its handler was installed, so a
# stop during start-up fell through to SIGKILL) and reaps zombies.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 tini \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --home-dir /work --create-home --shell /usr/sbin/nologin app \
 && mkdir /index
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
# /work: working directory and HOME (Hydra's outputs/, caches); /index: the index folder the service reads.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/work \
    TWO_TOWER_CACHE=/work/.cache/two_tower \
    TWO_TOWER_INDEX=/index \
    TWO_TOWER_PORT=8000
USER 10001:10001
WORKDIR /work
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "/app/container/healthcheck.py"]
# No arguments or key=value settings: serve $TWO_TOWER_INDEX on 0.0.0.0:$TWO_TOWER_PORT.
# train.py / index.py / evaluate.py / search.py / serve.py ARGS: that script; anything else runs as given.
# A stopped service exits 0 (the entry point runs it under a tini -e 143 of its own); a stopped script keeps its
# status (train.py: 143), so `docker run ... train.py && docker run ... index.py` does not go on after a stop.
ENTRYPOINT ["/usr/bin/tini", "--", "/app/container/entrypoint.sh"]
CMD []
