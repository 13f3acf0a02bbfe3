"""Train a two-tower retriever: `python train.py encoder=gru negatives=in_batch`."""

from two_tower.cli.train import main

if __name__ == "__main__":
    main()
