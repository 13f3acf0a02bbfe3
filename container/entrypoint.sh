#!/bin/sh
# The image's entry point (see docs/container.md):
#   (nothing), key=value or ~key ...   serve $TWO_TOWER_INDEX on 0.0.0.0:$TWO_TOWER_PORT; the settings are serve.py's
#   serve.py key=value ...       the same
#   train.py|index.py|evaluate.py|search.py ARGS   that script (from /app; the working directory stays /work)
#   -... (--help)                 serve.py's flag
#   anything else                run as given (e.g. bash, python -c ...)
# exec: the process gets SIGTERM from `docker stop` directly (through tini, the image's PID 1).
set -e
# Python, torch and Hydra need a writable temporary folder: a read-only root file system without one is one line.
tmp=${TMPDIR:-/tmp}
if ! { [ -d "$tmp" ] && [ -w "$tmp" ]; }; then
  echo "error: $tmp is not writable: with a read-only root file system give it a tmpfs (docker run --read-only --tmpfs /tmp ...)" >&2
  exit 2
fi
case "${1:-}" in
  serve.py) shift ;;
  -*) ;;
  train.py|index.py|evaluate.py|search.py)
    script=$1
    shift
    exec python "/app/$script" "$@" ;;
  ""|*=*|"~"*) ;;  # ~key: a Hydra deletion (~rerank): serve.py's one-line refusal, not "exec: ~rerank: not found"
  *) exec "$@" ;;
esac
# The service under a tini of its own (-s: a subreaper, not PID 1) whose -e 143 makes a stop by SIGTERM exit 0, during
# start-up or after uvicorn's graceful shutdown (which raises the SIGTERM again: serve.py alone exits 143): a stopped
# service is not a failed one. Scripts keep their status (train.py: 143 after a stop, so a chain of them ends there).
exec /usr/bin/tini -s -e 143 -- python /app/serve.py "index=${TWO_TOWER_INDEX:-/index}" host=0.0.0.0 "port=${TWO_TOWER_PORT:-8000}" "$@"
