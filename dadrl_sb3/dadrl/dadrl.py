"""DADRL: distributed asynchronous advantage actor-critic with gradients computed on the users' devices."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec, load_env_creator
from stable_baselines3.common.base_class import BaseAlgorithm, maybe_make_env
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import safe_mean, update_learning_rate
from stable_baselines3.common.vec_env import VecEnvWrapper

from dadrl_sb3.common.backends import (
    BACKENDS,
    DeviceBackend,
    DeviceError,
    DeviceLost,
    InlineBackend,
    SubprocessBackend,
    make_backend,
)
from dadrl_sb3.common.devices import DeviceConfig, GradientMessage, ParameterArrays
from dadrl_sb3.dadrl.policies import CandidatePolicy, MlpPolicy, MultiInputPolicy

SelfDADRL = TypeVar("SelfDADRL", bound="DADRL")

# SB3's Monitor is not rebuilt in devices: a device counts its episodes itself
_MONITOR_ENTRY_POINT = "stable_baselines3.common.monitor:Monitor"

STALENESS_WEIGHTINGS = ("none", "polynomial")
LARGE_NORM_ACTIONS = ("clip", "reject")


def gradient_norm(gradients: Sequence[np.ndarray]) -> float:
    """Global L2 norm of a list of gradient arrays, summed in float64 (so that large float32 values do not overflow)."""
    return math.sqrt(sum(float(np.square(gradient, dtype=np.float64).sum()) for gradient in gradients))


def validate_gradients(gradients: Sequence[Any], parameters: Sequence[th.Tensor], max_norm: float | None = None) -> str | None:
    """Say why a device's gradients cannot be applied to ``parameters``, or return ``None`` if they can.

    Gradients are accepted when there is one floating-point NumPy array per parameter, of the
    parameter's shape, with only finite values, and (if ``max_norm`` is given) a global L2 norm of at
    most ``max_norm``.

    :param gradients: The gradients of a :class:`~dadrl_sb3.common.devices.GradientMessage`.
    :param parameters: The learner's ``policy.parameters()``, as a sequence.
    :param max_norm: Largest accepted global L2 norm; ``None`` (default) accepts any norm.
    :return: The reason for rejection, or ``None``.
    """
    if not isinstance(gradients, list | tuple):
        return f"gradients must be a list of arrays, got {type(gradients).__name__}"
    if len(gradients) != len(parameters):
        return f"expected {len(parameters)} gradient arrays, got {len(gradients)}"
    for index, (gradient, param) in enumerate(zip(gradients, parameters, strict=True)):
        if not isinstance(gradient, np.ndarray) or not np.issubdtype(gradient.dtype, np.floating):
            return f"gradient {index} is not a floating-point NumPy array (got {type(gradient).__name__})"
        if gradient.shape != tuple(param.shape):
            return f"gradient {index} has shape {gradient.shape}, its parameter has shape {tuple(param.shape)}"
        if not np.isfinite(gradient).all():
            return f"gradient {index} holds non-finite values"
    if max_norm is not None:
        norm = gradient_norm(gradients)
        if norm > max_norm:
            return f"gradient norm {norm:.6g} is above max_message_norm={max_norm}"
    return None


def validate_statistics(message: GradientMessage) -> str | None:
    """Say why the scalar statistics of a device's message cannot be trusted, or return ``None`` if they can.

    They are trusted when ``n_steps`` is a positive integer, the three episode lists have one number per
    episode ended in the rollout (each at a distinct step of it), the losses are finite numbers and
    ``0 <= clicks <= impressions <= n_steps``.

    :param message: A device's message.
    :return: The reason for rejection, or ``None``.
    """
    n_steps = message.n_steps
    if not _is_integer(n_steps) or n_steps < 1:
        return f"n_steps={n_steps!r} is not a positive integer"
    episode_lists = (message.episode_returns, message.episode_lengths, message.episode_ends)
    if not all(isinstance(values, list) for values in episode_lists) or len({len(values) for values in episode_lists}) != 1:
        return "episode_returns, episode_lengths and episode_ends are not lists of the same length"
    ends = message.episode_ends
    if not all(_is_integer(end) and 0 <= end < n_steps for end in ends) or len(set(ends)) != len(ends):
        return f"episode_ends={ends!r} are not distinct steps of a {n_steps}-step rollout"
    numbers = [
        *message.episode_returns,
        *message.episode_lengths,
        message.policy_loss,
        message.value_loss,
        message.entropy_loss,
    ]
    if not all(isinstance(value, int | float | np.number) and math.isfinite(value) for value in numbers):
        return "the episode statistics or losses hold something other than finite numbers"
    clicks, impressions = message.clicks, message.impressions
    if not (_is_integer(clicks) and _is_integer(impressions) and 0 <= clicks <= impressions <= n_steps):
        return f"clicks={clicks!r} and impressions={impressions!r} do not satisfy 0 <= clicks <= impressions <= n_steps"
    return None


def staleness_weight(staleness: int, weighting: str, power: float) -> float:
    """Factor of the step size of an update computed ``staleness`` versions ago.

    :param staleness: Current version minus the version the gradients were computed on (>= 0).
    :param weighting: ``"none"`` (always 1) or ``"polynomial"`` (``(1 + staleness) ** -power``).
    :param power: Exponent of the polynomial weighting.
    :return: The factor, in (0, 1].
    """
    if weighting == "none":
        return 1.0
    if weighting == "polynomial":
        return float((1 + staleness) ** -power)
    raise ValueError(f"staleness_weighting must be one of {STALENESS_WEIGHTINGS}, got {weighting!r}")


@dataclasses.dataclass
class _LogWindow:
    """Sums over the messages received since the last log dump."""

    n_applied: int = 0
    policy_loss: float = 0.0
    value_loss: float = 0.0
    entropy_loss: float = 0.0
    # Staleness of every message that passed validation, applied or dropped as too stale
    n_staleness: int = 0
    staleness: int = 0
    staleness_max: int = 0
    clicks: int = 0
    impressions: int = 0


class DADRL(BaseAlgorithm):
    """
    Distributed Asynchronous Deep Reinforcement Learning (DADRL): A3C crossed with federated learning.

    Paper: Shi et al., "A Distributed Asynchronous Deep Reinforcement Learning Framework for Recommender
    Systems", RecSys 2020, https://doi.org/10.1145/3383313 (journal version "DARES", IEEE Access 9, 2021,
    https://doi.org/10.1109/ACCESS.2021.3087406).

    Each of ``n_workers`` devices owns a disjoint shard of users: it rebuilds the environment from the
    training env's spec with ``shard_kwarg=(index, n_workers)``, pulls the global weights and their
    version, runs ``n_steps`` steps with its local copy of the policy, computes the advantage actor-critic
    loss (n-step or GAE returns) and sends back only the gradients, the version they were computed on and
    scalar statistics. The learner takes each message as it arrives and, in this order:

    1. validates it: sound scalar statistics (:func:`validate_statistics`), one finite floating-point array per
       parameter, of the parameter's shape (:func:`validate_gradients`), computed on a version it served; else
       the message is rejected (``train/rejected``), and if its statistics were unsound its steps are not counted;
    2. bounds its norm, if ``max_message_norm`` is set: a larger gradient is rejected
       (``on_large_norm="reject"``, counted in ``train/rejected``) or scaled down to that norm
       (``on_large_norm="clip"``, counted in ``train/clipped``);
    3. measures its staleness (current version minus the message's version; ``train/staleness_mean`` and
       ``train/staleness_max``) and drops it if that is above ``max_staleness`` (``train/dropped_stale``);
    4. clips its global norm to ``max_grad_norm`` and steps the policy's optimizer, with the step size
       weighted by ``staleness_weighting``: this makes the next version.

    Whatever happened to its message, the device is sent the current weights for its next rollout, and its
    environment steps count towards ``total_timesteps``. A device whose worker process dies without a
    traceback (killed, out of memory) is restarted on the same user shard with the current weights, at most
    ``max_restarts`` times per device and ``learn()`` call (``train/restarts``); an exception inside a device
    ends ``learn()`` with a :class:`~dadrl_sb3.common.backends.DeviceError` carrying the device's traceback.
    ``learn()`` never leaves a worker behind, also when interrupted (Ctrl+C): the model then holds the last
    applied update and can be saved. An update is applied whole or not at all (Ctrl+C waits for it).

    Staleness weighting follows staleness-aware asynchronous SGD (Zhang, Gupta, Lian and Liu, "Staleness-aware
    Async-SGD for Distributed Deep Learning", IJCAI 2016, https://arxiv.org/abs/1511.05950), which divides the
    learning rate by the staleness; ``staleness_weighting="polynomial"`` multiplies it by
    ``(1 + staleness) ** -staleness_power`` (``staleness_power=1`` is their rule, counting a fresh gradient as
    staleness 1). The factor scales the step size of that one update rather than the gradient: with SGD the
    two are the same, but RMSprop and Adam divide by a running average of squared gradients, which would
    undo a gradient scale that stays steady (as it does when every device lags by the same amount).

    Returns are bootstrapped from the value of the next observation only where the episode did not end: at
    the end of a rollout that stopped mid-episode, and at a truncation (``truncated`` without
    ``terminated``, e.g. ``max_episode_steps``), from the final observation of that episode. A terminated
    episode is never bootstrapped across.

    This subclasses ``BaseAlgorithm`` rather than ``OnPolicyAlgorithm`` because the learner has no rollout
    buffer and no ``collect_rollouts``: devices collect and differentiate, the learner only applies gradients.

    Note: deviations from the paper and limits of this implementation:

    - A device is a worker process serving a shard of many users one episode after another, not one
      user's phone; a rollout is ``n_steps`` steps, which may span episodes, not one whole session.
    - The paper applies every gradient as it arrives; staleness weighting, ``max_staleness`` and the norm
      bound are additions of this implementation, all off by default (``max_grad_norm`` clipping, as in
      SB3's A2C, is on).
    - Privacy: raw interactions never leave a device, but a rollout's gradient can reveal that rollout's
      inputs (gradient inversion) and two consecutive global versions differ by one device's update.
      ``max_message_norm`` bounds each device's influence on one update, but no noise is added and there is
      no privacy accounting: no formal (differential privacy) guarantee is given. A device that fails sends
      its traceback text, which holds whatever its exception message says.
    - The learner's own copy of ``env`` serves its spaces and spec (SB3 resets it at the start of
      ``learn()``); it is never stepped.
    - Only ``Box``, ``Discrete``, ``MultiDiscrete`` and ``MultiBinary`` action spaces; no gSDE.
    - With ``backend="subprocess"`` workers start with ``forkserver`` or ``spawn``, which import the main
      module again: scripts must guard their entry point with ``if __name__ == "__main__":``, and the
      environment, policy and wrappers must be importable (not defined in an interactive session).

    Extra policies can be registered by name: ``DADRL.policy_aliases["MyPolicy"] = MyPolicy`` (any
    subclass of SB3's ``ActorCriticPolicy``).

    :param policy: The policy model to use (``"MlpPolicy"``, ``"MultiInputPolicy"``, ``"CandidatePolicy"`` or a
        registered alias), or an ``ActorCriticPolicy`` subclass.
    :param env: The environment to learn from (if registered in Gymnasium, can be str). It must have a spec
        (be made with ``gymnasium.make``), because each device rebuilds it from that spec.
    :param learning_rate: Learning rate of the learner's optimizer (default 7e-4), or a function of the
        progress remaining (from 1 to 0).
    :param n_workers: Number of devices (default 2); one worker process each with ``backend="subprocess"``.
    :param n_steps: Environment steps per device rollout, i.e. per gradient sent (default 5, the t_max of A3C
        in Mnih et al. 2016); with ``envs_per_device > 1``, steps of each of the device's environments.
    :param envs_per_device: Sessions of its own user shard that each device runs side by side (default 1).
        Device ``i`` steps ``envs_per_device`` copies of its environment (seeded ``seed_i``, ``seed_i + 1``,
        ...), with one batched forward pass per step as SB3's A2C does for a vectorized environment, computes
        returns per environment (the bootstrapping rules below hold for each) and sends one gradient for the
        whole ``n_steps * envs_per_device`` steps. Larger values mean fewer, larger messages, so that the
        learner applying them is less of a bottleneck.
    :param gamma: Discount factor, in (0, 1] (default 0.99).
    :param gae_lambda: Factor of the generalized advantage estimator, in [0, 1] (default 1.0, which gives
        the n-step returns of A3C).
    :param ent_coef: Weight of the entropy bonus in the loss (default 0.01, as in A3C).
    :param vf_coef: Weight of the value loss in the loss (default 0.5).
    :param max_grad_norm: Maximum global L2 norm of each device's gradient, clipped by the learner before the
        optimizer step (default 0.5, as SB3's A2C); not counted in ``train/clipped``.
    :param use_rms_prop: Optimizer of the learner, as in SB3's A2C: True (default) for RMSprop (alpha=0.99,
        as A3C), False for Adam (SB3's default for actor-critic policies, eps=1e-5). Ignored if
        ``policy_kwargs`` names an ``optimizer_class``.
    :param rms_prop_eps: Epsilon of RMSprop, which stabilizes its denominator (default 1e-5).
    :param staleness_weighting: How an update's step size depends on the staleness of its gradients:
        ``"none"`` (default, the paper: every update at the full learning rate) or ``"polynomial"``
        (multiplied by ``(1 + staleness) ** -staleness_power``).
    :param staleness_power: Exponent of the polynomial staleness weighting, >= 0 (default 0.5; 1 is the
        rule of Zhang et al. 2016).
    :param max_staleness: Largest accepted staleness, in versions (>= 0); older gradients are dropped and
        counted in ``train/dropped_stale`` (default None: none dropped).
    :param max_message_norm: Bound on the global L2 norm of a device's raw gradients, checked before
        ``max_grad_norm`` clipping (> 0; default None: no bound).
    :param on_large_norm: What to do with gradients above ``max_message_norm``: ``"clip"`` (default; scale
        them down to that norm, counted in ``train/clipped``) or ``"reject"`` (drop them, counted in
        ``train/rejected``).
    :param backend: Where devices run: ``"subprocess"`` (default; one worker process per device, connected
        by pipes), ``"inline"`` (in this process, round-robin, bit-reproducible under a seed; for tests and
        debugging) or ``"ray"`` (Ray actors, for more than one machine; needs ``pip install ".[ray]"``).
    :param backend_kwargs: Keyword arguments of the backend's class (default None), e.g.
        ``{"address": "auto"}`` to join a running Ray cluster, or ``{"close_timeout": 10.0}`` for
        ``"subprocess"`` (see :class:`~dadrl_sb3.common.backends.SubprocessBackend`).
    :param max_restarts: Restarts allowed per device and ``learn()`` call when its worker dies without a
        traceback, >= 0 (default 3); one more death ends ``learn()`` with a ``DeviceError``.
    :param shard_kwarg: Name of the environment keyword argument that receives a device's user shard
        ``(index, n_workers)`` (default ``"user_shard"``, as ``OutbrainRec-v0`` takes). ``None`` passes no
        shard: every device then sees every user (for environments without users, such as CartPole).
    :param stats_window_size: Number of episodes averaged in ``rollout/ep_rew_mean`` and
        ``rollout/ep_len_mean`` (default 100).
    :param tensorboard_log: Directory of the TensorBoard log (default None: no TensorBoard).
    :param policy_kwargs: Additional arguments passed to the policy on creation (default None).
    :param verbose: Verbosity level: 0 no output, 1 info (the log table, device restarts), 2 debug (also every
        rejected or dropped message) (default 0).
    :param seed: Seed of the learner's random generators; device ``i`` is seeded with
        ``seed + i * envs_per_device`` in the first ``learn()`` call and with fresh offsets in later ones and
        on restarts (default None).
    :param device: PyTorch device of the learner (default ``"cpu"``); devices always run on the CPU.
    :param _init_setup_model: Whether to build the network at creation (SB3's ``load`` passes False).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "MultiInputPolicy": MultiInputPolicy,
        "CandidatePolicy": CandidatePolicy,
    }
    policy: ActorCriticPolicy

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
        staleness_weighting: str = "none",
        staleness_power: float = 0.5,
        max_staleness: int | None = None,
        max_message_norm: float | None = None,
        on_large_norm: str = "clip",
        backend: str = "subprocess",
        backend_kwargs: dict[str, Any] | None = None,
        max_restarts: int = 3,
        shard_kwarg: str | None = "user_shard",
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "cpu",
        _init_setup_model: bool = True,
        envs_per_device: int = 1,
    ) -> None:
        _check_arguments(
            learning_rate=learning_rate,
            n_workers=n_workers,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            rms_prop_eps=rms_prop_eps,
            staleness_weighting=staleness_weighting,
            staleness_power=staleness_power,
            max_staleness=max_staleness,
            max_message_norm=max_message_norm,
            on_large_norm=on_large_norm,
            backend=backend,
            backend_kwargs=backend_kwargs,
            max_restarts=max_restarts,
            shard_kwarg=shard_kwarg,
            stats_window_size=stats_window_size,
            envs_per_device=envs_per_device,
        )

        # SB3 refuses "MlpPolicy" with Dict observations on its own, but without naming the space
        if env is not None:
            env = maybe_make_env(env, verbose)
            if policy == "MlpPolicy" and isinstance(env.observation_space, spaces.Dict):
                raise ValueError(
                    f"policy='MlpPolicy' needs a flat observation space, but the environment's is {env.observation_space}: "
                    "use policy='MultiInputPolicy' (or 'CandidatePolicy' for candidate sets)"
                )

        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            # A copy: the optimizer chosen below must not leak into the caller's dict
            policy_kwargs=None if policy_kwargs is None else dict(policy_kwargs),
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            support_multi_env=False,
            monitor_wrapper=False,
            seed=seed,
            supported_action_spaces=(spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary),
        )
        self.n_workers = n_workers
        self.n_steps = n_steps
        self.envs_per_device = envs_per_device
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self.ent_coef = ent_coef
        self.vf_coef = vf_coef
        self.max_grad_norm = max_grad_norm
        self.use_rms_prop = use_rms_prop
        self.rms_prop_eps = rms_prop_eps
        self.staleness_weighting = staleness_weighting
        self.staleness_power = staleness_power
        self.max_staleness = max_staleness
        self.max_message_norm = max_message_norm
        self.on_large_norm = on_large_norm
        self.backend = backend
        self.backend_kwargs = {} if backend_kwargs is None else dict(backend_kwargs)
        self.max_restarts = max_restarts
        self.shard_kwarg = shard_kwarg

        # Learner state that is not saved: the running backend and the statistics since the last log dump
        self._backend: DeviceBackend | None = None
        self._log_window = _LogWindow()

        # Saved with the model: where the next devices' seeds start, and counters over the model's life
        self._device_seed_offset = 0
        self._n_rejected = 0
        self._n_clipped = 0
        self._n_dropped_stale = 0
        self._n_restarts = 0

        # RMSprop as in A3C unless the user chose an optimizer (use_rms_prop=False keeps the policy's Adam)
        if use_rms_prop and "optimizer_class" not in self.policy_kwargs:
            self.policy_kwargs["optimizer_class"] = th.optim.RMSprop
            # foreach: one fused update over all tensors; the learner's per-message cost is mostly Python per tensor
            self.policy_kwargs["optimizer_kwargs"] = {"alpha": 0.99, "eps": rms_prop_eps, "weight_decay": 0, "foreach": True}

        if backend == "subprocess" and n_workers > (os.cpu_count() or 1):
            warnings.warn(
                f"n_workers={n_workers} is more than the {os.cpu_count()} CPU cores of this machine: devices will "
                "share cores, so each one reports less often and its gradients are staler.",
                UserWarning,
                stacklevel=2,
            )

        if _init_setup_model:
            if self.env is not None:
                self._device_env_spec()
            self._setup_model()

    @property
    def version(self) -> int:
        """Version of the global weights: the number of device updates applied so far."""
        return self._n_updates

    @property
    def device_pids(self) -> list[int]:
        """Process ids of the devices' worker processes while ``learn()`` runs (else, or inline, empty)."""
        return [] if self._backend is None else self._backend.pids

    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        try:
            policy = self.policy_class(self.observation_space, self.action_space, self.lr_schedule, **self.policy_kwargs)
        except (ValueError, TypeError, KeyError, AssertionError) as err:
            aliases = [alias for alias, policy_class in self.policy_aliases.items() if policy_class is self.policy_class]
            name = aliases[0] if aliases else self.policy_class.__name__
            raise ValueError(
                f"policy={name!r} cannot be built for the observation space {self.observation_space} and action space "
                f"{self.action_space} with policy_kwargs={self.policy_kwargs}: {err}"
            ) from err
        self.policy = policy.to(self.device)  # type: ignore[assignment]

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_backend", "_log_window"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "policy.optimizer"], []

    def _device_env_spec(self) -> EnvSpec:
        """The spec devices rebuild the training environment from; raises ``ValueError`` if there is none."""
        if self.env is None:
            raise ValueError("DADRL needs an environment to learn from: pass env= to DADRL.load() or call set_env()")
        if isinstance(self.env, VecEnvWrapper):
            raise ValueError(
                f"env is wrapped in {type(self.env).__name__}, which devices cannot rebuild: pass the Gymnasium "
                "environment itself (VecEnv wrappers such as VecNormalize are not supported by DADRL)"
            )
        spec = self.env.get_attr("spec", indices=[0])[0]
        if spec is None:
            raise ValueError(
                "env has no spec, so devices cannot rebuild it in their worker processes: register it with "
                "gymnasium.register() and create it with gymnasium.make()"
            )

        # Gymnasium wrappers are rebuilt from their recorded arguments; SB3's Monitor is left out
        wrappers = tuple(wrapper for wrapper in spec.additional_wrappers if wrapper.entry_point != _MONITOR_ENTRY_POINT)
        unrebuildable = [wrapper.name for wrapper in wrappers if wrapper.kwargs is None]
        if unrebuildable:
            raise ValueError(
                f"env is wrapped in {unrebuildable}, which devices cannot rebuild: make these wrappers inherit "
                "gymnasium.utils.RecordConstructorArgs, or register an environment that applies them itself"
            )
        spec = dataclasses.replace(spec, additional_wrappers=wrappers)

        # The environment must accept the shard keyword, else every device would fail at start
        if self.shard_kwarg is not None and not _accepts_keyword(spec, self.shard_kwarg):
            raise ValueError(
                f"shard_kwarg={self.shard_kwarg!r}, but environment {spec.id!r} takes no such keyword argument: "
                "pass shard_kwarg=None for environments without users (every device then sees every user)"
            )
        return spec

    def _device_configs(self) -> list[DeviceConfig]:
        """One configuration per device for the next ``learn()`` call, each with its own user shard and seed."""
        env_spec = self._device_env_spec()
        seed_offset = self._device_seed_offset
        self._device_seed_offset += self.n_workers
        configs = []
        for index in range(self.n_workers):
            # Devices never render; each gets its shard of users
            env_kwargs = {key: value for key, value in env_spec.kwargs.items() if key != "render_mode"}
            if self.shard_kwarg is not None:
                env_kwargs[self.shard_kwarg] = (index, self.n_workers)
            configs.append(
                DeviceConfig(
                    index=index,
                    env_spec=dataclasses.replace(env_spec, kwargs=env_kwargs),
                    policy_class=self.policy_class,
                    policy_kwargs=dict(self.policy_kwargs),
                    observation_space=self.observation_space,
                    action_space=self.action_space,
                    n_steps=self.n_steps,
                    gamma=self.gamma,
                    gae_lambda=self.gae_lambda,
                    ent_coef=self.ent_coef,
                    vf_coef=self.vf_coef,
                    seed=self._device_seed(seed_offset + index),
                    n_envs=self.envs_per_device,
                )
            )
        return configs

    def _device_seed(self, offset: int) -> int | None:
        """Seed of a device's first environment, spaced so that no two environments of any devices share one."""
        return None if self.seed is None else self.seed + offset * self.envs_per_device

    def _weights(self) -> ParameterArrays:
        """The global weights as one float32 array per tensor of ``policy.parameters()``."""
        return [param.detach().cpu().numpy() for param in self.policy.parameters()]

    def _not_applied(self, reason: str, stale: bool = False) -> bool:
        """Count a message that is not applied (rejected, or dropped as too stale), say why if ``verbose >= 2``."""
        if stale:
            self._n_dropped_stale += 1
        else:
            self._n_rejected += 1
        if self.verbose >= 2:
            print(f"DADRL: {'dropped a stale' if stale else 'rejected a'} device message: {reason}")
        return False

    def _apply_gradients(self, message: GradientMessage) -> bool:
        """Validate a device's message and, if it passes, weigh its gradients by staleness, clip them and step the optimizer.

        :param message: The device's message.
        :return: Whether the gradients were applied (a message that is not is counted in ``train/rejected`` or
            ``train/dropped_stale``).
        """
        # Integrity: sound statistics, gradients of the right shapes, finite, computed on a version that was served
        parameters = list(self.policy.parameters())
        if not isinstance(message, GradientMessage):
            return self._not_applied(f"expected a GradientMessage, got {type(message).__name__}")
        reason = validate_statistics(message) or validate_gradients(message.gradients, parameters)
        version = message.version
        served = isinstance(version, int | np.integer) and not isinstance(version, bool) and 0 <= version <= self.version
        if reason is None and not served:
            reason = f"version {version!r} was never served (current version {self.version})"
        if reason is not None:
            return self._not_applied(reason)

        # Norm bound: reject, or note the scale that brings the gradients down to it
        scale = 1.0
        if self.max_message_norm is not None:
            norm = gradient_norm(message.gradients)
            if norm > self.max_message_norm:
                if self.on_large_norm == "reject":
                    return self._not_applied(f"gradient norm {norm:.6g} is above max_message_norm={self.max_message_norm}")
                scale = self.max_message_norm / norm

        # Staleness: measured for every valid message, too stale ones are dropped
        staleness = self.version - int(version)
        window = self._log_window
        window.n_staleness += 1
        window.staleness += staleness
        window.staleness_max = max(window.staleness_max, staleness)
        if self.max_staleness is not None and staleness > self.max_staleness:
            return self._not_applied(f"staleness {staleness} is above max_staleness={self.max_staleness}", stale=True)
        if scale < 1.0:
            self._n_clipped += 1

        # Write the gradients into the parameters and clip their global norm
        for param, gradient in zip(parameters, message.gradients, strict=True):
            param.grad = th.as_tensor(gradient, dtype=param.dtype, device=param.device)
            if scale < 1.0:
                param.grad.mul_(scale)
        th.nn.utils.clip_grad_norm_(parameters, self.max_grad_norm)

        # One optimizer step at the scheduled learning rate, weighted by staleness, makes the next version
        if self._total_timesteps > 0:
            self._update_current_progress_remaining(self.num_timesteps, self._total_timesteps)
        weight = staleness_weight(staleness, self.staleness_weighting, self.staleness_power)
        update_learning_rate(self.policy.optimizer, self.lr_schedule(self._current_progress_remaining) * weight)
        self.policy.optimizer.step()
        self.policy.optimizer.zero_grad(set_to_none=True)
        self._n_updates += 1

        window.n_applied += 1
        window.policy_loss += message.policy_loss
        window.value_loss += message.value_loss
        window.entropy_loss += message.entropy_loss
        return True

    def _account_steps(self, message: GradientMessage, callback: BaseCallback) -> bool:
        """Count a message's environment steps one by one, giving callbacks Monitor-style episode infos.

        :return: False if a callback asked to stop training.
        """
        self._log_window.clicks += message.clicks
        self._log_window.impressions += message.impressions
        episodes = {
            end: (episode_return, length)
            for end, episode_return, length in zip(
                message.episode_ends, message.episode_returns, message.episode_lengths, strict=True
            )
        }
        elapsed = (time.time_ns() - self.start_time) / 1e9

        callback.on_rollout_start()
        for step in range(message.n_steps):
            self.num_timesteps += 1
            infos: list[dict[str, Any]] = [{}]
            if step in episodes:
                episode_return, length = episodes[step]
                infos = [{"episode": {"r": episode_return, "l": length, "t": round(elapsed, 6)}}]
                self._episode_num += 1
            dones = np.array([step in episodes])
            callback.update_locals({"infos": infos, "dones": dones})
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
        callback.on_rollout_end()
        return True

    def dump_logs(self) -> None:
        """Record the statistics since the last dump through ``self.logger`` and write them."""
        assert self.ep_info_buffer is not None
        window = self._log_window
        time_elapsed = max((time.time_ns() - self.start_time) / 1e9, sys.float_info.epsilon)
        fps = int((self.num_timesteps - self._num_timesteps_at_start) / time_elapsed)

        if len(self.ep_info_buffer) > 0:
            self.logger.record("rollout/ep_rew_mean", safe_mean([info["r"] for info in self.ep_info_buffer]))
            self.logger.record("rollout/ep_len_mean", safe_mean([info["l"] for info in self.ep_info_buffer]))
        if window.impressions > 0:
            self.logger.record("rollout/ctr", window.clicks / window.impressions)
        if window.n_applied > 0:
            self.logger.record("train/policy_loss", window.policy_loss / window.n_applied)
            self.logger.record("train/value_loss", window.value_loss / window.n_applied)
            self.logger.record("train/entropy_loss", window.entropy_loss / window.n_applied)
        # Learners that apply updates without measuring staleness (the synchronous subclasses) log 0
        n_measured = window.n_staleness or window.n_applied
        if n_measured > 0:
            self.logger.record("train/staleness_mean", window.staleness / n_measured)
            self.logger.record("train/staleness_max", window.staleness_max)
        self.logger.record("train/rejected", self._n_rejected)
        self.logger.record("train/clipped", self._n_clipped)
        self.logger.record("train/dropped_stale", self._n_dropped_stale)
        self.logger.record("train/restarts", self._n_restarts)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/learning_rate", self.lr_schedule(self._current_progress_remaining))
        self.logger.record("time/fps", fps)
        self.logger.record("time/time_elapsed", int(time_elapsed), exclude="tensorboard")
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.dump(step=self.num_timesteps)
        self._log_window = _LogWindow()

    def learn(
        self: SelfDADRL,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 100,
        tb_log_name: str = "DADRL",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfDADRL:
        """Train with ``n_workers`` devices until ``total_timesteps`` device steps (or a callback says stop).

        Workers never outlive this call, whatever ends it (an error, a callback, Ctrl+C); the model then holds
        the last update applied. While it runs, :attr:`device_pids` gives the workers' process ids.

        :param total_timesteps: Environment steps to train on, summed over devices (a lower bound: the
            last messages may overshoot it by up to ``n_steps * envs_per_device`` each).
        :param callback: Callback(s) called once per device environment step.
        :param log_interval: Number of device messages between two log dumps.
        :param tb_log_name: Name of the run in TensorBoard.
        :param reset_num_timesteps: Whether to reset ``num_timesteps`` (False continues counting).
        :param progress_bar: Display a progress bar (tqdm and rich).
        :return: The trained model.
        :raises DeviceError: if a device raised (with its traceback), or its worker died more than
            ``max_restarts`` times.
        """
        if log_interval < 1:
            raise ValueError(f"log_interval must be an integer >= 1, got {log_interval!r}")
        configs = self._device_configs()
        total_timesteps, callback = self._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
        )
        callback.on_training_start(locals(), globals())
        self._log_window = _LogWindow()
        restarts = [0] * self.n_workers
        n_messages = 0
        continue_training = True

        backend = make_backend(self.backend, configs, **self.backend_kwargs)
        self._backend = backend
        try:
            # Every device starts from the current global weights
            backend.start(self._weights(), self.version)

            while continue_training and self.num_timesteps < total_timesteps:
                try:
                    received = backend.receive()
                except DeviceLost as lost:
                    self._restart_device(backend, configs, lost, restarts)
                    continue

                for device_index, message in received:
                    # Apply the gradients (if valid), whole or not at all, and send the device fresh weights
                    with _deferred_keyboard_interrupt():
                        self._apply_gradients(message)
                    backend.send(device_index, self._weights(), self.version)

                    # Count its steps for callbacks, episode statistics and logs (unless they cannot be trusted)
                    if isinstance(message, GradientMessage) and validate_statistics(message) is None:
                        continue_training = self._account_steps(message, callback)
                    n_messages += 1
                    if n_messages % log_interval == 0:
                        self.dump_logs()
                    if not continue_training or self.num_timesteps >= total_timesteps:
                        break
        finally:
            # Workers never outlive learn(), whatever ended it
            self._backend = None
            backend.close()

        callback.on_training_end()
        return self

    def _restart_device(
        self, backend: DeviceBackend, configs: list[DeviceConfig], lost: DeviceLost, restarts: list[int]
    ) -> None:
        """Start a lost device again on its user shard with the current weights, or raise past ``max_restarts``."""
        index = lost.device_index
        restarts[index] += 1
        if restarts[index] > self.max_restarts:
            raise DeviceError(
                index,
                f"{lost.details}; its worker died {restarts[index]} times in this learn() call, more than "
                f"max_restarts={self.max_restarts}",
            ) from lost

        # Same user shard, fresh seed: the new worker does not replay its predecessor's episodes
        seed = None
        if self.seed is not None:
            seed = self._device_seed(self._device_seed_offset + index)
            self._device_seed_offset += self.n_workers
        config = dataclasses.replace(configs[index], seed=seed)
        try:
            backend.restart(index, self._weights(), self.version, config)
        except NotImplementedError as err:
            raise DeviceError(index, f"{lost.details}, and {err}") from lost
        self._n_restarts += 1
        if self.verbose >= 1:
            print(
                f"DADRL: device {index} was lost ({lost.details}); restarted on its user shard "
                f"(restart {restarts[index]} of at most {self.max_restarts} in this learn() call)"
            )


@contextlib.contextmanager
def _deferred_keyboard_interrupt() -> Iterator[None]:
    """Hold Ctrl+C (SIGINT) back until the block ends, so that it cannot stop an update halfway.

    Does nothing outside the main thread or when SIGINT has a handler other than Python's default one.
    """
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


def _accepts_keyword(spec: EnvSpec, name: str) -> bool:
    """Whether the environment creator of ``spec`` takes a keyword argument ``name`` (True if unknown)."""
    try:
        creator = spec.entry_point if callable(spec.entry_point) else load_env_creator(str(spec.entry_point))
        parameters = inspect.signature(creator).parameters.values()
    except (TypeError, ValueError, ImportError, AttributeError):
        return True
    return any(param.kind is inspect.Parameter.VAR_KEYWORD or param.name == name for param in parameters)


def _check_arguments(
    learning_rate: float | Schedule,
    n_workers: int,
    n_steps: int,
    gamma: float,
    gae_lambda: float,
    ent_coef: float,
    vf_coef: float,
    max_grad_norm: float,
    rms_prop_eps: float,
    staleness_weighting: str,
    staleness_power: float,
    max_staleness: int | None,
    max_message_norm: float | None,
    on_large_norm: str,
    backend: str,
    backend_kwargs: dict[str, Any] | None,
    max_restarts: int,
    shard_kwarg: str | None,
    stats_window_size: int,
    envs_per_device: int = 1,
) -> None:
    """Raise a ``ValueError`` naming the first constructor argument of :class:`DADRL` that is out of range."""
    for name, count in (
        ("n_workers", n_workers),
        ("n_steps", n_steps),
        ("envs_per_device", envs_per_device),
        ("stats_window_size", stats_window_size),
    ):
        if not _is_integer(count) or count < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {count!r}")
    if max_staleness is not None and (not _is_integer(max_staleness) or max_staleness < 0):
        raise ValueError(f"max_staleness must be an integer >= 0 or None, got {max_staleness!r}")
    if not _is_integer(max_restarts) or max_restarts < 0:
        raise ValueError(f"max_restarts must be an integer >= 0, got {max_restarts!r}")
    if not callable(learning_rate) and not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0 or a schedule, got {learning_rate!r}")
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    if not 0 <= gae_lambda <= 1:
        raise ValueError(f"gae_lambda must be in [0, 1], got {gae_lambda!r}")
    for name, value in (("ent_coef", ent_coef), ("vf_coef", vf_coef), ("staleness_power", staleness_power)):
        if not 0 <= value < float("inf"):
            raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    for name, value in (("max_grad_norm", max_grad_norm), ("rms_prop_eps", rms_prop_eps)):
        if not 0 < value < float("inf"):
            raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    if max_message_norm is not None and not 0 < max_message_norm < float("inf"):
        raise ValueError(f"max_message_norm must be finite and > 0, or None, got {max_message_norm!r}")
    if staleness_weighting not in STALENESS_WEIGHTINGS:
        raise ValueError(f"staleness_weighting must be one of {STALENESS_WEIGHTINGS}, got {staleness_weighting!r}")
    if on_large_norm not in LARGE_NORM_ACTIONS:
        raise ValueError(f"on_large_norm must be one of {LARGE_NORM_ACTIONS}, got {on_large_norm!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _check_backend_kwargs(backend, backend_kwargs)
    if shard_kwarg is not None and (not isinstance(shard_kwarg, str) or not shard_kwarg.isidentifier()):
        raise ValueError(f"shard_kwarg must be a keyword argument name or None, got {shard_kwarg!r}")


def _is_integer(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_backend_kwargs(backend: str, backend_kwargs: dict[str, Any] | None) -> None:
    """Check ``backend_kwargs`` against the backend's constructor (Ray's is checked when Ray is imported)."""
    if backend_kwargs is None:
        return
    if not isinstance(backend_kwargs, dict) or not all(isinstance(key, str) for key in backend_kwargs):
        raise ValueError(f"backend_kwargs must be a dict of keyword arguments or None, got {backend_kwargs!r}")
    backend_class = {"subprocess": SubprocessBackend, "inline": InlineBackend}.get(backend)
    if backend_class is None:
        return
    accepted = [name for name in inspect.signature(backend_class).parameters if name != "configs"]
    unknown = sorted(set(backend_kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"backend_kwargs={backend_kwargs!r} has arguments that backend={backend!r} does not take: {unknown} "
            f"(it takes {accepted or 'none'})"
        )
