"""Where DADRL's devices run: worker processes talking over pipes, or the learner's own process.

A backend hands global weights to devices and hands their :class:`~dadrl_sb3.common.devices.GradientMessage`
back to the learner. The learner drives it with four calls: :meth:`DeviceBackend.start` (build the
devices and give each the first weights), :meth:`DeviceBackend.receive` (wait for at least one
message), :meth:`DeviceBackend.send` (fresh weights for the device that just reported) and
:meth:`DeviceBackend.close` (always, also on errors).

What crosses the boundary between learner and device:

- once, at start: a :class:`~dadrl_sb3.common.devices.DeviceConfig` (environment spec with the device's
  user shard, policy class and kwargs, spaces, loss coefficients, seed);
- learner to device: ``("weights", (weights, version))`` or ``("close", None)``;
- device to learner: ``("gradients", GradientMessage)`` or ``("error", traceback_text)``.

A device whose worker vanishes without a word (killed, out of memory) raises :class:`DeviceLost` from
:meth:`DeviceBackend.receive`; the learner may then call :meth:`DeviceBackend.restart` to start it again on
the same user shard. A device that raised an exception raises :class:`DeviceError` and is not restarted: the
same exception would most likely come back.

Backends by name (:func:`make_backend`): ``"subprocess"`` (:class:`SubprocessBackend`), ``"inline"``
(:class:`InlineBackend`) and ``"ray"`` (``dadrl_sb3.common.ray_backend.RayBackend``, imported only when asked
for, since Ray is an optional dependency).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import multiprocessing as mp
import signal
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any

import numpy as np
import torch as th

from dadrl_sb3.common.devices import Device, DeviceConfig, GradientMessage, ParameterArrays

BACKENDS = ("subprocess", "inline", "ray")


class DeviceError(RuntimeError):
    """A device failed; the message holds the device's own traceback.

    :param device_index: Index of the device that failed.
    :param details: The device's traceback text, or what is known about its end.
    """

    def __init__(self, device_index: int, details: str) -> None:
        super().__init__(f"DADRL device {device_index} failed:\n{details}")
        self.device_index = device_index
        self.details = details


class DeviceLost(DeviceError):
    """A device's worker ended without a traceback (killed, out of memory): it can be restarted.

    :param device_index: Index of the device that was lost.
    :param details: What is known about its end (the exit code).
    """


class DeviceBackend(ABC):
    """Runs a fixed set of devices and relays weights to them and gradient messages from them.

    :param configs: One configuration per device; device ``i`` is ``configs[i]``.
    """

    def __init__(self, configs: list[DeviceConfig]) -> None:
        self.configs = configs

    @property
    def n_devices(self) -> int:
        return len(self.configs)

    @property
    def pids(self) -> list[int]:
        """Process ids of the devices' worker processes (empty when devices run in the learner's process)."""
        return []

    @abstractmethod
    def start(self, weights: ParameterArrays, version: int) -> None:
        """Build every device and hand each the first weights."""

    @abstractmethod
    def receive(self) -> list[tuple[int, GradientMessage]]:
        """Wait until at least one device reports; return ``(device_index, message)`` pairs.

        :raises DeviceError: if a device raised or died.
        """

    @abstractmethod
    def send(self, device_index: int, weights: ParameterArrays, version: int) -> None:
        """Give a device the weights of its next rollout."""

    @abstractmethod
    def close(self) -> None:
        """Stop every device and release its resources; safe to call more than once, and before ``start``."""

    def restart(self, device_index: int, weights: ParameterArrays, version: int, config: DeviceConfig | None = None) -> None:
        """Start a lost device again and give it the current weights.

        Backends that cannot restart devices keep this default, which raises ``NotImplementedError``.

        :param device_index: Index of the device that was lost (see :class:`DeviceLost`).
        :param weights: The current global weights.
        :param version: Their version.
        :param config: A replacement configuration (the same user shard, typically a fresh seed); ``None``
            restarts the device with its previous configuration.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot restart devices")

    def _replace_config(self, device_index: int, config: DeviceConfig | None) -> DeviceConfig:
        """Store ``config`` as device ``device_index``'s configuration (if given) and return the one in use."""
        if config is not None:
            if config.index != device_index:
                raise ValueError(f"config.index={config.index} does not match device_index={device_index}")
            self.configs[device_index] = config
        return self.configs[device_index]

    def __enter__(self) -> DeviceBackend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, exc_traceback: TracebackType | None
    ) -> None:
        self.close()


class InlineBackend(DeviceBackend):
    """Runs the devices one after the other in the learner's process, round-robin.

    Each call to :meth:`receive` runs the next device's rollout on the weights it was last sent, so with
    ``n`` devices every gradient is ``n - 1`` versions stale, as if the devices ran in lockstep. Under a
    seed the whole run is bit-reproducible. Meant for tests and debugging: no parallelism.
    """

    def __init__(self, configs: list[DeviceConfig]) -> None:
        super().__init__(configs)
        self._devices: list[Device] = []
        self._pending: dict[int, tuple[ParameterArrays, int]] = {}
        self._next_index = 0

    def start(self, weights: ParameterArrays, version: int) -> None:
        for config in self.configs:
            try:
                self._devices.append(Device(config))
            except Exception as err:
                raise DeviceError(config.index, traceback.format_exc()) from err
        for index in range(self.n_devices):
            self.send(index, weights, version)

    def receive(self) -> list[tuple[int, GradientMessage]]:
        # The next device, in round-robin order, that holds weights to work on
        for offset in range(self.n_devices):
            index = (self._next_index + offset) % self.n_devices
            if index in self._pending:
                break
        else:
            raise RuntimeError("no device holds weights: call send() after each message")
        self._next_index = (index + 1) % self.n_devices

        weights, version = self._pending.pop(index)
        try:
            message = self._devices[index].compute_gradients(weights, version)
        except Exception as err:
            raise DeviceError(index, traceback.format_exc()) from err
        return [(index, message)]

    def send(self, device_index: int, weights: ParameterArrays, version: int) -> None:
        # Copy: the learner keeps updating its tensors in place before this device runs
        self._pending[device_index] = ([np.array(array, copy=True) for array in weights], version)

    def restart(self, device_index: int, weights: ParameterArrays, version: int, config: DeviceConfig | None = None) -> None:
        config = self._replace_config(device_index, config)
        self._devices[device_index].close()
        try:
            self._devices[device_index] = Device(config)
        except Exception as err:
            raise DeviceError(device_index, traceback.format_exc()) from err
        self.send(device_index, weights, version)

    def close(self) -> None:
        for device in self._devices:
            device.close()
        self._devices = []
        self._pending = {}


def _default_start_method() -> str:
    """``forkserver`` where the platform has it (fast, and no forked threads), else ``spawn``."""
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def serve_worker(connection: Connection, build: Callable[[], Any], handle: Callable[[Any, Any], tuple[str, Any]]) -> None:
    """Main loop of any device worker process: build the device, answer each request until told to close.

    Shared by DADRL's devices (:func:`run_device_worker`) and the synchronous baselines' round workers
    (:func:`dadrl_sb3.common.sync.run_round_worker`). The worker ignores ``SIGINT`` (Ctrl+C reaches the whole
    process group; the learner shuts the workers down itself), uses one PyTorch thread and skips
    ``torch.distributions``' per-step argument checks (the process only runs the device; sampling from
    non-finite logits still fails in ``torch.multinomial``). Any exception is sent back as traceback text.

    :param connection: The worker's end of its pipe to the learner; it receives ``(command, payload)`` pairs.
    :param build: Builds the device (an object with ``close()``), in this process.
    :param handle: Answers one request: ``handle(device, payload)`` returns the ``(kind, answer)`` pair to send.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    th.set_num_threads(1)
    th.distributions.Distribution.set_default_validate_args(False)
    device = None
    try:
        device = build()
        while True:
            command, payload = connection.recv()
            if command == "close":
                break
            connection.send(handle(device, payload))
    except (EOFError, BrokenPipeError):
        # The learner is gone: nobody to report to
        pass
    except Exception:
        with contextlib.suppress(OSError):
            connection.send(("error", traceback.format_exc()))
    finally:
        if device is not None:
            device.close()
        connection.close()


def run_device_worker(connection: Connection, config: DeviceConfig) -> None:
    """Main function of a DADRL device's worker process: one gradient message per ``("weights", (weights, version))``.

    :param connection: The worker's end of its pipe to the learner.
    :param config: How to build the device.
    """
    serve_worker(
        connection,
        lambda: Device(config),
        lambda device, payload: ("gradients", device.compute_gradients(*payload)),
    )


class SubprocessBackend(DeviceBackend):
    """Runs each device in its own worker process, connected to the learner by a pipe.

    Workers start with ``forkserver`` where available (else ``spawn``), so they inherit no threads and no
    state of the learner; the forkserver preloads this module so that starting a worker does not import
    PyTorch again. The learner waits on all pipes at once and serves devices in the order they report.

    A worker that ends without a traceback is noticed at once by the end of file on its pipe, or within
    ``poll_interval`` seconds by its exit; :meth:`receive` then raises :class:`DeviceLost` (after returning
    the messages of other devices that were already read) and :meth:`restart` starts a new worker.

    :param configs: One configuration per device.
    :param start_method: ``multiprocessing`` start method; ``None`` picks ``forkserver`` or ``spawn``.
    :param close_timeout: Seconds :meth:`close` waits for workers to exit before terminating them.
    :param poll_interval: Seconds between checks that no worker died silently while waiting for messages.
    """

    def __init__(
        self,
        configs: list[DeviceConfig],
        start_method: str | None = None,
        close_timeout: float = 5.0,
        poll_interval: float = 1.0,
    ) -> None:
        super().__init__(configs)
        self.start_method = _default_start_method() if start_method is None else start_method
        self.close_timeout = close_timeout
        self.poll_interval = poll_interval
        self._context: Any = None
        self._processes: list[BaseProcess] = []
        self._connections: list[Connection] = []
        self._open: set[int] = set()
        self._lost: list[DeviceLost] = []

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes if process.pid is not None]

    def start(self, weights: ParameterArrays, version: int) -> None:
        # Any: typeshed types only the contexts named by a literal start method
        self._context = mp.get_context(self.start_method)
        if self.start_method == "forkserver":
            # Has effect only if no forkserver runs yet in this process
            self._context.set_forkserver_preload([__name__])

        # One worker process and one duplex pipe per device
        for config in self.configs:
            process, connection = self._start_worker(config)
            self._processes.append(process)
            self._connections.append(connection)
            self._open.add(config.index)

        for index in range(self.n_devices):
            self.send(index, weights, version)

    def _start_worker(self, config: DeviceConfig) -> tuple[BaseProcess, Connection]:
        """Start one device's worker process; return it and the learner's end of its duplex pipe."""
        learner_end, device_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=run_device_worker, args=(device_end, config), name=f"dadrl-device-{config.index}", daemon=True
        )
        process.start()
        # The learner keeps only its own end, so that the pipe reports end of file when the worker dies
        device_end.close()
        return process, learner_end

    def _recv(self, index: int) -> Any:
        """Read one object from device ``index``'s pipe: everything a device sends comes through here."""
        return self._connections[index].recv()

    def _mark_lost(self, index: int, what: str) -> None:
        """Stop listening to device ``index``, whose worker ended without a traceback, and remember why."""
        self._open.discard(index)
        process = self._processes[index]
        process.join(timeout=1.0)
        exitcode = process.exitcode
        if exitcode is not None and exitcode < 0:
            with contextlib.suppress(ValueError):
                what += f", killed by {signal.Signals(-exitcode).name}"
        self._lost.append(DeviceLost(index, f"its worker process (pid {process.pid}) {what} (exit code {exitcode})"))

    def _read(self, index: int) -> GradientMessage | None:
        """Read one reply of device ``index``: its message, ``None`` if it was lost, or raise its error."""
        try:
            reply = self._recv(index)
        except (EOFError, OSError):
            self._mark_lost(index, "exited without a traceback")
            return None
        if not (isinstance(reply, tuple) and len(reply) == 2 and reply[0] in ("gradients", "error")):
            raise DeviceError(index, f"it sent an unexpected {type(reply).__name__} instead of a (kind, payload) pair")
        kind, payload = reply
        if kind == "error":
            raise DeviceError(index, payload)
        return payload

    def receive(self) -> list[tuple[int, GradientMessage]]:
        while True:
            # A device lost in an earlier call is reported once its neighbours' messages were served
            if self._lost:
                raise self._lost.pop(0)

            # Wait on every open pipe; wake up now and then to notice workers that died without a word
            open_indices = sorted(self._open)
            if not open_indices:
                raise RuntimeError("every device has stopped")
            ready = set(map(id, wait([self._connections[index] for index in open_indices], timeout=self.poll_interval)))
            messages = []
            for index in open_indices:
                if id(self._connections[index]) in ready:
                    message = self._read(index)
                    if message is not None:
                        messages.append((index, message))
            if messages:
                return messages

            # A worker that is dead with nothing left in its pipe failed silently (killed, out of memory)
            for index in sorted(self._open):
                if not self._processes[index].is_alive() and not self._connections[index].poll():
                    self._mark_lost(index, "died")

    def send(self, device_index: int, weights: ParameterArrays, version: int) -> None:
        # A worker that has ended reports its error (or death) at the next receive()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._connections[device_index].send(("weights", (weights, version)))

    def restart(self, device_index: int, weights: ParameterArrays, version: int, config: DeviceConfig | None = None) -> None:
        if self._context is None:
            raise RuntimeError("restart() called before start()")
        config = self._replace_config(device_index, config)

        # Release what is left of the old worker: its process handle and its pipe
        self._open.discard(device_index)
        self._lost = [lost for lost in self._lost if lost.device_index != device_index]
        old_process = self._processes[device_index]
        if old_process.is_alive():
            old_process.kill()
        old_process.join(timeout=1.0)
        if not old_process.is_alive():
            old_process.close()
        self._connections[device_index].close()

        # A new worker on the same configuration (hence the same user shard) starts from the current weights
        process, connection = self._start_worker(config)
        self._processes[device_index] = process
        self._connections[device_index] = connection
        self._open.add(device_index)
        self.send(device_index, weights, version)

    def close(self) -> None:
        # Ask every worker to stop
        for index in sorted(self._open):
            try:
                self._connections[index].send(("close", None))
            except OSError:
                self._open.discard(index)

        # Drain the pipes until workers exit: a worker may be blocked sending its last gradients
        deadline = time.monotonic() + self.close_timeout
        while self._any_alive() and time.monotonic() < deadline:
            waitables: list[Connection | int] = [self._connections[index] for index in sorted(self._open)]
            waitables += [process.sentinel for process in self._living_processes()]
            for ready in wait(waitables, timeout=max(deadline - time.monotonic(), 0.0)):
                if isinstance(ready, Connection):
                    index = next(index for index in self._open if self._connections[index] is ready)
                    try:
                        self._recv(index)
                    except (EOFError, OSError):
                        self._open.discard(index)

        # Whatever is still alive is terminated, then killed
        for process in self._living_processes():
            process.terminate()
            process.join(timeout=1.0)
            if process.is_alive():
                process.kill()
            process.join(timeout=1.0)

        # Release pipes and process handles
        for connection in self._connections:
            connection.close()
        for process in self._processes:
            with contextlib.suppress(ValueError):
                if not process.is_alive():
                    process.close()
        self._processes, self._connections, self._open, self._lost = [], [], set(), []

    def _living_processes(self) -> list[BaseProcess]:
        """The worker processes that have not ended (a closed handle counts as ended)."""
        living = []
        for process in self._processes:
            with contextlib.suppress(ValueError):
                if process.is_alive():
                    living.append(process)
        return living

    def _any_alive(self) -> bool:
        return bool(self._living_processes())


def _ray_backend_class() -> type[DeviceBackend]:
    """The Ray backend class, imported on first use because Ray is an optional dependency."""
    if importlib.util.find_spec("ray") is None:
        raise ImportError(
            'backend="ray" needs Ray, which is not installed: run pip install ".[ray]" in the repository '
            '(or pick backend="subprocess", which needs nothing more)'
        )
    module = importlib.import_module("dadrl_sb3.common.ray_backend")
    backend_class: type[DeviceBackend] = module.RayBackend
    return backend_class


def make_backend(name: str, configs: list[DeviceConfig], **backend_kwargs: Any) -> DeviceBackend:
    """Build the backend called ``name`` (one of :data:`BACKENDS`) for the given devices.

    :param name: ``"subprocess"``, ``"inline"`` or ``"ray"``.
    :param configs: One configuration per device.
    :param backend_kwargs: Keyword arguments of the backend's class (for example ``start_method`` of
        :class:`SubprocessBackend`, or ``address`` of the Ray backend).
    :raises ImportError: for ``"ray"`` when Ray is not installed (the message says how to install it).
    """
    if name == "subprocess":
        return SubprocessBackend(configs, **backend_kwargs)
    if name == "inline":
        return InlineBackend(configs, **backend_kwargs)
    if name == "ray":
        return _ray_backend_class()(configs, **backend_kwargs)
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
