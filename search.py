"""Search an index folder: `python search.py index=DIR "how long is a marathon"` (two_tower/cli/search.py)."""

import sys

from two_tower.cli.search import main

if __name__ == "__main__":
    sys.exit(main())
