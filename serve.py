"""Serve an index folder over HTTP: `python serve.py index=DIR [host=127.0.0.1 port=8000]` (two_tower/cli/serve.py)."""

import sys

from two_tower.cli.serve import main

if __name__ == "__main__":
    sys.exit(main())
