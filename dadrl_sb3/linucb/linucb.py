"""LinUCB: one shared linear upper-confidence-bound model scores every candidate of the set, at any ``k``."""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections import deque
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ConvertCallback, ProgressBarCallback
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.logger import HumanOutputFormat, Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.type_aliases import MaybeCallback
from stable_baselines3.common.utils import safe_mean
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from dadrl_sb3.common.candidate_policies import CANDIDATES_KEY, USER_KEY, check_candidate_spaces

__all__ = ["LinUCB"]

SelfLinUCB = TypeVar("SelfLinUCB", bound="LinUCB")

#: At most this many leading item-sized slices of the user block are multiplied with the candidate
#: (``OutbrainRec-v0``: the history mean and the last click).
MAX_INTERACTION_BLOCKS = 2


def _is_real(value: Any) -> bool:
    """:return: whether ``value`` is a real number (a bool is not)"""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


class LinUCB:
    """
    LinUCB, the linear upper-confidence-bound contextual bandit, with one model shared by all candidates.

    Paper: Li, Chu, Langford, Schapire, "A Contextual-Bandit Approach to Personalized News Article
    Recommendation", WWW 2010, https://arxiv.org/abs/1003.0146.

    Each candidate ``i`` of a set is described by a feature vector ``x_i`` built from the observation:

    ``x_i = concat(u, c_i, u[0:F] * c_i, u[F:2F] * c_i)``

    where ``u`` is the user block (``user_dim`` values), ``c_i`` candidate ``i``'s item features (``F =
    item_dim`` values) and ``*`` the elementwise product. In ``OutbrainRec-v0`` the user block starts with
    two item-sized slices (the mean features of the recent clicks, then those of the last click), so
    the products express user-item affinity, which a linear model of ``concat(u, c_i)`` alone cannot:
    ``u`` is the same for every candidate and so moves no candidate above another. With another layout
    only as many whole ``F``-sized slices as fit in ``user_dim`` are used, at most two (none if
    ``user_dim < F``). The feature size is ``d = user_dim + (1 + n_interaction_blocks) * F``
    (``OutbrainRec-v0``: ``2F + 5 + C + 3F``).

    One linear model ``theta`` serves every candidate and every ``k`` (the shared part of the paper's
    hybrid model; the per-article models of its disjoint variant would need each item to recur often
    enough to be learned, while here candidates are drawn from the whole catalogue). With ridge
    ``lambda``, after ``t`` clicks-or-not ``r_s`` on picked candidates ``x_s``:

    - ``A = lambda I + sum_s x_s x_s^T`` and ``b = sum_s r_s x_s``, ``theta = A^-1 b``;
    - ``score_i = theta^T x_i + alpha * sqrt(x_i^T A^-1 x_i)``; the pick is the highest score (the
      lowest slot among exact ties).

    Only the picked candidate's features and its click update the model (bandit feedback): the
    environment's ``info`` says where the click was, but LinUCB never reads it. ``A^-1`` is kept
    directly and updated with the Sherman-Morrison formula
    ``A^-1 <- A^-1 - (A^-1 x)(A^-1 x)^T / (1 + x^T A^-1 x)``, so an update costs ``O(d^2)`` time
    instead of the ``O(d^3)`` of an inversion; scoring a set costs ``O((k + 1) d^2)`` and the model
    holds ``O(d^2)`` numbers, whatever the number of steps. Everything is computed in float64.

    Observations come in either form of ``OutbrainRec-v0``, detected from the environment's
    observation space: ``obs_mode="dict"`` (``{"user": (user_dim,), "candidates": (k + 1, F)}``) or
    ``obs_mode="flat"`` (the user block then the ``k + 1`` candidate blocks, which needs
    ``env.unwrapped.user_dim`` and ``env.unwrapped.item_dim`` to split it). As the model does not
    depend on ``k``, one trained at a ``k`` scores sets of any size (:meth:`predict`, :meth:`act`).

    The interface follows Stable-Baselines3: :meth:`learn` runs the environment (wrapped in SB3's
    ``Monitor`` and a ``DummyVecEnv`` if it is not a ``VecEnv``), calls SB3 callbacks
    (``on_training_start``, ``update_locals`` and ``on_step`` after every ``env.step``,
    ``on_training_end``) with ``locals()["infos"]`` holding Monitor's ``{"episode": {"r": clicks,
    "l": length, "t": seconds}}`` at each episode end, and logs ``rollout/``, ``time/`` and ``train/``
    keys. Callbacks may use ``self.model.num_timesteps``, ``.logger``, ``.get_env()``, ``.predict()``
    and ``.save()``; those that need more of an SB3 ``BaseAlgorithm`` (a policy, a replay buffer) are
    not supported.

    Note: LinUCB picks deterministically given ``A`` and ``b``: there is no separate greedy mode, and
    ``predict(deterministic=...)`` keeps the exploration bonus ``alpha`` either way.

    :param env: the training environment (a Gymnasium env or an SB3 ``VecEnv``), or ``None`` for a
        model that only predicts, built with ``user_dim`` and ``item_dim`` (as :meth:`load` does)
    :param alpha: width of the confidence bonus, ``>= 0`` (0: greedy ridge regression); default 1.0
    :param ridge: the ridge ``lambda > 0`` of ``A = lambda I + ...``: a prior of ``lambda`` pseudo-
        observations of every feature direction; default 1.0
    :param seed: seed of the environment's first reset in :meth:`learn` (LinUCB itself draws nothing);
        ``None`` leaves the environment unseeded
    :param verbose: 0 prints nothing; 1 (or 2) prints the logged values every ``log_interval`` episodes
    :param user_dim: size of the user block, only when ``env`` is None
    :param item_dim: number of features per candidate (``F``), only when ``env`` is None
    """

    def __init__(
        self,
        env: gym.Env | VecEnv | None,
        alpha: float = 1.0,
        ridge: float = 1.0,
        seed: int | None = None,
        verbose: int = 0,
        *,
        user_dim: int | None = None,
        item_dim: int | None = None,
    ) -> None:
        # Check the hyper-parameters
        if not (_is_real(alpha) and math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0 (the width of the confidence bonus), got alpha={alpha!r}")
        if not (_is_real(ridge) and math.isfinite(ridge) and ridge > 0):
            raise ValueError(f"ridge must be a finite number > 0 (lambda in A = lambda I + sum x x^T), got ridge={ridge!r}")
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got verbose={verbose!r}")
        self.alpha = float(alpha)
        self.ridge = float(ridge)
        self.seed = seed
        self.verbose = verbose

        # Feature sizes: from the environment, or given
        self.env: VecEnv | None = None
        self.observation_space: spaces.Space[Any] | None = None
        self.action_space: spaces.Space[Any] | None = None
        if env is not None:
            if user_dim is not None or item_dim is not None:
                raise ValueError("LinUCB reads user_dim and item_dim from env; pass them only with env=None.")
            user_dim, item_dim = self._env_feature_sizes(env)
        elif user_dim is None or item_dim is None:
            raise ValueError("LinUCB needs an env, or both user_dim and item_dim when env=None.")
        for name, value in (("user_dim", user_dim), ("item_dim", item_dim)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {name}={value!r}")
        self.user_dim = int(user_dim)
        self.item_dim = int(item_dim)
        self.n_interaction_blocks = min(MAX_INTERACTION_BLOCKS, self.user_dim // self.item_dim)
        self.feature_dim = self.user_dim + (1 + self.n_interaction_blocks) * self.item_dim

        # The model: A^-1 = I / lambda and b = 0 before any feedback, so theta = 0
        self.A_inv = np.eye(self.feature_dim) / self.ridge
        self.b = np.zeros(self.feature_dim)
        self.theta = np.zeros(self.feature_dim)
        self._n_updates = 0

        # Training state, SB3-style
        self.num_timesteps = 0
        self._episode_num = 0
        self._last_obs: Any = None
        self.ep_info_buffer: deque[dict[str, float]] = deque(maxlen=100)
        self._logger: Logger | None = None
        if env is not None:
            self.set_env(env)

    # -- environment ---------------------------------------------------------------------------------
    @staticmethod
    def _env_feature_sizes(env: gym.Env | VecEnv) -> tuple[int, int]:
        """
        Read ``(user_dim, item_dim)`` from a Dict observation space, or from the env's attributes for a flat one.

        :param env: a Gymnasium env or an SB3 ``VecEnv``
        :return: the size of the user block and the number of features per candidate
        :raises ValueError: if the observation space is neither form of a candidate-set observation
        """
        observation_space = env.observation_space
        if isinstance(observation_space, spaces.Dict):
            check_candidate_spaces(observation_space, env.action_space, owner="LinUCB")
            user_shape, candidates_shape = observation_space[USER_KEY].shape, observation_space[CANDIDATES_KEY].shape
            assert user_shape is not None and candidates_shape is not None  # checked Box spaces
            return int(user_shape[0]), int(candidates_shape[1])
        if isinstance(observation_space, spaces.Box) and len(observation_space.shape) == 1:
            if isinstance(env, VecEnv):
                sizes = [env.get_attr(name, indices=0)[0] if env.has_attr(name) else None for name in ("user_dim", "item_dim")]
            else:
                sizes = [getattr(env.unwrapped, name, None) for name in ("user_dim", "item_dim")]
            user_dim, item_dim = sizes
            if user_dim is None or item_dim is None:
                raise ValueError(
                    "LinUCB splits a flat observation into the user block and the candidate blocks with the env's "
                    f"user_dim and item_dim attributes (OutbrainRec-v0 has them); {env!r} lacks them. "
                    'Make the environment with obs_mode="dict" instead.'
                )
            return int(user_dim), int(item_dim)
        raise ValueError(
            'LinUCB needs a candidate-set observation: a Dict with "user" and "candidates" (obs_mode="dict") or a flat '
            f'1-D Box (obs_mode="flat"); got observation_space={observation_space}.'
        )

    def set_env(self, env: gym.Env | VecEnv) -> None:
        """
        Set the environment :meth:`learn` runs; a Gymnasium env is wrapped in SB3's ``Monitor`` and a ``DummyVecEnv``.

        :param env: an environment with the feature sizes this model was built for (any ``k``)
        :raises ValueError: if its feature sizes differ from the model's
        """
        sizes = self._env_feature_sizes(env)
        if sizes != (self.user_dim, self.item_dim):
            raise ValueError(
                f"env has (user_dim, item_dim) = {sizes} but this LinUCB was built for {(self.user_dim, self.item_dim)}."
            )
        if not isinstance(env, VecEnv):
            monitored = env if is_wrapped(env, Monitor) else Monitor(env)
            env = DummyVecEnv([lambda: monitored])
        elif not all(env.env_is_wrapped(Monitor)):
            warnings.warn(
                "LinUCB was given a VecEnv whose environments are not all wrapped in Monitor: their episodes will "
                'not be reported in info["episode"] nor logged under rollout/.',
                stacklevel=2,
            )
        if self.seed is not None:
            env.seed(self.seed)
        self.env = env
        self.observation_space = env.observation_space
        self.action_space = env.action_space
        self._last_obs = None

    def get_env(self) -> VecEnv | None:
        """
        :return: the training environment as a ``VecEnv``, or ``None`` if there is none
        """
        return self.env

    @property
    def n_envs(self) -> int:
        """Number of environments :meth:`learn` steps in parallel (0 without an environment)."""
        return 0 if self.env is None else self.env.num_envs

    @property
    def logger(self) -> Logger:
        """The SB3 logger :meth:`learn` records to; by default stdout when ``verbose >= 1``, nothing otherwise."""
        if self._logger is None:
            self._logger = Logger(folder=None, output_formats=[HumanOutputFormat(sys.stdout)] if self.verbose >= 1 else [])
        return self._logger

    def set_logger(self, logger: Logger) -> None:
        """
        Record to another SB3 logger (e.g. one from ``stable_baselines3.common.logger.configure`` with TensorBoard).

        :param logger: the logger
        """
        self._logger = logger

    # -- features, scores and updates ---------------------------------------------------------------
    def _split_observation(self, observation: Any) -> tuple[np.ndarray, np.ndarray, bool]:
        """
        Take the user and candidate blocks out of one observation or a batch, in either form.

        :param observation: flat ``(obs_dim,)`` / ``(batch, obs_dim)``, or a Dict with ``"user"``
            ``(user_dim,)`` / ``(batch, user_dim)`` and ``"candidates"`` ``(n, F)`` / ``(batch, n, F)``
        :return: users ``(batch, user_dim)``, candidates ``(batch, n, F)``, and whether the input was a batch
        :raises ValueError: if the shapes do not match the model's feature sizes
        """
        # Dict observations carry both blocks
        if isinstance(observation, dict):
            user = np.asarray(observation[USER_KEY], dtype=np.float64)
            candidates = np.asarray(observation[CANDIDATES_KEY], dtype=np.float64)
            batched = candidates.ndim == 3
            if batched:
                user = user.reshape(candidates.shape[0], -1)
            else:
                user, candidates = user.reshape(1, -1), candidates[None]
            if candidates.ndim != 3 or user.shape[1] != self.user_dim or candidates.shape[2] != self.item_dim:
                raise ValueError(
                    f'LinUCB expects observation["user"] of {self.user_dim} values and observation["candidates"] of shape '
                    f"(k + 1, {self.item_dim}) (with a leading batch axis or not); got shapes "
                    f"{np.shape(observation[USER_KEY])} and {np.shape(observation[CANDIDATES_KEY])}."
                )
            return user, candidates, batched

        # Flat observations: the user block, then k + 1 candidate blocks of item_dim values
        flat = np.asarray(observation, dtype=np.float64)
        batched = flat.ndim == 2
        flat = flat if batched else flat.reshape(1, -1)
        n_candidate_values = flat.shape[-1] - self.user_dim
        if flat.ndim != 2 or n_candidate_values < self.item_dim or n_candidate_values % self.item_dim:
            raise ValueError(
                f"LinUCB expects a flat observation of user_dim + (k + 1) * item_dim = {self.user_dim} + (k + 1) * "
                f"{self.item_dim} values (with a leading batch axis or not); got shape {np.shape(observation)}."
            )
        return flat[:, : self.user_dim], flat[:, self.user_dim :].reshape(len(flat), -1, self.item_dim), batched

    def _features(self, user: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """
        :param user: user blocks, shape ``(batch, user_dim)``
        :param candidates: candidate features, shape ``(batch, n, F)``
        :return: ``x_i = concat(u, c_i, u[0:F] * c_i, ...)`` per candidate, shape ``(batch, n, feature_dim)``
        """
        n_candidates = candidates.shape[1]
        parts = [np.broadcast_to(user[:, None, :], (len(user), n_candidates, self.user_dim)), candidates]
        for block in range(self.n_interaction_blocks):
            parts.append(user[:, None, block * self.item_dim : (block + 1) * self.item_dim] * candidates)
        return np.concatenate(parts, axis=-1)

    def candidate_features(self, observation: Any) -> np.ndarray:
        """
        The feature vector ``x_i`` of every candidate (see the class docstring).

        :param observation: one observation or a batch, flat or Dict (see :meth:`predict`)
        :return: shape ``(k + 1, feature_dim)``, or ``(batch, k + 1, feature_dim)`` for a batch
        """
        user, candidates, batched = self._split_observation(observation)
        features = self._features(user, candidates)
        return features if batched else features[0]

    def _ucb_scores(self, features: np.ndarray) -> np.ndarray:
        """
        :param features: candidate features, shape ``(..., feature_dim)``
        :return: ``theta^T x + alpha * sqrt(x^T A^-1 x)``, shape ``(...)``
        """
        variance = np.einsum("...i,ij,...j->...", features, self.A_inv, features)
        return features @ self.theta + self.alpha * np.sqrt(np.maximum(variance, 0.0))

    def score_candidates(self, observation: Any) -> np.ndarray:
        """
        Score every candidate: estimated click plus the confidence bonus (higher is better).

        :param observation: one observation or a batch, flat or Dict (see :meth:`predict`)
        :return: scores, shape ``(k + 1,)``, or ``(batch, k + 1)`` for a batch
        """
        return self._ucb_scores(self.candidate_features(observation))

    def update(self, features: np.ndarray, reward: float) -> None:
        """
        Learn from one picked candidate's click: ``A += x x^T`` (as a Sherman-Morrison update of ``A^-1``), ``b += r x``.

        :param features: the picked candidate's ``x``, shape ``(feature_dim,)``
        :param reward: its click, 1.0 or 0.0 (any finite number is accepted)
        """
        x = np.asarray(features, dtype=np.float64).reshape(self.feature_dim)
        a_inv_x = self.A_inv @ x
        self.A_inv -= np.outer(a_inv_x, a_inv_x) / (1.0 + x @ a_inv_x)
        self.b += float(reward) * x
        self.theta = self.A_inv @ self.b
        self._n_updates += 1

    # -- SB3-style interface -------------------------------------------------------------------------
    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, None]:
        """
        Pick the candidate with the highest upper confidence bound, for one observation or a batch.

        :param observation: flat ``(obs_dim,)`` or ``(batch, obs_dim)`` with ``obs_dim = user_dim + (k + 1) * F``;
            or a Dict with ``"user"`` ``(user_dim,)`` / ``(batch, user_dim)`` and ``"candidates"`` ``(k + 1, F)`` /
            ``(batch, k + 1, F)``; any ``k``
        :param state: unused (no recurrent state)
        :param episode_start: unused
        :param deterministic: unused: LinUCB's pick is deterministic given ``A`` and ``b``, bonus included
        :return: the picked slots (shape ``()`` for one observation, ``(batch,)`` for a batch) and None
        """
        user, candidates, batched = self._split_observation(observation)
        actions = self._ucb_scores(self._features(user, candidates)).argmax(axis=-1).astype(np.int64)
        return (actions if batched else actions[0]), None

    def act(self, obs: Any, info: dict[str, Any] | None = None) -> int:
        """
        Pick a candidate (the evaluator's candidate-aware protocol).

        :param obs: one observation, flat or Dict
        :param info: unused (LinUCB reads only the observation)
        :return: the slot of the picked candidate, in ``[0, k]``
        """
        action, _ = self.predict(obs)
        return int(action)

    def _init_callback(self, callback: MaybeCallback, progress_bar: bool) -> BaseCallback:
        """
        Turn ``callback`` into one ``BaseCallback`` bound to this model, as SB3's algorithms do.

        :param callback: None, a callback, a list of callbacks, or a function ``(locals, globals) -> bool``
        :param progress_bar: add SB3's progress bar callback
        :return: the callback to call during :meth:`learn`
        """
        if isinstance(callback, list):
            callback = CallbackList(callback)
        elif callback is None:
            callback = CallbackList([])
        elif not isinstance(callback, BaseCallback):
            callback = ConvertCallback(callback)
        if progress_bar:
            callback = CallbackList([callback, ProgressBarCallback()])
        # BaseCallback is typed for SB3's BaseAlgorithm; it reads only what this class provides (see the class docstring)
        callback.init_callback(self)  # type: ignore[arg-type]
        return callback

    def learn(
        self: SelfLinUCB,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "LinUCB",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfLinUCB:
        """
        Recommend in the environment for ``total_timesteps`` steps, learning from each pick's click.

        :param total_timesteps: environment steps to take (over all environments of a ``VecEnv``)
        :param callback: SB3 callback(s) called after every step (see the class docstring for what they may use)
        :param log_interval: episodes between two dumps of the logged values
        :param tb_log_name: unused (LinUCB writes to :attr:`logger`; see :meth:`set_logger`); kept for SB3 scripts
        :param reset_num_timesteps: start counting at 0 and reset the environment; False continues the count
            (``total_timesteps`` then counts the new steps) and the running episodes
        :param progress_bar: show a progress bar (needs ``tqdm`` and ``rich``)
        :return: self
        :raises ValueError: without an environment, or for a negative ``total_timesteps``
        """
        if self.env is None:
            raise ValueError("LinUCB.learn needs an environment: pass env to the constructor or call set_env(env).")
        if isinstance(total_timesteps, bool) or not isinstance(total_timesteps, (int, np.integer)) or total_timesteps < 0:
            raise ValueError(f"total_timesteps must be an integer >= 0, got total_timesteps={total_timesteps!r}")
        if isinstance(log_interval, bool) or not isinstance(log_interval, (int, np.integer)) or log_interval < 1:
            raise ValueError(f"log_interval must be an integer >= 1 (episodes between log dumps), got {log_interval!r}")
        env = self.env

        # Set up the counters and the first observations, as SB3's _setup_learn does
        start_time = time.time_ns()
        if reset_num_timesteps or self._last_obs is None:
            self.num_timesteps = 0 if reset_num_timesteps else self.num_timesteps
            self._episode_num = 0 if reset_num_timesteps else self._episode_num
            self._last_obs = env.reset()
        total_timesteps += self.num_timesteps
        start_timesteps = self.num_timesteps
        last_dumped_episode = self._episode_num
        callback = self._init_callback(callback, progress_bar)
        callback.on_training_start(locals(), globals())
        callback.on_rollout_start()

        while self.num_timesteps < total_timesteps:
            # Score each environment's candidate set and pick the highest upper confidence bound
            user, candidates, _ = self._split_observation(self._last_obs)
            features = self._features(user, candidates)
            actions = self._ucb_scores(features).argmax(axis=-1)
            new_obs, rewards, dones, infos = env.step(actions)
            self.num_timesteps += env.num_envs

            # Bandit feedback: only the picked candidate's features and its click
            for env_index, action in enumerate(actions):
                self.update(features[env_index, action], float(rewards[env_index]))

            # Monitor's episode statistics, then the callbacks
            for info in infos:
                if "episode" in info:
                    self.ep_info_buffer.append(info["episode"])
            self._episode_num += int(np.sum(dones))
            callback.update_locals(locals())
            if not callback.on_step():
                break
            self._last_obs = new_obs

            # Dump the logs every log_interval episodes
            if self._episode_num - last_dumped_episode >= log_interval:
                self._dump_logs(start_time, start_timesteps)
                last_dumped_episode = self._episode_num

        callback.on_rollout_end()
        callback.on_training_end()
        return self

    def _dump_logs(self, start_time: int, start_timesteps: int) -> None:
        """
        Record SB3's ``rollout/`` and ``time/`` keys, the recent CTR and the update count, then dump them.

        :param start_time: ``time.time_ns()`` at the start of this :meth:`learn` call
        :param start_timesteps: ``num_timesteps`` at the start of this :meth:`learn` call
        """
        elapsed = max((time.time_ns() - start_time) / 1e9, sys.float_info.epsilon)
        if self.ep_info_buffer:
            clicks = [float(episode["r"]) for episode in self.ep_info_buffer]
            lengths = [float(episode["l"]) for episode in self.ep_info_buffer]
            self.logger.record("rollout/ep_rew_mean", safe_mean(clicks))
            self.logger.record("rollout/ep_len_mean", safe_mean(lengths))
            self.logger.record("rollout/ctr", sum(clicks) / max(sum(lengths), 1.0))
        self.logger.record("time/episodes", self._episode_num, exclude="tensorboard")
        self.logger.record("time/fps", int((self.num_timesteps - start_timesteps) / elapsed))
        self.logger.record("time/time_elapsed", int(elapsed), exclude="tensorboard")
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.dump(step=self.num_timesteps)

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """
        Write the model (``A^-1``, ``b``, ``theta``, ``alpha``, ``ridge``, the feature sizes, the counters) to a ``.npz`` file.

        The environment, the logger and the running episodes are not saved.

        :param path: file to write, exactly this name (``.npz`` recommended)
        """
        meta = {
            "class": type(self).__name__,
            "alpha": self.alpha,
            "ridge": self.ridge,
            "user_dim": self.user_dim,
            "item_dim": self.item_dim,
            "n_interaction_blocks": self.n_interaction_blocks,
            "seed": self.seed,
            "num_timesteps": self.num_timesteps,
            "n_updates": self._n_updates,
        }
        with open(path, "wb") as file:
            np.savez(file, A_inv=self.A_inv, b=self.b, theta=self.theta, meta=np.array(json.dumps(meta)))

    @classmethod
    def load(
        cls: type[SelfLinUCB], path: str | os.PathLike[str], env: gym.Env | VecEnv | None = None, verbose: int = 0
    ) -> SelfLinUCB:
        """
        Read a model written by :meth:`save`; it predicts exactly as the saved one did.

        :param path: file written by :meth:`save`
        :param env: environment to continue learning in (any ``k``, same feature sizes), or None
        :param verbose: verbosity of the loaded model
        :return: the model
        :raises ValueError: if the file was not written by ``LinUCB.save`` or ``env`` has other feature sizes
        """
        with np.load(path, allow_pickle=False) as archive:
            if not {"meta", "A_inv", "b", "theta"} <= set(archive.files):
                raise ValueError(f"{os.fspath(path)!r} was not written by {cls.__name__}.save().")
            meta = json.loads(str(archive["meta"]))
            arrays = {name: archive[name] for name in ("A_inv", "b", "theta")}
        if meta.get("class") != cls.__name__:
            raise ValueError(f"{os.fspath(path)!r} was written by {meta.get('class')}.save(), not {cls.__name__}.save().")

        # Rebuild without an environment, restore the model, then attach the environment (which checks the sizes)
        model = cls(
            None, meta["alpha"], meta["ridge"], meta["seed"], verbose, user_dim=meta["user_dim"], item_dim=meta["item_dim"]
        )
        if model.n_interaction_blocks != meta["n_interaction_blocks"] or arrays["A_inv"].shape != model.A_inv.shape:
            raise ValueError(f"{os.fspath(path)!r} holds a model of another feature layout than {cls.__name__} builds.")
        model.A_inv, model.b, model.theta = arrays["A_inv"], arrays["b"], arrays["theta"]
        model.num_timesteps, model._n_updates = meta["num_timesteps"], meta["n_updates"]
        if env is not None:
            model.set_env(env)
        return model
