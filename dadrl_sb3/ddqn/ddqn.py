"""Double DQN: the online network picks the next action, the target network values it."""

import numpy as np
import torch as th
from stable_baselines3 import DQN
from torch.nn import functional as F

__all__ = ["DoubleDQN"]


class DoubleDQN(DQN):
    """
    Double Deep Q-Network (Double DQN, "DDQN" in the paper's Table 1).

    Paper: van Hasselt, Guez, Silver, "Deep Reinforcement Learning with Double Q-learning", AAAI 2016,
    https://arxiv.org/abs/1509.06461.

    DQN bootstraps from ``max_a Q_target(s', a)``: the same (noisy) estimates both choose and value the
    next action, so the target is biased upwards. Double DQN decouples the two with the networks DQN
    already has: the online network picks ``a* = argmax_a Q_online(s', a)`` and the target network
    values it, giving the TD target

    ``y = r + gamma^n * (1 - done) * Q_target(s', argmax_a Q_online(s', a))``.

    This is the only difference from SB3's :class:`~stable_baselines3.DQN`, and only :meth:`train` is
    overridden. Everything else is DQN's: the replay buffer (including ``n_steps`` returns), the Huber
    loss, gradient clipping, epsilon-greedy exploration, the target network update every
    ``target_update_interval`` steps (``tau`` for Polyak averaging), the logged keys (``train/loss``,
    ``train/n_updates``, ``rollout/exploration_rate``), ``save``/``load`` and the policy aliases
    (``"MlpPolicy"``, ``"CnnPolicy"``, ``"MultiInputPolicy"``). Any DQN policy works, including
    :class:`~dadrl_sb3.common.candidate_policies.CandidateDQNPolicy`, whose Q-values are per-candidate
    scores and so serve any number of candidates.

    Note: van Hasselt et al. also retune DQN's hyper-parameters for Atari (the "tuned" Double DQN);
    none of that is done here: the constructor's defaults are SB3's DQN defaults.

    The constructor arguments are those of :class:`~stable_baselines3.DQN`, unchanged; in short:

    :param policy: the policy model (``"MlpPolicy"``, ``"MultiInputPolicy"``, a DQN policy class such
        as ``CandidateDQNPolicy``)
    :param env: the environment to learn from (a registered id is accepted)
    :param learning_rate: learning rate, or a schedule of the remaining progress (1 to 0); default ``1e-4``
    :param buffer_size: capacity of the replay buffer, in transitions; default ``1_000_000``
    :param learning_starts: environment steps collected before the first gradient step; default ``100``
    :param batch_size: transitions per gradient step; default ``32``
    :param tau: soft update coefficient of the target network, 1 for a hard copy; default ``1.0``
    :param gamma: discount factor; default ``0.99``
    :param train_freq: update every ``train_freq`` steps, or a tuple like ``(2, "episode")``; default ``4``
    :param gradient_steps: gradient steps per update, ``-1`` for as many as environment steps; default ``1``
    :param replay_buffer_class: replay buffer class; ``None`` picks one from the observation space
    :param replay_buffer_kwargs: keyword arguments of the replay buffer
    :param optimize_memory_usage: memory-efficient replay buffer variant; default ``False``
    :param n_steps: n-step returns (the target then discounts by ``gamma ** n``); default ``1``
    :param target_update_interval: environment steps between target network updates; default ``10000``
    :param exploration_fraction: fraction of training over which epsilon decays; default ``0.1``
    :param exploration_initial_eps: initial epsilon; default ``1.0``
    :param exploration_final_eps: final epsilon; default ``0.05``
    :param max_grad_norm: gradient clipping norm; default ``10``
    :param stats_window_size: episodes averaged in the ``rollout/`` logs; default ``100``
    :param tensorboard_log: TensorBoard folder, ``None`` for none
    :param policy_kwargs: keyword arguments of the policy
    :param verbose: 0 silent, 1 info, 2 debug
    :param seed: seed of the random generators
    :param device: ``"cpu"``, ``"cuda"`` or ``"auto"``
    :param _init_setup_model: whether to build the networks at construction
    """

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """
        Take ``gradient_steps`` gradient steps on the Huber loss against the double Q-learning target.

        :param gradient_steps: number of minibatches to sample and learn from
        :param batch_size: transitions per minibatch
        """
        # Training mode, and the learning rate of the current progress
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)

        losses = []
        for _ in range(gradient_steps):
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            # n-step buffers give the discount per transition (gamma ** steps actually taken)
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma

            # Double Q-learning target. This is where DoubleDQN differs from DQN.train, which bootstraps
            # from max_a Q_target(s', a): here the online network picks the action, the target network values it
            with th.no_grad():
                next_actions = self.q_net(replay_data.next_observations).argmax(dim=1, keepdim=True)
                next_q_values = th.gather(self.q_net_target(replay_data.next_observations), dim=1, index=next_actions)
                target_q_values = replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values

            # Q-values of the actions taken, and the Huber loss against the target
            current_q_values = th.gather(self.q_net(replay_data.observations), dim=1, index=replay_data.actions.long())
            loss = F.smooth_l1_loss(current_q_values, target_q_values)
            losses.append(loss.item())

            # One clipped gradient step on the online network
            self.policy.optimizer.zero_grad()
            loss.backward()
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()

        # Log as DQN does
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", np.mean(losses))
