"""Tests of DADRL under faults and audits: killed workers, interrupts, checkpoints, and what devices send.

Worker processes import this module to build :class:`ShardedCartPole`, so it imports nothing heavy at the
top (not ``recsys_gym``, not ``test_dadrl``): the few helpers it shares with ``test_dadrl.py`` are repeated.
"""

from __future__ import annotations

import dataclasses
import io
import multiprocessing
import os
import pickle
import pickletools
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from gymnasium.envs.registration import EnvSpec
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
from stable_baselines3.common.logger import KVWriter, Logger

from dadrl_sb3 import DADRL
from dadrl_sb3.common.backends import DeviceBackend, DeviceError, DeviceLost, InlineBackend, SubprocessBackend
from dadrl_sb3.common.devices import Device, GradientMessage
from dadrl_sb3.dadrl.dadrl import _deferred_keyboard_interrupt

TINY_NET = {"net_arch": [32, 32]}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny networks run fastest on one thread, and 2-core CI machines thrash with more."""
    n_threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(n_threads)


class ShardedCartPole(CartPoleEnv):
    """CartPole that takes (and ignores) a user shard, standing in for a recommender environment."""

    def __init__(self, user_shard: tuple[int, int] | None = None, render_mode: str | None = None) -> None:
        super().__init__(render_mode=render_mode)
        self.user_shard = user_shard


SHARDED_CARTPOLE = EnvSpec(id="ShardedCartPole-v0", entry_point=ShardedCartPole, max_episode_steps=200)


def make_model(**kwargs: Any) -> DADRL:
    """A small DADRL with two devices, each on its shard of :class:`ShardedCartPole`."""
    settings: dict[str, Any] = {
        "n_workers": 2,
        "n_steps": 16,
        "backend": "inline",
        "seed": 0,
        "policy_kwargs": TINY_NET,
        "learning_rate": 2e-3,
    }
    settings.update(kwargs)
    return DADRL("MlpPolicy", gym.make(SHARDED_CARTPOLE), **settings)


def parameters_of(model: DADRL) -> list[th.Tensor]:
    return [param.detach().clone() for param in model.policy.parameters()]


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a living (not zombie) process, from ``/proc``."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def descendants(pid: int) -> set[int]:
    """Living descendants of ``pid``, read from ``/proc`` (zombies excluded)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = {child for child, its_parent in parents.items() if its_parent == parent} - found
        found |= children
        frontier += children
    return found


def wait_until_dead(pids: set[int], polls: int = 100) -> set[int]:
    """Poll ``/proc`` up to ``polls`` times, 0.1 s apart, until no process of ``pids`` lives; return the survivors."""
    for _ in range(polls):
        survivors = {pid for pid in pids if process_alive(pid)}
        if not survivors:
            break
        time.sleep(0.1)
    return survivors


def assert_no_worker_alive(worker_pids: set[int]) -> None:
    assert worker_pids
    assert wait_until_dead(worker_pids, polls=20) == set()
    assert multiprocessing.active_children() == []


class CaptureOutput(KVWriter):
    """Keeps every dump of the SB3 logger."""

    def __init__(self) -> None:
        self.dumps: list[dict[str, Any]] = []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        self.dumps.append(dict(key_values))


class KillWorker(BaseCallback):
    """From step ``from_step`` on, kills device ``device_index``'s worker with SIGKILL, up to ``times`` times
    (each time as soon as a new worker has replaced the last one killed); remembers every worker pid seen."""

    def __init__(self, from_step: int, times: int, device_index: int = 0) -> None:
        super().__init__()
        self.from_step = from_step
        self.times = times
        self.device_index = device_index
        self.killed: list[int] = []
        self.pids_seen: set[int] = set()
        self.configs_after_restart: list[Any] = []

    def _on_step(self) -> bool:
        assert isinstance(self.model, DADRL)
        pids = self.model.device_pids
        self.pids_seen.update(pids)
        pid = pids[self.device_index]
        if self.killed and pid != self.killed[-1] and len(self.configs_after_restart) < len(self.killed):
            assert self.model._backend is not None
            self.configs_after_restart.append(self.model._backend.configs[self.device_index])
        if self.n_calls >= self.from_step and len(self.killed) < self.times and pid not in self.killed:
            os.kill(pid, signal.SIGKILL)
            self.killed.append(pid)
        return True


# Workers killed mid-training


def test_killed_worker_is_restarted_on_its_shard_and_training_completes(monkeypatch: pytest.MonkeyPatch):
    # Remember which worker process each message came from
    senders: list[tuple[int, int | None]] = []
    read = SubprocessBackend._read

    def recording_read(self: SubprocessBackend, index: int) -> GradientMessage | None:
        message = read(self, index)
        if message is not None:
            senders.append((index, self._processes[index].pid))
        return message

    monkeypatch.setattr(SubprocessBackend, "_read", recording_read)

    class StopAfterReplacementReports(KillWorker):
        """Kills device 0's worker at step 100; stops training once its replacement has sent two messages."""

        def _on_step(self) -> bool:
            super()._on_step()
            from_replacement = [pid for index, pid in senders if index == 0 and pid not in self.killed]
            return not self.killed or len(from_replacement) < 2

    killer = StopAfterReplacementReports(from_step=100, times=1)
    model = make_model(backend="subprocess")
    output = CaptureOutput()
    model.set_logger(Logger(folder=None, output_formats=[output]))
    first_config = model._device_configs()[0]
    model.learn(20_000, callback=killer, log_interval=10)

    # Training went on past the death, with one restart, logged
    assert 100 < model.num_timesteps < 20_000 and model._n_restarts == 1
    model.dump_logs()
    assert output.dumps[-1]["train/restarts"] == 1

    # The new worker serves the same user shard, with a fresh seed, and its gradients arrive
    (killed,) = killer.killed
    (config,) = killer.configs_after_restart
    assert config.env_spec.kwargs["user_shard"] == first_config.env_spec.kwargs["user_shard"] == (0, 2)
    assert config.seed != first_config.seed
    replacements = {pid for index, pid in senders if index == 0 and pid != killed}
    assert len(replacements) == 1 and replacements < killer.pids_seen

    # Nothing survives learn()
    assert model.device_pids == []
    assert_no_worker_alive(killer.pids_seen)


def test_worker_dying_more_than_max_restarts_ends_learn():
    killer = KillWorker(from_step=50, times=2)
    model = make_model(backend="subprocess", max_restarts=1)
    with pytest.raises(DeviceError, match=r"died 2 times in this learn\(\) call, more than max_restarts=1") as raised:
        model.learn(100_000, callback=killer)
    assert raised.value.device_index == 0 and "exit code" in str(raised.value)
    assert model._n_restarts == 1 and len(killer.killed) == 2
    assert_no_worker_alive(killer.pids_seen)


def test_backend_restart_replaces_the_device_and_unsupported_restart_is_an_error():
    model = make_model()
    configs = model._device_configs()
    backend = InlineBackend(configs)
    backend.start(model._weights(), 0)

    # A restarted device is built anew from its new configuration and works on the weights it is given
    replacement = dataclasses.replace(configs[0], seed=99)
    backend.restart(0, model._weights(), 0, replacement)
    assert backend.configs[0] is replacement and backend._devices[0].config is replacement
    assert sorted(index for _ in range(2) for index, _ in backend.receive()) == [0, 1]
    with pytest.raises(ValueError, match=r"config\.index=1 does not match device_index=0"):
        backend.restart(0, model._weights(), 0, configs[1])
    backend.close()

    # A backend that cannot restart devices turns a lost device into an error
    class NoRestarts(InlineBackend):
        restart = DeviceBackend.restart

    lost = DeviceLost(0, "its worker process died (exit code -9)")
    with pytest.raises(DeviceError, match=r"\(exit code -9\), and NoRestarts cannot restart devices"):
        model._restart_device(NoRestarts(configs), configs, lost, [0, 0])


# Interrupts


@pytest.fixture()
def default_sigint():
    """Python's own SIGINT handler for the test, whatever the runner inherited (background jobs ignore SIGINT)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("default_sigint")
def test_deferred_keyboard_interrupt_lets_the_block_finish():
    finished = False
    with pytest.raises(KeyboardInterrupt), _deferred_keyboard_interrupt():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the signal is handled here, while the block runs on
        finished = True
    assert finished
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class InterruptAt(BaseCallback):
    """Raises KeyboardInterrupt at step ``step``, remembering the worker pids and the version at that moment."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step
        self.pids: set[int] = set()
        self.version = -1

    def _on_step(self) -> bool:
        assert isinstance(self.model, DADRL)
        self.pids.update(self.model.device_pids)
        if self.n_calls == self.step:
            self.version = self.model.version
            raise KeyboardInterrupt
        return True


def test_keyboard_interrupt_stops_workers_and_keeps_the_last_update(tmp_path: Path):
    interrupt = InterruptAt(step=200)
    model = make_model(backend="subprocess")
    with pytest.raises(KeyboardInterrupt):
        model.learn(100_000, callback=interrupt)
    assert_no_worker_alive(interrupt.pids)

    # The model holds the last update applied, and saves and loads with it
    assert model.version == interrupt.version >= 200 // 16
    model.save(tmp_path / "interrupted")
    loaded = DADRL.load(tmp_path / "interrupted")
    assert loaded.version == model.version and loaded.num_timesteps == 200
    assert all(th.equal(old, new) for old, new in zip(parameters_of(model), parameters_of(loaded), strict=True))


TRAINING_SCRIPT = textwrap.dedent(
    """
    import signal
    import sys

    # A terminal delivers Ctrl+C to Python's handler; a parent that ignores SIGINT (a background job, some CI
    # runners) would pass that on, so restore the default as an interactive shell does.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    import gymnasium as gym
    import torch as th
    from stable_baselines3.common.callbacks import BaseCallback

    from dadrl_sb3 import DADRL


    class AnnounceStart(BaseCallback):
        def _on_step(self) -> bool:
            if self.n_calls == 50:
                print("training started", *self.model.device_pids, flush=True)
            return True


    if __name__ == "__main__":
        th.set_num_threads(1)
        model = DADRL(
            "MlpPolicy", gym.make("CartPole-v1"), n_workers=2, n_steps=16, shard_kwarg=None, backend="subprocess",
            seed=0, policy_kwargs={"net_arch": [32, 32]},
        )
        try:
            model.learn(10_000_000, callback=AnnounceStart())
        except KeyboardInterrupt:
            model.save(sys.argv[1])
            print("saved version", model.version, flush=True)
    """
)


def read_line(process: subprocess.Popen, timeout: float) -> str:
    """The next line of ``process``'s standard output, waiting at most ``timeout`` seconds for it."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        process.kill()
        pytest.fail(f"no output from the training script within {timeout} s")
    return process.stdout.readline()


def test_sigint_ends_training_in_a_script_and_leaves_no_process(tmp_path: Path):
    """SIGINT, as Ctrl+C sends it in a terminal: to the whole process group, the learner's process and every
    worker (which ignore it: the learner stops them)."""
    script = tmp_path / "train.py"
    script.write_text(TRAINING_SCRIPT)
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "model")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so that signalling the group spares pytest
    )
    try:
        line = read_line(process, timeout=120)
        assert line.startswith("training started"), line + process.communicate(timeout=10)[1]
        worker_pids = {int(pid) for pid in line.split()[2:]}
        children = descendants(process.pid)
        assert len(worker_pids) == 2 and worker_pids <= children

        # Interrupt: the script must end within 10 s, after saving the model
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr

    # No child of the script survives it (workers, forkserver, resource tracker)
    assert wait_until_dead(children) == set()
    version = int(stdout.split()[-1])
    assert version > 0 and DADRL.load(tmp_path / "model").version == version


# Checkpoints and resuming


def test_checkpoint_callback_and_resuming_from_a_checkpoint(tmp_path: Path):
    checkpoints = CheckpointCallback(save_freq=160, save_path=str(tmp_path), name_prefix="dadrl")
    model = make_model()
    model.learn(320, callback=checkpoints)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dadrl_160_steps.zip", "dadrl_320_steps.zip"]

    # The first checkpoint holds the weights a same-seed run has after 160 steps (inline runs are bit-reproducible)
    loaded = DADRL.load(tmp_path / "dadrl_160_steps", env=gym.make(SHARDED_CARTPOLE))
    assert loaded.num_timesteps == 160 and loaded.version == 10
    shorter = make_model()
    shorter.learn(160)
    assert all(th.equal(old, new) for old, new in zip(parameters_of(shorter), parameters_of(loaded), strict=True))

    # Resuming continues the timestep count and the version counter
    loaded.learn(160, reset_num_timesteps=False)
    assert loaded.num_timesteps == 320 and loaded.version == 20


# Privacy audit: everything a device sends to the learner

GRADIENT_MESSAGE_FIELDS = [field.name for field in dataclasses.fields(GradientMessage)]

# The only classes a device's bytes may name: the message itself, and what NumPy needs to rebuild an array
ALLOWED_GLOBALS = {
    ("dadrl_sb3.common.devices", "GradientMessage"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}

# The only strings: the message kind, field names, those class names, and float32's type code and byte order
ALLOWED_STRINGS = {"gradients", *GRADIENT_MESSAGE_FIELDS, *(name for pair in ALLOWED_GLOBALS for name in pair), "f4", "<"}


class AuditUnpickler(pickle.Unpickler):
    """Unpickles only objects built from :data:`ALLOWED_GLOBALS` and Python's plain types."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"a device sent an object of class {module}.{name}")
        return super().find_class(module, name)


def arrays_in(value: Any) -> list[np.ndarray]:
    """Every NumPy array inside ``value`` (through tuples, lists, dicts and dataclasses)."""
    if isinstance(value, np.ndarray):
        return [value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return arrays_in(vars(value))
    if isinstance(value, dict):
        return [array for item in value.values() for array in arrays_in(item)]
    if isinstance(value, list | tuple):
        return [array for item in value for array in arrays_in(item)]
    return []


def audit_device_bytes(data: bytes, parameter_shapes: list[tuple[int, ...]], n_steps: int) -> GradientMessage:
    """Fail unless ``data`` holds one gradient message: float32 gradients shaped like the parameters and scalar
    statistics, and no other array, string or object."""
    strings = {arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)}
    assert strings <= ALLOWED_STRINGS, f"a device sent the strings {strings - ALLOWED_STRINGS}"
    kind, message = AuditUnpickler(io.BytesIO(data)).load()
    assert kind == "gradients" and type(message) is GradientMessage
    assert list(vars(message)) == GRADIENT_MESSAGE_FIELDS

    # Arrays: the gradients, and nothing else
    assert type(message.gradients) is list
    assert [gradient.shape for gradient in message.gradients] == parameter_shapes
    assert all(gradient.dtype == np.float32 for gradient in message.gradients)
    assert len(arrays_in(message)) == len(parameter_shapes)

    # Scalars: counts and losses, and one entry per episode ended (never one per step)
    for name in ("version", "n_steps", "clicks", "impressions"):
        assert type(getattr(message, name)) is int, name
    for name in ("policy_loss", "value_loss", "entropy_loss"):
        assert type(getattr(message, name)) is float, name
    assert message.n_steps == n_steps and 0 <= message.clicks <= message.impressions <= n_steps
    assert all(type(value) is float for value in message.episode_returns)
    assert all(type(value) is int for value in message.episode_lengths + message.episode_ends)
    assert len(message.episode_returns) == len(message.episode_lengths) == len(message.episode_ends)
    assert message.episode_ends == sorted(set(message.episode_ends))
    assert all(0 <= end < n_steps for end in message.episode_ends)
    return message


@pytest.mark.parametrize("backend", ["inline", "subprocess"])
def test_devices_send_only_gradients_and_scalar_statistics(backend: str, monkeypatch: pytest.MonkeyPatch):
    """Records every byte a device sends while DADRL trains on OutbrainRec-v0 (users, items, clicks) and audits it."""
    pytest.importorskip("recsys_gym")
    received: list[bytes] = []
    if backend == "subprocess":
        # Everything the learner reads from a worker's pipe, as the raw bytes that crossed it
        def recording_recv(self: SubprocessBackend, index: int) -> Any:
            data = self._connections[index].recv_bytes()
            received.append(data)
            return pickle.loads(data)

        monkeypatch.setattr(SubprocessBackend, "_recv", recording_recv)
    else:
        # Nothing crosses a process boundary: audit what would, every message pickled as a worker sends it
        compute_gradients = Device.compute_gradients

        def recording_compute_gradients(self: Device, weights: list[np.ndarray], version: int) -> GradientMessage:
            message = compute_gradients(self, weights, version)
            received.append(pickle.dumps(("gradients", message)))
            return message

        monkeypatch.setattr(Device, "compute_gradients", recording_compute_gradients)

    env = gym.make("OutbrainRec-v0", k=4)
    model = DADRL("MlpPolicy", env, n_workers=2, n_steps=16, backend=backend, seed=0, policy_kwargs=TINY_NET)
    model.learn(320)

    shapes = [tuple(param.shape) for param in model.policy.parameters()]
    messages = [audit_device_bytes(data, shapes, n_steps=16) for data in received]
    assert len(messages) >= 320 // 16
    assert sum(message.impressions for message in messages) >= 320  # the devices saw real impressions
