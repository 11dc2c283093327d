"""OutbrainRec-v0: the Gymnasium contract, the One-Plus-k candidate sets, seeding and bad input."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import recsys_gym
from recsys_gym.data.dataset import CompactDataset


@pytest.fixture(scope="module")
def synthetic() -> CompactDataset:
    """The built-in synthetic data, as ``gym.make("OutbrainRec-v0")`` uses it."""
    return gym.make("OutbrainRec-v0").unwrapped.dataset  # type: ignore[attr-defined]


def test_registered_both_ways() -> None:
    assert "OutbrainRec-v0" in gym.registry
    env = gym.make("recsys_gym:OutbrainRec-v0", k=3)
    assert env.action_space == gym.spaces.Discrete(4)
    assert isinstance(env.unwrapped, recsys_gym.OutbrainRecEnv)


@pytest.mark.parametrize("obs_mode", ["flat", "dict"])
@pytest.mark.parametrize("negatives", ["random", "shown"])
def test_env_checkers_pass_without_warnings(obs_mode: str, negatives: str) -> None:
    env = gym.make("OutbrainRec-v0", k=5, negatives=negatives, obs_mode=obs_mode, render_mode="ansi").unwrapped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env)
        sb3_check_env(env)
    messages = [str(warning.message) for warning in caught]
    # SB3 recommends flattening 2-D observations; the dict mode's (k + 1, item_dim) candidate block is
    # 2-D on purpose, for candidate-scoring policies. No other warning is expected.
    expected = [m for m in messages if obs_mode == "dict" and "candidates has an unconventional shape" in m]
    assert [m for m in messages if m not in expected] == []


def test_spaces_and_layout(synthetic: CompactDataset) -> None:
    env = gym.make("OutbrainRec-v0", k=7).unwrapped
    user_dim = 2 * synthetic.item_dim + 1 + 4 + synthetic.context_dim
    assert env.user_dim == user_dim  # type: ignore[attr-defined]
    assert env.observation_space.shape == (user_dim + 8 * synthetic.item_dim,)
    obs, info = env.reset(seed=3)
    # Each candidate block holds exactly that item's features.
    blocks = obs[user_dim:].reshape(8, synthetic.item_dim)
    np.testing.assert_array_equal(blocks, synthetic.item_features[info["candidate_items"]])


@pytest.mark.parametrize("obs_mode", ["flat", "dict"])
def test_observations_stay_inside_the_space(obs_mode: str) -> None:
    env = gym.make("OutbrainRec-v0", k=10, obs_mode=obs_mode, max_episode_steps=30)
    obs, _ = env.reset(seed=0)
    for _ in range(600):
        assert env.observation_space.contains(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            assert env.observation_space.contains(obs)
            obs, _ = env.reset()


def test_same_seed_same_trajectory() -> None:
    def rollout(seed: int) -> list[np.ndarray]:
        env = gym.make("OutbrainRec-v0", k=4)
        env.action_space.seed(seed)
        obs, _ = env.reset(seed=seed)
        seen = [obs]
        for _ in range(200):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            seen += [obs, np.array([reward]), info["candidate_items"]]
            if terminated or truncated:
                obs, _ = env.reset()
                seen.append(obs)
        return seen

    first, second, other = rollout(11), rollout(11), rollout(12)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_global_generators_are_untouched() -> None:
    import random

    np.random.seed(5)
    random.seed(5)
    before = (np.random.random(), random.random())
    np.random.seed(5)
    random.seed(5)
    env = gym.make("OutbrainRec-v0", k=4)
    env.reset(seed=1)
    for _ in range(50):
        if env.step(0)[2]:
            env.reset()
    assert (np.random.random(), random.random()) == before


def test_click_position_is_uniform_over_slots() -> None:
    """A chi-square test at the 0.1% level over 4,000 candidate sets of 5 slots."""
    env = gym.make("OutbrainRec-v0", k=4)
    counts = np.zeros(5)
    env.reset(seed=0)
    for _ in range(4000):
        _, _, terminated, _, info = env.step(0)
        counts[info["clicked_index"]] += 1
        if terminated:
            env.reset()
    expected = counts.sum() / 5
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 18.47  # 99.9% quantile of chi-square with 4 degrees of freedom


@pytest.mark.parametrize("negatives", ["random", "shown"])
def test_negatives_are_unique_and_never_the_users_items(synthetic: CompactDataset, negatives: str) -> None:
    env = gym.make("OutbrainRec-v0", k=20, negatives=negatives).unwrapped
    _, info = env.reset(seed=0)
    for _ in range(1500):
        candidates = info["candidate_items"]
        user_items = set(synthetic.user_item_set(info["user_index"]).tolist())
        row = env._rows[env._position]  # type: ignore[attr-defined]
        clicked = int(synthetic.imp_clicked[row])
        assert len(set(candidates.tolist())) == 21
        assert clicked in candidates
        negatives_drawn = [item for item in candidates.tolist() if item != clicked]
        if negatives == "random":
            assert not user_items.intersection(negatives_drawn)
        else:
            # Shown negatives come from the impression itself; only the top-up avoids the user's items.
            shown = set(synthetic.shown_in(row).tolist())
            topped_up = [item for item in negatives_drawn if item not in shown]
            assert not user_items.intersection(topped_up)
        _, _, terminated, _, info = env.step(0)
        if terminated:
            _, info = env.reset()


def test_shown_mode_uses_the_logged_impression(tiny_dataset: CompactDataset) -> None:
    env = gym.make("OutbrainRec-v0", dataset=tiny_dataset, k=3, negatives="shown", split="test").unwrapped
    _, info = env.reset(seed=0, options={"user_index": 1})
    # u2's test impression showed D (clicked) beside B; C and E top the set up.
    assert sorted(info["candidate_items"].tolist()) == [1, 2, 3, 4]
    _, _, terminated, _, info = env.step(0)
    assert info["n_shown"] == 2 and terminated


def test_step_info_and_reward(tiny_dataset: CompactDataset) -> None:
    env = gym.make("OutbrainRec-v0", dataset=tiny_dataset, k=3, split="test").unwrapped
    _, info = env.reset(seed=0, options={"user_index": 0})
    # u1 interacted with A and B, so the negatives must be C, D and E, and the click is A.
    assert sorted(info["candidate_items"].tolist()) == [0, 2, 3, 4]
    slot = int(np.flatnonzero(info["candidate_items"] == 0)[0])
    _, reward, terminated, truncated, step_info = env.step(slot)
    assert (reward, terminated, truncated) == (1.0, True, False)
    assert step_info["clicked"] and step_info["clicked_index"] == slot
    assert (step_info["picked_item"], step_info["clicked_item"], step_info["impression_id"]) == (0, 0, 7)
    assert step_info["user"] == "u1"


def test_test_episodes_start_from_the_training_history(tiny_dataset: CompactDataset) -> None:
    train = gym.make("OutbrainRec-v0", dataset=tiny_dataset, k=2).unwrapped
    test = gym.make("OutbrainRec-v0", dataset=tiny_dataset, k=2, split="test").unwrapped
    train_obs, _ = train.reset(seed=0, options={"user_index": 0})
    test_obs, _ = test.reset(seed=0, options={"user_index": 0})
    item_dim = tiny_dataset.item_dim
    # Training starts empty; test starts with u1's training clicks A then B.
    assert not train_obs[: 2 * item_dim + 1].any()
    features = tiny_dataset.item_features
    np.testing.assert_allclose(test_obs[:item_dim], features[[0, 1]].mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(test_obs[item_dim : 2 * item_dim], features[1])


def test_user_shards_are_disjoint_and_cover_every_user(synthetic: CompactDataset) -> None:
    shards = [gym.make("OutbrainRec-v0", k=2, user_shard=(index, 3)).unwrapped.users for index in range(3)]  # type: ignore[attr-defined]
    union = np.concatenate(shards)
    assert len(union) == len(set(union.tolist()))
    assert sorted(union.tolist()) == synthetic.users_in_split("train").tolist()


def test_render_ansi(tiny_dataset: CompactDataset) -> None:
    env = gym.make("OutbrainRec-v0", dataset=tiny_dataset, k=3, split="test", render_mode="ansi")
    env.reset(seed=0, options={"user_index": 0})
    env.step(0)
    text = env.render()
    assert isinstance(text, str) and "user u1" in text and "episode over" in text


def test_render_rgb_array_and_make_vec_env(tiny_dataset: CompactDataset) -> None:
    from stable_baselines3.common.env_util import make_vec_env

    env = gym.make("OutbrainRec-v0", dataset=tiny_dataset, k=3, split="test", render_mode="rgb_array")
    _, info = env.reset(seed=0, options={"user_index": 0})
    slot = int(np.flatnonzero(info["candidate_items"] == 0)[0])
    env.step(slot)
    image = env.render()
    assert isinstance(image, np.ndarray) and image.shape == (16, 58, 3) and image.dtype == np.uint8
    # The pick was the click: its cell is green.
    assert image[8, 2 + slot * 14 + 6].tolist() == [40, 170, 60]
    # SB3's make_vec_env asks for render_mode="rgb_array" by default.
    vec_env = make_vec_env("OutbrainRec-v0", n_envs=2, env_kwargs={"k": 3})
    assert vec_env.num_envs == 2


@pytest.mark.filterwarnings("ignore:.*render_mode='video'")
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k must be an integer >= 1"),
        ({"negatives": "popular"}, r"negatives must be one of \['random', 'shown'\], got 'popular'"),
        ({"split": "valid"}, "split must be one of"),
        ({"obs_mode": "image"}, "obs_mode must be one of"),
        ({"user_shard": (3, 3)}, "user_shard must be"),
        ({"render_mode": "video"}, "render_mode must be None or one of"),
        ({"dataset": "netflix"}, "dataset must be one of"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gym.make("OutbrainRec-v0", **kwargs)


def test_k_larger_than_the_negatives_available(tiny_dataset: CompactDataset) -> None:
    with pytest.raises(ValueError, match=r"k=4 is larger than the 3 items available as negatives.*choose k <= 3"):
        gym.make("OutbrainRec-v0", dataset=tiny_dataset, k=4, split="test")


@pytest.mark.parametrize("action", [5, -1, "two", 1.5, np.array([1, 2])])
def test_out_of_range_actions_raise(tiny_dataset: CompactDataset, action: object) -> None:
    env = gym.make("OutbrainRec-v0", dataset=tiny_dataset, k=3, split="test").unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action must be a candidate slot in 0..3"):
        env.step(action)


def test_unknown_user_index_raises(tiny_dataset: CompactDataset) -> None:
    env = gym.make("OutbrainRec-v0", dataset=tiny_dataset, k=3, split="test").unwrapped
    with pytest.raises(ValueError, match=r"options\['user_index'\]=2 has no impression in split='test'"):
        env.reset(options={"user_index": 2})
