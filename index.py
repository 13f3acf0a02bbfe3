"""Index a corpus with a trained checkpoint: `python index.py ckpt=PATH data.path=DIR`."""

from two_tower.cli.index import main

if __name__ == "__main__":
    main()
