"""Tests of the Ray backend: DADRL's devices as Ray actors on a Ray kept on this machine's loopback.

Starting Ray takes seconds, so the module starts it at most twice: once by the backend itself (the shared
training run, which must find no Ray running) and once by the tests (every later test), shut down at the end.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from gymnasium.envs.registration import EnvSpec
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, Logger

from dadrl_sb3 import DADRL
from dadrl_sb3.common.backends import DeviceError, DeviceLost
from dadrl_sb3.common.devices import GradientMessage

# Ray reads these when it is imported: no usage statistics, and every Ray service on 127.0.0.1 only
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray", reason="the Ray backend needs Ray: pip install 'ray>=2.9,<3'")

from dadrl_sb3.common.ray_backend import RayBackend  # noqa: E402  (needs Ray, checked just above)

TINY_NET = {"net_arch": [32, 32]}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny networks run fastest on one thread, and 2-core CI machines thrash with more."""
    n_threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(n_threads)


@pytest.fixture(scope="module")
def _ray_of_this_module():
    """Shuts down, at the end of the module, the Ray that :func:`ray_started_by_test` started."""
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture()
def ray_started_by_test(_ray_of_this_module: None) -> None:
    """A Ray started by the test itself, on loopback, with 2 CPUs; started once and kept for the module.

    Actors find this test module on their ``PYTHONPATH``: some tests' environments are defined here.
    """
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            logging_level="WARNING",
            # Ray would echo the actors' logs here, among them a long report on the actor a test kills on purpose
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parent)}},
        )


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a living (not zombie) process, from ``/proc``."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class FailingCartPole(CartPoleEnv):
    """CartPole that raises inside its step function after a few steps."""

    def step(self, action):
        self.n_steps = getattr(self, "n_steps", 0) + 1
        if self.n_steps > 20:
            raise ArithmeticError("device-side failure on purpose")
        return super().step(action)


class CaptureOutput(KVWriter):
    """Keeps every dump of the SB3 logger."""

    def __init__(self) -> None:
        self.dumps: list[dict[str, Any]] = []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        self.dumps.append(dict(key_values))


class Recorder(BaseCallback):
    """Records what callbacks see at each step, the backend's actor pids and the Ray node's address."""

    def __init__(self) -> None:
        super().__init__()
        self.pids: list[int] = []
        self.node_ip = ""
        self.infos_per_step: list[int] = []
        self.episodes: list[dict[str, Any]] = []

    def _on_step(self) -> bool:
        if not self.pids:
            assert isinstance(self.model, DADRL) and self.model._backend is not None
            self.pids = self.model._backend.pids
            self.node_ip = ray.util.get_node_ip_address()
        self.infos_per_step.append(len(self.locals["infos"]))
        self.episodes += [info["episode"] for info in self.locals["infos"] if "episode" in info]
        return True


def make_cartpole_model(**kwargs: Any) -> DADRL:
    """A small DADRL on CartPole-v1 (no users: every device gets the whole environment)."""
    settings: dict[str, Any] = {"n_workers": 2, "shard_kwarg": None, "backend": "ray", "seed": 0, "policy_kwargs": TINY_NET}
    settings.update(kwargs)
    return DADRL("MlpPolicy", gym.make("CartPole-v1"), **settings)


# One training run on OutbrainRec-v0, on a Ray that the backend starts and stops itself


@dataclass
class TrainingRun:
    model: DADRL
    recorder: Recorder
    ctrs: list[float]
    ray_initialized_after: bool
    logs: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture(scope="module")
def training_run() -> TrainingRun:
    """DADRL with candidate scoring on OutbrainRec-v0 (k=4), 2 Ray devices, 1,500 steps, seed 0."""
    # Checked here, not at import: actors import this module to rebuild FailingCartPole, and need no data
    try:
        import recsys_gym  # noqa: F401

        gym.make("OutbrainRec-v0", k=4).close()
    except Exception as err:
        pytest.skip(f"recsys_gym's OutbrainRec-v0 is not available: {err}")

    # The backend must find no Ray, so that it starts (and must stop) its own
    if ray.is_initialized():
        ray.shutdown()

    model = DADRL(
        "CandidatePolicy",
        gym.make("OutbrainRec-v0", k=4, obs_mode="dict"),
        backend="ray",
        n_workers=2,
        seed=0,
        learning_rate=2e-3,
    )
    output = CaptureOutput()
    model.set_logger(Logger(folder=None, output_formats=[output]))
    recorder = Recorder()
    model.learn(1_500, callback=recorder, log_interval=100)
    return TrainingRun(model, recorder, [dump["rollout/ctr"] for dump in output.dumps], ray.is_initialized(), output.dumps)


def test_ray_learns_outbrain_with_candidate_scoring(training_run: TrainingRun):
    """With k=4 a random pick hits the click 1 time in 5 (CTR 0.2). Two Ray devices must lift DADRL's training
    CTR over steps ~1,000 to 1,500 above 0.4 (seen: 0.53 to 0.58)."""
    assert training_run.model.num_timesteps >= 1_500
    assert len(training_run.ctrs) == 3 and training_run.ctrs[-1] > 0.4


def test_ray_callbacks_see_every_step_and_monitor_style_episodes(training_run: TrainingRun):
    model, recorder = training_run.model, training_run.recorder
    assert recorder.n_calls == model.num_timesteps and set(recorder.infos_per_step) == {1}
    assert len(recorder.episodes) == model._episode_num >= 5
    for episode in recorder.episodes:
        assert set(episode) == {"r", "l", "t"}
        assert 0 <= episode["r"] <= episode["l"]  # one click at most per impression


def test_ray_started_by_backend_is_shut_down_and_no_actor_survives(training_run: TrainingRun):
    recorder = training_run.recorder
    assert ray.is_initialized() is training_run.ray_initialized_after is False
    assert recorder.node_ip == "127.0.0.1"  # the backend kept Ray on loopback
    assert len(set(recorder.pids)) == 2 and os.getpid() not in recorder.pids
    assert not any(process_alive(pid) for pid in recorder.pids)
    assert training_run.model._backend is None


def test_ray_save_load_round_trip(training_run: TrainingRun, tmp_path: Path):
    model = training_run.model
    model.save(tmp_path / "dadrl_ray")
    loaded = DADRL.load(tmp_path / "dadrl_ray")
    assert loaded.backend == "ray" and loaded._backend is None and loaded.version == model.version

    env = gym.make("OutbrainRec-v0", k=4, obs_mode="dict")
    observations = [env.reset(seed=seed)[0] for seed in range(16)]
    batch = {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}
    for deterministic in (True, False):
        th.manual_seed(0)
        expected, _ = model.predict(batch, deterministic=deterministic)
        th.manual_seed(0)
        actual, _ = loaded.predict(batch, deterministic=deterministic)
        np.testing.assert_array_equal(actual, expected)


# On a Ray that the test started: the backend must leave it running


def test_ray_device_exception_carries_its_traceback(ray_started_by_test: None):
    spec = EnvSpec(id="FailingCartPole-v0", entry_point=FailingCartPole, max_episode_steps=500)
    recorder = Recorder()
    model = DADRL("MlpPolicy", gym.make(spec), shard_kwarg=None, backend="ray", seed=0, policy_kwargs=TINY_NET)
    with pytest.raises(DeviceError, match="device-side failure on purpose") as raised:
        model.learn(10_000, callback=recorder)
    assert not isinstance(raised.value, DeviceLost)
    assert "Traceback (most recent call last)" in str(raised.value) and "in step" in str(raised.value)

    # The actors are gone, the test's Ray is not
    assert len(recorder.pids) == 2 and not any(process_alive(pid) for pid in recorder.pids)
    assert ray.is_initialized()


def test_ray_killed_actor_is_lost_then_restarted(ray_started_by_test: None):
    """Drives the backend directly: an actor killed mid-run is reported lost, and restart() replaces it."""
    model = make_cartpole_model(backend="inline", n_workers=1, n_steps=8)
    backend = RayBackend(model._device_configs())
    try:
        backend.start(model._weights(), model.version)
        messages = backend.receive()
        assert all(isinstance(message, GradientMessage) for _, message in messages)
        assert all(gradient.flags.writeable for _, message in messages for gradient in message.gradients)
        old_pids = backend.pids
        assert len(old_pids) == 1 and process_alive(old_pids[0])

        # Kill the device's process: the next receive() reports it lost
        for index, _ in messages:
            backend.send(index, model._weights(), model.version)
        os.kill(old_pids[0], signal.SIGKILL)
        with pytest.raises(DeviceLost, match="died without a traceback") as lost:
            for _ in range(100):
                for index, _ in backend.receive():
                    backend.send(index, model._weights(), model.version)
        assert lost.value.device_index == 0

        # The restarted device runs in a new process and reports again
        backend.restart(0, model._weights(), model.version)
        assert [index for index, _ in backend.receive()] == [0]
        new_pids = backend.pids
        assert len(new_pids) == 1 and new_pids[0] not in old_pids
    finally:
        backend.close()
    assert not any(process_alive(pid) for pid in [*old_pids, *new_pids])
    assert ray.is_initialized()
    backend.close()  # a second close() does nothing


def test_ray_warns_when_arguments_are_ignored_or_cpus_are_short(ray_started_by_test: None):
    model = make_cartpole_model(backend="inline", n_workers=1)
    with pytest.warns(UserWarning, match="already initialized.*num_cpus"):
        backend = RayBackend([], num_cpus=1)
        backend.start(model._weights(), model.version)
    backend.close()
    assert ray.is_initialized()

    # An actor that needs 3 CPUs of a 2-CPU Ray never starts: close() still removes it
    with pytest.warns(UserWarning, match="need 3 CPUs, but Ray has 2 in all"):
        backend = RayBackend(model._device_configs(), num_cpus_per_device=3)
        backend.start(model._weights(), model.version)
    backend.close()


def test_ray_warns_when_it_listens_beyond_loopback(monkeypatch: pytest.MonkeyPatch):
    """The check run after the backend starts Ray, fed a routable address: no test may open Ray to the network."""
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "192.0.2.7")
    with pytest.warns(UserWarning, match="listens on 192.0.2.7.*RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"):
        RayBackend([])._warn_if_reachable_from_network()


@pytest.mark.parametrize(
    "kwargs, match",
    [({"num_cpus_per_device": 1.5}, "num_cpus_per_device"), ({"num_cpus_per_device": 0}, "num_cpus_per_device"),
     ({"close_timeout": -1.0}, "close_timeout")],
)  # fmt: skip
def test_ray_bad_arguments_raise(kwargs: dict[str, Any], match: str):
    with pytest.raises(ValueError, match=match):
        RayBackend([], **kwargs)
