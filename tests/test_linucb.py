"""LinUCB: exact Sherman-Morrison updates, hand-computed scores, learning OutbrainRec-v0, any k, save/load, bad input."""

import functools
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

import recsys_gym  # noqa: F401  (registers OutbrainRec-v0)
from dadrl_sb3.linucb import LinUCB
from recsys_gym.evaluation import evaluate_one_plus_k

OBS_MODES = ("dict", "flat")


class EpisodeRecorder(BaseCallback):
    """Keep Monitor's episodes from ``locals["infos"]``, as ``benchmarks/common.py``'s recorder does, and every reward."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.stop_after = stop_after
        self.episodes: list[tuple[float, int]] = []
        self.rewards: list[float] = []
        self.started = self.ended = False

    def _on_training_start(self) -> None:
        self.started = isinstance(self.training_env, VecEnv)

    def _on_step(self) -> bool:
        self.rewards.extend(float(reward) for reward in self.locals["rewards"])
        for info in self.locals.get("infos", []):
            episode = info.get("episode")
            if episode is not None:
                self.episodes.append((float(episode["r"]), int(episode["l"])))
        return self.stop_after is None or self.n_calls < self.stop_after

    def _on_training_end(self) -> None:
        self.ended = True


@functools.cache
def trained(obs_mode: str) -> tuple[LinUCB, EpisodeRecorder]:
    """LinUCB trained for 2000 steps on OutbrainRec-v0 at k=10 (cached: several tests read the same model)."""
    recorder = EpisodeRecorder()
    model = LinUCB(gym.make("OutbrainRec-v0", k=10, obs_mode=obs_mode), alpha=1.0, seed=0)
    return model.learn(2000, callback=recorder), recorder


def outbrain_observations(k: int, obs_mode: str, n_observations: int = 32) -> list[Any]:
    """``n_observations`` observations of OutbrainRec-v0 met along random actions."""
    env = gym.make("OutbrainRec-v0", k=k, obs_mode=obs_mode)
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    observations: list[Any] = []
    while len(observations) < n_observations:
        observations.append(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
    return observations


def stack(observations: list[Any]) -> Any:
    """Stack observations (flat arrays or dicts of arrays) into one batch."""
    if isinstance(observations[0], dict):
        return {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}
    return np.stack(observations)


def test_sherman_morrison_inverse_is_exact() -> None:
    """After 25 updates ``A^-1`` equals the inverse of ``A = ridge I + sum x x^T`` and ``theta = A^-1 b``."""
    model = LinUCB(None, ridge=0.5, user_dim=4, item_dim=3)
    rng = np.random.default_rng(0)
    design = np.zeros((model.feature_dim, model.feature_dim))
    b = np.zeros(model.feature_dim)
    for _ in range(25):
        x, reward = rng.uniform(-1.0, 1.0, model.feature_dim), float(rng.integers(2))
        model.update(x, reward)
        design += np.outer(x, x)
        b += reward * x

    inverse = np.linalg.inv(0.5 * np.eye(model.feature_dim) + design)
    np.testing.assert_allclose(model.A_inv, inverse, atol=1e-8)
    np.testing.assert_allclose(model.theta, inverse @ b, atol=1e-8)
    assert model.feature_dim == 4 + 3 + 1 * 3  # one item-sized slice of the user block fits: one product


@pytest.mark.parametrize(("alpha", "expected_slot"), [(0.0, 0), (1.0, 1)])
def test_scores_of_a_two_candidate_toy_by_hand(alpha: float, expected_slot: int) -> None:
    """
    ``user_dim = item_dim = 1``, so ``x = [u, c, u * c]``; ridge 2 and one click on ``x = [1, 1, 1]``.

    ``A = 2 I + 1 1^T``, so ``A^-1 = I / 2 - 1 1^T / 10``, ``b = [1, 1, 1]`` and ``theta = [0.2, 0.2, 0.2]``.
    User ``u = 1`` and candidates ``c = [1, -3]`` give ``x_0 = [1, 1, 1]`` and ``x_1 = [1, -3, -3]``:

    - ``theta^T x_0 = 0.6``, ``x_0^T A^-1 x_0 = 3 / 2 - 9 / 10 = 0.6``;
    - ``theta^T x_1 = -1.0``, ``x_1^T A^-1 x_1 = 19 / 2 - 25 / 10 = 7``.

    Greedy (alpha 0) picks candidate 0; with alpha 1, ``0.6 + sqrt(0.6) < -1 + sqrt(7)``: the
    less-explored candidate 1 wins.
    """
    model = LinUCB(None, alpha=alpha, ridge=2.0, user_dim=1, item_dim=1)
    model.update(np.ones(3), 1.0)
    np.testing.assert_allclose(model.theta, [0.2, 0.2, 0.2], atol=1e-12)

    expected = np.array([0.6 + alpha * np.sqrt(0.6), -1.0 + alpha * np.sqrt(7.0)])
    dict_obs = {"user": np.array([1.0], np.float32), "candidates": np.array([[1.0], [-3.0]], np.float32)}
    flat_obs = np.array([1.0, 1.0, -3.0], np.float32)
    for obs in (dict_obs, flat_obs):
        np.testing.assert_allclose(model.candidate_features(obs), [[1, 1, 1], [1, -3, -3]])
        np.testing.assert_allclose(model.score_candidates(obs), expected, atol=1e-12)
        assert model.act(obs, {}) == expected_slot


@pytest.mark.parametrize("obs_mode", OBS_MODES)
def test_learns_outbrain_past_the_random_floor(obs_mode: str) -> None:
    """
    2000 training steps at k=10, then One-Plus-k CTR on 1000 test impressions at k=10.

    A random pick scores 1 / 11 = 0.091; the synthetic data puts popularity in the item features, which
    the linear model reads (about 0.8 after this budget). Threshold: the floor plus 0.4.
    """
    model, recorder = trained(obs_mode)
    assert model.num_timesteps == 2000 and model._n_updates == 2000
    results = evaluate_one_plus_k(model, ks=[10], env_kwargs={"obs_mode": obs_mode}, seed=0, max_impressions=1000)
    assert results["ctr"].iloc[0] >= results["random_floor"].iloc[0] + 0.4

    # The callback saw every step and Monitor's finished episodes
    assert recorder.started and recorder.ended and len(recorder.rewards) == 2000
    clicks, lengths = (np.array(values) for values in zip(*recorder.episodes, strict=True))
    assert len(recorder.episodes) > 100 and lengths.sum() <= 2000
    assert clicks.sum() == sum(recorder.rewards[: lengths.sum()])  # one environment: episodes follow each other


@pytest.mark.parametrize("obs_mode", OBS_MODES)
def test_one_model_trained_at_k10_serves_k50(obs_mode: str) -> None:
    """The model trained at k=10 scores k=50 sets (random floor 1 / 51 = 0.020); threshold: the floor plus 0.3."""
    model, _ = trained(obs_mode)
    results = evaluate_one_plus_k(model, ks=[50], env_kwargs={"obs_mode": obs_mode}, seed=0, max_impressions=1000)
    assert results["ctr"].iloc[0] >= results["random_floor"].iloc[0] + 0.3


@pytest.mark.parametrize("obs_mode", OBS_MODES)
def test_batched_predictions_match_single_ones(obs_mode: str) -> None:
    model, _ = trained(obs_mode)
    observations = outbrain_observations(k=10, obs_mode=obs_mode)
    actions, state = model.predict(stack(observations))
    assert actions.shape == (32,) and state is None
    singles = [model.predict(obs)[0] for obs in observations]
    assert all(single.shape == () for single in singles)
    np.testing.assert_array_equal(actions, singles)
    np.testing.assert_array_equal(actions, [model.act(obs, {}) for obs in observations])


@pytest.mark.parametrize("obs_mode", OBS_MODES)
def test_save_load_gives_identical_predictions(tmp_path, obs_mode: str) -> None:
    model, _ = trained(obs_mode)
    model.save(tmp_path / "linucb.npz")
    loaded = LinUCB.load(tmp_path / "linucb.npz")

    for k in (10, 50):
        batch = stack(outbrain_observations(k=k, obs_mode=obs_mode))
        np.testing.assert_array_equal(loaded.predict(batch)[0], model.predict(batch)[0])
        np.testing.assert_array_equal(loaded.score_candidates(batch), model.score_candidates(batch))
    assert (loaded.alpha, loaded.ridge, loaded.user_dim, loaded.item_dim) == (1.0, 1.0, model.user_dim, model.item_dim)
    assert loaded.num_timesteps == 2000 and loaded.get_env() is None

    # Given an environment (here at another k), the loaded model continues learning
    loaded = LinUCB.load(tmp_path / "linucb.npz", env=gym.make("OutbrainRec-v0", k=4, obs_mode=obs_mode))
    assert loaded.learn(20, reset_num_timesteps=False).num_timesteps == 2020 and loaded._n_updates == 2020


def test_callback_returning_false_stops_learning_and_vec_envs_are_accepted() -> None:
    vec_env = DummyVecEnv([lambda: gym.make("OutbrainRec-v0", k=4, obs_mode="dict")] * 2)
    with pytest.warns(UserWarning, match="not all wrapped in Monitor"):
        model = LinUCB(vec_env, seed=0)
    recorder = EpisodeRecorder(stop_after=5)
    model.learn(100, callback=recorder)
    assert recorder.n_calls == 5 and model.num_timesteps == 10 and model._n_updates == 10 and recorder.ended


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": -0.5}, r"alpha must be a finite number >= 0 .* got alpha=-0\.5"),
        ({"alpha": float("inf")}, r"alpha must be a finite number >= 0 .* got alpha=inf"),
        ({"ridge": 0.0}, r"ridge must be a finite number > 0 .* got ridge=0\.0"),
        ({"ridge": float("nan")}, r"ridge must be a finite number > 0 .* got ridge=nan"),
        ({"ridge": "1"}, r"ridge must be a finite number > 0 .* got ridge='1'"),
        ({"verbose": 3}, r"verbose must be 0, 1 or 2, got verbose=3"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LinUCB(None, user_dim=3, item_dim=2, **kwargs)


def test_bad_environments_observations_and_files_raise(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"lacks them\. Make the environment with obs_mode=\"dict\""):
        LinUCB(gym.make("CartPole-v1"))
    with pytest.raises(ValueError, match="needs an env, or both user_dim and item_dim"):
        LinUCB(None, user_dim=3)
    with pytest.raises(ValueError, match="needs an environment"):
        LinUCB(None, user_dim=3, item_dim=2).learn(10)

    model = LinUCB(gym.make("OutbrainRec-v0", k=4), seed=0)
    with pytest.raises(ValueError, match=r"expects a flat observation of user_dim \+ \(k \+ 1\) \* item_dim"):
        model.predict(np.zeros(model.user_dim + model.item_dim + 1, np.float32))
    with pytest.raises(ValueError, match=r"total_timesteps must be an integer >= 0, got total_timesteps=-1"):
        model.learn(-1)
    with pytest.raises(ValueError, match=r"was built for"):
        model.set_env(gym.make("OutbrainRec-v0", k=4, dataset_kwargs={"content_dim": 4}))

    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match=r"was not written by LinUCB\.save"):
        LinUCB.load(tmp_path / "other.npz")
