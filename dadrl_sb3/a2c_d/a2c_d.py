"""A2C-D: synchronous distributed advantage actor-critic, the learner averaging all devices' gradients each round."""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
from stable_baselines3.common.type_aliases import MaybeCallback

from dadrl_sb3.common.devices import Device, GradientMessage
from dadrl_sb3.common.sync import RoundTask, SyncActorCritic, WorkerFactory, weighted_mean
from dadrl_sb3.dadrl.dadrl import validate_gradients

SelfA2CD = TypeVar("SelfA2CD", bound="A2CD")


class GradientDevice(Device):
    """A DADRL :class:`~dadrl_sb3.common.devices.Device` serving A2C-D rounds: one rollout and its gradient per round."""

    def run_round(self, task: RoundTask) -> GradientMessage:
        """Run one rollout with the round's global weights and return the gradient of its loss."""
        return self.compute_gradients(task.weights, task.version)


class A2CD(SyncActorCritic):
    """
    A2C-D: synchronous distributed advantage actor-critic, a baseline of the DADRL paper.

    Paper: Shi et al., "A Distributed Asynchronous Deep Reinforcement Learning Framework for Recommender
    Systems", RecSys 2020, https://doi.org/10.1145/3383313, which compares DADRL with A2C-D (Table 1) but
    does not spell it out. This project defines it as the synchronous counterpart of DADRL: the devices and
    their loss are DADRL's, only the learner waits.

    Each round the learner sends the same global weights and version to all ``n_workers`` devices. Each
    device owns a disjoint shard of users (``shard_kwarg=(index, n_workers)``, exactly as in DADRL), runs
    ``n_steps`` steps with those weights, computes the advantage actor-critic loss (n-step or GAE returns)
    and sends back only its gradient and scalar statistics. When **every** device has answered, the learner
    averages the gradients, weighting each by its device's environment steps, clips the global norm of the
    average to ``max_grad_norm``, takes one optimizer step, and starts the next round. A round therefore
    costs ``n_workers * n_steps`` environment steps and makes one update, computed as if on one batch of all
    the devices' rollouts; no gradient is ever stale.

    Note: choices where the paper is silent, and limits of this implementation:

    - The learner clips the averaged gradient, not each device's gradient (as one A2C update on the union
      of the rollouts would). A device answer with gradients of the wrong shape or non-finite values is
      left out of the average and counted in ``train/rejected``; its steps still count.
    - A device is a worker process serving a shard of many users one episode after another; a rollout is
      ``n_steps`` steps, which may span episodes.
    - A round waits for the slowest device. More devices than CPU cores slow rounds down but do not change
      the result, so it is not warned about.
    - Privacy: as DADRL, raw interactions never leave a device, but a gradient can reveal its rollout's
      inputs (gradient inversion); the average of a round mixes ``n_workers`` rollouts, which is no formal
      guarantee either. No clipping per device, no noise, no accounting.
    - With ``backend="subprocess"`` scripts must guard their entry point with ``if __name__ == "__main__":``,
      and the environment and policy must be importable (see :class:`~dadrl_sb3.dadrl.dadrl.DADRL`).

    :param policy: The policy model to use (``"MlpPolicy"``, ``"MultiInputPolicy"``, ``"CandidatePolicy"`` or a
        registered alias), or an ``ActorCriticPolicy`` subclass.
    :param env: The environment to learn from (if registered in Gymnasium, can be str). It must have a spec
        (be made with ``gymnasium.make``), because each device rebuilds it from that spec.
    :param learning_rate: Learning rate of the learner's optimizer (default 7e-4), or a function of the
        progress remaining (from 1 to 0).
    :param n_workers: Number of devices (default 2); one worker process each with ``backend="subprocess"``.
    :param n_steps: Environment steps per device and round (default 5, as DADRL and SB3's A2C).
    :param gamma: Discount factor, in (0, 1] (default 0.99).
    :param gae_lambda: Factor of the generalized advantage estimator, in [0, 1] (default 1.0: n-step returns).
    :param ent_coef: Weight of the entropy bonus in the loss (default 0.01).
    :param vf_coef: Weight of the value loss in the loss (default 0.5).
    :param max_grad_norm: Maximum global L2 norm of the round's averaged gradient (default 0.5).
    :param use_rms_prop: Use RMSprop (alpha=0.99, as SB3's A2C) rather than Adam (default True). Ignored if
        ``policy_kwargs`` names an ``optimizer_class``.
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

    def _worker_factory(self) -> WorkerFactory:
        return GradientDevice

    def _rollouts(self, answer: Any) -> list[GradientMessage]:
        return [answer]

    def _apply_round(self, answers: list[Any]) -> None:
        """Average the valid gradients of the round, weighted by steps, and take one optimizer step."""
        # Leave out answers that cannot be applied to the global weights
        parameters = list(self.policy.parameters())
        accepted: list[GradientMessage] = []
        for index, message in enumerate(answers):
            if not isinstance(message, GradientMessage):
                reason: str | None = f"expected a GradientMessage, got {type(message).__name__}"
            else:
                reason = validate_gradients(message.gradients, parameters)
            if reason is None and message.version != self.version:
                reason = f"computed on version {message.version}, the round's version is {self.version}"
            if reason is not None:
                self._reject(index, reason)
            else:
                accepted.append(message)
        if not accepted:
            return

        # The step-weighted average, applied as one message on the current version (DADRL clips and steps)
        steps = [message.n_steps for message in accepted]
        averaged = GradientMessage(
            version=self.version,
            gradients=weighted_mean([message.gradients for message in accepted], steps),
            n_steps=sum(steps),
            policy_loss=float(np.average([message.policy_loss for message in accepted], weights=steps)),
            value_loss=float(np.average([message.value_loss for message in accepted], weights=steps)),
            entropy_loss=float(np.average([message.entropy_loss for message in accepted], weights=steps)),
        )
        self._apply_gradients(averaged)

    def learn(
        self: SelfA2CD,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 100,
        tb_log_name: str = "A2C-D",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfA2CD:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
