"""Serve an index folder over HTTP: `python serve.py index=DIR [host=127.0.0.1 port=8000]` (see README).

Not a @hydra.main script (a server writes no run folder); settings are Hydra overrides of
conf/serve.yaml, composed with Hydra's compose API.
"""

import sys

from two_tower.cli.serve import main

if __name__ == "__main__":
    sys.exit(main())
