"""The image's HEALTHCHECK: GET /health on $TWO_TOWER_PORT (8000 when unset or empty); one line and exit 1
when it does not answer 200 (no traceback in the engine's health log)."""

import os
import sys
import urllib.request

port = os.environ.get("TWO_TOWER_PORT") or "8000"
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=4) as answer:
        status = answer.status
except Exception as err:  # refused, timed out, an HTTP error: unhealthy, said in one line
    sys.exit(f"unhealthy: http://127.0.0.1:{port}/health: {type(err).__name__}: {err}")
sys.exit(0 if status == 200 else f"unhealthy: /health answered {status}")
