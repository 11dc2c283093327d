"""Double DQN: the double Q-learning target by hand, learning OutbrainRec-v0, save/load round trips."""

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.logger import Logger
from stable_baselines3.dqn.policies import DQNPolicy

import recsys_gym  # noqa: F401  (registers OutbrainRec-v0)
from dadrl_sb3.common.candidate_policies import CandidateDQNPolicy
from dadrl_sb3.ddqn import DoubleDQN
from recsys_gym.evaluation import evaluate_one_plus_k

# Both ways of running a DQN on OutbrainRec-v0: an MLP over the flat observation, or the candidate scorer
POLICIES: list[tuple[str | type[DQNPolicy], str]] = [("MlpPolicy", "flat"), (CandidateDQNPolicy, "dict")]

# A small budget that learns OutbrainRec-v0 at k=4: gamma=0 because the state follows the log, not the picks
FAST_SETTINGS: dict[str, Any] = {
    "gamma": 0.0,
    "learning_starts": 200,
    "train_freq": 4,
    "exploration_fraction": 0.3,
    "learning_rate": 1e-3,
    "target_update_interval": 250,
    # Far more than these runs' steps; SB3's default (a million) would reserve hundreds of MB of buffer.
    "buffer_size": 10_000,
}


class TwoStateEnv(gym.Env):
    """Two observations, ``[1, 0]`` and ``[0, 1]``, two actions; only here to give DQN its spaces."""

    observation_space = spaces.Box(0.0, 1.0, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        return np.array([1.0, 0.0], np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        return np.array([0.0, 1.0], np.float32), 0.0, True, False, {}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    th.set_num_threads(1)


def loss_on_one_transition(algo: type[DQN], done: bool) -> dict[str, float]:
    """
    One gradient step of ``algo`` on the single transition ``s=[1, 0], a=0, r=1, s'=[0, 1]`` with gamma=0.5.

    Both Q-networks are linear (``net_arch=[]``, no bias), with weights set by hand so that they disagree
    about the next action:

    - online ``W = [[0.5, 1], [0, 3]]``: ``Q(s) = [0.5, 0]``, ``Q(s') = [1, 3]``, so it picks ``a' = 1``;
    - target ``W = [[0, 4], [0, 2]]``: ``Q_target(s') = [4, 2]``, whose own maximum is at ``a' = 0``.

    :return: the logger's values after the step (``train/loss``, ``train/n_updates``, ...)
    """
    model = algo("MlpPolicy", TwoStateEnv(), gamma=0.5, learning_starts=0, policy_kwargs={"net_arch": []}, seed=0)
    model.set_logger(Logger(folder=None, output_formats=[]))
    with th.no_grad():
        for network, weight in ((model.q_net, [[0.5, 1.0], [0.0, 3.0]]), (model.q_net_target, [[0.0, 4.0], [0.0, 2.0]])):
            linear = network.q_net[0]
            assert isinstance(linear, th.nn.Linear)
            linear.weight.copy_(th.tensor(weight))
            linear.bias.zero_()

    # The replay buffer holds the one transition, so every sampled minibatch repeats it
    assert model.replay_buffer is not None
    model.replay_buffer.add(
        np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), np.array([[0]]), np.array([1.0]), np.array([done]), [{}]
    )
    model.train(gradient_steps=1, batch_size=4)
    return dict(model.logger.name_to_value)


def huber(error: float) -> float:
    """The smooth L1 (Huber, delta 1) loss of one error, as ``F.smooth_l1_loss`` computes it."""
    return 0.5 * error**2 if abs(error) < 1.0 else abs(error) - 0.5


@pytest.mark.parametrize(
    ("done", "double_target", "dqn_target"),
    [
        # Double: r + gamma * Q_target(s', argmax Q_online(s')) = 1 + 0.5 * 2; DQN: 1 + 0.5 * max Q_target(s') = 1 + 0.5 * 4
        (False, 2.0, 3.0),
        # A terminal transition does not bootstrap: both targets are the reward
        (True, 1.0, 1.0),
    ],
)
def test_target_uses_online_argmax_and_target_value(done: bool, double_target: float, dqn_target: float) -> None:
    current_q = 0.5  # Q_online(s, a=0)
    logged = loss_on_one_transition(DoubleDQN, done)
    assert logged["train/loss"] == pytest.approx(huber(double_target - current_q), abs=1e-6)
    assert logged["train/n_updates"] == 1

    # SB3's DQN on the same transition bootstraps from the target network's own maximum
    assert loss_on_one_transition(DQN, done)["train/loss"] == pytest.approx(huber(dqn_target - current_q), abs=1e-6)


@pytest.mark.parametrize(("policy", "obs_mode"), POLICIES)
def test_learns_outbrain_past_the_random_floor(policy: str | type[DQNPolicy], obs_mode: str) -> None:
    """
    1000 training steps at k=4; One-Plus-k CTR on 500 test impressions at k=4.

    A random pick scores 1 / (k + 1) = 0.2; the synthetic data puts popularity in the item features,
    which a Q-network reads (about 0.8 after this budget). Threshold: the floor plus 0.3.
    """
    env = gym.make("OutbrainRec-v0", k=4, obs_mode=obs_mode)
    model = DoubleDQN(policy, env, seed=0, **FAST_SETTINGS).learn(1000)
    assert model.num_timesteps == 1000 and model._n_updates > 0

    results = evaluate_one_plus_k(model, ks=[4], env_kwargs={"obs_mode": obs_mode}, seed=0, max_impressions=500)
    assert results["ctr"].iloc[0] >= results["random_floor"].iloc[0] + 0.3


@pytest.mark.parametrize(("policy", "obs_mode"), POLICIES)
def test_save_load_gives_identical_predictions(tmp_path, policy: str | type[DQNPolicy], obs_mode: str) -> None:
    env = gym.make("OutbrainRec-v0", k=4, obs_mode=obs_mode)
    model = DoubleDQN(policy, env, seed=0, **{**FAST_SETTINGS, "learning_starts": 50}).learn(300)
    model.save(tmp_path / "ddqn.zip")
    loaded = DoubleDQN.load(tmp_path / "ddqn.zip", env=env)

    # The same greedy picks on a batch of observations met along random actions
    env.action_space.seed(1)
    obs, _ = env.reset(seed=1)
    batch = []
    for _ in range(64):
        batch.append(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
    stacked: Any = {key: np.stack([o[key] for o in batch]) for key in batch[0]} if obs_mode == "dict" else np.stack(batch)
    expected, _ = model.predict(stacked, deterministic=True)
    actions, _ = loaded.predict(stacked, deterministic=True)
    np.testing.assert_array_equal(actions, expected)
    assert isinstance(loaded, DoubleDQN) and loaded._n_updates == model._n_updates
    assert type(loaded.policy) is type(model.policy)
