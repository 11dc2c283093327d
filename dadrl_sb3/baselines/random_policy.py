"""Random recommender: picks a candidate uniformly at random, the floor every method must beat."""

import json
import os
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["RandomRecommender"]

SelfRandomRecommender = TypeVar("SelfRandomRecommender", bound="RandomRecommender")


class RandomRecommender:
    """
    Pick one of the ``k + 1`` candidates uniformly at random.

    It scores nothing: every candidate is equally likely, so under the One-Plus-k-Random-Items
    protocol its expected CTR (HR@1) is ``1 / (k + 1)``: the "random pick" row of the paper's
    Table 1. Draws come from the recommender's own ``numpy.random.Generator``; the global NumPy
    generator is never touched.

    The number of candidates is read from each call when it can be (``info["candidate_items"]``,
    or the ``"candidates"`` block of a Dict observation), so one instance serves every ``k``;
    otherwise the action space given at construction decides.

    :param action_space_or_env: a ``Discrete(k + 1)`` action space, or an environment that has one
    :param seed: seed of the recommender's generator; ``None`` draws fresh entropy
    """

    def __init__(self, action_space_or_env: spaces.Space | gym.Env, seed: int | None = None):
        action_space = getattr(action_space_or_env, "action_space", action_space_or_env)
        if not isinstance(action_space, spaces.Discrete):
            raise ValueError(
                "RandomRecommender needs a Discrete(k + 1) action space or an environment with one; "
                f"got action_space_or_env={action_space_or_env!r}."
            )
        self.action_space = action_space
        self.observation_space: spaces.Space | None = getattr(action_space_or_env, "observation_space", None)
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def _n_candidates(self, observation: Any = None, info: dict[str, Any] | None = None) -> int:
        """
        :param observation: one observation, or None
        :param info: the ``info`` dict of ``reset()`` / ``step()``, or None
        :return: the number of candidates to pick from
        """
        if info is not None and "candidate_items" in info:
            return len(info["candidate_items"])
        if isinstance(observation, dict) and "candidates" in observation:
            return int(np.shape(observation["candidates"])[-2])
        return int(self.action_space.n)

    def act(self, obs: Any, info: dict[str, Any] | None = None) -> int:
        """
        Pick a candidate (the evaluator's candidate-aware protocol).

        :param obs: the observation (used only to count the candidates)
        :param info: the ``info`` dict of ``reset()`` / ``step()`` (used only to count the candidates)
        :return: the slot of the picked candidate, in ``[0, k]``
        """
        return int(self.rng.integers(self._n_candidates(obs, info)))

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, None]:
        """
        SB3-style prediction, for one observation or a batch of ``n_envs``.

        :param observation: one observation or a batch (flat ``(n_envs, obs_dim)``, or a Dict whose
            ``"candidates"`` is ``(n_envs, k + 1, item_dim)``)
        :param state: unused (no recurrent state)
        :param episode_start: unused
        :param deterministic: unused: a random recommender has no deterministic choice
        :return: the picked slots (shape ``()`` for one observation, ``(n_envs,)`` for a batch) and None
        """
        # A batch has one more leading axis than the space (or, without a space, than one flat vector)
        if isinstance(observation, dict):
            candidates = np.asarray(observation["candidates"])
            batch_size = candidates.shape[0] if candidates.ndim == 3 else None
        elif self.observation_space is not None and self.observation_space.shape is not None:
            array = np.asarray(observation)
            batch_size = array.shape[0] if array.ndim == len(self.observation_space.shape) + 1 else None
        else:
            array = np.asarray(observation)
            batch_size = array.shape[0] if array.ndim >= 2 else None

        # Draw one slot per observation among as many candidates as the observation shows
        n_candidates = self._n_candidates(observation)
        actions = self.rng.integers(n_candidates, size=() if batch_size is None else (batch_size,))
        return np.asarray(actions, dtype=np.int64), None

    def learn(self: SelfRandomRecommender, total_timesteps: int = 0, *args: Any, **kwargs: Any) -> SelfRandomRecommender:
        """
        Nothing to learn; present so that the recommender drops into SB3-style training scripts.

        :param total_timesteps: ignored
        :param args: ignored (SB3's ``learn`` arguments: callback, log_interval, ...)
        :param kwargs: ignored
        :return: self
        """
        return self

    def save(self, path: str | os.PathLike[str]) -> None:
        """
        Write the recommender, with its generator's current state, to a JSON file.

        :param path: file to write (``.json`` recommended)
        """
        data = {
            "class": type(self).__name__,
            "n_actions": int(self.action_space.n),
            "seed": self.seed,
            "rng_state": self.rng.bit_generator.state,
        }
        with open(path, "w", encoding="utf-8") as file:
            json.dump(data, file)

    @classmethod
    def load(cls: type[SelfRandomRecommender], path: str | os.PathLike[str]) -> SelfRandomRecommender:
        """
        Read a recommender written by :meth:`save`; it continues the same stream of draws.

        :param path: file written by :meth:`save`
        :return: the recommender
        :raises ValueError: if the file was not written by ``RandomRecommender.save``
        """
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
        if not isinstance(data, dict) or data.get("class") != cls.__name__:
            raise ValueError(f"{os.fspath(path)!r} was not written by {cls.__name__}.save().")
        recommender = cls(spaces.Discrete(data["n_actions"]), seed=data["seed"])
        recommender.rng.bit_generator.state = data["rng_state"]
        return recommender
