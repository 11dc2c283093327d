"""A2C-F: synchronous federated advantage actor-critic, local updates on the devices averaged by FedAvg."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, TypeVar

import numpy as np
import torch as th
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import update_learning_rate

from dadrl_sb3.common.devices import Device, DeviceConfig, GradientMessage, ParameterArrays
from dadrl_sb3.common.sync import RoundTask, SyncActorCritic, WorkerFactory, weighted_mean
from dadrl_sb3.dadrl.dadrl import validate_gradients

SelfA2CF = TypeVar("SelfA2CF", bound="A2CF")


@dataclasses.dataclass(frozen=True)
class FederatedMessage:
    """What an A2C-F device sends back after a round: its locally updated weights and scalar statistics.

    :param version: Version of the global weights the device started the round from.
    :param weights: The device's weights after its local updates, one float32 array per tensor of
        ``policy.parameters()``, in order.
    :param rollouts: The statistics of each local rollout, in the order they ran: the
        :class:`~dadrl_sb3.common.devices.GradientMessage` the device computed, with its gradients dropped
        (``gradients == []``; they never leave the device).
    """

    version: int
    weights: ParameterArrays
    rollouts: list[GradientMessage]

    @property
    def n_steps(self) -> int:
        """Environment steps the device trained on this round."""
        return sum(rollout.n_steps for rollout in self.rollouts)


class FederatedDevice(Device):
    """A DADRL :class:`~dadrl_sb3.common.devices.Device` that trains locally, for A2C-F rounds.

    It keeps a local model (one tensor per parameter) and a local optimizer over it. Each round it sets the
    local model to the global weights, then ``local_steps`` times: runs a rollout of ``n_steps`` with the
    local model, takes the gradient of its loss (the same :meth:`compute_gradients` DADRL devices use),
    clips its global norm to ``max_grad_norm`` and steps the local optimizer. The optimizer's state (for
    RMSprop, the running mean of squared gradients) stays on the device from round to round.

    :param config: How to build the device.
    :param local_steps: Local updates per round.
    :param optimizer_class: Class of the local optimizer (the learner's kind).
    :param optimizer_kwargs: Its keyword arguments, but the learning rate (set each round).
    :param max_grad_norm: Maximum global L2 norm of each local gradient.
    """

    def __init__(
        self,
        config: DeviceConfig,
        local_steps: int,
        optimizer_class: type[th.optim.Optimizer],
        optimizer_kwargs: dict[str, Any],
        max_grad_norm: float,
    ) -> None:
        super().__init__(config)
        self.local_steps = local_steps
        self.max_grad_norm = max_grad_norm
        self.local_parameters = [param.detach().clone().requires_grad_(True) for param in self.policy.parameters()]
        # The learning rate is the learner's scheduled one, set at the start of each round
        self.optimizer = optimizer_class(self.local_parameters, **{**optimizer_kwargs, "lr": 0.0})

    def run_round(self, task: RoundTask) -> FederatedMessage:
        """Start from the round's global weights, take ``local_steps`` local updates, return the new weights."""
        with th.no_grad():
            for param, array in zip(self.local_parameters, task.weights, strict=True):
                param.copy_(th.as_tensor(array))
        update_learning_rate(self.optimizer, task.learning_rate)

        rollouts = []
        for _ in range(self.local_steps):
            # One rollout with the local weights, and the gradient of its loss
            message = self.compute_gradients([param.detach().numpy() for param in self.local_parameters], task.version)

            # One clipped step of the local optimizer
            for param, gradient in zip(self.local_parameters, message.gradients, strict=True):
                param.grad = th.as_tensor(gradient)
            th.nn.utils.clip_grad_norm_(self.local_parameters, self.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            rollouts.append(dataclasses.replace(message, gradients=[]))

        weights = [param.detach().numpy().copy() for param in self.local_parameters]
        return FederatedMessage(version=task.version, weights=weights, rollouts=rollouts)


class A2CF(SyncActorCritic):
    """
    A2C-F: synchronous federated advantage actor-critic (FedAvg of locally trained A2C), a baseline of DADRL.

    Papers: Shi et al., "A Distributed Asynchronous Deep Reinforcement Learning Framework for Recommender
    Systems", RecSys 2020, https://doi.org/10.1145/3383313, which compares DADRL with A2C-F (Table 1) but does
    not spell it out; and McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
    Data", AISTATS 2017, https://arxiv.org/abs/1602.05629, whose Federated Averaging (FedAvg) it applies to
    DADRL's devices and loss.

    Each round every one of the ``n_workers`` devices starts from the global weights and runs ``local_steps``
    local updates, each on a fresh rollout of ``n_steps`` steps of its own users (a disjoint shard,
    ``shard_kwarg=(index, n_workers)``, as in DADRL) with its own local optimizer, of the learner's kind (see
    :class:`FederatedDevice`). It sends back only its updated weights and scalar statistics. When **every**
    device has answered, the learner sets the global weights to their average, each device weighted by the
    environment steps it trained on (FedAvg), and starts the next round. A round costs
    ``n_workers * local_steps * n_steps`` environment steps and makes one global update.

    Note: what FedAvg leaves open for this setting, and what was chosen:

    - Client fraction: every device takes part in every round (FedAvg's C = 1; no client sampling).
    - Local work: FedAvg runs E epochs of minibatch SGD over a fixed local dataset; an on-policy learner has
      none, so a device runs ``local_steps`` updates, each on a new rollout collected with its current local
      weights (E x n_k / B in FedAvg's terms becomes ``local_steps``).
    - Weighting: FedAvg weighs client k by its n_k training examples; here by the environment steps the device
      trained on this round (equal for all devices, so a plain mean unless an answer is rejected).
    - Local optimizer: the learner's kind (RMSprop with alpha=0.99 by default, Adam with
      ``use_rms_prop=False``, or the ``optimizer_class`` of ``policy_kwargs``) instead of plain SGD, at the
      learner's scheduled learning rate, each local gradient clipped to ``max_grad_norm``. Its state stays on
      the device between rounds of one ``learn()`` call (RMSprop restarted every round would take steps of
      about 10 x the learning rate at first) and is lost when ``learn()`` returns. Only weights cross the
      boundary, never optimizer state.
    - Server update: the global weights are replaced by the average (a server learning rate of 1, no server
      momentum). The learner's own optimizer is never stepped; it is kept so that the model saves and loads
      like any SB3 model.
    - An answer with weights of the wrong shape or non-finite values is left out of the average and counted
      in ``train/rejected``; its steps still count.
    - Privacy: raw interactions never leave a device, but updated weights differ from the global ones by a
      few local steps and can leak those rollouts' inputs much as gradients do; no formal guarantee is given.
    - With ``backend="subprocess"`` scripts must guard their entry point with ``if __name__ == "__main__":``,
      and the environment and policy must be importable (see :class:`~dadrl_sb3.dadrl.dadrl.DADRL`).

    :param policy: The policy model to use (``"MlpPolicy"``, ``"MultiInputPolicy"``, ``"CandidatePolicy"`` or a
        registered alias), or an ``ActorCriticPolicy`` subclass.
    :param env: The environment to learn from (if registered in Gymnasium, can be str). It must have a spec
        (be made with ``gymnasium.make``), because each device rebuilds it from that spec.
    :param learning_rate: Learning rate of the devices' local optimizers (default 7e-4), or a function of the
        progress remaining (from 1 to 0), evaluated by the learner at the start of each round.
    :param n_workers: Number of devices (default 2); one worker process each with ``backend="subprocess"``.
    :param local_steps: Local updates per device and round (default 4), each on its own rollout.
    :param n_steps: Environment steps per local rollout (default 5, as DADRL and SB3's A2C).
    :param gamma: Discount factor, in (0, 1] (default 0.99).
    :param gae_lambda: Factor of the generalized advantage estimator, in [0, 1] (default 1.0: n-step returns).
    :param ent_coef: Weight of the entropy bonus in the loss (default 0.01).
    :param vf_coef: Weight of the value loss in the loss (default 0.5).
    :param max_grad_norm: Maximum global L2 norm of each local gradient (default 0.5).
    :param use_rms_prop: Use RMSprop (alpha=0.99, as SB3's A2C) rather than Adam on the devices (default True).
        Ignored if ``policy_kwargs`` names an ``optimizer_class``.
    :param rms_prop_eps: Epsilon of RMSprop, which stabilizes its denominator (default 1e-5).
    :param backend: Where devices run: ``"subprocess"`` (default; one worker process per device, the devices of
        a round running in parallel) or ``"inline"`` (in this process, one after the other, bit-reproducible
        under a seed; for tests and debugging).
    :param shard_kwarg: Name of the environment keyword argument that receives a device's user shard
        ``(index, n_workers)`` (default ``"user_shard"``, as ``OutbrainRec-v0`` takes). ``None`` passes no shard:
        every device then sees every user (for environments without users, such as CartPole).
    :param stats_window_size: Number of episodes averaged in ``rollout/ep_rew_mean`` and ``rollout/ep_len_mean``
        (default 100).
    :param tensorboard_log: Directory of the TensorBoard log (default None: no TensorBoard).
    :param policy_kwargs: Additional arguments passed to the policy on creation (default None).
    :param verbose: Verbosity level: 0 no output, 1 info (the log table), 2 debug (also every rejected answer)
        (default 0).
    :param seed: Seed of the learner's random generators; device ``i`` is seeded with ``seed + i`` in the first
        ``learn()`` call and with fresh offsets in later ones (default None).
    :param device: PyTorch device of the learner (default ``"cpu"``); devices always run on the CPU.
    :param _init_setup_model: Whether to build the network at creation (SB3's ``load`` passes False).
    """

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str | None,
        learning_rate: float | Schedule = 7e-4,
        n_workers: int = 2,
        local_steps: int = 4,
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
        if isinstance(local_steps, bool) or not isinstance(local_steps, int | np.integer) or local_steps < 1:
            raise ValueError(f"local_steps must be an integer >= 1, got {local_steps!r}")
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
        self.local_steps = int(local_steps)

    def _worker_factory(self) -> WorkerFactory:
        # A partial of a class pickles by reference, so worker processes can rebuild it
        return functools.partial(
            FederatedDevice,
            local_steps=self.local_steps,
            optimizer_class=self.policy.optimizer_class,
            optimizer_kwargs=dict(self.policy.optimizer_kwargs),
            max_grad_norm=self.max_grad_norm,
        )

    def _rollouts(self, answer: Any) -> list[GradientMessage]:
        return list(answer.rollouts)

    def _apply_round(self, answers: list[Any]) -> None:
        """Set the global weights to the step-weighted average of the valid device weights (FedAvg)."""
        # Leave out answers that cannot become global weights
        parameters = list(self.policy.parameters())
        accepted: list[FederatedMessage] = []
        for index, message in enumerate(answers):
            if not isinstance(message, FederatedMessage):
                reason: str | None = f"expected a FederatedMessage, got {type(message).__name__}"
            else:
                # validate_gradients checks any parameter-shaped arrays; here they are weights
                reason = validate_gradients(message.weights, parameters)
                reason = None if reason is None else reason.replace("gradient", "weight")
            if reason is None and message.version != self.version:
                reason = f"computed from version {message.version}, the round's version is {self.version}"
            if reason is None and message.n_steps < 1:
                reason = "trained on no environment steps"
            if reason is not None:
                self._reject(index, reason)
            else:
                accepted.append(message)
        if not accepted:
            return

        # FedAvg: the global weights become the step-weighted average, which makes the next version
        steps = [message.n_steps for message in accepted]
        averaged = weighted_mean([message.weights for message in accepted], steps)
        with th.no_grad():
            for param, array in zip(parameters, averaged, strict=True):
                param.copy_(th.as_tensor(array, dtype=param.dtype, device=param.device))
        self._n_updates += 1

        # Losses of the round: the mean over every local rollout of the accepted devices, weighted by steps
        rollouts = [rollout for message in accepted for rollout in message.rollouts]
        rollout_steps = [rollout.n_steps for rollout in rollouts]
        window = self._log_window
        window.n_applied += 1
        window.policy_loss += float(np.average([rollout.policy_loss for rollout in rollouts], weights=rollout_steps))
        window.value_loss += float(np.average([rollout.value_loss for rollout in rollouts], weights=rollout_steps))
        window.entropy_loss += float(np.average([rollout.entropy_loss for rollout in rollouts], weights=rollout_steps))

    def learn(
        self: SelfA2CF,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 100,
        tb_log_name: str = "A2C-F",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfA2CF:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
