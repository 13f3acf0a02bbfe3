#!/bin/sh
# The image's entry point (see docs/container.md):
#   (nothing) or key=value ...   serve $TWO_TOWER_INDEX on 0.0.0.0:$TWO_TOWER_PORT; the settings are serve.py's
#   serve.py key=value ...       the same
#   train.py|index.py|evaluate.py|search.py ARGS   that script (from /app; the working directory stays /work)
#   anything else                run as given (e.g. bash, python -c ...)
# exec: the process gets SIGTERM from `docker stop` directly.
set -e
case "${1:-}" in
  serve.py) shift ;;
  train.py|index.py|evaluate.py|search.py)
    script=$1
    shift
    exec python "/app/$script" "$@" ;;
  ""|*=*) ;;
  *) exec "$@" ;;
esac
exec python /app/serve.py "index=${TWO_TOWER_INDEX:-/index}" host=0.0.0.0 "port=${TWO_TOWER_PORT:-8000}" "$@"
