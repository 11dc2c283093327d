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
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import time
import traceback
from abc import ABC, abstractmethod
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any

import numpy as np
import torch as th

from dadrl_sb3.common.devices import Device, DeviceConfig, GradientMessage, ParameterArrays

BACKENDS = ("subprocess", "inline")


class DeviceError(RuntimeError):
    """A device failed; the message holds the device's own traceback.

    :param device_index: Index of the device that failed.
    :param details: The device's traceback text, or what is known about its end.
    """

    def __init__(self, device_index: int, details: str) -> None:
        super().__init__(f"DADRL device {device_index} failed:\n{details}")
        self.device_index = device_index
        self.details = details


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

    def close(self) -> None:
        for device in self._devices:
            device.close()
        self._devices = []
        self._pending = {}


def _default_start_method() -> str:
    """``forkserver`` where the platform has it (fast, and no forked threads), else ``spawn``."""
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def run_device_worker(connection: Connection, config: DeviceConfig) -> None:
    """Main function of a device's worker process: serve rollouts until told to close.

    The worker ignores ``SIGINT`` (Ctrl+C reaches the whole process group; the learner shuts the workers
    down itself) and uses one PyTorch thread. Any exception is sent back as traceback text.

    :param connection: The worker's end of its pipe to the learner.
    :param config: How to build the device.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    th.set_num_threads(1)
    device = None
    try:
        device = Device(config)
        while True:
            command, payload = connection.recv()
            if command == "close":
                break
            weights, version = payload
            connection.send(("gradients", device.compute_gradients(weights, version)))
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


class SubprocessBackend(DeviceBackend):
    """Runs each device in its own worker process, connected to the learner by a pipe.

    Workers start with ``forkserver`` where available (else ``spawn``), so they inherit no threads and no
    state of the learner; the forkserver preloads this module so that starting a worker does not import
    PyTorch again. The learner waits on all pipes at once and serves devices in the order they report.

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
        self._processes: list[BaseProcess] = []
        self._connections: list[Connection] = []
        self._open: set[int] = set()

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes if process.pid is not None]

    def start(self, weights: ParameterArrays, version: int) -> None:
        # Any: typeshed types only the contexts named by a literal start method
        context: Any = mp.get_context(self.start_method)
        if self.start_method == "forkserver":
            # Has effect only if no forkserver runs yet in this process
            context.set_forkserver_preload([__name__])

        # One process and one duplex pipe per device; the learner keeps only its own end of each pipe
        for config in self.configs:
            learner_end, device_end = context.Pipe(duplex=True)
            process = context.Process(
                target=run_device_worker, args=(device_end, config), name=f"dadrl-device-{config.index}", daemon=True
            )
            self._connections.append(learner_end)
            self._open.add(config.index)
            process.start()
            self._processes.append(process)
            device_end.close()

        for index in range(self.n_devices):
            self.send(index, weights, version)

    def _read(self, index: int) -> tuple[int, GradientMessage]:
        """Read one reply of device ``index``; raise its error, or a :class:`DeviceError` if it died."""
        try:
            kind, payload = self._connections[index].recv()
        except EOFError as err:
            self._open.discard(index)
            self._processes[index].join(timeout=1.0)
            exitcode = self._processes[index].exitcode
            raise DeviceError(index, f"its worker process exited without a traceback (exit code {exitcode})") from err
        if kind == "error":
            raise DeviceError(index, payload)
        return index, payload

    def receive(self) -> list[tuple[int, GradientMessage]]:
        while True:
            # Wait on every open pipe; wake up now and then to notice workers that died without a word
            connections = [self._connections[index] for index in sorted(self._open)]
            if not connections:
                raise RuntimeError("every device has stopped")
            ready = wait(connections, timeout=self.poll_interval)
            messages = [self._read(self._connections.index(conn)) for conn in ready]  # type: ignore[arg-type]
            if messages:
                return messages

            # A worker that is dead with nothing left in its pipe failed silently (killed, out of memory)
            for index in sorted(self._open):
                if not self._processes[index].is_alive() and not self._connections[index].poll():
                    exitcode = self._processes[index].exitcode
                    raise DeviceError(index, f"its worker process died (exit code {exitcode})")

    def send(self, device_index: int, weights: ParameterArrays, version: int) -> None:
        # A worker that has ended reports its error (or death) at the next receive()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._connections[device_index].send(("weights", (weights, version)))

    def close(self) -> None:
        # Ask every worker to stop
        for index in sorted(self._open):
            try:
                self._connections[index].send(("close", None))
            except OSError:
                self._open.discard(index)

        # Drain the pipes until workers exit: a worker may be blocked sending its last gradients
        deadline = time.monotonic() + self.close_timeout
        while any(process.is_alive() for process in self._processes) and time.monotonic() < deadline:
            waitables: list[Connection | int] = [self._connections[index] for index in sorted(self._open)]
            waitables += [process.sentinel for process in self._processes if process.is_alive()]
            for ready in wait(waitables, timeout=max(deadline - time.monotonic(), 0.0)):
                if isinstance(ready, Connection):
                    try:
                        ready.recv()
                    except (EOFError, OSError):
                        self._open.discard(self._connections.index(ready))

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
        self._processes, self._connections, self._open = [], [], set()


def make_backend(name: str, configs: list[DeviceConfig]) -> DeviceBackend:
    """Build the backend called ``name`` (one of :data:`BACKENDS`) for the given devices."""
    if name == "subprocess":
        return SubprocessBackend(configs)
    if name == "inline":
        return InlineBackend(configs)
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
