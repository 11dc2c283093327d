"""A DADRL device: one shard of users, a local copy of the policy, and the gradient it sends.

A device is what the paper calls a user's device. It owns ``n_envs`` environments built for its
shard of users (sessions of that shard run side by side), runs ``n_steps`` of each with a local copy
of the global actor-critic network, computes the advantage actor-critic loss on that
``n_steps x n_envs`` rollout and returns **only** the gradient of the loss, the model version it was
computed on and a few scalar statistics (:class:`GradientMessage`). It never returns observations,
actions, rewards or infos.

The same :class:`Device` runs in a worker process (``backend="subprocess"``) or in the learner's
process (``backend="inline"``); see :mod:`dadrl_sb3.common.backends`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy

# Weights and gradients travel as one float32 array per tensor of ``policy.parameters()``, in that order.
ParameterArrays = list[np.ndarray]


@dataclass(frozen=True)
class DeviceConfig:
    """Everything a device needs to build itself, sent once when it starts (no data, only how to load it).

    :param index: Index of the device, in ``[0, n_devices)``.
    :param env_spec: Gymnasium spec of the device's environment, with the device's user shard already
        in its ``kwargs``; the device calls ``gymnasium.make(env_spec)``.
    :param policy_class: Actor-critic policy class (a subclass of SB3's ``ActorCriticPolicy``).
    :param policy_kwargs: Keyword arguments of ``policy_class``.
    :param observation_space: Observation space the policy is built for.
    :param action_space: Action space the policy is built for.
    :param n_steps: Steps of each environment per rollout, i.e. per gradient sent.
    :param gamma: Discount factor.
    :param gae_lambda: GAE factor; 1.0 gives plain n-step returns.
    :param ent_coef: Weight of the entropy bonus in the loss.
    :param vf_coef: Weight of the value loss in the loss.
    :param seed: Seed of the device's first environment and of its action sampling (environment ``i`` is
        seeded with ``seed + i``); ``None`` draws one.
    :param n_envs: Environments of the device's user shard stepped side by side, each for ``n_steps`` steps
        per rollout, with batched forward passes (default 1).
    """

    index: int
    env_spec: EnvSpec
    policy_class: type[BasePolicy]
    policy_kwargs: dict[str, Any]
    observation_space: spaces.Space
    action_space: spaces.Space
    n_steps: int
    gamma: float
    gae_lambda: float
    ent_coef: float
    vf_coef: float
    seed: int | None = None
    n_envs: int = 1


@dataclass(frozen=True)
class GradientMessage:
    """What a device sends to the learner after each rollout: gradients and scalar statistics, nothing else.

    :param version: Version of the global weights the gradients were computed on.
    :param gradients: Gradient of the loss, one float32 array per tensor of ``policy.parameters()``, in order.
    :param n_steps: Environment steps taken in this rollout, summed over the device's environments
        (``n_steps * n_envs`` of its :class:`DeviceConfig`).
    :param episode_returns: Undiscounted return of each episode that ended in this rollout.
    :param episode_lengths: Length, in steps, of each episode that ended in this rollout (steps of earlier
        rollouts included).
    :param episode_ends: Index, within this rollout, of the step that ended each of those episodes. Steps are
        counted step by step and, within a step, environment by environment: step ``t`` of environment
        ``i`` has index ``t * n_envs + i``.
    :param policy_loss: Policy-gradient loss of the rollout.
    :param value_loss: Value-function loss (mean squared error to the returns).
    :param entropy_loss: Minus the mean entropy of the policy.
    :param clicks: Steps whose ``info["clicked"]`` was true (over all the device's environments).
    :param impressions: Steps whose ``info`` had a ``"clicked"`` key (0 for environments without clicks).
    """

    version: int
    gradients: ParameterArrays
    n_steps: int
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    episode_ends: list[int] = field(default_factory=list)
    policy_loss: float = 0.0
    value_loss: float = 0.0
    entropy_loss: float = 0.0
    clicks: int = 0
    impressions: int = 0


def compute_returns_and_advantages(
    rewards: np.ndarray,
    values: np.ndarray,
    episode_ended: np.ndarray,
    last_value: float,
    gamma: float,
    gae_lambda: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalized advantage estimates and value targets of one rollout of a single environment.

    With ``gae_lambda=1`` the returns are the n-step discounted returns of A3C. The value of the state
    after step ``t`` is only used when step ``t`` did not end its episode; truncation is expected to be
    folded into ``rewards`` already (``reward + gamma * V(final observation)``), so an ended episode is
    never bootstrapped across.

    :param rewards: Rewards, shape ``(n_steps,)``.
    :param values: Value estimates of the observations the actions were taken in, shape ``(n_steps,)``.
    :param episode_ended: Whether step ``t`` ended its episode (terminated or truncated), shape ``(n_steps,)``.
    :param last_value: Value estimate of the observation after the last step (ignored if that step ended
        its episode).
    :param gamma: Discount factor.
    :param gae_lambda: GAE factor.
    :return: ``(returns, advantages)``, each of shape ``(n_steps,)``, float32.
    """
    n_steps = len(rewards)
    advantages = np.zeros(n_steps, dtype=np.float32)
    next_value = float(last_value)
    running_advantage = 0.0
    for step in reversed(range(n_steps)):
        not_ended = 0.0 if episode_ended[step] else 1.0
        td_error = rewards[step] + gamma * next_value * not_ended - values[step]
        running_advantage = td_error + gamma * gae_lambda * not_ended * running_advantage
        advantages[step] = running_advantage
        next_value = float(values[step])
    returns = (advantages + values).astype(np.float32)
    return returns, advantages


class _NoOptimizer:
    """Stands in for the optimizer of a device's policy copy, which is never stepped.

    Building a real PyTorch optimizer imports ``torch._dynamo`` (seconds per worker process) and would
    allocate state the device has no use for.
    """

    def __init__(self, params: Any, lr: float = 0.0, **kwargs: Any) -> None:
        pass


def _stack_observations(observations: list[Any]) -> np.ndarray | dict[str, np.ndarray]:
    """Stack per-step observations (arrays or dicts of arrays) into one batch along a new first axis."""
    if isinstance(observations[0], dict):
        return {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}
    return np.stack(observations)


class Device:
    """One DADRL device: its shard's environments and a local policy copy that turns weights into gradients.

    The environments keep running across rollouts (an episode may span several of them); the policy
    copy is overwritten by the weights received before each rollout. The device keeps its own PyTorch
    random state, so its action sampling does not depend on which process it runs in or on what else
    runs there. With ``n_envs > 1`` it steps ``n_envs`` sessions of its user shard side by side, as SB3's
    A2C steps a vectorized environment: one batched forward pass per step, returns computed per
    environment, and one gradient for the whole ``n_steps x n_envs`` rollout.

    :param config: How to build the device.
    """

    def __init__(self, config: DeviceConfig) -> None:
        if not isinstance(config.n_envs, int) or isinstance(config.n_envs, bool) or config.n_envs < 1:
            raise ValueError(f"n_envs of device {config.index} must be an integer >= 1, got {config.n_envs!r}")
        self.config = config
        self.envs: list[gym.Env] = [gym.make(config.env_spec) for _ in range(config.n_envs)]
        env = self.envs[0]
        if env.observation_space != config.observation_space or env.action_space != config.action_space:
            raise ValueError(
                f"device {config.index} built an environment with observation space {env.observation_space} and "
                f"action space {env.action_space}, but the policy expects {config.observation_space} and "
                f"{config.action_space}"
            )

        # Build the local policy under the device's own random state, leaving the process' state untouched
        with th.random.fork_rng(devices=[]):
            if config.seed is None:
                th.seed()
            else:
                th.manual_seed(config.seed)
            # The learner owns the only optimizer: the local copy gets a placeholder that holds no state
            policy_kwargs = {**config.policy_kwargs, "optimizer_class": _NoOptimizer, "optimizer_kwargs": {}}
            policy = config.policy_class(
                config.observation_space, config.action_space, BasePolicy._dummy_schedule, **policy_kwargs
            )
            self._rng_state = th.get_rng_state()
        if not isinstance(policy, ActorCriticPolicy):
            raise TypeError(f"DADRL devices need an actor-critic policy, got {config.policy_class.__name__}")
        self.policy: ActorCriticPolicy = policy
        self.policy.set_training_mode(False)

        # Each environment starts its own sessions: environment i is seeded with seed + i
        self._last_obs: list[Any] = [
            env.reset(seed=None if config.seed is None else config.seed + index)[0] for index, env in enumerate(self.envs)
        ]
        self._episode_returns = [0.0] * config.n_envs
        self._episode_lengths = [0] * config.n_envs

    @property
    def env(self) -> gym.Env:
        """The device's first environment (its only one when ``n_envs=1``)."""
        return self.envs[0]

    def load_weights(self, weights: ParameterArrays) -> None:
        """Overwrite the local policy with the global weights (one array per tensor of ``policy.parameters()``)."""
        parameters = list(self.policy.parameters())
        if len(weights) != len(parameters):
            raise ValueError(f"expected {len(parameters)} weight arrays, got {len(weights)}")
        with th.no_grad():
            for param, array in zip(parameters, weights, strict=True):
                param.copy_(th.as_tensor(array))

    def compute_gradients(self, weights: ParameterArrays, version: int) -> GradientMessage:
        """Run one rollout with the given global weights and return the gradient of its loss.

        :param weights: Global weights, one float32 array per tensor of ``policy.parameters()``.
        :param version: Version of those weights, echoed back in the message.
        :return: The gradients and statistics of the rollout.
        """
        self.load_weights(weights)
        with th.random.fork_rng(devices=[]):
            th.set_rng_state(self._rng_state)
            message = self._rollout_and_backward(version)
            self._rng_state = th.get_rng_state()
        return message

    def _env_action(self, action: np.ndarray) -> Any:
        """Turn the policy's raw action into one the environment accepts (SB3's clipping rules)."""
        if isinstance(self.config.action_space, spaces.Box):
            if self.policy.squash_output:
                return self.policy.unscale_action(action)
            return np.clip(action, self.config.action_space.low, self.config.action_space.high)
        if isinstance(self.config.action_space, spaces.Discrete):
            return int(action)
        return action

    def _values(self, observations: list[Any]) -> np.ndarray:
        """Value estimates of a list of observations, one batched forward pass without gradient; shape ``(len,)``."""
        with th.no_grad():
            obs_tensor, _ = self.policy.obs_to_tensor(_stack_observations(observations))
            return self.policy.predict_values(obs_tensor).cpu().numpy().flatten()

    def _value(self, obs: Any) -> float:
        """Value estimate of one observation, without gradient."""
        return float(self._values([obs])[0])

    def _rollout_and_backward(self, version: int) -> GradientMessage:
        config = self.config
        policy = self.policy
        n_envs = config.n_envs
        # Observations and actions are kept step by step, environment by environment within a step
        observations: list[Any] = []
        actions: list[np.ndarray] = []
        rewards = np.zeros((config.n_steps, n_envs), dtype=np.float32)
        values = np.zeros((config.n_steps, n_envs), dtype=np.float32)
        episode_ended = np.zeros((config.n_steps, n_envs), dtype=bool)
        episode_returns: list[float] = []
        episode_lengths: list[int] = []
        episode_ends: list[int] = []
        clicks = impressions = 0

        # Collect the rollout with sampled actions, continuing the episodes left by the previous rollout
        for step in range(config.n_steps):
            with th.no_grad():
                obs_tensor, _ = policy.obs_to_tensor(_stack_observations(self._last_obs))
                action_tensor, value_tensor, _ = policy(obs_tensor)
            step_actions = action_tensor.cpu().numpy()
            values[step] = value_tensor.cpu().numpy().flatten()

            for env_index, env in enumerate(self.envs):
                action = step_actions[env_index]
                new_obs, reward, terminated, truncated, info = env.step(self._env_action(action))
                observations.append(self._last_obs[env_index])
                actions.append(action)
                rewards[step, env_index] = float(reward)
                self._episode_returns[env_index] += float(reward)
                self._episode_lengths[env_index] += 1
                if "clicked" in info:
                    impressions += 1
                    clicks += int(bool(info["clicked"]))

                # A truncated (not terminated) episode would have gone on: bootstrap from its final observation
                if truncated and not terminated:
                    rewards[step, env_index] += config.gamma * self._value(new_obs)

                # An ended episode is recorded and the environment reset; its last value is never used
                if terminated or truncated:
                    episode_ended[step, env_index] = True
                    episode_returns.append(self._episode_returns[env_index])
                    episode_lengths.append(self._episode_lengths[env_index])
                    episode_ends.append(step * n_envs + env_index)
                    self._episode_returns[env_index], self._episode_lengths[env_index] = 0.0, 0
                    new_obs, _ = env.reset()
                self._last_obs[env_index] = new_obs

        # Returns per environment, bootstrapped from the next observation only where the rollout stopped mid-episode
        last_values = np.zeros(n_envs, dtype=np.float32) if episode_ended[-1].all() else self._values(self._last_obs)
        returns = np.zeros_like(rewards)
        advantages = np.zeros_like(rewards)
        for env_index in range(n_envs):
            returns[:, env_index], advantages[:, env_index] = compute_returns_and_advantages(
                rewards[:, env_index],
                values[:, env_index],
                episode_ended[:, env_index],
                float(last_values[env_index]),
                config.gamma,
                config.gae_lambda,
            )

        # Advantage actor-critic loss of the whole rollout, recomputed with gradient in one batch
        obs_batch, _ = policy.obs_to_tensor(_stack_observations(observations))
        action_batch = th.as_tensor(np.stack(actions), device=policy.device)
        if isinstance(config.action_space, spaces.Discrete):
            action_batch = action_batch.long().flatten()
        policy.set_training_mode(True)
        new_values, log_prob, entropy = policy.evaluate_actions(obs_batch, action_batch)
        policy.set_training_mode(False)
        advantages_tensor = th.as_tensor(advantages.flatten(), device=policy.device)
        returns_tensor = th.as_tensor(returns.flatten(), device=policy.device)
        policy_loss = -(advantages_tensor * log_prob).mean()
        value_loss = th.nn.functional.mse_loss(returns_tensor, new_values.flatten())
        entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
        loss = policy_loss + config.ent_coef * entropy_loss + config.vf_coef * value_loss

        # Raw gradients go to the learner, which clips and applies them
        policy.zero_grad(set_to_none=True)
        loss.backward()
        gradients = [
            np.zeros(tuple(param.shape), dtype=np.float32)
            if param.grad is None
            else param.grad.detach().cpu().numpy().astype(np.float32)
            for param in policy.parameters()
        ]
        return GradientMessage(
            version=version,
            gradients=gradients,
            n_steps=config.n_steps * n_envs,
            episode_returns=episode_returns,
            episode_lengths=episode_lengths,
            episode_ends=episode_ends,
            policy_loss=policy_loss.item(),
            value_loss=value_loss.item(),
            entropy_loss=entropy_loss.item(),
            clicks=clicks,
            impressions=impressions,
        )

    def close(self) -> None:
        """Close the device's environments."""
        for env in self.envs:
            env.close()
