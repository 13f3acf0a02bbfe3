"""Score checkpoints and baselines on one split: `python evaluate.py ckpt=PATH data.path=DIR`."""

from two_tower.cli.evaluate import main

if __name__ == "__main__":
    main()
