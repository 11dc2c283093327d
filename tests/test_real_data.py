"""OutbrainRec-v0 on real logs: MovieLens-100K from the recbole wheel and real Outbrain rows kept outside the repo."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from conftest import OUTBRAIN_SAMPLE
from gymnasium.utils.env_checker import check_env

from dadrl_sb3.baselines import MostPopular
from recsys_gym import evaluate_one_plus_k

needs_sample = pytest.mark.skipif(
    not (OUTBRAIN_SAMPLE / "events.csv").is_file(), reason=f"the real Outbrain rows are not at {OUTBRAIN_SAMPLE}"
)


def test_movielens_100k_environment() -> None:
    env = gym.make("OutbrainRec-v0", dataset="movielens-100k", k=10)
    summary = env.unwrapped.dataset.summary()  # type: ignore[attr-defined]
    assert (summary["users"], summary["items"], summary["impressions"]) == (943, 1682, 100_000)
    # The time cut falls at the 80,000th rating; the one other rating at that same second goes to test.
    assert summary["train_impressions"] == 79_999 and not summary["has_shown"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)


def test_most_popular_beats_random_on_movielens() -> None:
    """Random scores 1/11 = 0.091 at k=10; popularity on MovieLens is a strong cue (about 0.5 here)."""
    env = gym.make("OutbrainRec-v0", dataset="movielens-100k", k=10)
    table = evaluate_one_plus_k(
        MostPopular(env, seed=0), ks=[10], env_kwargs={"dataset": "movielens-100k"}, max_impressions=3000
    )
    assert table["ctr"].iloc[0] > table["random_floor"].iloc[0] + 0.25


def test_movielens_shown_mode_tops_up_every_set() -> None:
    env = gym.make("OutbrainRec-v0", dataset="movielens-100k", k=5, negatives="shown")
    env.reset(seed=0)
    _, _, _, _, info = env.step(0)
    assert info["n_shown"] == 1  # MovieLens logs no impression beside the rated item


@needs_sample
@pytest.mark.parametrize("negatives", ["random", "shown"])
def test_real_outbrain_rows_in_both_negative_modes(negatives: str) -> None:
    env = gym.make("OutbrainRec-v0", data_dir=str(OUTBRAIN_SAMPLE), k=5, negatives=negatives)
    data = env.unwrapped.dataset  # type: ignore[attr-defined]
    assert (data.n_users, data.n_items, data.n_impressions) == (1949, 4319, 1959)
    assert data.item_dim == 3 + 8  # no promoted_content/documents files: counts and co-click embedding only
    # Prepared by the streaming pipeline, which counted what it read.
    counts = data.manifest["prepare_counts"]
    assert (counts["clicks_train.csv: rows read"], counts["events.csv: rows read"], counts["users kept"]) == (9999, 1959, 1949)
    obs, info = env.reset(seed=0)
    n_shown = []
    for _ in range(300):
        assert env.observation_space.contains(obs)
        obs, _, terminated, truncated, info = env.step(env.action_space.sample())
        n_shown.append(info["n_shown"])
        if terminated or truncated:
            obs, info = env.reset()
    if negatives == "shown":
        # Displays show 2 to 12 ads: with k=5, up to all 6 candidates were really shown.
        assert min(n_shown) >= 2 and max(n_shown) == 6
    else:
        assert set(n_shown) == {1}


@needs_sample
def test_real_outbrain_test_split_scores_the_floor_for_random() -> None:
    rng = np.random.default_rng(0)
    table = evaluate_one_plus_k(lambda obs, info: int(rng.integers(2)), ks=[1], env_kwargs={"data_dir": str(OUTBRAIN_SAMPLE)})
    assert table["n_impressions"].iloc[0] == 392  # the latest 20% of 1,959 displays
    assert abs(table["ctr"].iloc[0] - 0.5) < 3 * np.sqrt(0.25 / 392)
