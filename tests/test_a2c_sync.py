"""Tests of the synchronous baselines A2C-D and A2C-F: one round by hand, learning, SB3 conventions, workers."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from gymnasium.envs.registration import EnvSpec
from stable_baselines3.common.callbacks import BaseCallback, ProgressBarCallback
from stable_baselines3.common.logger import KVWriter, Logger

from dadrl_sb3.a2c_d import A2CD, GradientDevice
from dadrl_sb3.a2c_f import A2CF, FederatedDevice, FederatedMessage
from dadrl_sb3.common.backends import DeviceError
from dadrl_sb3.common.devices import GradientMessage
from dadrl_sb3.common.sync import RoundTask, SyncActorCritic, weighted_mean

try:
    import recsys_gym  # noqa: F401

    gym.make("OutbrainRec-v0", k=4, obs_mode="dict").close()
    HAVE_OUTBRAIN = True
except Exception:
    HAVE_OUTBRAIN = False

pytestmark = pytest.mark.skipif(not HAVE_OUTBRAIN, reason="recsys_gym's OutbrainRec-v0 is not available")

ALGORITHMS = [A2CD, A2CF]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny networks run fastest on one thread, and 2-core CI machines thrash with more."""
    n_threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(n_threads)


def make_model(algorithm: type[SyncActorCritic], **kwargs: Any) -> SyncActorCritic:
    """A2C-D or A2C-F with the candidate-scoring policy on OutbrainRec-v0 (k=4, dict observations), 2 inline devices."""
    settings: dict[str, Any] = {"n_workers": 2, "backend": "inline", "seed": 0, "learning_rate": 2e-3}
    settings.update(kwargs)
    return algorithm("CandidatePolicy", gym.make("OutbrainRec-v0", k=4, obs_mode="dict"), **settings)


def small_model(algorithm: type[SyncActorCritic], **kwargs: Any) -> SyncActorCritic:
    """:func:`make_model`, with 2 local steps per round for A2C-F (20 steps a round)."""
    if algorithm is A2CF:
        kwargs.setdefault("local_steps", 2)
    return make_model(algorithm, **kwargs)


def steps_per_round(model: SyncActorCritic) -> int:
    return model.n_workers * model.n_steps * getattr(model, "local_steps", 1)


def parameters_of(model: SyncActorCritic) -> list[np.ndarray]:
    return [param.detach().numpy().copy() for param in model.policy.parameters()]


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a living (not zombie) process, from ``/proc``."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class CaptureOutput(KVWriter):
    """Keeps every dump of the SB3 logger."""

    def __init__(self) -> None:
        self.dumps: list[dict[str, Any]] = []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        self.dumps.append(dict(key_values))


class Recorder(BaseCallback):
    """Counts steps, keeps Monitor-style episodes and the workers' process ids; optionally raises or stops."""

    def __init__(self, raise_at: int | None = None, error: type[BaseException] = RuntimeError, stop_at: int | None = None):
        super().__init__()
        self.episodes: list[dict[str, Any]] = []
        self.pids: list[int] = []
        self.raise_at = raise_at
        self.error = error
        self.stop_at = stop_at

    def _on_step(self) -> bool:
        assert len(self.locals["infos"]) == len(self.locals["dones"]) == 1
        self.episodes += [info["episode"] for info in self.locals["infos"] if "episode" in info]
        assert isinstance(self.model, SyncActorCritic)
        self.pids = self.pids or self.model.device_pids
        if self.raise_at is not None and self.n_calls >= self.raise_at:
            raise self.error("callback failure on purpose")
        return self.stop_at is None or self.n_calls < self.stop_at


class FailingCartPole(CartPoleEnv):
    """CartPole that raises inside its step function after a few steps."""

    def step(self, action):
        self.n_steps = getattr(self, "n_steps", 0) + 1
        if self.n_steps > 7:
            raise ArithmeticError("device-side failure on purpose")
        return super().step(action)


def record_answers(
    monkeypatch: pytest.MonkeyPatch, device_class: type[GradientDevice | FederatedDevice]
) -> list[tuple[list[np.ndarray], Any]]:
    """Record, for every ``run_round`` of ``device_class`` (inline backend), a copy of the task's weights and the answer."""
    calls: list[tuple[list[np.ndarray], Any]] = []
    run_round = device_class.run_round

    def recording_run_round(self, task):
        weights = [array.copy() for array in task.weights]
        answer = run_round(self, task)
        calls.append((weights, answer))
        return answer

    monkeypatch.setattr(device_class, "run_round", recording_run_round)
    return calls


# Learning


@pytest.mark.parametrize("algorithm, log_interval", [(A2CD, 30), (A2CF, 8)])
def test_learns_outbrain_with_candidate_scoring(algorithm: type[SyncActorCritic], log_interval: int):
    """With k=4 a random pick hits the click 1 time in 5 (CTR 0.2). Scoring each candidate with one shared network,
    the training CTR over steps ~300 to ~600 must exceed 0.35 (seen: A2C-D 0.59, A2C-F 0.52)."""
    model = make_model(algorithm)
    output = CaptureOutput()
    model.set_logger(Logger(folder=None, output_formats=[output]))
    model.learn(2 * log_interval * steps_per_round(model), log_interval=log_interval)
    ctrs = [dump["rollout/ctr"] for dump in output.dumps]
    assert len(ctrs) == 2 and ctrs[-1] > 0.35


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_inline_same_seed_gives_identical_weights(algorithm: type[SyncActorCritic]):
    runs = []
    for seed in (3, 3, 4):
        model = small_model(algorithm, seed=seed)
        model.learn(3 * steps_per_round(model))
        runs.append(parameters_of(model))
    assert all(np.array_equal(first, second) for first, second in zip(runs[0], runs[1], strict=True))
    assert not all(np.array_equal(first, other) for first, other in zip(runs[0], runs[2], strict=True))


# One round, by hand


def test_a2cd_round_applies_the_average_of_the_devices_gradients(monkeypatch: pytest.MonkeyPatch):
    """Plain SGD and no clipping: the new weights are the old ones minus lr times the mean of the two gradients."""
    learning_rate = 0.1
    model = make_model(A2CD, learning_rate=learning_rate, max_grad_norm=1e6, policy_kwargs={"optimizer_class": th.optim.SGD})
    calls = record_answers(monkeypatch, GradientDevice)
    before = parameters_of(model)

    model.learn(steps_per_round(model))
    assert model.num_timesteps == 10 and model.version == 1 and len(calls) == 2

    # Both devices worked on the same global weights and ran different rollouts (their own user shards)
    (weights_0, message_0), (weights_1, message_1) = calls
    for old, sent_0, sent_1 in zip(before, weights_0, weights_1, strict=True):
        np.testing.assert_array_equal(sent_0, old)
        np.testing.assert_array_equal(sent_1, old)
    assert message_0.n_steps == message_1.n_steps == 5
    assert any(not np.array_equal(g_0, g_1) for g_0, g_1 in zip(message_0.gradients, message_1.gradients, strict=True))

    for old, new, g_0, g_1 in zip(before, parameters_of(model), message_0.gradients, message_1.gradients, strict=True):
        np.testing.assert_allclose(new, old - learning_rate * (g_0 + g_1) / 2, rtol=1e-5, atol=1e-7)


def test_a2cd_round_weighs_gradients_by_steps_clips_and_skips_rejected():
    """Two valid answers of 10 and 30 steps with gradients of all ones and all threes average to 2.5 everywhere;
    with SGD at lr 1 and max_grad_norm 1, the step is that average scaled to norm 1. A NaN answer is left out."""
    model = make_model(A2CD, learning_rate=1.0, max_grad_norm=1.0, policy_kwargs={"optimizer_class": th.optim.SGD})
    before = parameters_of(model)
    ones = [np.ones_like(array) for array in before]
    with_nan = [array.copy() for array in ones]
    with_nan[0].flat[0] = np.nan
    answers = [
        GradientMessage(version=0, gradients=ones, n_steps=10, policy_loss=1.0),
        GradientMessage(version=0, gradients=with_nan, n_steps=50, policy_loss=100.0),
        GradientMessage(version=0, gradients=[3 * array for array in ones], n_steps=30, policy_loss=5.0),
    ]

    model._apply_round(answers)
    n_values = sum(array.size for array in before)
    step = 2.5 / np.sqrt(n_values * 2.5**2)  # every entry of the clipped average
    for old, new in zip(before, parameters_of(model), strict=True):
        np.testing.assert_allclose(new, old - step, rtol=1e-5, atol=1e-6)
    assert model.version == 1 and model._n_rejected == 1
    assert model._log_window.policy_loss == pytest.approx((10 * 1.0 + 30 * 5.0) / 40)


def test_a2cf_round_sets_the_global_weights_to_the_mean_of_the_devices_weights(monkeypatch: pytest.MonkeyPatch):
    calls = record_answers(monkeypatch, FederatedDevice)
    model = make_model(A2CF, local_steps=3)
    before = parameters_of(model)

    model.learn(steps_per_round(model))
    assert model.num_timesteps == 2 * 3 * 5 and model.version == 1 and len(calls) == 2

    # Each device started from the global weights and trained away from them, differently
    (weights_0, message_0), (weights_1, message_1) = calls
    for old, sent_0, sent_1 in zip(before, weights_0, weights_1, strict=True):
        np.testing.assert_array_equal(sent_0, old)
        np.testing.assert_array_equal(sent_1, old)
    assert not all(np.array_equal(old, local) for old, local in zip(before, message_0.weights, strict=True))
    assert not all(np.array_equal(w_0, w_1) for w_0, w_1 in zip(message_0.weights, message_1.weights, strict=True))

    # Only weights and scalar statistics came back: the rollouts' gradients stayed on the devices
    assert [field.name for field in dataclasses.fields(FederatedMessage)] == ["version", "weights", "rollouts"]
    for message in (message_0, message_1):
        assert message.version == 0 and message.n_steps == 15 and len(message.rollouts) == 3
        assert all(rollout.gradients == [] for rollout in message.rollouts)

    # FedAvg with equal steps: the plain mean
    for new, w_0, w_1 in zip(parameters_of(model), message_0.weights, message_1.weights, strict=True):
        np.testing.assert_allclose(new, (w_0.astype(np.float64) + w_1) / 2, rtol=1e-6, atol=1e-7)


def test_a2cf_round_weighs_device_weights_by_steps():
    model = make_model(A2CF)
    before = parameters_of(model)
    rollout = GradientMessage(version=0, gradients=[], n_steps=5)
    answers = [
        FederatedMessage(version=0, weights=[array + 1 for array in before], rollouts=[rollout] * 2),
        FederatedMessage(version=0, weights=[array - 1 for array in before], rollouts=[rollout] * 6),
        FederatedMessage(version=0, weights=[array[..., :0] for array in before], rollouts=[rollout]),  # wrong shapes
    ]

    model._apply_round(answers)
    for old, new in zip(before, parameters_of(model), strict=True):
        np.testing.assert_allclose(new, old + (10 * 1 + 30 * -1) / 40, rtol=1e-6, atol=1e-6)
    assert model.version == 1 and model._n_rejected == 1


def test_federated_device_takes_clipped_steps_of_the_learners_optimizer(monkeypatch: pytest.MonkeyPatch):
    """With SGD and no clipping, a device's round is ``w - lr * (g(w) + g(w'))`` over two local steps, where ``w'``
    is the weights after the first step; by default its optimizer is the learner's RMSprop."""
    rmsprop_model = make_model(A2CF)
    device = rmsprop_model._worker_factory()(rmsprop_model._device_configs()[0])
    assert isinstance(device, FederatedDevice) and isinstance(device.optimizer, th.optim.RMSprop)
    assert device.optimizer.defaults["alpha"] == 0.99 and device.optimizer.defaults["eps"] == 1e-5
    device.close()

    learning_rate = 0.05
    model = make_model(A2CF, local_steps=2, max_grad_norm=1e6, policy_kwargs={"optimizer_class": th.optim.SGD})
    device = model._worker_factory()(model._device_configs()[0])
    assert isinstance(device, FederatedDevice)
    seen: list[tuple[list[np.ndarray], GradientMessage]] = []
    compute_gradients = device.compute_gradients

    def recording_compute_gradients(weights, version):
        message = compute_gradients(weights, version)
        seen.append(([array.copy() for array in weights], message))
        return message

    monkeypatch.setattr(device, "compute_gradients", recording_compute_gradients)
    start = parameters_of(model)
    answer = device.run_round(RoundTask(start, version=0, learning_rate=learning_rate))
    device.close()

    (weights_0, message_0), (weights_1, message_1) = seen
    for w, w_0, w_1, g_0, g_1, final in zip(
        start, weights_0, weights_1, message_0.gradients, message_1.gradients, answer.weights, strict=True
    ):
        np.testing.assert_array_equal(w_0, w)
        np.testing.assert_allclose(w_1, w - learning_rate * g_0, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(final, w - learning_rate * (g_0 + g_1), rtol=1e-6, atol=1e-7)


def test_weighted_mean_checks_its_weights():
    arrays = [[np.ones(2, dtype=np.float32)], [np.zeros(2, dtype=np.float32)]]
    np.testing.assert_array_equal(weighted_mean(arrays, [3, 1])[0], [0.75, 0.75])
    assert weighted_mean(arrays, [3, 1])[0].dtype == np.float32
    with pytest.raises(ValueError, match="positive sum"):
        weighted_mean(arrays, [0, 0])


# SB3 conventions


@pytest.mark.filterwarnings("ignore::tqdm.TqdmExperimentalWarning")
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_callbacks_logger_progress_bar_and_counting(algorithm: type[SyncActorCritic]):
    model = small_model(algorithm)
    per_round = steps_per_round(model)
    recorder = Recorder()
    output = CaptureOutput()
    model.set_logger(Logger(folder=None, output_formats=[output]))
    model.learn(6 * per_round, callback=recorder, log_interval=3)

    # Every step reaches callbacks; episodes come Monitor-style, as benchmarks' EpisodeRecorder reads them
    assert recorder.n_calls == model.num_timesteps == 6 * per_round and model.version == 6
    assert len(recorder.episodes) == model._episode_num >= 2
    assert all(0 <= episode["r"] <= episode["l"] for episode in recorder.episodes)
    expected = {
        "rollout/ep_rew_mean", "rollout/ctr", "train/policy_loss", "train/value_loss", "train/entropy_loss",
        "train/n_updates", "train/staleness_mean", "train/rejected", "time/fps", "time/total_timesteps",
    }  # fmt: skip
    assert len(output.dumps) == 2 and expected <= set(output.dumps[-1])
    assert output.dumps[-1]["train/n_updates"] == 6 and output.dumps[-1]["train/staleness_mean"] == 0

    # reset_num_timesteps=False goes on counting, with a progress bar
    progress = ProgressBarCallback()
    model.learn(per_round, callback=progress, reset_num_timesteps=False)
    assert model.num_timesteps == 7 * per_round and model.version == 7 and progress.pbar.n == per_round
    model.learn(per_round, progress_bar=True)
    assert model.num_timesteps == per_round and model.version == 8

    # A callback returning False stops training at once
    model.learn(10 * per_round, callback=Recorder(stop_at=per_round + 3))
    assert model.num_timesteps == per_round + 3


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_save_load_round_trip(algorithm: type[SyncActorCritic], tmp_path: Path):
    model = small_model(algorithm)
    model.learn(steps_per_round(model))
    model.save(tmp_path / "model")
    model.observation_space.seed(0)
    samples = [model.observation_space.sample() for _ in range(16)]
    observations = {key: np.stack([sample[key] for sample in samples]) for key in ("user", "candidates")}

    loaded = algorithm.load(tmp_path / "model")
    for deterministic in (True, False):
        th.manual_seed(0)
        expected, _ = model.predict(observations, deterministic=deterministic)
        th.manual_seed(0)
        actual, _ = loaded.predict(observations, deterministic=deterministic)
        np.testing.assert_array_equal(actual, expected)
    assert type(loaded) is algorithm and loaded.version == 1 and loaded._round_backend is None
    assert getattr(loaded, "local_steps", None) == getattr(model, "local_steps", None)

    # With an environment the loaded model goes on learning where it stopped
    loaded.set_env(gym.make("OutbrainRec-v0", k=4, obs_mode="dict"))
    loaded.learn(steps_per_round(model), reset_num_timesteps=False)
    assert loaded.num_timesteps == 2 * steps_per_round(model) and loaded.version == 2


# Worker processes


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_subprocess_backend_runs_and_leaves_no_worker_alive(algorithm: type[SyncActorCritic]):
    model = small_model(algorithm, backend="subprocess")
    recorder = Recorder()
    model.learn(2 * steps_per_round(model), callback=recorder)
    assert model.num_timesteps == 2 * steps_per_round(model) and model.version == 2
    assert len(recorder.pids) == 2 and model.device_pids == []
    assert multiprocessing.active_children() == []
    assert not any(process_alive(pid) for pid in recorder.pids)


@pytest.mark.parametrize("algorithm, backend", [(A2CD, "subprocess"), (A2CF, "inline")])
def test_device_exception_carries_its_traceback(algorithm: type[SyncActorCritic], backend: str):
    spec = EnvSpec(id="FailingCartPole-v0", entry_point=FailingCartPole, max_episode_steps=500)
    model = algorithm("MlpPolicy", gym.make(spec), shard_kwarg=None, backend=backend, seed=0)
    with pytest.raises(DeviceError, match="device-side failure on purpose") as raised:
        model.learn(1_000)
    assert "Traceback (most recent call last)" in str(raised.value) and "in step" in str(raised.value)
    assert multiprocessing.active_children() == []


def test_workers_end_on_keyboard_interrupt():
    model = make_model(A2CF, backend="subprocess", local_steps=1)
    recorder = Recorder(raise_at=15, error=KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt, match="callback failure on purpose"):
        model.learn(10_000, callback=recorder)
    assert len(recorder.pids) == 2 and model.version == 2
    assert multiprocessing.active_children() == []
    assert not any(process_alive(pid) for pid in recorder.pids)


# Constructor checks


@pytest.mark.parametrize(
    "algorithm, kwargs, match",
    [
        (A2CD, {"n_workers": 0}, "n_workers"),
        (A2CF, {"n_workers": 0}, "n_workers"),
        (A2CF, {"local_steps": 0}, "local_steps"),
        (A2CF, {"local_steps": 2.5}, "local_steps"),
        (A2CD, {"backend": "ray"}, "backend"),
        (A2CF, {"backend": "threads"}, "backend"),
        (A2CD, {"n_steps": 0}, "n_steps"),
    ],
)
def test_bad_arguments_raise(algorithm: type[SyncActorCritic], kwargs: dict[str, Any], match: str):
    with pytest.raises(ValueError, match=match):
        make_model(algorithm, **kwargs)


def test_more_workers_than_cores_is_not_warned_about():
    """Unlike DADRL, whose gradients grow staler, a round only waits longer: same result, no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_model(A2CD, backend="subprocess", n_workers=(os.cpu_count() or 1) + 1)
