"""DADRL's devices as Ray actors: on this machine, or spread over the nodes of an existing Ray cluster.

Each device is one Ray actor, a process that Ray schedules on any node with a free CPU. The actor builds
its :class:`~dadrl_sb3.common.devices.Device` from its :class:`~dadrl_sb3.common.devices.DeviceConfig`, so
the environment is rebuilt there from its spec with the device's user shard, and only that shard's data is
loaded on that node. The learner (policy, optimizer, validation of gradients) stays in the driver process,
the one that calls ``DADRL.learn()``.

What crosses the network (or, on one machine, Ray's shared-memory object store):

- once per device, at start: its :class:`~dadrl_sb3.common.devices.DeviceConfig` (Ray pickles it; the
  environment's entry point and the policy class travel by reference, so every node needs this package,
  the environment's package and the data at the same paths), and back the actor's process id and node id;
- learner to device, once per rollout: the global weights (a list of float32 NumPy arrays, put once into
  Ray's object store and shared by every device that gets the same version) and their version number;
- device to learner, once per rollout: ``("gradients", GradientMessage)`` (the gradients and scalar
  statistics, nothing else), or ``("error", traceback_text)``.

Requires Ray (``pip install "ray>=2.9,<3"``), which is imported only when a :class:`RayBackend` is built.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import math
import os
import sys
import time
import traceback
import warnings
from importlib.util import find_spec
from typing import Any

import numpy as np
import torch as th

from dadrl_sb3.common.backends import DeviceBackend, DeviceError, DeviceLost
from dadrl_sb3.common.devices import Device, DeviceConfig, GradientMessage, ParameterArrays
from recsys_gym.data.dataset import process_alive

#: Ray's switch that keeps a Ray started on this machine single-machine: with it at "0" Ray binds every
#: service to 127.0.0.1, without it Ray on Linux replaces 127.0.0.1 by the machine's routable address.
SINGLE_MACHINE_ENV_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

# A device's reply: ("gradients", GradientMessage) or ("error", traceback text)
DeviceReply = tuple[str, Any]


def _import_ray(start_on_this_machine: bool) -> Any:
    """Import Ray, first turning off its usage statistics and, if Ray will start here, keeping it on loopback.

    Both settings are environment variables that Ray reads once, when it is imported, and passes on to the
    processes it starts; variables the user set already are left alone.

    :param start_on_this_machine: Whether the caller may start a new Ray on this machine (rather than
        connect to an existing cluster, which a single-machine Ray could not do).
    :return: The ``ray`` module.
    """
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if start_on_this_machine:
            os.environ.setdefault(SINGLE_MACHINE_ENV_VAR, "0")
    import ray

    return ray


class DeviceActor:
    """What runs inside a device's Ray actor: one :class:`~dadrl_sb3.common.devices.Device`.

    Errors never escape as Ray exceptions: building the device or computing a rollout returns the device's
    own traceback text, so the learner raises the same :class:`~dadrl_sb3.common.backends.DeviceError` as
    with the other backends.

    :param config: How to build the device.
    :param n_threads: PyTorch threads of the actor's process.
    """

    def __init__(self, config: DeviceConfig, n_threads: int) -> None:
        th.set_num_threads(n_threads)
        # The actor's process only runs the device: skip torch.distributions' per-step argument checks
        th.distributions.Distribution.set_default_validate_args(False)
        self.device: Device | None = None
        self.build_error: str | None = None
        try:
            self.device = Device(config)
        except Exception:
            self.build_error = traceback.format_exc()

    def process_info(self) -> tuple[int, str]:
        """The actor's process id and the id of the Ray node it runs on."""
        import ray

        return os.getpid(), ray.get_runtime_context().get_node_id()

    def compute_gradients(self, weights: ParameterArrays, version: int) -> DeviceReply:
        """Run one rollout on ``weights`` and reply with its gradients, or with the traceback of the failure."""
        if self.device is None:
            return "error", self.build_error
        try:
            # Copy: arrays read from Ray's object store are read-only, and PyTorch warns when wrapping them
            writable = [np.array(array, copy=True) for array in weights]
            return "gradients", self.device.compute_gradients(writable, version)
        except Exception:
            return "error", traceback.format_exc()

    def close(self) -> None:
        """Close the device's environment."""
        if self.device is not None:
            self.device.close()
            self.device = None


class RayBackend(DeviceBackend):
    """Runs each device as a Ray actor; the learner stays in the calling (driver) process.

    :meth:`start` connects to Ray if this process is not connected yet: it starts a new Ray on this machine
    (``address=None``, the default; every Ray service then listens on 127.0.0.1 only and no dashboard
    runs) or joins the existing cluster at ``address``. It then creates one actor per device and hands each
    the first weights. :meth:`receive` waits (``ray.wait``) until at least one rollout is done; :meth:`send`
    launches the next rollout of a device. :meth:`close` closes each device's environment, kills the actors,
    waits until their processes on this machine have exited, and calls ``ray.shutdown()`` if (and only if)
    :meth:`start` called ``ray.init()``: a Ray the caller had started, or connected to, is left running.

    A device's exception reaches the learner as a :class:`~dadrl_sb3.common.backends.DeviceError` holding
    the device's own traceback. An actor that dies without one (its process killed, out of memory, its node
    lost) raises :class:`~dadrl_sb3.common.backends.DeviceLost` from :meth:`receive`, after the messages of
    other devices that were ready at the same time; :meth:`restart` then creates a new actor for it.

    Each actor asks Ray for ``num_cpus_per_device`` CPUs (default 1: a device runs one PyTorch thread flat
    out). The learner holds no Ray CPU, so two devices fit a Ray started on a 2-core machine, where the
    learner, which only applies gradients, shares the cores with them. Devices that find no free CPU wait for
    one. If the whole Ray has fewer CPUs than the devices need, a warning says so: on a cluster without
    autoscaling the devices that do not fit never start, and learning goes on with the others.

    Note: the backend imports Ray when it is built. If Ray is not imported yet, it first sets the environment
    variable ``RAY_USAGE_STATS_ENABLED=0`` and, when it may start Ray on this machine (``address=None`` and
    no ``RAY_ADDRESS``), ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's single-machine switch, which keeps
    every Ray service on loopback), unless they are set already. Without that switch Ray on Linux replaces
    127.0.0.1 by the machine's routable address; if Ray was imported earlier, the switch comes too late and
    a warning says so when the backend starts Ray. A process in which the backend set the switch cannot
    later connect to a Ray on another machine: use a fresh process for that.

    :param configs: One configuration per device; device ``i`` is ``configs[i]``.
    :param address: Address of an existing Ray cluster (``"host:port"`` or ``"auto"``), or ``None`` (default)
        to start a new Ray on this machine. Ignored (with a warning) if this process is already connected to
        Ray. ``None`` with the ``RAY_ADDRESS`` environment variable set joins that cluster, as ``ray.init`` does.
    :param num_cpus_per_device: CPUs that Ray reserves for each device actor (default 1.0): a fraction in
        (0, 1] or a whole number. The actor runs ``max(1, floor(num_cpus_per_device))`` PyTorch threads.
    :param close_timeout: Seconds :meth:`close` waits for devices to close their environments, then again
        for killed actor processes to exit (default 5.0).
    :param startup_timeout: Seconds :attr:`pids` waits for actors that are still starting (default 60.0).
    :param ray_init_kwargs: Further keyword arguments of ``ray.init`` (for example ``num_cpus`` or
        ``runtime_env``), used only if :meth:`start` calls it. Defaults added when starting Ray on this
        machine: ``include_dashboard=False``, ``_node_ip_address="127.0.0.1"``, ``logging_level="WARNING"``.
    """

    def __init__(
        self,
        configs: list[DeviceConfig],
        address: str | None = None,
        num_cpus_per_device: float = 1.0,
        close_timeout: float = 5.0,
        startup_timeout: float = 60.0,
        **ray_init_kwargs: Any,
    ) -> None:
        super().__init__(configs)
        if find_spec("ray") is None:
            raise ImportError('backend="ray" needs Ray, which is not installed: pip install "ray>=2.9,<3"')
        if not (0 < num_cpus_per_device <= 1 or (num_cpus_per_device > 1 and float(num_cpus_per_device).is_integer())):
            raise ValueError(
                f"num_cpus_per_device must be a fraction in (0, 1] or a whole number of CPUs, got {num_cpus_per_device!r}"
            )
        for name, seconds in (("close_timeout", close_timeout), ("startup_timeout", startup_timeout)):
            if not 0 <= seconds < math.inf:
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {seconds!r}")
        self.address = address
        self.num_cpus_per_device = num_cpus_per_device
        self.close_timeout = close_timeout
        self.startup_timeout = startup_timeout
        self.ray_init_kwargs = ray_init_kwargs
        self._ray = _import_ray(start_on_this_machine=address is None and "RAY_ADDRESS" not in os.environ)

        # Ray state of a started backend
        self._started_ray = False
        self._actor_class: Any = None
        self._actors: list[Any] = []
        self._info_refs: list[Any] = []
        self._in_flight: dict[Any, int] = {}
        self._process_infos: dict[int, tuple[int, str]] = {}
        self._lost: list[DeviceLost] = []

    @property
    def started_ray(self) -> bool:
        """Whether :meth:`start` called ``ray.init`` (so :meth:`close` will call ``ray.shutdown``)."""
        return self._started_ray

    @property
    def pids(self) -> list[int]:
        """Process ids of the device actors, in device order (on their own nodes, which may not be this one).

        Waits up to ``startup_timeout`` seconds for actors that are still starting; actors that have not
        answered by then (still starting, or died first) are left out.
        """
        return [pid for pid, _ in self._collect_process_infos(self.startup_timeout).values()]

    def _collect_process_infos(self, timeout: float) -> dict[int, tuple[int, str]]:
        """Process id and node id of every device actor that answers within ``timeout`` seconds, by device."""
        ray = self._ray
        missing = {ref: index for index, ref in enumerate(self._info_refs) if index not in self._process_infos}
        if missing and ray.is_initialized():
            ready, _ = ray.wait(list(missing), num_returns=len(missing), timeout=timeout)
            for ref in ready:
                # An actor that died before it could answer has no process left to report
                with contextlib.suppress(ray.exceptions.RayError):
                    self._process_infos[missing[ref]] = ray.get(ref)
        return dict(sorted(self._process_infos.items()))

    def start(self, weights: ParameterArrays, version: int) -> None:
        ray = self._ray

        # Connect to Ray: start one on this machine (loopback only), join address, or use this process' Ray
        if ray.is_initialized():
            if self.address is not None or self.ray_init_kwargs:
                warnings.warn(
                    "Ray is already initialized in this process, so RayBackend's address and ray.init arguments "
                    f"(address={self.address!r}, {sorted(self.ray_init_kwargs)}) are ignored: the devices run on the "
                    "Ray this process is connected to.",
                    UserWarning,
                    stacklevel=2,
                )
        else:
            init_kwargs = dict(self.ray_init_kwargs)
            init_kwargs.setdefault("include_dashboard", False)
            init_kwargs.setdefault("logging_level", "WARNING")
            if self.address is None:
                init_kwargs.setdefault("_node_ip_address", "127.0.0.1")
            ray.init(address=self.address, **init_kwargs)
            self._started_ray = True
            self._warn_if_reachable_from_network()

        # Warn if the devices cannot all run at once, even on an otherwise idle Ray
        wanted = self.n_devices * self.num_cpus_per_device
        available = ray.cluster_resources().get("CPU", 0.0)
        if wanted > available:
            warnings.warn(
                f"{self.n_devices} devices at num_cpus_per_device={self.num_cpus_per_device} need {wanted:g} CPUs, but "
                f"Ray has {available:g} in all: the devices that do not fit wait for CPUs and report nothing until then "
                "(on a cluster without autoscaling, never). Lower num_cpus_per_device or n_workers, or give Ray more CPUs.",
                UserWarning,
                stacklevel=2,
            )

        # One actor per device; each builds its device (environment and policy copy) in its own process
        self._actor_class = ray.remote(num_cpus=self.num_cpus_per_device, max_restarts=0)(DeviceActor)
        for config in self.configs:
            actor = self._new_actor(config)
            self._actors.append(actor)
            self._info_refs.append(actor.process_info.remote())

        # The first weights go into the object store once and are shared by every device
        weights_ref = ray.put(weights)
        for index, actor in enumerate(self._actors):
            self._in_flight[actor.compute_gradients.remote(weights_ref, version)] = index

    def _new_actor(self, config: DeviceConfig) -> Any:
        """Create the actor of one device (Ray builds it asynchronously) and return its handle."""
        return self._actor_class.remote(config, max(1, int(self.num_cpus_per_device)))

    def _warn_if_reachable_from_network(self) -> None:
        """Warn if the Ray just started on this machine listens on an address other than loopback."""
        if self.address is not None or "RAY_ADDRESS" in os.environ:
            return
        node_ip = self._ray.util.get_node_ip_address()
        if not ipaddress.ip_address(node_ip).is_loopback:
            warnings.warn(
                f"the Ray started by RayBackend listens on {node_ip}, which other machines may reach, because Ray was "
                f"imported before the backend could set {SINGLE_MACHINE_ENV_VAR}=0: set that variable before importing "
                "Ray, or let the backend import it, to keep Ray on loopback.",
                UserWarning,
                stacklevel=3,
            )

    def _read(self, ref: Any) -> tuple[int, GradientMessage] | None:
        """The message of a finished rollout, or ``None`` if the device's actor was lost; raise a device's error."""
        ray = self._ray
        index = self._in_flight.pop(ref)
        try:
            kind, payload = ray.get(ref)
        except ray.exceptions.RayActorError as err:
            # An actor that could not even be created would fail again; one that died (killed, out of memory,
            # node lost) can be restarted
            if getattr(err, "actor_init_failed", False):
                raise DeviceError(index, f"its Ray actor could not be created:\n{err}") from err
            self._lost.append(DeviceLost(index, f"its Ray actor died without a traceback:\n{err}"))
            return None
        except ray.exceptions.RayError as err:
            raise DeviceError(index, f"Ray failed to run its rollout:\n{err}") from err
        if kind == "error":
            raise DeviceError(index, payload)

        # Copy the gradients out of the object store: the learner gets writable arrays and Ray can free the object
        message: GradientMessage = payload
        gradients = [np.array(gradient, copy=True) for gradient in message.gradients]
        return index, dataclasses.replace(message, gradients=gradients)

    def receive(self) -> list[tuple[int, GradientMessage]]:
        ray = self._ray
        while True:
            # A device lost in an earlier call is reported once the other devices' messages were served
            if self._lost:
                raise self._lost.pop(0)
            if not self._in_flight:
                raise RuntimeError("no device is running a rollout: call send() after each message")

            # Block until one rollout is done, then take every other one that is done too
            in_flight = list(self._in_flight)
            ray.wait(in_flight, num_returns=1)
            ready, _ = ray.wait(in_flight, num_returns=len(in_flight), timeout=0)
            messages = [message for message in map(self._read, ready) if message is not None]
            if messages:
                return messages

    def send(self, device_index: int, weights: ParameterArrays, version: int) -> None:
        # ray.put copies the arrays now, so the learner may go on updating its tensors in place
        ref = self._actors[device_index].compute_gradients.remote(self._ray.put(weights), version)
        self._in_flight[ref] = device_index

    def restart(self, device_index: int, weights: ParameterArrays, version: int, config: DeviceConfig | None = None) -> None:
        ray = self._ray
        if self._actor_class is None:
            raise RuntimeError("restart() called before start()")
        config = self._replace_config(device_index, config)

        # Forget the old actor: its rollouts in flight, its loss report and its process; kill what may be left of it
        self._in_flight = {ref: index for ref, index in self._in_flight.items() if index != device_index}
        self._lost = [lost for lost in self._lost if lost.device_index != device_index]
        self._process_infos.pop(device_index, None)
        ray.kill(self._actors[device_index], no_restart=True)

        # A new actor on the same configuration (hence the same user shard) starts from the current weights
        actor = self._new_actor(config)
        self._actors[device_index] = actor
        self._info_refs[device_index] = actor.process_info.remote()
        self.send(device_index, weights, version)

    def close(self) -> None:
        ray = self._ray
        if self._actors and ray.is_initialized():
            # Ask each device that has started to close its environment, after the rollout it may be running
            started = self._collect_process_infos(0.0)
            closing = [self._actors[index].close.remote() for index in started]
            if closing:
                ray.wait(closing, num_returns=len(closing), timeout=self.close_timeout)

            # Kill the actors (also those still starting), then wait until those on this machine have exited
            this_node = ray.get_runtime_context().get_node_id()
            local_pids = [pid for pid, node in started.values() if node == this_node]
            for actor in self._actors:
                ray.kill(actor, no_restart=True)
            deadline = time.monotonic() + self.close_timeout
            while any(process_alive(pid) for pid in local_pids) and time.monotonic() < deadline:
                time.sleep(0.01)

        # Forget the actors; disconnect from (or stop) Ray only if start() connected to it
        self._actors, self._info_refs, self._in_flight, self._process_infos, self._lost = [], [], {}, {}, []
        self._actor_class = None
        if self._started_ray:
            self._started_ray = False
            if ray.is_initialized():
                ray.shutdown()
