"""Negative passages for training rows, chosen by the ``negatives`` config group."""

from two_tower.negatives.base import InBatchNegatives, NegativeSampler, RandomNegatives, sample_from

__all__ = ["InBatchNegatives", "NegativeSampler", "RandomNegatives", "sample_from"]
