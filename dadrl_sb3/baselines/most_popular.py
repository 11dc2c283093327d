"""Most-Popular recommender: picks the candidate clicked most often in the training split."""

import json
import os
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
from numpy.typing import ArrayLike

__all__ = ["MostPopular"]

SelfMostPopular = TypeVar("SelfMostPopular", bound="MostPopular")


class MostPopular:
    """
    Pick the candidate with the most clicks in the training split; ties are broken at random.

    Each candidate is scored by ``item_train_clicks[item]``, the number of training clicks of its
    item (``env.unwrapped.dataset.item_train_clicks`` of ``OutbrainRec-v0``; computed from the
    training split only, so nothing leaks from the test split). The score ignores the user: this is
    the non-personalised baseline a learned recommender must beat beside the random floor. Among
    equally popular candidates one is drawn uniformly with the recommender's own
    ``numpy.random.Generator``; the global NumPy generator is never touched.

    The observation does not say which item sits in which slot, so the recommender works only
    through :meth:`act` with the ``info`` dict (``info["candidate_items"]``); :meth:`predict` raises.

    :param env: an environment whose ``unwrapped.dataset.item_train_clicks`` gives the click counts
        (read once, here); pass either ``env`` or ``item_train_clicks``
    :param seed: seed of the tie-breaking generator; ``None`` draws fresh entropy
    :param item_train_clicks: training clicks per item index, shape ``(n_items,)``, instead of ``env``
    """

    def __init__(self, env: gym.Env | None = None, seed: int | None = None, *, item_train_clicks: ArrayLike | None = None):
        # Read the click counts from exactly one source
        if (env is None) == (item_train_clicks is None):
            raise ValueError("MostPopular needs exactly one of env or item_train_clicks.")
        if env is not None:
            dataset = getattr(env.unwrapped, "dataset", None)
            item_train_clicks = getattr(dataset, "item_train_clicks", None)
            if item_train_clicks is None:
                raise ValueError(
                    f"MostPopular reads env.unwrapped.dataset.item_train_clicks (OutbrainRec-v0 provides it); "
                    f"{env.unwrapped!r} has no such attribute. Pass item_train_clicks= directly instead."
                )

        # Copy them (the dataset's array may be memory-mapped) and check they are counts
        counts = np.array(item_train_clicks)
        if counts.ndim != 1 or counts.size == 0 or not np.issubdtype(counts.dtype, np.number):
            raise ValueError(
                f"item_train_clicks must be a non-empty 1-D array of click counts per item; "
                f"got dtype {counts.dtype} and shape {counts.shape}."
            )
        if not np.all(np.isfinite(counts)) or np.any(counts < 0):
            raise ValueError("item_train_clicks must be finite and non-negative (they are click counts).")
        self.item_train_clicks = counts
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def score_candidates(self, obs: Any, info: dict[str, Any]) -> np.ndarray:
        """
        Score every candidate by its item's training clicks (higher is better).

        :param obs: the observation (unused: the item indices come from ``info``)
        :param info: the ``info`` dict of ``reset()`` / ``step()``, with ``"candidate_items"``:
            item indices of the candidates, slot order, shape ``(k + 1,)``
        :return: scores, shape ``(k + 1,)``
        :raises ValueError: if ``info["candidate_items"]`` is missing or names an unknown item
        """
        if not isinstance(info, dict) or "candidate_items" not in info:
            raise ValueError(
                'MostPopular needs info["candidate_items"] (the item index of each candidate, slot order), '
                f"as returned by OutbrainRec-v0's reset() and step(); got info={info!r}."
            )
        candidate_items = np.asarray(info["candidate_items"])
        n_items = self.item_train_clicks.shape[0]
        if candidate_items.ndim != 1 or candidate_items.size == 0 or not np.issubdtype(candidate_items.dtype, np.integer):
            raise ValueError(f'info["candidate_items"] must be a non-empty 1-D integer array; got {candidate_items!r}.')
        unknown = candidate_items[(candidate_items < 0) | (candidate_items >= n_items)]
        if unknown.size > 0:
            raise ValueError(f'info["candidate_items"] holds items {unknown.tolist()} outside the {n_items} items counted.')
        return self.item_train_clicks[candidate_items]

    def act(self, obs: Any, info: dict[str, Any]) -> int:
        """
        Pick the most-clicked candidate (the evaluator's candidate-aware protocol).

        :param obs: the observation (unused: the item indices come from ``info``)
        :param info: the ``info`` dict of ``reset()`` / ``step()``, with ``"candidate_items"``
        :return: the slot of the picked candidate, in ``[0, k]``
        """
        scores = self.score_candidates(obs, info)
        best_slots = np.flatnonzero(scores == scores.max())
        if best_slots.size == 1:
            return int(best_slots[0])
        return int(self.rng.choice(best_slots))

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, None]:
        """
        Not available: the observation does not say which item is in which slot.

        :param observation: unused
        :param state: unused
        :param episode_start: unused
        :param deterministic: unused
        :raises TypeError: always; call :meth:`act` with the ``info`` dict instead
        """
        raise TypeError(
            "MostPopular ranks candidates by item, and the observation does not carry item indices: call "
            'act(obs, info) with the info dict of reset()/step() (it reads info["candidate_items"]).'
        )

    def learn(self: SelfMostPopular, total_timesteps: int = 0, *args: Any, **kwargs: Any) -> SelfMostPopular:
        """
        Nothing to learn (the counts are read at construction); present for SB3-style scripts.

        :param total_timesteps: ignored
        :param args: ignored (SB3's ``learn`` arguments: callback, log_interval, ...)
        :param kwargs: ignored
        :return: self
        """
        return self

    def save(self, path: str | os.PathLike[str]) -> None:
        """
        Write the click counts and the tie-breaking generator's state to a ``.npz`` file.

        :param path: file to write, exactly this name (``.npz`` recommended)
        """
        meta = {"class": type(self).__name__, "seed": self.seed, "rng_state": self.rng.bit_generator.state}
        with open(path, "wb") as file:
            np.savez(file, item_train_clicks=self.item_train_clicks, meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls: type[SelfMostPopular], path: str | os.PathLike[str]) -> SelfMostPopular:
        """
        Read a recommender written by :meth:`save`; it continues the same tie-breaking draws.

        :param path: file written by :meth:`save`
        :return: the recommender
        :raises ValueError: if the file was not written by ``MostPopular.save``
        """
        with np.load(path, allow_pickle=False) as archive:
            if "meta" not in archive or "item_train_clicks" not in archive:
                raise ValueError(f"{os.fspath(path)!r} was not written by {cls.__name__}.save().")
            meta = json.loads(str(archive["meta"]))
            item_train_clicks = archive["item_train_clicks"]
        if meta.get("class") != cls.__name__:
            raise ValueError(f"{os.fspath(path)!r} was written by {meta.get('class')}.save(), not {cls.__name__}.save().")
        recommender = cls(item_train_clicks=item_train_clicks, seed=meta["seed"])
        recommender.rng.bit_generator.state = meta["rng_state"]
        return recommender
