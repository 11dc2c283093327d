"""The One-Plus-k evaluator: exact CTRs on the hand-made log, paired candidate sets, any policy form."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from recsys_gym import evaluate_one_plus_k
from recsys_gym.data.dataset import CompactDataset


def feature_policy(dataset: CompactDataset, column: int, pick: str = "max") -> Any:
    """A fixed policy over the flat observation: the candidate with the largest (or smallest) feature ``column``."""
    item_dim = dataset.item_dim
    user_dim = 2 * item_dim + 1 + 4 + dataset.context_dim

    def policy(obs: np.ndarray, info: dict[str, Any]) -> int:
        values = obs[user_dim:].reshape(-1, item_dim)[:, column]
        return int(values.argmax() if pick == "max" else values.argmin())

    return policy


def test_exact_ctr_of_fixed_policies(tiny_dataset: CompactDataset) -> None:
    """On the hand-made log (see ``conftest.tiny_raw_log``) with k=3, the negatives are forced.

    u1's test click A is the most-clicked training item: the most-clicked pick hits. u2's test click
    D has no training click and loses to B and C: a miss. So the most-clicked policy scores 1/2. The
    least-shown pick is E (2 training impressions) both times, never the click: 0.
    """
    kwargs = {"dataset": tiny_dataset}
    popular = evaluate_one_plus_k(feature_policy(tiny_dataset, 0), ks=[3], env_kwargs=kwargs, seed=0)
    assert popular[["k", "ctr", "hits", "n_impressions"]].to_dict("records") == [
        {"k": 3, "ctr": 0.5, "hits": 1, "n_impressions": 2}
    ]
    assert popular["random_floor"].iloc[0] == 0.25
    rare = evaluate_one_plus_k(feature_policy(tiny_dataset, 1, pick="min"), ks=[3], env_kwargs=kwargs, seed=0)
    assert rare["ctr"].iloc[0] == 0.0


class Recorder:
    """Wraps a policy and keeps every candidate set it was shown."""

    def __init__(self, choose: Any) -> None:
        self.choose = choose
        self.seen: list[tuple[int, ...]] = []

    def act(self, obs: Any, info: dict[str, Any]) -> int:
        self.seen.append(tuple(info["candidate_items"].tolist()))
        return int(self.choose(obs))


def test_same_seed_gives_every_policy_the_same_candidate_sets() -> None:
    first = Recorder(lambda obs: 0)
    second = Recorder(lambda obs: int(np.argmax(obs[-5:])) % 6)
    evaluate_one_plus_k(first, ks=[5], seed=3, max_impressions=300)
    evaluate_one_plus_k(second, ks=[5], seed=3, max_impressions=300)
    assert len(first.seen) >= 300 and first.seen == second.seen
    other_seed = Recorder(lambda obs: 0)
    evaluate_one_plus_k(other_seed, ks=[5], seed=4, max_impressions=300)
    assert other_seed.seen != first.seen


def test_random_policy_scores_the_floor_and_popularity_beats_it() -> None:
    """The synthetic log's clicks favour popular items: picking the most-clicked training item
    scores well above the random floor 1/(k+1), and a random pick scores about the floor."""
    rng = np.random.default_rng(0)
    table = evaluate_one_plus_k(lambda obs, info: int(rng.integers(11)), ks=[10], seed=0)
    floor = table["random_floor"].iloc[0]
    assert abs(table["ctr"].iloc[0] - floor) < 3 * np.sqrt(floor * (1 - floor) / table["n_impressions"].iloc[0])

    import gymnasium as gym

    dataset = gym.make("OutbrainRec-v0").unwrapped.dataset  # type: ignore[attr-defined]
    popular = evaluate_one_plus_k(feature_policy(dataset, 0), ks=[10], seed=0)
    assert popular["ctr"].iloc[0] > 2 * floor


def test_policy_per_k_and_sb3_style_predict(tiny_dataset: CompactDataset) -> None:
    class Predictor:
        def __init__(self, slot: int) -> None:
            self.slot = slot
            self.calls = 0

        def predict(self, obs: Any, deterministic: bool = True) -> tuple[np.ndarray, None]:
            self.calls += 1
            return np.array([self.slot]), None

    policies = {1: Predictor(0), 2: Predictor(1)}
    table = evaluate_one_plus_k(policies, ks=[1, 2], env_kwargs={"dataset": tiny_dataset}, seed=0)
    assert table["k"].tolist() == [1, 2]
    assert table["n_impressions"].tolist() == [2, 2]
    assert policies[1].calls == 2 and policies[2].calls == 2


def test_max_impressions_stops_after_the_episode_that_reaches_it() -> None:
    table = evaluate_one_plus_k(lambda obs, info: 0, ks=[2], seed=0, max_impressions=50)
    assert 50 <= table["n_impressions"].iloc[0] < 50 + 100


def test_a_policy_of_no_known_form_raises(tiny_dataset: CompactDataset) -> None:
    with pytest.raises(TypeError, match="policy must have act"):
        evaluate_one_plus_k(object(), ks=[1], env_kwargs={"dataset": tiny_dataset})


def test_bad_evaluation_arguments_raise(tiny_dataset: CompactDataset) -> None:
    kwargs = {"dataset": tiny_dataset}
    with pytest.raises(ValueError, match="ks must name at least one k"):
        evaluate_one_plus_k(lambda obs, info: 0, ks=[], env_kwargs=kwargs)
    with pytest.raises(ValueError, match="max_impressions must be None or >= 1, got 0"):
        evaluate_one_plus_k(lambda obs, info: 0, ks=[1], env_kwargs=kwargs, max_impressions=0)
    with pytest.raises(ValueError, match=r"has none for k=\[2\]; it has k=\[1\]"):
        evaluate_one_plus_k({1: lambda obs, info: 0}, ks=[1, 2], env_kwargs=kwargs)


def test_a_policy_built_for_another_k_is_named() -> None:
    import gymnasium as gym
    from stable_baselines3 import A2C

    model = A2C("MlpPolicy", gym.make("OutbrainRec-v0", k=3), n_steps=5)
    with pytest.raises(ValueError, match=r"the policy for k=5 was built for Discrete\(4\) \(k=3\)"):
        evaluate_one_plus_k(model, ks=[3, 5], max_impressions=10)


def test_candidate_aware_baselines_serve_every_k() -> None:
    """Baselines with act(obs, info) are built once, at any k, and evaluated at every k."""
    import gymnasium as gym

    from dadrl_sb3.baselines import MostPopular, RandomRecommender

    env = gym.make("OutbrainRec-v0", k=10)
    for baseline in (RandomRecommender(env, seed=0), MostPopular(env, seed=0)):
        table = evaluate_one_plus_k(baseline, ks=[1, 20], max_impressions=20)
        assert table["k"].tolist() == [1, 20]
