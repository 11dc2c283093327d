"""Tests of DADRL: the device's loss, the learner's checks, both backends and the SB3 conventions."""

from __future__ import annotations

import dataclasses
import importlib.util
import multiprocessing
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from gymnasium.envs.registration import EnvSpec
from stable_baselines3.common.callbacks import BaseCallback, ProgressBarCallback
from stable_baselines3.common.logger import KVWriter, Logger

from dadrl_sb3 import DADRL
from dadrl_sb3.common.backends import DeviceError, InlineBackend, SubprocessBackend, make_backend
from dadrl_sb3.common.devices import Device, GradientMessage, compute_returns_and_advantages
from dadrl_sb3.dadrl import dadrl as dadrl_module
from dadrl_sb3.dadrl.dadrl import gradient_norm, staleness_weight, validate_gradients, validate_statistics

# Checked without importing recsys_gym: worker processes import this module (FailingCartPole) and need it not
HAVE_OUTBRAIN = importlib.util.find_spec("recsys_gym") is not None

needs_outbrain = pytest.mark.skipif(not HAVE_OUTBRAIN, reason="recsys_gym's OutbrainRec-v0 is not available")

TINY_NET = {"net_arch": [32, 32]}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny networks run fastest on one thread, and 2-core CI machines thrash with more."""
    n_threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(n_threads)


def make_cartpole_model(**kwargs: Any) -> DADRL:
    """A small DADRL on CartPole-v1, which has no users: every device gets the whole environment."""
    settings: dict[str, Any] = {
        "n_workers": 2,
        "n_steps": 16,
        "shard_kwarg": None,
        "backend": "inline",
        "seed": 0,
        "policy_kwargs": TINY_NET,
        "learning_rate": 2e-3,
    }
    settings.update(kwargs)
    return DADRL("MlpPolicy", gym.make("CartPole-v1"), **settings)


def parameters_of(model: DADRL) -> list[th.Tensor]:
    return [param.detach().clone() for param in model.policy.parameters()]


def descendants(pid: int) -> dict[int, str]:
    """Living descendants of ``pid`` and their command lines, read from ``/proc`` (zombies excluded)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                try:
                    found[child] = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    found[child] = ""
                frontier.append(child)
    return found


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a living (not zombie) process, from ``/proc``."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def assert_no_worker_alive(worker_pids: list[int]) -> None:
    """No worker process survives, and nothing but multiprocessing's own helpers descends from this process."""
    assert multiprocessing.active_children() == []
    assert worker_pids and not any(process_alive(pid) for pid in worker_pids)
    helpers = ("forkserver", "resource_tracker")
    leftovers = {pid: cmd for pid, cmd in descendants(os.getpid()).items() if not any(name in cmd for name in helpers)}
    assert leftovers == {}


class RecordWorkerPids(BaseCallback):
    """Remembers the worker process ids of the running backend; optionally raises after some steps."""

    def __init__(self, raise_at: int | None = None, error: type[BaseException] = RuntimeError) -> None:
        super().__init__()
        self.pids: list[int] = []
        self.raise_at = raise_at
        self.error = error

    def _on_step(self) -> bool:
        if not self.pids:
            assert self.model._backend is not None
            self.pids = self.model._backend.pids
        if self.raise_at is not None and self.n_calls >= self.raise_at:
            raise self.error("callback failure on purpose")
        return True


class FailingCartPole(CartPoleEnv):
    """CartPole that raises inside its step function after a few steps."""

    def step(self, action):
        self.n_steps = getattr(self, "n_steps", 0) + 1
        if self.n_steps > 20:
            raise ArithmeticError("device-side failure on purpose")
        return super().step(action)


class StepCounterEnv(gym.Env):
    """Observes ``[t, 0]`` after ``t`` steps of the episode and pays 1 per step; terminates after ``terminate_after``
    steps if given (else runs until a time limit truncates it)."""

    observation_space = spaces.Box(0.0, 100.0, shape=(2,), dtype=np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, terminate_after: int | None = None) -> None:
        self.terminate_after = terminate_after
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.t, 0.0], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        terminated = self.terminate_after is not None and self.t >= self.terminate_after
        return self._obs(), 1.0, terminated, False, {}


class DictObservationEnv(gym.Env):
    """An environment with a Dict observation, which ``"MlpPolicy"`` cannot take."""

    observation_space = spaces.Dict({"user": spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)})
    action_space = spaces.Discrete(2)


class CaptureOutput(KVWriter):
    """Keeps every dump of the SB3 logger."""

    def __init__(self) -> None:
        self.dumps: list[dict[str, Any]] = []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        self.dumps.append(dict(key_values))


# Device: returns, advantages and the message it sends


def test_returns_and_advantages_hand_computed():
    rewards = np.array([1.0, 1.0, 1.0], dtype=np.float32)
    values = np.array([0.5, 0.5, 0.5], dtype=np.float32)
    # The episode ends at step 1: step 0 bootstraps from step 1 only, step 2 from the last value
    episode_ended = np.array([False, True, False])

    returns, advantages = compute_returns_and_advantages(rewards, values, episode_ended, 2.0, gamma=0.9, gae_lambda=1.0)
    np.testing.assert_allclose(returns, [1.0 + 0.9 * 1.0, 1.0, 1.0 + 0.9 * 2.0], rtol=1e-6)
    np.testing.assert_allclose(advantages, returns - values, rtol=1e-6)

    # With lambda = 0 the advantages are one-step TD errors
    _, td_errors = compute_returns_and_advantages(rewards, values, episode_ended, 2.0, gamma=0.9, gae_lambda=0.0)
    np.testing.assert_allclose(td_errors, [1.0 + 0.9 * 0.5 - 0.5, 1.0 - 0.5, 1.0 + 0.9 * 2.0 - 0.5], rtol=1e-6)


@pytest.mark.parametrize("episode_end", ["truncated", "terminated"])
def test_device_bootstraps_at_truncation_but_never_across_termination(episode_end: str):
    """A device's value targets, hand-computed: the critic is set to V(obs) = obs[0] = steps since reset, every
    reward is 1, gamma 0.9, and a 4-step rollout ends an episode after 3 steps, then starts the next one.

    Truncated (time limit): step 2 bootstraps from the final observation of its episode, V = 3 (not from the
    reset observation, V = 0). Terminated: step 2 gets its reward only. Either way step 3, cut by the end of
    the rollout, bootstraps from the next observation, V = 1.
    """
    if episode_end == "truncated":
        spec = EnvSpec(id="StepCounter-v0", entry_point=StepCounterEnv, max_episode_steps=3)
        step_2 = 1 + 0.9 * 3
    else:
        spec = EnvSpec(id="StepCounter-v0", entry_point=StepCounterEnv, kwargs={"terminate_after": 3})
        step_2 = 1.0
    expected_returns = np.array([1 + 0.9 * (1 + 0.9 * step_2), 1 + 0.9 * step_2, step_2, 1 + 0.9 * 1])
    values = np.array([0.0, 1.0, 2.0, 0.0])

    model = DADRL(
        "MlpPolicy", gym.make(spec), n_workers=1, n_steps=4, gamma=0.9, gae_lambda=1.0, shard_kwarg=None,
        backend="inline", seed=0, policy_kwargs={"net_arch": []},
    )  # fmt: skip
    with th.no_grad():
        model.policy.value_net.weight.copy_(th.tensor([[1.0, 0.0]]))
        model.policy.value_net.bias.zero_()
    device = Device(model._device_configs()[0])
    message = device.compute_gradients(model._weights(), version=0)
    device.close()

    # The value loss is the mean squared error between these targets and the values
    assert message.episode_ends == [2] and message.episode_lengths == [3] and message.episode_returns == [3.0]
    assert message.value_loss == pytest.approx(np.mean((expected_returns - values) ** 2), rel=1e-5)


def test_device_sends_only_gradients_and_scalar_statistics():
    model = make_cartpole_model(n_steps=64)
    config = model._device_configs()[0]
    device = Device(config)
    weights = model._weights()
    message = device.compute_gradients(weights, version=7)
    device.close()

    # Exactly the documented fields, and no array but the gradients
    assert [field.name for field in dataclasses.fields(GradientMessage)] == [
        "version", "gradients", "n_steps", "episode_returns", "episode_lengths", "episode_ends",
        "policy_loss", "value_loss", "entropy_loss", "clicks", "impressions",
    ]  # fmt: skip
    assert message.version == 7 and message.n_steps == 64
    assert [gradient.shape for gradient in message.gradients] == [tuple(param.shape) for param in model.policy.parameters()]
    assert all(gradient.dtype == np.float32 for gradient in message.gradients)
    for name in ("policy_loss", "value_loss", "entropy_loss"):
        assert isinstance(getattr(message, name), float)
    for name in ("episode_returns", "episode_lengths", "episode_ends"):
        assert all(isinstance(value, float | int) for value in getattr(message, name))
    assert message.clicks == message.impressions == 0  # CartPole reports no clicks

    # 64 steps of a random-ish CartPole policy end a few episodes, each ending at a step of the rollout
    assert len(message.episode_returns) == len(message.episode_lengths) == len(message.episode_ends) >= 1
    assert all(0 <= end < 64 for end in message.episode_ends)
    assert validate_gradients(message.gradients, list(model.policy.parameters())) is None


# Learner: validation of device messages


def test_validate_gradients_rejects_nan_and_wrong_shapes():
    model = make_cartpole_model()
    parameters = list(model.policy.parameters())
    good = [np.zeros(tuple(param.shape), dtype=np.float32) for param in parameters]
    assert validate_gradients(good, parameters) is None

    with_nan = [array.copy() for array in good]
    with_nan[1][0] = np.nan
    assert "non-finite" in str(validate_gradients(with_nan, parameters))
    wrong_shape = [*good[:-1], np.zeros((3, 3), dtype=np.float32)]
    assert "shape" in str(validate_gradients(wrong_shape, parameters))
    assert "expected" in str(validate_gradients(good[:-1], parameters))
    assert "floating-point" in str(validate_gradients([array.astype(np.int64) for array in good], parameters))


def test_rejected_message_is_counted_and_changes_nothing():
    model = make_cartpole_model()
    before = parameters_of(model)
    gradients = [np.ones(tuple(param.shape), dtype=np.float32) for param in model.policy.parameters()]
    gradients[0][0] = np.inf

    assert not model._apply_gradients(GradientMessage(version=0, gradients=gradients, n_steps=16))
    assert not model._apply_gradients(GradientMessage(version=5, gradients=gradients[1:], n_steps=16))
    assert model._n_rejected == 2 and model.version == 0
    assert all(th.equal(old, new) for old, new in zip(before, parameters_of(model), strict=True))

    # A valid message makes version 1
    gradients[0][0] = 1.0
    assert model._apply_gradients(GradientMessage(version=0, gradients=gradients, n_steps=16))
    assert model.version == 1
    assert not all(th.equal(old, new) for old, new in zip(before, parameters_of(model), strict=True))


@pytest.mark.parametrize(
    "statistics, match",
    [
        ({"n_steps": 0}, "n_steps=0"),
        ({"episode_returns": [1.0]}, "same length"),
        ({"episode_returns": [1.0], "episode_lengths": [3], "episode_ends": [16]}, "episode_ends=\\[16\\]"),
        ({"policy_loss": float("nan")}, "finite numbers"),
        ({"episode_returns": ["user 42"], "episode_lengths": [3], "episode_ends": [2]}, "finite numbers"),
        ({"clicks": 3, "impressions": 2}, "clicks=3"),
    ],
)
def test_unsound_statistics_are_rejected(statistics: dict[str, Any], match: str):
    model = make_cartpole_model()
    gradients = [np.zeros(tuple(param.shape), dtype=np.float32) for param in model.policy.parameters()]
    message = GradientMessage(**{"version": 0, "gradients": gradients, "n_steps": 16, **statistics})
    assert re.search(match, str(validate_statistics(message)))
    assert not model._apply_gradients(message) and model._n_rejected == 1 and model.version == 0
    assert validate_statistics(GradientMessage(version=0, gradients=gradients, n_steps=16)) is None


def test_validate_gradients_bounds_the_norm():
    model = make_cartpole_model()
    parameters = list(model.policy.parameters())
    ones = [np.ones(tuple(param.shape), dtype=np.float32) for param in parameters]
    norm = np.sqrt(sum(param.numel() for param in parameters))
    assert gradient_norm(ones) == pytest.approx(norm)
    assert validate_gradients(ones, parameters, max_norm=norm + 1e-3) is None
    assert "max_message_norm=1.0" in str(validate_gradients(ones, parameters, max_norm=1.0))

    # float32 values whose squares overflow float32 still get their true norm
    assert gradient_norm([np.full(4, 1e30, dtype=np.float32)]) == pytest.approx(2e30, rel=1e-6)


@pytest.mark.parametrize("on_large_norm", ["clip", "reject"])
def test_large_message_is_clipped_or_rejected(on_large_norm: str):
    """With SGD at learning rate 1 and no max_grad_norm clipping, the step is minus the gradient applied."""
    policy_kwargs = {**TINY_NET, "optimizer_class": th.optim.SGD}
    model = make_cartpole_model(
        max_message_norm=2.0, on_large_norm=on_large_norm, learning_rate=1.0, max_grad_norm=1e9, policy_kwargs=policy_kwargs
    )
    before = parameters_of(model)
    small = [np.full(tuple(param.shape), 1e-3, dtype=np.float32) for param in model.policy.parameters()]
    large = [array * 1e4 for array in small]
    assert gradient_norm(small) < 2.0 < gradient_norm(large)

    # A gradient within the bound is applied as it is
    assert model._apply_gradients(GradientMessage(version=0, gradients=small, n_steps=16))
    middle = parameters_of(model)
    steps = [(old - new).numpy() for old, new in zip(before, middle, strict=True)]
    np.testing.assert_allclose(np.concatenate([step.ravel() for step in steps]), 1e-3, rtol=1e-3)

    applied = model._apply_gradients(GradientMessage(version=1, gradients=large, n_steps=16))
    steps = [(old - new).numpy() for old, new in zip(middle, parameters_of(model), strict=True)]
    if on_large_norm == "clip":
        # Scaled down to the bound, direction kept
        assert applied and model._n_clipped == 1 and model._n_rejected == 0 and model.version == 2
        assert gradient_norm(steps) == pytest.approx(2.0, rel=1e-4)
    else:
        assert not applied and model._n_rejected == 1 and model._n_clipped == 0 and model.version == 1
        assert gradient_norm(steps) == 0.0


def test_staleness_weight():
    assert staleness_weight(0, "polynomial", 0.5) == 1.0
    assert staleness_weight(3, "polynomial", 0.5) == 0.5
    assert staleness_weight(3, "polynomial", 1.0) == 0.25
    assert staleness_weight(3, "none", 0.5) == 1.0


def test_polynomial_staleness_weighting_scales_the_step():
    """The first RMSprop step on a gradient 3 versions stale moves each weight (1 + 3) ** -0.5 = 1/2 as far as
    without weighting (that step is linear in the learning rate)."""
    steps = {}
    for weighting in ("none", "polynomial"):
        model = make_cartpole_model(staleness_weighting=weighting)
        model._n_updates = 3
        before = parameters_of(model)
        gradients = [np.full(tuple(param.shape), 0.01, dtype=np.float32) for param in model.policy.parameters()]
        assert model._apply_gradients(GradientMessage(version=0, gradients=gradients, n_steps=16))
        steps[weighting] = np.concatenate(
            [(new - old).numpy().ravel() for old, new in zip(before, parameters_of(model), strict=True)]
        )
    np.testing.assert_allclose(steps["polynomial"], 0.5 * steps["none"], rtol=1e-5)
    assert np.abs(steps["none"]).min() > 0


def test_max_staleness_drops_old_gradients_but_counts_their_steps():
    """Round-robin over three devices with max_staleness=1: the third device's gradients are two versions old
    after each cycle and are dropped; it still gets fresh weights and its steps still count."""
    model = make_cartpole_model(n_workers=3, max_staleness=1)
    output = CaptureOutput()
    model.set_logger(Logger(folder=None, output_formats=[output]))
    model.learn(16 * 30, log_interval=10)
    assert model.num_timesteps == 16 * 30
    assert model._n_dropped_stale == 10 and model.version == 20
    last = output.dumps[-1]
    assert last["train/dropped_stale"] == 10 and last["train/staleness_max"] == 2 and last["train/n_updates"] == 20


def test_optimizer_is_rmsprop_or_adam_as_in_sb3_a2c():
    rms_prop = make_cartpole_model().policy.optimizer
    assert isinstance(rms_prop, th.optim.RMSprop)
    assert rms_prop.defaults["alpha"] == 0.99 and rms_prop.defaults["eps"] == 1e-5
    adam = make_cartpole_model(use_rms_prop=False).policy.optimizer
    assert isinstance(adam, th.optim.Adam) and adam.defaults["eps"] == 1e-5
    assert "optimizer_class" not in TINY_NET  # the caller's policy_kwargs are left alone


# Learning and reproducibility (inline backend)


def outbrain_ctr_by_window(policy: Any, total_timesteps: int, env_kwargs: dict[str, Any], **kwargs: Any) -> list[float]:
    """Train DADRL (inline, seed 0) on OutbrainRec-v0 with k=4; return the training CTR of each ~1,000-step window."""
    env = gym.make("OutbrainRec-v0", k=4, **env_kwargs)
    model = DADRL(policy, env, n_workers=2, n_steps=16, backend="inline", seed=0, **kwargs)
    output = CaptureOutput()
    model.set_logger(Logger(folder=None, output_formats=[output]))
    model.learn(total_timesteps, log_interval=62)
    return [dump["rollout/ctr"] for dump in output.dumps]


@needs_outbrain
def test_inline_learns_outbrain_with_candidate_scoring():
    """With k=4 a random pick hits the click 1 time in 5 (CTR 0.2). Scoring each candidate with one shared
    network, DADRL's training CTR over steps ~1,000 to 2,000 must exceed 0.4 (seen: 0.64)."""
    candidate_policies = pytest.importorskip("dadrl_sb3.common.candidate_policies")
    ctrs = outbrain_ctr_by_window(
        candidate_policies.CandidateActorCriticPolicy, 2_000, {"obs_mode": "dict"}, learning_rate=2e-3
    )
    assert len(ctrs) == 2 and ctrs[-1] > 0.4


@needs_outbrain
@pytest.mark.slow
def test_inline_learns_outbrain_with_mlp():
    """With k=4 a random pick scores CTR 0.2. An MLP over the flat observation must learn the same scoring
    once per slot, so it learns slower: over steps ~5,000 to 6,000 its training CTR must exceed 0.27 (seen: 0.37)."""
    ctrs = outbrain_ctr_by_window("MlpPolicy", 6_000, {}, learning_rate=2e-3)
    assert ctrs[-1] > 0.27


def test_inline_learns_cartpole():
    """A uniformly random policy keeps CartPole-v1 up for about 22 steps per episode; after 2,000 steps
    shared by two devices DADRL's last 10 training episodes must average more than 50 (seen: 108)."""
    model = make_cartpole_model()
    model.learn(2_000)
    assert model.num_timesteps >= 2_000
    assert model.ep_info_buffer is not None
    recent = [info["l"] for info in model.ep_info_buffer][-10:]
    assert np.mean(recent) > 50


def test_inline_same_seed_gives_identical_weights():
    runs = []
    for seed in (3, 3, 4):
        model = make_cartpole_model(seed=seed)
        model.learn(400)
        runs.append(parameters_of(model))
    assert all(th.equal(first, second) for first, second in zip(runs[0], runs[1], strict=True))
    assert not all(th.equal(first, other) for first, other in zip(runs[0], runs[2], strict=True))


def test_staleness_is_measured():
    """Round-robin over three devices: every gradient after the first three is two versions stale."""
    model = make_cartpole_model(n_workers=3)
    output = CaptureOutput()
    model.set_logger(Logger(folder=None, output_formats=[output]))
    model.learn(16 * 30, log_interval=10)
    assert [dump["train/staleness_mean"] for dump in output.dumps[1:]] == [2.0, 2.0]
    assert [dump["train/staleness_max"] for dump in output.dumps] == [2, 2, 2]


# SB3 conventions


def test_callbacks_see_every_step_and_monitor_style_episodes():
    class Recorder(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.episodes: list[dict[str, Any]] = []

        def _on_step(self) -> bool:
            assert len(self.locals["infos"]) == len(self.locals["dones"]) == 1
            self.episodes += [info["episode"] for info in self.locals["infos"] if "episode" in info]
            return True

    recorder = Recorder()
    model = make_cartpole_model()
    model.learn(500, callback=recorder)
    assert recorder.n_calls == model.num_timesteps >= 500
    assert len(recorder.episodes) == model._episode_num >= 5
    assert all(episode["r"] == episode["l"] for episode in recorder.episodes)  # CartPole pays 1 per step


def test_callback_returning_false_stops_training():
    class StopAt(BaseCallback):
        def _on_step(self) -> bool:
            return self.n_calls < 40

    model = make_cartpole_model()
    model.learn(10_000, callback=StopAt())
    assert model.num_timesteps == 40


def test_logger_records_sb3_and_recommender_keys():
    model = make_cartpole_model()
    output = CaptureOutput()
    model.set_logger(Logger(folder=None, output_formats=[output]))
    model.learn(16 * 20, log_interval=10)
    assert len(output.dumps) == 2
    expected = {
        "rollout/ep_rew_mean", "rollout/ep_len_mean", "train/policy_loss", "train/value_loss", "train/entropy_loss",
        "train/staleness_mean", "train/staleness_max", "train/rejected", "train/clipped", "train/dropped_stale",
        "train/restarts", "train/n_updates", "train/learning_rate", "time/fps", "time/total_timesteps",
    }  # fmt: skip
    assert expected <= set(output.dumps[-1])
    assert "rollout/ctr" not in output.dumps[-1]  # CartPole has no clicks
    assert output.dumps[-1]["train/n_updates"] == 20 and output.dumps[-1]["time/total_timesteps"] == 320


def test_learn_continues_counting():
    model = make_cartpole_model()
    model.learn(160)
    assert model.num_timesteps == 160 and model.version == 10
    model.learn(160, reset_num_timesteps=False)
    assert model.num_timesteps == 320 and model.version == 20
    model.learn(160)
    assert model.num_timesteps == 160 and model.version == 30


def test_save_load_round_trip(tmp_path: Path):
    model = make_cartpole_model()
    model.learn(320)
    model.save(tmp_path / "dadrl")
    observations = np.stack([gym.make("CartPole-v1").observation_space.sample() for _ in range(32)])

    loaded = DADRL.load(tmp_path / "dadrl")
    for deterministic in (True, False):
        if not deterministic:
            th.manual_seed(0)
        expected, _ = model.predict(observations, deterministic=deterministic)
        if not deterministic:
            th.manual_seed(0)
        actual, _ = loaded.predict(observations, deterministic=deterministic)
        np.testing.assert_array_equal(actual, expected)
    assert loaded.n_workers == 2 and loaded.shard_kwarg is None and loaded.version == model.version
    assert loaded._backend is None
    with pytest.raises(ValueError, match="needs an environment"):
        loaded.learn(160)

    # With an environment the loaded model goes on learning where it stopped
    loaded = DADRL.load(tmp_path / "dadrl", env=gym.make("CartPole-v1"))
    loaded.learn(160, reset_num_timesteps=False)
    assert loaded.num_timesteps == 480


@pytest.mark.filterwarnings("ignore::tqdm.TqdmExperimentalWarning")
def test_progress_bar():
    model = make_cartpole_model()
    model.learn(160, progress_bar=True)
    progress = ProgressBarCallback()
    model.learn(160, callback=progress)
    assert progress.pbar.n == 160


def test_tensorboard_log(tmp_path: Path):
    pytest.importorskip("tensorboard")
    model = make_cartpole_model(tensorboard_log=str(tmp_path))
    model.learn(160, log_interval=5)
    assert list((tmp_path / "DADRL_1").glob("events.out.tfevents.*"))


# Subprocess backend: real worker processes


def test_subprocess_backend_learns_and_leaves_no_worker_alive():
    recorder = RecordWorkerPids()
    model = make_cartpole_model(backend="subprocess")
    model.learn(640, callback=recorder)
    assert model.num_timesteps >= 640 and model.version >= 40
    assert len(recorder.pids) == 2
    assert_no_worker_alive(recorder.pids)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_subprocess_workers_end_when_a_callback_raises(error: type[BaseException]):
    recorder = RecordWorkerPids(raise_at=100, error=error)
    model = make_cartpole_model(backend="subprocess")
    with pytest.raises(error, match="callback failure on purpose"):
        model.learn(10_000, callback=recorder)
    assert_no_worker_alive(recorder.pids)


@pytest.mark.parametrize("backend", ["inline", "subprocess"])
def test_device_exception_carries_its_traceback(backend: str):
    spec = EnvSpec(id="FailingCartPole-v0", entry_point=FailingCartPole, max_episode_steps=500)
    recorder = RecordWorkerPids()
    model = DADRL("MlpPolicy", gym.make(spec), shard_kwarg=None, backend=backend, seed=0, policy_kwargs=TINY_NET)
    with pytest.raises(DeviceError, match="device-side failure on purpose") as raised:
        model.learn(10_000, callback=recorder)
    assert "Traceback (most recent call last)" in str(raised.value) and "in step" in str(raised.value)
    assert multiprocessing.active_children() == []
    if backend == "subprocess":
        assert_no_worker_alive(recorder.pids)


# Constructor checks


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_workers": 0}, "n_workers"),
        ({"n_workers": 1.5}, "n_workers"),
        ({"n_steps": 0}, "n_steps"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": 1.5}, "gamma"),
        ({"gae_lambda": -0.1}, "gae_lambda"),
        ({"ent_coef": -1.0}, "ent_coef"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"backend": "mpi"}, "backend"),
        ({"shard_kwarg": ""}, "shard_kwarg"),
        ({"stats_window_size": 0}, "stats_window_size"),
        ({"max_staleness": -1}, "max_staleness.*got -1"),
        ({"max_staleness": 1.5}, "max_staleness.*got 1.5"),
        ({"staleness_weighting": "linear"}, "staleness_weighting.*'linear'"),
        ({"staleness_power": -0.5}, "staleness_power.*-0.5"),
        ({"max_message_norm": 0.0}, "max_message_norm.*got 0.0"),
        ({"max_message_norm": -1.0}, "max_message_norm.*got -1.0"),
        ({"on_large_norm": "scale"}, "on_large_norm.*'scale'"),
        ({"max_restarts": -1}, "max_restarts.*got -1"),
        ({"backend_kwargs": {"address": "auto"}}, "backend_kwargs.*'address'"),
        ({"backend": "subprocess", "backend_kwargs": {"timeout": 1}}, "backend_kwargs.*'timeout'.*close_timeout"),
        ({"backend_kwargs": ["address"]}, "backend_kwargs"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, Any], match: str):
    with pytest.raises(ValueError, match=match):
        make_cartpole_model(**kwargs)


def test_policy_that_does_not_fit_the_spaces_raises():
    with pytest.raises(ValueError, match=r"policy='CandidatePolicy' cannot be built for the observation space Box"):
        DADRL("CandidatePolicy", gym.make("CartPole-v1"), shard_kwarg=None, backend="inline")
    with pytest.raises(ValueError, match=r"policy='MlpPolicy' needs a flat observation space.*Dict"):
        DADRL("MlpPolicy", DictObservationEnv(), shard_kwarg=None, backend="inline")


def test_ray_backend_is_imported_only_when_training(monkeypatch: pytest.MonkeyPatch):
    model = make_cartpole_model(backend="ray", backend_kwargs={"address": "auto", "num_cpus": 2})
    assert model.backend_kwargs == {"address": "auto", "num_cpus": 2}

    # Without Ray, learn() says how to install it
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r'pip install "\.\[ray\]"'):
        model.learn(16)
    with pytest.raises(ImportError, match=r'pip install "\.\[ray\]"'):
        make_backend("ray", [], address="auto")


def test_backend_kwargs_reach_the_backend(monkeypatch: pytest.MonkeyPatch):
    assert isinstance(make_backend("subprocess", [], close_timeout=2.0), SubprocessBackend)
    assert make_backend("subprocess", [], close_timeout=2.0).close_timeout == 2.0  # type: ignore[attr-defined]

    built: list[tuple[str, dict[str, Any]]] = []

    def make_inline_backend(name: str, configs: list[Any], **backend_kwargs: Any) -> InlineBackend:
        built.append((name, backend_kwargs))
        return InlineBackend(configs)

    monkeypatch.setattr(dadrl_module, "make_backend", make_inline_backend)
    model = make_cartpole_model(backend="subprocess", backend_kwargs={"close_timeout": 2.0})
    model.learn(32)
    assert built == [("subprocess", {"close_timeout": 2.0})] and model.num_timesteps == 32


def test_env_without_spec_raises():
    with pytest.raises(ValueError, match="has no spec"):
        DADRL("MlpPolicy", CartPoleEnv(), shard_kwarg=None, backend="inline")


def test_env_without_shard_keyword_raises():
    with pytest.raises(ValueError, match="shard_kwarg='user_shard'"):
        DADRL("MlpPolicy", gym.make("CartPole-v1"), backend="inline")


def test_more_workers_than_cores_warns():
    with pytest.warns(UserWarning, match="CPU cores"):
        make_cartpole_model(backend="subprocess", n_workers=(os.cpu_count() or 1) + 1)


def test_device_message_pickles_small():
    """What crosses the pipe is the gradients plus a few hundred bytes of statistics."""
    model = make_cartpole_model(n_steps=64)
    device = Device(model._device_configs()[0])
    message = device.compute_gradients(model._weights(), version=0)
    device.close()
    gradient_bytes = sum(gradient.nbytes for gradient in message.gradients)
    assert len(pickle.dumps(message)) < gradient_bytes + 2_000


# OutbrainRec-v0: user shards and clicks


@needs_outbrain
def test_devices_get_disjoint_user_shards():
    model = DADRL("MlpPolicy", gym.make("OutbrainRec-v0", k=4), n_workers=2, backend="inline", seed=0)
    for config in model._device_configs():
        assert config.env_spec.kwargs["user_shard"] == (config.index, 2)
        device = Device(config)
        users = {device.env.reset()[1]["user_index"] for _ in range(20)}
        device.close()
        assert {user % 2 for user in users} == {config.index}


@needs_outbrain
def test_device_counts_clicks_on_outbrain():
    model = DADRL("MlpPolicy", gym.make("OutbrainRec-v0", k=4), n_workers=2, n_steps=32, backend="inline", seed=0)
    device = Device(model._device_configs()[0])
    message = device.compute_gradients(model._weights(), version=0)
    device.close()
    assert message.impressions == 32 and 0 <= message.clicks <= 32
    assert sum(message.episode_returns) <= message.clicks


# Devices that run several sessions of their user shard side by side


def test_two_environment_columns_get_their_own_hand_computed_returns():
    """The terminated case of the bootstrapping test above, with ``envs_per_device=2``: both environments (columns)
    count the same steps, so each column's targets are the single-environment ones. Episodes end at step 2 of
    each column, i.e. at rollout indices ``2 * 2 + 0`` and ``2 * 2 + 1`` of the 8-step message."""
    spec = EnvSpec(id="StepCounter-v0", entry_point=StepCounterEnv, kwargs={"terminate_after": 3})
    column_returns = np.array([1 + 0.9 * (1 + 0.9), 1 + 0.9, 1.0, 1 + 0.9 * 1])
    column_values = np.array([0.0, 1.0, 2.0, 0.0])
    model = DADRL(
        "MlpPolicy", gym.make(spec), n_workers=1, n_steps=4, gamma=0.9, gae_lambda=1.0, shard_kwarg=None,
        backend="inline", seed=0, policy_kwargs={"net_arch": []}, envs_per_device=2,
    )  # fmt: skip
    with th.no_grad():
        model.policy.value_net.weight.copy_(th.tensor([[1.0, 0.0]]))
        model.policy.value_net.bias.zero_()
    config = model._device_configs()[0]
    assert config.n_envs == 2
    device = Device(config)
    message = device.compute_gradients(model._weights(), version=0)
    device.close()

    # The helper applied to each column gives the same targets, and the value loss is their mean squared error
    rewards = np.ones(4, dtype=np.float32)
    ended = np.array([False, False, True, False])
    returns, _ = compute_returns_and_advantages(rewards, column_values.astype(np.float32), ended, 1.0, 0.9, 1.0)
    np.testing.assert_allclose(returns, column_returns, rtol=1e-6)
    assert message.n_steps == 8
    assert message.episode_ends == [4, 5] and message.episode_lengths == [3, 3] and message.episode_returns == [3.0, 3.0]
    assert message.value_loss == pytest.approx(np.mean((column_returns - column_values) ** 2), rel=1e-5)


def test_one_message_carries_every_environment_of_the_device():
    """Three CartPole sessions of 8 steps each make one 24-step message; the learner counts all 24 steps for
    callbacks and places every episode end on a distinct step of them."""
    model = make_cartpole_model(n_workers=1, n_steps=8, envs_per_device=3)
    device = Device(model._device_configs()[0])
    assert len(device.envs) == 3 and device.env is device.envs[0]
    messages = [device.compute_gradients(model._weights(), version=0) for _ in range(4)]
    device.close()
    assert all(message.n_steps == 24 and validate_statistics(message) is None for message in messages)
    assert sum(len(message.episode_ends) for message in messages) >= 1

    # The learner applies one update per message and counts every step and episode
    class Recorder(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.n_episodes = 0

        def _on_step(self) -> bool:
            self.n_episodes += sum("episode" in info for info in self.locals["infos"])
            return True

    recorder = Recorder()
    model.learn(240, callback=recorder)
    assert recorder.n_calls == model.num_timesteps == 240 and model.version == 10
    assert recorder.n_episodes == model._episode_num >= 5


def test_environments_of_all_devices_get_distinct_seeds():
    model = make_cartpole_model(n_workers=3, envs_per_device=4, seed=10)
    seeds = [config.seed + index for config in model._device_configs() for index in range(config.n_envs)]
    assert sorted(seeds) == list(range(10, 22))


@needs_outbrain
def test_inline_learns_outbrain_with_four_environments_per_device():
    """With k=4 a random pick hits the click 1 time in 5 (CTR 0.2). Two devices, each stepping four sessions of
    its user shard for 4 steps per message (16 steps, as the single-environment test), must reach a training
    CTR above 0.4 over steps ~1,000 to 2,000."""
    candidate_policies = pytest.importorskip("dadrl_sb3.common.candidate_policies")
    env = gym.make("OutbrainRec-v0", k=4, obs_mode="dict")
    model = DADRL(
        candidate_policies.CandidateActorCriticPolicy, env, n_workers=2, n_steps=4, envs_per_device=4,
        backend="inline", seed=0, learning_rate=2e-3,
    )  # fmt: skip
    output = CaptureOutput()
    model.set_logger(Logger(folder=None, output_formats=[output]))
    model.learn(2_000, log_interval=62)
    ctrs = [dump["rollout/ctr"] for dump in output.dumps]
    assert len(ctrs) == 2 and ctrs[-1] > 0.4


@pytest.mark.parametrize("envs_per_device", [0, -1, 1.5, True])
def test_bad_envs_per_device_raises(envs_per_device: Any):
    with pytest.raises(ValueError, match=f"envs_per_device must be an integer >= 1, got {re.escape(repr(envs_per_device))}"):
        make_cartpole_model(envs_per_device=envs_per_device)
