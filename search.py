"""Search an index folder: `python search.py index=DIR "how long is a marathon"` (see README).

Not a @hydra.main script, because the query is free text; settings are still Hydra overrides of
conf/search.yaml (composed with Hydra's compose API, no run folder is written).
"""

import sys

from two_tower.retrieval.search import main

if __name__ == "__main__":
    sys.exit(main())
