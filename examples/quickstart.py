"""Train DADRL on the built-in data for a few minutes and compare it with Random and Most-Popular.

Run: ``python examples/quickstart.py``
"""

import gymnasium as gym
import torch

import recsys_gym  # noqa: F401  (registers OutbrainRec-v0)
from dadrl_sb3 import DADRL
from dadrl_sb3.baselines import MostPopular, RandomRecommender
from recsys_gym import evaluate_one_plus_k

if __name__ == "__main__":  # worker processes re-import this file; only the main process trains
    # Small networks run faster on one thread; the devices use the other cores.
    torch.set_num_threads(1)

    # The environment: built-in synthetic data in Outbrain's schema, 10 negatives per candidate set.
    env = gym.make("OutbrainRec-v0", k=10, obs_mode="dict")

    # DADRL with two devices, each holding its own half of the users, and a candidate-scoring network.
    model = DADRL("CandidatePolicy", env, n_workers=2, seed=0, verbose=1)
    model.learn(total_timesteps=20_000, progress_bar=True)

    # One-Plus-k CTR on the test split; the same seed gives every policy the same candidate sets.
    for name, policy in [
        ("DADRL", model),
        ("MostPopular", MostPopular(env, seed=0)),
        ("Random", RandomRecommender(env, seed=0)),
    ]:
        table = evaluate_one_plus_k(policy, ks=[10], env_kwargs={"obs_mode": "dict"}, seed=1)
        print(f"{name:12s} CTR@k=10: {table['ctr'].iloc[0]:.3f} (random floor {table['random_floor'].iloc[0]:.3f})")
