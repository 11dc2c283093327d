"""Synchronous rounds: the machinery shared by the baselines A2C-D and A2C-F.

Where DADRL's learner serves each device as soon as it reports, a synchronous learner works in
rounds. Each round it hands every device the same global weights and version (a :class:`RoundTask`),
waits until **every** device has answered, merges the answers into one update of the global network,
and starts the next round. What a device does with a task and what it answers is up to the algorithm:

- A2C-D (:mod:`dadrl_sb3.a2c_d`): one rollout, and its gradient (a
  :class:`~dadrl_sb3.common.devices.GradientMessage`); the learner averages the gradients and steps its
  optimizer once.
- A2C-F (:mod:`dadrl_sb3.a2c_f`): several local updates, and the resulting weights; the learner
  averages the weights (FedAvg).

A device is any object with ``run_round(task)`` and ``close()`` (:class:`RoundWorker`), built from a
:class:`~dadrl_sb3.common.devices.DeviceConfig` by a picklable factory (a class, or a
``functools.partial`` of one). Devices run in worker processes (:class:`SubprocessRoundBackend`) or one
after the other in the learner's process (:class:`InlineRoundBackend`).

What crosses the boundary between learner and device:

- once, at start: the factory and a :class:`~dadrl_sb3.common.devices.DeviceConfig`;
- learner to device: ``("task", RoundTask)`` or ``("close", None)``;
- device to learner: ``("result", answer)`` or ``("error", traceback_text)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import time
import traceback
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any, Protocol, TypeVar

import numpy as np
import torch as th
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule

from dadrl_sb3.common.backends import DeviceError, serve_worker
from dadrl_sb3.common.devices import DeviceConfig, GradientMessage, ParameterArrays
from dadrl_sb3.dadrl.dadrl import DADRL, _deferred_keyboard_interrupt

SYNC_BACKENDS = ("subprocess", "inline")

SelfSyncActorCritic = TypeVar("SelfSyncActorCritic", bound="SyncActorCritic")


@dataclasses.dataclass(frozen=True)
class RoundTask:
    """What the learner hands every device at the start of a round.

    :param weights: Global weights, one float32 array per tensor of ``policy.parameters()``, in order.
    :param version: Version of those weights (the number of rounds applied so far).
    :param learning_rate: The learner's scheduled learning rate for this round (used by devices that
        run an optimizer of their own).
    """

    weights: ParameterArrays
    version: int
    learning_rate: float


class RoundWorker(Protocol):
    """A device as a synchronous learner sees it: it answers one task per round."""

    def run_round(self, task: RoundTask) -> Any:
        """Work on the round's global weights and return the answer for the learner."""

    def close(self) -> None:
        """Release the device's environment."""


WorkerFactory = Callable[[DeviceConfig], RoundWorker]


def weighted_mean(arrays_per_device: Sequence[ParameterArrays], weights: Sequence[float]) -> ParameterArrays:
    """Average lists of parameter-shaped arrays, weighting list ``i`` by ``weights[i]``.

    The sums run in float64; each result is cast back to the dtype of the first device's array.

    :param arrays_per_device: One list of arrays per device, all lists of the same shapes.
    :param weights: One non-negative weight per device (for example its environment steps), not all zero.
    :return: ``sum_i weights[i] * arrays_per_device[i][j] / sum(weights)`` for every ``j``.
    """
    total = float(sum(weights))
    if len(arrays_per_device) != len(weights) or not total > 0:
        raise ValueError(f"need one weight per device with a positive sum, got {list(weights)!r}")
    means = []
    for arrays in zip(*arrays_per_device, strict=True):
        accumulated = sum(weight * array.astype(np.float64) for weight, array in zip(weights, arrays, strict=True))
        means.append((accumulated / total).astype(arrays[0].dtype))
    return means


class RoundBackend(ABC):
    """Runs a fixed set of devices in lockstep: every round each device gets a task and answers it.

    :param configs: One configuration per device; device ``i`` is built from ``configs[i]``.
    :param worker_factory: Builds a device from its configuration; must be picklable for worker processes.
    """

    def __init__(self, configs: list[DeviceConfig], worker_factory: WorkerFactory) -> None:
        self.configs = configs
        self.worker_factory = worker_factory

    @property
    def n_devices(self) -> int:
        return len(self.configs)

    @property
    def pids(self) -> list[int]:
        """Process ids of the devices' worker processes (empty when devices run in the learner's process)."""
        return []

    @abstractmethod
    def start(self) -> None:
        """Build every device."""

    @abstractmethod
    def run_round(self, task: RoundTask) -> list[Any]:
        """Hand ``task`` to every device and return their answers, in device order, once all have answered.

        :raises DeviceError: if a device raised or died; its traceback is in the message.
        """

    @abstractmethod
    def close(self) -> None:
        """Stop every device and release its resources; safe to call more than once, and before ``start``."""

    def __enter__(self) -> RoundBackend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, exc_traceback: TracebackType | None
    ) -> None:
        self.close()


class InlineRoundBackend(RoundBackend):
    """Runs the devices one after the other in the learner's process; bit-reproducible under a seed.

    Each device gets its own copy of the weights, so no device can change what another one sees.
    """

    def __init__(self, configs: list[DeviceConfig], worker_factory: WorkerFactory) -> None:
        super().__init__(configs, worker_factory)
        self._workers: list[RoundWorker] = []

    def start(self) -> None:
        for config in self.configs:
            try:
                self._workers.append(self.worker_factory(config))
            except Exception as err:
                raise DeviceError(config.index, traceback.format_exc()) from err

    def run_round(self, task: RoundTask) -> list[Any]:
        answers = []
        for index, worker in enumerate(self._workers):
            own_task = dataclasses.replace(task, weights=[np.array(array, copy=True) for array in task.weights])
            try:
                answers.append(worker.run_round(own_task))
            except Exception as err:
                raise DeviceError(index, traceback.format_exc()) from err
        return answers

    def close(self) -> None:
        for worker in self._workers:
            worker.close()
        self._workers = []


def run_round_worker(connection: Connection, worker_factory: WorkerFactory, config: DeviceConfig) -> None:
    """Main function of a synchronous device's worker process: one answer per ``("task", RoundTask)``.

    The loop, signal handling and error reporting are DADRL's (:func:`dadrl_sb3.common.backends.serve_worker`).

    :param connection: The worker's end of its pipe to the learner.
    :param worker_factory: Builds the device from ``config``.
    :param config: How to build the device.
    """
    serve_worker(connection, lambda: worker_factory(config), lambda worker, task: ("result", worker.run_round(task)))


class SubprocessRoundBackend(RoundBackend):
    """Runs each device in its own worker process, connected to the learner by a pipe.

    Workers start with ``forkserver`` where available (else ``spawn``), so they inherit no threads and no
    state of the learner. The forkserver preloads this module and ``torch._dynamo``, which PyTorch imports
    when the first optimizer is built (seconds), so that workers forked from it start warm.

    :param configs: One configuration per device.
    :param worker_factory: Builds a device from its configuration (picklable: a class or a partial of one).
    :param start_method: ``multiprocessing`` start method; ``None`` picks ``forkserver`` or ``spawn``.
    :param close_timeout: Seconds :meth:`close` waits for workers to exit before terminating them.
    :param poll_interval: Seconds between checks that no worker died silently while a round runs.
    """

    def __init__(
        self,
        configs: list[DeviceConfig],
        worker_factory: WorkerFactory,
        start_method: str | None = None,
        close_timeout: float = 5.0,
        poll_interval: float = 1.0,
    ) -> None:
        super().__init__(configs, worker_factory)
        if start_method is None:
            start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        self.start_method = start_method
        self.close_timeout = close_timeout
        self.poll_interval = poll_interval
        self._processes: list[BaseProcess] = []
        self._connections: list[Connection] = []

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes if process.pid is not None]

    def start(self) -> None:
        # Any: typeshed types only the contexts named by a literal start method
        context: Any = mp.get_context(self.start_method)
        if self.start_method == "forkserver":
            # Has effect only if no forkserver runs yet in this process
            context.set_forkserver_preload([__name__, "torch._dynamo"])

        # One process and one duplex pipe per device; the learner keeps only its own end of each pipe
        for config in self.configs:
            learner_end, device_end = context.Pipe(duplex=True)
            process = context.Process(
                target=run_round_worker,
                args=(device_end, self.worker_factory, config),
                name=f"sync-device-{config.index}",
                daemon=True,
            )
            self._connections.append(learner_end)
            process.start()
            self._processes.append(process)
            device_end.close()

    def _read(self, index: int) -> Any:
        """Read device ``index``'s answer; raise its error, or a :class:`DeviceError` if it died."""
        try:
            kind, payload = self._connections[index].recv()
        except EOFError as err:
            self._processes[index].join(timeout=1.0)
            exitcode = self._processes[index].exitcode
            raise DeviceError(index, f"its worker process exited without a traceback (exit code {exitcode})") from err
        if kind == "error":
            raise DeviceError(index, payload)
        return payload

    def run_round(self, task: RoundTask) -> list[Any]:
        # Every device gets the task; one that has ended reports its error (or death) below
        for connection in self._connections:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                connection.send(("task", task))

        # Wait for every answer; wake up now and then to notice workers that died without a word
        answers: dict[int, Any] = {}
        while len(answers) < self.n_devices:
            waiting = [index for index in range(self.n_devices) if index not in answers]
            ready = wait([self._connections[index] for index in waiting], timeout=self.poll_interval)
            for ready_connection in ready:
                index = self._connections.index(ready_connection)  # type: ignore[arg-type]
                answers[index] = self._read(index)
            if not ready:
                for index in waiting:
                    if not self._processes[index].is_alive() and not self._connections[index].poll():
                        exitcode = self._processes[index].exitcode
                        raise DeviceError(index, f"its worker process died (exit code {exitcode})")
        return [answers[index] for index in range(self.n_devices)]

    def close(self) -> None:
        # Ask every worker to stop
        open_connections = []
        for connection in self._connections:
            with contextlib.suppress(OSError):
                connection.send(("close", None))
                open_connections.append(connection)

        # Drain the pipes until workers exit: a worker interrupted mid-round may be blocked sending its answer
        deadline = time.monotonic() + self.close_timeout
        while any(process.is_alive() for process in self._processes) and time.monotonic() < deadline:
            waitables: list[Connection | int] = [*open_connections]
            waitables += [process.sentinel for process in self._processes if process.is_alive()]
            for ready in wait(waitables, timeout=max(deadline - time.monotonic(), 0.0)):
                if isinstance(ready, Connection):
                    try:
                        ready.recv()
                    except (EOFError, OSError):
                        open_connections.remove(ready)

        # Whatever is still alive is terminated, then killed
        for process in self._processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=1.0)
            if process.is_alive():
                process.kill()
            process.join(timeout=1.0)

        # Release pipes and process handles
        for connection in self._connections:
            connection.close()
        for process in self._processes:
            if not process.is_alive():
                process.close()
        self._processes, self._connections = [], []


def make_round_backend(name: str, configs: list[DeviceConfig], worker_factory: WorkerFactory) -> RoundBackend:
    """Build the round backend called ``name`` (one of :data:`SYNC_BACKENDS`) for the given devices."""
    if name == "subprocess":
        return SubprocessRoundBackend(configs, worker_factory)
    if name == "inline":
        return InlineRoundBackend(configs, worker_factory)
    raise ValueError(f"backend must be one of {SYNC_BACKENDS}, got {name!r}")


class SyncActorCritic(DADRL):
    """
    Base of the synchronous actor-critic baselines A2C-D and A2C-F: DADRL's devices, run in rounds.

    It keeps everything of :class:`~dadrl_sb3.dadrl.dadrl.DADRL` but the training loop: the constructor
    arguments and their checks, the devices' user shards and seeds, step accounting for callbacks
    (Monitor-style ``infos``), logging, ``predict`` and ``save``/``load``. Its :meth:`learn` runs rounds
    instead of serving devices as they report: every device starts the round from the same global
    weights, the learner waits for all of them and merges their answers into one update
    (:meth:`_apply_round`, defined by each algorithm). The version of the global weights is the number
    of rounds applied; every answer is computed on the current version (``train/staleness_mean`` is 0).

    A round's environment steps are counted for callbacks after its update, device by device in index
    order. Training stops at the end of the round that reaches ``total_timesteps``, or as soon as a
    callback returns False.

    Subclasses set :meth:`_worker_factory`, :meth:`_apply_round` and :meth:`_rollouts`. See
    :class:`~dadrl_sb3.a2c_d.A2CD` and :class:`~dadrl_sb3.a2c_f.A2CF` for the arguments.
    """

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str | None,
        learning_rate: float | Schedule = 7e-4,
        n_workers: int = 2,
        n_steps: int = 5,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        ent_coef: float = 0.01,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        use_rms_prop: bool = True,
        rms_prop_eps: float = 1e-5,
        backend: str = "subprocess",
        shard_kwarg: str | None = "user_shard",
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "cpu",
        _init_setup_model: bool = True,
    ) -> None:
        if backend not in SYNC_BACKENDS:
            raise ValueError(f"backend must be one of {SYNC_BACKENDS}, got {backend!r}")

        # DADRL warns when devices outnumber cores because its gradients grow staler; rounds only slow down
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"n_workers=\d+ is more than", category=UserWarning)
            super().__init__(
                policy,
                env,
                learning_rate=learning_rate,
                n_workers=n_workers,
                n_steps=n_steps,
                gamma=gamma,
                gae_lambda=gae_lambda,
                ent_coef=ent_coef,
                vf_coef=vf_coef,
                max_grad_norm=max_grad_norm,
                use_rms_prop=use_rms_prop,
                rms_prop_eps=rms_prop_eps,
                backend=backend,
                shard_kwarg=shard_kwarg,
                stats_window_size=stats_window_size,
                tensorboard_log=tensorboard_log,
                policy_kwargs=policy_kwargs,
                verbose=verbose,
                seed=seed,
                device=device,
                _init_setup_model=_init_setup_model,
            )
        # The running round backend; never saved
        self._round_backend: RoundBackend | None = None

    @property
    def device_pids(self) -> list[int]:
        """Process ids of the devices' worker processes while ``learn()`` runs (else, or inline, empty)."""
        return [] if self._round_backend is None else self._round_backend.pids

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_round_backend"]

    @abstractmethod
    def _worker_factory(self) -> WorkerFactory:
        """What builds a device from its configuration, in the learner's or in a worker process."""

    @abstractmethod
    def _apply_round(self, answers: list[Any]) -> None:
        """Merge the devices' answers of one round (device order) into one update of the global weights."""

    @abstractmethod
    def _rollouts(self, answer: Any) -> list[GradientMessage]:
        """The rollouts behind one device answer, in the order they ran, for step accounting and statistics."""

    def _reject(self, device_index: int, reason: str) -> None:
        """Count a device answer that is left out of the round's update (``train/rejected``)."""
        self._n_rejected += 1
        if self.verbose >= 2:
            print(f"{type(self).__name__}: rejected the answer of device {device_index}: {reason}")

    def learn(
        self: SelfSyncActorCritic,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 100,
        tb_log_name: str = "SyncActorCritic",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfSyncActorCritic:
        """Train in synchronous rounds until ``total_timesteps`` device steps (or a callback says stop).

        Workers never outlive this call, whatever ends it (an error, a callback, Ctrl+C); the model then holds
        the last round applied. While it runs, :attr:`device_pids` gives the workers' process ids.

        :param total_timesteps: Environment steps to train on, summed over devices (a lower bound: the last
            round is completed, so training may overshoot by less than one round's steps).
        :param callback: Callback(s) called once per device environment step.
        :param log_interval: Number of rounds between two log dumps.
        :param tb_log_name: Name of the run in TensorBoard.
        :param reset_num_timesteps: Whether to reset ``num_timesteps`` (False continues counting).
        :param progress_bar: Display a progress bar (tqdm and rich).
        :return: The trained model.
        :raises DeviceError: if a device raised (with its traceback) or its worker process died.
        """
        if log_interval < 1:
            raise ValueError(f"log_interval must be an integer >= 1, got {log_interval!r}")
        configs = self._device_configs()
        total_timesteps, callback = self._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
        )
        callback.on_training_start(locals(), globals())
        self._log_window = type(self._log_window)()
        n_rounds = 0
        continue_training = True

        backend = make_round_backend(self.backend, configs, self._worker_factory())
        self._round_backend = backend
        try:
            backend.start()
            while continue_training and self.num_timesteps < total_timesteps:
                # Every device works from the same global weights, at the scheduled learning rate
                self._update_current_progress_remaining(self.num_timesteps, self._total_timesteps)
                learning_rate = float(self.lr_schedule(self._current_progress_remaining))
                answers = backend.run_round(RoundTask(self._weights(), self.version, learning_rate))

                # One update of the global weights from all the answers, whole or not at all (Ctrl+C waits for it)
                with _deferred_keyboard_interrupt():
                    self._apply_round(answers)

                # Count the round's steps for callbacks, episode statistics and logs
                for rollout in (rollout for answer in answers for rollout in self._rollouts(answer)):
                    continue_training = self._account_steps(rollout, callback)
                    if not continue_training:
                        break
                n_rounds += 1
                if n_rounds % log_interval == 0:
                    self.dump_logs()
        finally:
            # Workers never outlive learn(), whatever ended it
            self._round_backend = None
            backend.close()

        callback.on_training_end()
        return self
