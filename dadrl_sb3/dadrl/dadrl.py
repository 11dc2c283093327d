"""DADRL: distributed asynchronous advantage actor-critic with gradients computed on the users' devices."""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec, load_env_creator
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import safe_mean, update_learning_rate
from stable_baselines3.common.vec_env import VecEnvWrapper

from dadrl_sb3.common.backends import BACKENDS, DeviceBackend, make_backend
from dadrl_sb3.common.devices import DeviceConfig, GradientMessage, ParameterArrays
from dadrl_sb3.dadrl.policies import CandidatePolicy, MlpPolicy, MultiInputPolicy

SelfDADRL = TypeVar("SelfDADRL", bound="DADRL")

# SB3's Monitor is not rebuilt in devices: a device counts its episodes itself
_MONITOR_ENTRY_POINT = "stable_baselines3.common.monitor:Monitor"


def validate_gradients(gradients: Sequence[Any], parameters: Sequence[th.Tensor]) -> str | None:
    """Say why a device's gradients cannot be applied to ``parameters``, or return ``None`` if they can.

    Gradients are accepted when there is one floating-point NumPy array per parameter, of the
    parameter's shape, with only finite values.

    :param gradients: The gradients of a :class:`~dadrl_sb3.common.devices.GradientMessage`.
    :param parameters: The learner's ``policy.parameters()``, as a sequence.
    :return: The reason for rejection, or ``None``.
    """
    if len(gradients) != len(parameters):
        return f"expected {len(parameters)} gradient arrays, got {len(gradients)}"
    for index, (gradient, param) in enumerate(zip(gradients, parameters, strict=True)):
        if not isinstance(gradient, np.ndarray) or not np.issubdtype(gradient.dtype, np.floating):
            return f"gradient {index} is not a floating-point NumPy array (got {type(gradient).__name__})"
        if gradient.shape != tuple(param.shape):
            return f"gradient {index} has shape {gradient.shape}, its parameter has shape {tuple(param.shape)}"
        if not np.isfinite(gradient).all():
            return f"gradient {index} holds non-finite values"
    return None


@dataclasses.dataclass
class _LogWindow:
    """Sums over the messages received since the last log dump."""

    n_applied: int = 0
    policy_loss: float = 0.0
    value_loss: float = 0.0
    entropy_loss: float = 0.0
    staleness: int = 0
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
    scalar statistics. The learner applies each message as it arrives: it rejects gradients of the wrong
    shape or with non-finite values (counted in ``train/rejected``), clips their global norm to
    ``max_grad_norm``, steps the policy's optimizer, and sends that device the new weights. Staleness
    (current version minus the message's version) is logged as ``train/staleness_mean``.

    This subclasses ``BaseAlgorithm`` rather than ``OnPolicyAlgorithm`` because the learner has no rollout
    buffer and no ``collect_rollouts``: devices collect and differentiate, the learner only applies gradients.

    Note: deviations from the paper and limits of this implementation:

    - A device is a worker process serving a shard of many users one episode after another, not one
      user's phone; a rollout is ``n_steps`` steps, which may span episodes, not one whole session.
    - Gradients are applied as they arrive, whatever their staleness (no staleness weighting).
    - Privacy: raw interactions never leave a device, but a rollout's gradient can reveal that rollout's
      inputs (gradient inversion) and two consecutive global versions differ by one device's update.
      There is no clipping per device, no noise and no privacy accounting: no formal guarantee is given.
    - The learner's own copy of ``env`` serves its spaces and spec (SB3 resets it at the start of
      ``learn()``); it is never stepped.
    - Only ``Box``, ``Discrete``, ``MultiDiscrete`` and ``MultiBinary`` action spaces; no gSDE.
    - With ``backend="subprocess"`` workers start with ``forkserver`` or ``spawn``, which import the main
      module again: scripts must guard their entry point with ``if __name__ == "__main__":``, and the
      environment, policy and wrappers must be importable (not defined in an interactive session).

    Extra policies can be registered by name: ``DADRL.policy_aliases["MyPolicy"] = MyPolicy`` (any
    subclass of SB3's ``ActorCriticPolicy``).

    :param policy: The policy model to use (``"MlpPolicy"``, ``"MultiInputPolicy"`` or a registered alias),
        or an ``ActorCriticPolicy`` subclass.
    :param env: The environment to learn from (if registered in Gymnasium, can be str). It must have a spec
        (be made with ``gymnasium.make``), because each device rebuilds it from that spec.
    :param learning_rate: Learning rate of the learner's optimizer (default 7e-4), or a function of the
        progress remaining (from 1 to 0).
    :param n_workers: Number of devices (default 2); one worker process each with ``backend="subprocess"``.
    :param n_steps: Environment steps per device rollout, i.e. per gradient sent (default 5, the t_max of A3C
        in Mnih et al. 2016).
    :param gamma: Discount factor, in (0, 1] (default 0.99).
    :param gae_lambda: Factor of the generalized advantage estimator, in [0, 1] (default 1.0, which gives
        the n-step returns of A3C).
    :param ent_coef: Weight of the entropy bonus in the loss (default 0.01, as in A3C).
    :param vf_coef: Weight of the value loss in the loss (default 0.5).
    :param max_grad_norm: Maximum global L2 norm of each device's gradient, clipped by the learner
        (default 0.5).
    :param use_rms_prop: Use RMSprop (alpha=0.99, as A3C and SB3's A2C) rather than Adam (default True).
        Ignored if ``policy_kwargs`` names an ``optimizer_class``.
    :param rms_prop_eps: Epsilon of RMSprop, which stabilizes its denominator (default 1e-5).
    :param backend: Where devices run: ``"subprocess"`` (default; one worker process per device, connected
        by pipes) or ``"inline"`` (in this process, round-robin, bit-reproducible under a seed; for tests and
        debugging).
    :param shard_kwarg: Name of the environment keyword argument that receives a device's user shard
        ``(index, n_workers)`` (default ``"user_shard"``, as ``OutbrainRec-v0`` takes). ``None`` passes no
        shard: every device then sees every user (for environments without users, such as CartPole).
    :param stats_window_size: Number of episodes averaged in ``rollout/ep_rew_mean`` and
        ``rollout/ep_len_mean`` (default 100).
    :param tensorboard_log: Directory of the TensorBoard log (default None: no TensorBoard).
    :param policy_kwargs: Additional arguments passed to the policy on creation (default None).
    :param verbose: Verbosity level: 0 no output, 1 info (the log table), 2 debug (also every rejected
        message) (default 0).
    :param seed: Seed of the learner's random generators; device ``i`` is seeded with ``seed + i`` in the
        first ``learn()`` call and with fresh offsets in later ones (default None).
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
            backend=backend,
            shard_kwarg=shard_kwarg,
            stats_window_size=stats_window_size,
        )
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            policy_kwargs=policy_kwargs,
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
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self.ent_coef = ent_coef
        self.vf_coef = vf_coef
        self.max_grad_norm = max_grad_norm
        self.use_rms_prop = use_rms_prop
        self.rms_prop_eps = rms_prop_eps
        self.backend = backend
        self.shard_kwarg = shard_kwarg

        # Learner state that is not saved: the running backend and the statistics since the last log dump
        self._backend: DeviceBackend | None = None
        self._log_window = _LogWindow()
        self._n_rejected = 0
        self._device_seed_offset = 0

        # RMSprop as in A3C unless the user chose an optimizer
        if use_rms_prop and "optimizer_class" not in self.policy_kwargs:
            self.policy_kwargs["optimizer_class"] = th.optim.RMSprop
            self.policy_kwargs["optimizer_kwargs"] = {"alpha": 0.99, "eps": rms_prop_eps, "weight_decay": 0}

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

    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(  # type: ignore[assignment]
            self.observation_space, self.action_space, self.lr_schedule, **self.policy_kwargs
        )
        self.policy = self.policy.to(self.device)

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
                    seed=None if self.seed is None else self.seed + seed_offset + index,
                )
            )
        return configs

    def _weights(self) -> ParameterArrays:
        """The global weights as one float32 array per tensor of ``policy.parameters()``."""
        return [param.detach().cpu().numpy() for param in self.policy.parameters()]

    def _apply_gradients(self, message: GradientMessage) -> bool:
        """Validate a device's gradients and, if they pass, clip them and step the optimizer.

        :param message: The device's message.
        :return: Whether the gradients were applied (a rejected message is counted in ``train/rejected``).
        """
        parameters = list(self.policy.parameters())
        reason = validate_gradients(message.gradients, parameters)
        if reason is None and not 0 <= message.version <= self.version:
            reason = f"version {message.version} was never served (current version {self.version})"
        if reason is not None:
            self._n_rejected += 1
            if self.verbose >= 2:
                print(f"DADRL: rejected a device message: {reason}")
            return False

        # Write the gradients into the parameters and clip their global norm
        staleness = self.version - message.version
        for param, gradient in zip(parameters, message.gradients, strict=True):
            param.grad = th.as_tensor(gradient, dtype=param.dtype, device=param.device)
        th.nn.utils.clip_grad_norm_(parameters, self.max_grad_norm)

        # One optimizer step at the scheduled learning rate makes the next version
        if self._total_timesteps > 0:
            self._update_current_progress_remaining(self.num_timesteps, self._total_timesteps)
        update_learning_rate(self.policy.optimizer, self.lr_schedule(self._current_progress_remaining))
        self.policy.optimizer.step()
        self.policy.optimizer.zero_grad(set_to_none=True)
        self._n_updates += 1

        window = self._log_window
        window.n_applied += 1
        window.policy_loss += message.policy_loss
        window.value_loss += message.value_loss
        window.entropy_loss += message.entropy_loss
        window.staleness += staleness
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
            self.logger.record("train/staleness_mean", window.staleness / window.n_applied)
        self.logger.record("train/rejected", self._n_rejected)
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

        :param total_timesteps: Environment steps to train on, summed over devices (a lower bound: the
            last messages may overshoot it by up to ``n_steps`` each).
        :param callback: Callback(s) called once per device environment step.
        :param log_interval: Number of device messages between two log dumps.
        :param tb_log_name: Name of the run in TensorBoard.
        :param reset_num_timesteps: Whether to reset ``num_timesteps`` (False continues counting).
        :param progress_bar: Display a progress bar (tqdm and rich).
        :return: The trained model.
        """
        if log_interval < 1:
            raise ValueError(f"log_interval must be an integer >= 1, got {log_interval!r}")
        configs = self._device_configs()
        total_timesteps, callback = self._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
        )
        callback.on_training_start(locals(), globals())
        self._log_window = _LogWindow()
        n_messages = 0
        continue_training = True

        backend = make_backend(self.backend, configs)
        self._backend = backend
        try:
            # Every device starts from the current global weights
            backend.start(self._weights(), self.version)

            while continue_training and self.num_timesteps < total_timesteps:
                for device_index, message in backend.receive():
                    # Apply the gradients (if valid) and send the device the weights of its next rollout
                    self._apply_gradients(message)
                    backend.send(device_index, self._weights(), self.version)

                    # Count its steps for callbacks, episode statistics and logs
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
    backend: str,
    shard_kwarg: str | None,
    stats_window_size: int,
) -> None:
    """Raise a ``ValueError`` naming the first constructor argument of :class:`DADRL` that is out of range."""
    for name, count in (("n_workers", n_workers), ("n_steps", n_steps), ("stats_window_size", stats_window_size)):
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {count!r}")
    if not callable(learning_rate) and not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0 or a schedule, got {learning_rate!r}")
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    if not 0 <= gae_lambda <= 1:
        raise ValueError(f"gae_lambda must be in [0, 1], got {gae_lambda!r}")
    for name, value in (("ent_coef", ent_coef), ("vf_coef", vf_coef)):
        if not 0 <= value < float("inf"):
            raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    for name, value in (("max_grad_norm", max_grad_norm), ("rms_prop_eps", rms_prop_eps)):
        if not 0 < value < float("inf"):
            raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if shard_kwarg is not None and (not isinstance(shard_kwarg, str) or not shard_kwarg.isidentifier()):
        raise ValueError(f"shard_kwarg must be a keyword argument name or None, got {shard_kwarg!r}")
