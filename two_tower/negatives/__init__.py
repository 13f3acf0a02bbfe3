"""Negative passages for training rows, chosen by the ``negatives`` config group."""

from two_tower.negatives.ann import ANNNegatives
from two_tower.data.sampling import InBatchNegatives, NegativeSampler, RandomNegatives, sample_from
from two_tower.negatives.bm25 import BM25Negatives

__all__ = ["ANNNegatives", "BM25Negatives", "InBatchNegatives", "NegativeSampler", "RandomNegatives", "sample_from"]
