"""Sanity baselines: the random floor and Most-Popular, on hand-made cases and on OutbrainRec-v0."""

import math
import pickle
import random

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

import recsys_gym  # noqa: F401  (registers OutbrainRec-v0)
from dadrl_sb3.baselines import MostPopular, RandomRecommender
from recsys_gym.data.dataset import CompactDataset
from recsys_gym.evaluation import evaluate_one_plus_k


@pytest.fixture()
def global_rng_guard():
    """Fail the test if it moved NumPy's or Python's global generator."""
    numpy_state, python_state = pickle.dumps(np.random.get_state()), random.getstate()
    yield
    assert pickle.dumps(np.random.get_state()) == numpy_state
    assert random.getstate() == python_state


# -- RandomRecommender -----------------------------------------------------------------------------


def test_random_ctr_is_one_over_k_plus_one() -> None:
    """One recommender, built at k=4, scores 1 / (k + 1) at every k (within 3 binomial standard errors)."""
    recommender = RandomRecommender(gym.make("OutbrainRec-v0", k=4, obs_mode="dict"), seed=0)
    results = evaluate_one_plus_k(recommender, ks=(1, 4, 9), env_kwargs={"obs_mode": "dict"}, seed=0)

    for k, ctr, n_impressions in zip(results["k"], results["ctr"], results["n_impressions"], strict=True):
        floor = 1.0 / (k + 1)
        tolerance = 3.0 * math.sqrt(floor * (1.0 - floor) / n_impressions)
        assert n_impressions > 500
        assert abs(ctr - floor) <= tolerance, f"k={k}: CTR {ctr:.3f}, expected {floor:.3f} ± {tolerance:.3f}"


def test_random_predict_handles_single_and_batched_observations() -> None:
    flat_env = gym.make("OutbrainRec-v0", k=4)
    dict_env = gym.make("OutbrainRec-v0", k=4, obs_mode="dict")
    flat_obs, _ = flat_env.reset(seed=0)
    dict_obs, _ = dict_env.reset(seed=0)

    # Flat observations: the environment's space tells one observation from a batch
    recommender = RandomRecommender(flat_env, seed=0)
    action, state = recommender.predict(flat_obs)
    assert action.shape == () and 0 <= action < 5 and state is None
    actions, _ = recommender.predict(np.stack([flat_obs] * 3))
    assert actions.shape == (3,) and set(actions.tolist()) <= set(range(5))

    # Dict observations: the candidate block gives both the batch and the number of candidates
    recommender = RandomRecommender(spaces.Discrete(5), seed=0)
    wide_batch = {"user": np.zeros((64, 7), np.float32), "candidates": np.zeros((64, 10, 3), np.float32)}
    actions, _ = recommender.predict(wide_batch)
    assert actions.shape == (64,) and set(actions.tolist()) <= set(range(10)) and actions.max() >= 5
    assert recommender.predict(dict_obs)[0].shape == ()


def test_random_act_follows_the_candidate_set_size() -> None:
    recommender = RandomRecommender(spaces.Discrete(2), seed=0)
    picks = [recommender.act(None, {"candidate_items": np.arange(11)}) for _ in range(200)]
    assert set(picks) == set(range(11))
    assert {recommender.act(None) for _ in range(50)} == {0, 1}


def test_random_is_seeded_with_its_own_generator(global_rng_guard) -> None:
    first, second, other = (RandomRecommender(spaces.Discrete(11), seed=seed) for seed in (7, 7, 8))
    first_picks = [first.act(None) for _ in range(100)]
    assert first_picks == [second.act(None) for _ in range(100)]
    assert first_picks != [other.act(None) for _ in range(100)]


def test_random_save_load_continues_the_same_draws(tmp_path) -> None:
    recommender = RandomRecommender(spaces.Discrete(11), seed=3)
    [recommender.act(None) for _ in range(5)]
    recommender.save(tmp_path / "random.json")
    expected = [recommender.act(None) for _ in range(20)]

    loaded = RandomRecommender.load(tmp_path / "random.json")
    assert loaded.action_space == spaces.Discrete(11) and loaded.seed == 3
    assert [loaded.act(None) for _ in range(20)] == expected
    assert loaded.learn(total_timesteps=1000) is loaded


def test_random_refuses_non_discrete_action_spaces(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"needs a Discrete\(k \+ 1\) action space .* got action_space_or_env=Box"):
        RandomRecommender(spaces.Box(-1, 1, (3,)))
    (tmp_path / "other.json").write_text('{"class": "MostPopular"}')
    with pytest.raises(ValueError, match=r"was not written by RandomRecommender\.save"):
        RandomRecommender.load(tmp_path / "other.json")


# -- MostPopular -----------------------------------------------------------------------------------

HAND_MADE_CLICKS = np.array([5, 40, 7, 40, 0, 12])


@pytest.mark.parametrize(
    ("candidate_items", "expected_slot"),
    [([0, 2, 5, 4], 2), ([4, 0], 1), ([4, 2, 0, 3, 5], 3), ([1], 0)],
)
def test_most_popular_picks_the_most_clicked_candidate(candidate_items: list[int], expected_slot: int) -> None:
    recommender = MostPopular(item_train_clicks=HAND_MADE_CLICKS, seed=0)
    info = {"candidate_items": np.array(candidate_items)}
    np.testing.assert_array_equal(recommender.score_candidates(None, info), HAND_MADE_CLICKS[candidate_items])
    assert recommender.act(None, info) == expected_slot


def test_most_popular_breaks_ties_uniformly_and_reproducibly(global_rng_guard) -> None:
    """Items 1, 3 and 4 share the top count: each is picked about a third of the time, never item 2."""
    info = {"candidate_items": np.array([1, 2, 3, 4])}
    clicks = np.array([3, 9, 1, 9, 9])
    picks = [MostPopular(item_train_clicks=clicks, seed=11).act(None, info) for _ in range(3)]
    assert picks[0] == picks[1] == picks[2]

    recommender, replay = MostPopular(item_train_clicks=clicks, seed=11), MostPopular(item_train_clicks=clicks, seed=11)
    sequence = [recommender.act(None, info) for _ in range(600)]
    assert sequence == [replay.act(None, info) for _ in range(600)]
    shares = np.bincount(sequence, minlength=4) / len(sequence)
    np.testing.assert_allclose(shares, [1 / 3, 0.0, 1 / 3, 1 / 3], atol=0.07)


def test_most_popular_on_the_tiny_log(tiny_dataset: CompactDataset) -> None:
    """
    Training clicks of the tiny log: A 4, B 1, C 1, D 0, E 0; its test impressions click A (user u1) and D (u2).

    With k=3 every test user's candidate set holds all of its never-seen items: u1 sees A, C, D, E and
    Most-Popular picks A (a hit); u2 sees D, B, C, E and picks B or C (a tie, never the click D).
    """
    item_index = {item: index for index, item in enumerate(tiny_dataset.item_ids)}
    env = gym.make("OutbrainRec-v0", dataset=tiny_dataset, k=3, split="test", obs_mode="dict")
    recommender = MostPopular(env, seed=0)
    np.testing.assert_array_equal(recommender.item_train_clicks[[item_index[item] for item in "ABCDE"]], [4, 1, 1, 0, 0])

    picked_by_user: dict[str, set[str]] = {}
    for seed in range(20):
        for user in env.unwrapped.users:  # type: ignore[attr-defined]
            obs, info = env.reset(seed=seed, options={"user_index": int(user)})
            _, reward, _, _, step_info = env.step(recommender.act(obs, info))
            picked = tiny_dataset.item_ids[step_info["picked_item"]]
            picked_by_user.setdefault(info["user"], set()).add(picked)
            assert reward == float(picked == "A")
    assert picked_by_user == {"u1": {"A"}, "u2": {"B", "C"}}


def test_most_popular_reads_training_clicks_from_the_environment() -> None:
    env = gym.make("OutbrainRec-v0", k=9, obs_mode="dict")
    dataset_clicks = env.unwrapped.dataset.item_train_clicks  # type: ignore[attr-defined]
    recommender = MostPopular(env, seed=0)
    np.testing.assert_array_equal(recommender.item_train_clicks, dataset_clicks)
    assert not isinstance(recommender.item_train_clicks, np.memmap)

    obs, info = env.reset(seed=0)
    for _ in range(50):
        slot = recommender.act(obs, info)
        assert dataset_clicks[info["candidate_items"][slot]] == dataset_clicks[info["candidate_items"]].max()
        obs, _, terminated, truncated, info = env.step(slot)
        if terminated or truncated:
            obs, info = env.reset()


def test_most_popular_beats_random_on_outbrain() -> None:
    """On the synthetic Outbrain data, popularity is informative: CTR well above the random floor 0.1 at k=9."""
    env = gym.make("OutbrainRec-v0", k=9, obs_mode="dict")
    results = evaluate_one_plus_k(MostPopular(env, seed=0), ks=(9,), env_kwargs={"obs_mode": "dict"}, max_impressions=300)
    assert results["ctr"].iloc[0] >= 0.4


def test_most_popular_predict_asks_for_act() -> None:
    recommender = MostPopular(item_train_clicks=HAND_MADE_CLICKS)
    with pytest.raises(TypeError, match=r"call act\(obs, info\) .* info\[\"candidate_items\"\]"):
        recommender.predict(np.zeros(3, np.float32))


def test_most_popular_rejects_bad_input() -> None:
    recommender = MostPopular(item_train_clicks=HAND_MADE_CLICKS)
    with pytest.raises(ValueError, match=r'needs info\["candidate_items"\]'):
        recommender.act(None, {"user": "u1"})
    with pytest.raises(ValueError, match=r"holds items \[6, -1\] outside the 6 items counted"):
        recommender.act(None, {"candidate_items": np.array([0, 6, -1])})
    with pytest.raises(ValueError, match=r"reads env.unwrapped.dataset.item_train_clicks"):
        MostPopular(gym.make("CartPole-v1"))
    with pytest.raises(ValueError, match="exactly one of env or item_train_clicks"):
        MostPopular()
    with pytest.raises(ValueError, match="finite and non-negative"):
        MostPopular(item_train_clicks=[3, -1])


def test_most_popular_save_load_round_trip(tmp_path) -> None:
    clicks = np.array([3, 9, 1, 9, 9])
    info = {"candidate_items": np.array([1, 2, 3, 4])}
    recommender = MostPopular(item_train_clicks=clicks, seed=5)
    [recommender.act(None, info) for _ in range(7)]
    recommender.save(tmp_path / "most_popular.npz")
    expected = [recommender.act(None, info) for _ in range(50)]

    loaded = MostPopular.load(tmp_path / "most_popular.npz")
    np.testing.assert_array_equal(loaded.item_train_clicks, clicks)
    assert loaded.seed == 5 and loaded.learn() is loaded
    assert [loaded.act(None, info) for _ in range(50)] == expected
    with pytest.raises(ValueError, match=r"was not written by MostPopular\.save"):
        np.savez(tmp_path / "other.npz", weights=np.zeros(3))
        MostPopular.load(tmp_path / "other.npz")
