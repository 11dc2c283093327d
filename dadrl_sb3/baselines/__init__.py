"""Sanity baselines without a network: the random floor and the non-personalised popularity ranking."""

from dadrl_sb3.baselines.most_popular import MostPopular
from dadrl_sb3.baselines.random_policy import RandomRecommender

__all__ = ["MostPopular", "RandomRecommender"]
