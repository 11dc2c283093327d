"""``OutbrainRec-v0``: recommend one item out of a One-Plus-k candidate set built from logged clicks."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from recsys_gym.data.dataset import N_PLATFORMS, CompactDataset, load_dataset

NEGATIVE_MODES = ("random", "shown")
SPLITS = ("train", "test")
OBS_MODES = ("flat", "dict")

#: History length at which the history-size feature saturates at 1.
_HISTORY_SCALE = np.log1p(100.0)


class OutbrainRecEnv(gym.Env[Any, np.int64]):
    """Pick the clicked item out of a candidate set of the clicked item and ``k`` negatives.

    ## Description

    The environment replays a log of impressions (Kaggle's Outbrain Click Prediction data, a
    generic interaction log such as MovieLens-100K, or built-in synthetic data in Outbrain's
    schema). An episode is one user's impressions of the chosen split in time order. At every
    step the agent sees the user's state and a candidate set of ``k + 1`` items: the item the
    user really clicked in the logged impression and ``k`` negatives, in an order drawn uniformly
    at random. It picks one slot; the reward is the click. This is the One-Plus-k-Random-Items
    protocol of Shi et al. (RecSys 2020) turned into an environment.

    The state follows the log, not the agent: after each step the logged click joins the user's
    history whatever the agent picked, since the log cannot say what the user would have done
    after another recommendation.

    ## Action Space

    ``Discrete(k + 1)``: the slot of the recommended candidate in the observation.

    ## Observation Space

    ``float32``, every value in ``[-1, 1]``. With ``F = item_dim`` (the dataset's item features),
    ``C = context_dim`` (the dataset's context content features) and ``P = pageview_dim`` (the
    dataset's page-view vector; 0 without ``page_views.csv``):

    ======================  ==============  ===========================================================
    block                   size            content
    ======================  ==============  ===========================================================
    user: history mean      F               mean features of the last ``history_len`` clicked items
    user: last click        F               features of the most recent clicked item (0 if none)
    user: history size      1               ``log(1 + n) / log(101)`` for ``n`` past clicks, capped at 1
    user: platform          4               one-hot: unknown, desktop, mobile, tablet
    user: context           C               content vector of the page being read (0 if unknown)
    user: page views        P               from the pages the user read strictly before the impression's
                                            timestamp: ``min(1, log(1 + n) / log(1001))`` for ``n`` pages,
                                            then the mean content vector of the latest of them (see
                                            :mod:`recsys_gym.data.prepare`); nothing read at or after the
                                            impression's time enters it
    candidate ``i``         F               features of the item in slot ``i``, for ``i = 0..k``
    ======================  ==============  ===========================================================

    Item features (``F``) are: log training clicks, log training impressions, smoothed training
    CTR, a content embedding of the item's metadata tokens (topics, categories, genres) and a
    collaborative embedding from the training click matrix; all computed on the training split.

    ``obs_mode="flat"`` concatenates the user block (``user_dim = 2F + 5 + C + P``) and the candidate
    blocks into one ``Box((user_dim + (k + 1) * F,))`` for ``"MlpPolicy"``; ``obs_mode="dict"``
    returns ``{"user": Box((user_dim,)), "candidates": Box((k + 1, F))}`` for candidate-scoring
    policies.

    ## Rewards

    1.0 when the picked candidate is the clicked item, else 0.0. The mean reward over an
    evaluation run is the CTR (HR@1 over ``k + 1`` candidates); a uniformly random pick scores
    ``1 / (k + 1)``.

    ## Starting State

    A user is drawn uniformly (with ``self.np_random``) among those with an impression in the
    split, or given by ``reset(options={"user_index": u})``. Training episodes start with an empty
    history; test episodes start with the user's whole training history.

    ## Episode End

    Terminated when the user's impressions in the split are exhausted. Truncated only by a
    ``TimeLimit`` (``gym.make(..., max_episode_steps=n)``). The observation returned at the end
    holds the final user state and zero candidates.

    ## Information

    ``reset`` and ``step`` return ``"user"`` (raw id), ``"user_index"`` and ``"candidate_items"``
    (item indices of the candidates in the returned observation, in slot order; for baselines such
    as Most-Popular). ``step`` adds, about the candidate set just acted on: ``"impression_id"``,
    ``"picked_item"``, ``"clicked_item"``, ``"clicked"``, ``"clicked_index"`` (the slot of the
    click, for evaluation only) and ``"n_shown"`` (how many of the ``k + 1`` candidates were
    really shown in the logged impression).

    ## Arguments

    :param data_dir: folder (or file) of the data source; ``None`` uses the built-in synthetic data
        for ``dataset="outbrain"`` and the ``recbole`` wheel's copy for ``"movielens-100k"``.
    :param dataset: ``"outbrain"``, ``"movielens-100k"`` or ``"interactions"`` (a generic log), or a
        :class:`~recsys_gym.data.CompactDataset` already built (then ``data_dir``, ``cache_dir`` and
        ``dataset_kwargs`` are ignored).
    :param k: number of negatives per candidate set; the action space is ``Discrete(k + 1)``.
    :param negatives: ``"random"``: items the user never interacted with anywhere in the log, no
        duplicates (the paper's protocol); ``"shown"``: the items really shown beside the click in
        that impression, topped up with random negatives when fewer than ``k`` were shown.
    :param split: ``"train"`` or ``"test"``.
    :param obs_mode: ``"flat"`` or ``"dict"``.
    :param history_len: how many past clicks the history mean covers.
    :param user_shard: ``(index, count)`` keeps only users whose index modulo ``count`` equals
        ``index``: a device's disjoint share of users in DADRL.
    :param cache_dir: where the compact dataset is cached; ``$RECSYS_GYM_CACHE`` or
        ``~/.cache/recsys_gym`` when ``None``.
    :param dataset_kwargs: further arguments of :func:`recsys_gym.data.load_dataset`
        (``test_fraction``, ``content_dim``, ``cf_dim``, ``min_rating``, ``synthetic_kwargs``).
    :param render_mode: ``None``, ``"ansi"`` (text: the user, the last pick and the candidate items) or
        ``"rgb_array"`` (one cell per candidate slot: the last pick in blue, or green when it was the
        click, the missed click in orange; SB3's ``make_vec_env`` asks for this mode by default).

    ## Version History

    * v0: initial version; the user block's page-view part (``P`` values, 0 without page views) was
      added with cache version 3.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}  # noqa: RUF012  (Gymnasium declares it a plain dict attribute)

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        dataset: str | CompactDataset = "outbrain",
        k: int = 10,
        negatives: str = "random",
        split: str = "train",
        obs_mode: str = "flat",
        history_len: int = 10,
        user_shard: tuple[int, int] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        dataset_kwargs: Mapping[str, Any] | None = None,
        render_mode: str | None = None,
    ) -> None:
        # Check the arguments before any data is read.
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer >= 1 (the number of negatives per candidate set), got {k!r}")
        if negatives not in NEGATIVE_MODES:
            raise ValueError(f"negatives must be one of {list(NEGATIVE_MODES)}, got {negatives!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {list(OBS_MODES)}, got {obs_mode!r}")
        if isinstance(history_len, bool) or not isinstance(history_len, (int, np.integer)) or history_len < 1:
            raise ValueError(f"history_len must be an integer >= 1, got {history_len!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        if user_shard is not None:
            try:
                shard_index, shard_count = (int(value) for value in user_shard)
            except (TypeError, ValueError) as err:
                raise ValueError(f"user_shard must be a pair (index, count), got {user_shard!r}") from err
            if shard_count < 1 or not 0 <= shard_index < shard_count:
                raise ValueError(f"user_shard must be (index, count) with 0 <= index < count, got {user_shard!r}")
        self.k = int(k)
        self.negatives = negatives
        self.split = split
        self.obs_mode = obs_mode
        self.history_len = int(history_len)
        self.user_shard = user_shard
        self.render_mode = render_mode

        # Map the compact dataset (built and cached on first use).
        if isinstance(dataset, CompactDataset):
            self.dataset: CompactDataset = dataset
        else:
            self.dataset = load_dataset(dataset, data_dir, cache_dir=cache_dir, **dict(dataset_kwargs or {}))
        data = self.dataset

        # The users this environment serves: those with impressions in the split, in this shard.
        users = data.users_in_split(split)
        if user_shard is not None:
            users = users[users % user_shard[1] == user_shard[0]]
        if len(users) == 0:
            raise ValueError(
                f"no user of dataset {data.name!r} has an impression in split={split!r} and user_shard={user_shard!r}"
            )
        self.users = users
        self._user_set = frozenset(users.tolist())

        # Every candidate set needs k items the user never interacted with.
        most_items = int(np.diff(data.user_items_ptr)[users].max())
        available = data.n_items - most_items
        if self.k > available:
            raise ValueError(
                f"k={self.k} is larger than the {available} items available as negatives: dataset {data.name!r} has "
                f"{data.n_items} items and a user of this split interacted with {most_items}; choose k <= {available}"
            )

        # Spaces.
        self.item_dim = data.item_dim
        self.context_dim = data.context_dim
        self.pageview_dim = data.pageview_dim
        self.user_dim = 2 * self.item_dim + 1 + N_PLATFORMS + self.context_dim + self.pageview_dim
        self.action_space = spaces.Discrete(self.k + 1)
        if obs_mode == "flat":
            self.observation_space: spaces.Space[Any] = spaces.Box(
                -1.0, 1.0, shape=(self.user_dim + (self.k + 1) * self.item_dim,), dtype=np.float32
            )
        else:
            self.observation_space = spaces.Dict(
                {
                    "user": spaces.Box(-1.0, 1.0, shape=(self.user_dim,), dtype=np.float32),
                    "candidates": spaces.Box(-1.0, 1.0, shape=(self.k + 1, self.item_dim), dtype=np.float32),
                }
            )

        # Episode state, set by reset().
        self._user = -1
        self._rows = np.zeros(0, dtype=np.int64)
        self._position = 0
        self._history: list[int] = []
        self._candidates = np.zeros(0, dtype=np.int64)
        self._clicked_slot = -1
        self._n_shown = 0
        self._last_step: dict[str, Any] = {}

    # -- Gymnasium API ---------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        data = self.dataset

        # Choose the user: the one asked for, or one drawn uniformly from this environment's users.
        if options and "user_index" in options:
            user = int(options["user_index"])
            if user not in self._user_set:
                raise ValueError(
                    f"options['user_index']={user} has no impression in split={self.split!r} of this environment "
                    f"(see env.unwrapped.users for the {len(self.users)} valid indices)"
                )
        else:
            user = int(self.users[self.np_random.integers(len(self.users))])
        self._user = user

        # Test episodes start from the user's training history; training episodes from nothing.
        self._rows = data.user_rows(user, self.split)
        self._position = 0
        self._history = data.imp_clicked[data.user_rows(user, "train")].tolist() if self.split == "test" else []
        self._last_step = {}
        self._draw_candidates()
        return self._observation(), self._info()

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        if self._user < 0:
            raise RuntimeError("call reset() before step()")
        if self._position >= len(self._rows):
            raise RuntimeError("the episode has terminated; call reset() before step()")
        slot = self._as_slot(action)
        data = self.dataset
        row = int(self._rows[self._position])

        # Score the pick against the logged click.
        clicked_item = int(data.imp_clicked[row])
        clicked = slot == self._clicked_slot
        self._last_step = {
            "impression_id": int(data.imp_raw_id[row]),
            "picked_item": int(self._candidates[slot]),
            "clicked_item": clicked_item,
            "clicked": clicked,
            "clicked_index": self._clicked_slot,
            "n_shown": self._n_shown,
            "picked_slot": slot,
        }

        # The logged click joins the history whatever was picked; move to the next impression.
        self._history.append(clicked_item)
        self._position += 1
        terminated = self._position >= len(self._rows)
        if terminated:
            self._candidates = np.zeros(0, dtype=np.int64)
            self._clicked_slot = -1
        else:
            self._draw_candidates()
        info = {**self._info(), **self._last_step}
        return self._observation(), float(clicked), terminated, False, info

    def render(self) -> str | np.ndarray | None:
        if self.render_mode == "rgb_array":
            return self._render_cells()
        if self.render_mode != "ansi":
            return None
        data = self.dataset
        lines = [f"user {data.user_ids[self._user]} (index {self._user}), step {self._position} of {len(self._rows)}"]
        if self._last_step:
            verdict = "click" if self._last_step["clicked"] else "no click"
            lines.append(
                f"  last pick: slot {self._last_step['picked_slot']} item {data.item_ids[self._last_step['picked_item']]}"
                f" -> {verdict} (clicked item {data.item_ids[self._last_step['clicked_item']]})"
            )
        if len(self._candidates):
            shown = ", ".join(f"{slot}:{data.item_ids[item]}" for slot, item in enumerate(self._candidates))
            lines.append(f"  candidates (slot:item): {shown}")
        else:
            lines.append("  episode over")
        return "\n".join(lines) + "\n"

    def _render_cells(self, cell: int = 12) -> np.ndarray:
        """An RGB image of the last candidate set acted on: one grey cell per slot, the pick and the click coloured."""
        image = np.full((cell + 4, (self.k + 1) * (cell + 2) + 2, 3), 255, dtype=np.uint8)
        colours = [np.array([200, 200, 200], dtype=np.uint8)] * (self.k + 1)
        if self._last_step:
            picked, clicked = self._last_step["picked_slot"], self._last_step["clicked_index"]
            colours[clicked] = np.array([255, 150, 0], dtype=np.uint8)
            colours[picked] = (
                np.array([40, 170, 60], dtype=np.uint8) if picked == clicked else np.array([50, 90, 220], dtype=np.uint8)
            )
        for slot, colour in enumerate(colours):
            left = 2 + slot * (cell + 2)
            image[2 : 2 + cell, left : left + cell] = colour
        return image

    # -- internals -----------------------------------------------------------------------------
    def _as_slot(self, action: Any) -> int:
        """The candidate slot an action names: one integer in ``0..k`` (a NumPy scalar or one-element array will do)."""
        value = np.asarray(action)
        if value.size == 1 and np.issubdtype(value.dtype, np.integer) and 0 <= int(value.reshape(())) <= self.k:
            return int(value.reshape(()))
        raise ValueError(f"action must be a candidate slot in 0..{self.k} (Discrete({self.k + 1})), got {action!r}")

    def _draw_candidates(self) -> None:
        """Build the shuffled candidate set of the current impression."""
        data = self.dataset
        row = int(self._rows[self._position])
        clicked_item = int(data.imp_clicked[row])

        # Negatives the log really showed beside the click ("shown" mode).
        negatives: np.ndarray = np.zeros(0, dtype=np.int64)
        if self.negatives == "shown":
            shown = data.shown_in(row)[1:].astype(np.int64)
            if len(shown) > self.k:
                shown = self.np_random.choice(shown, size=self.k, replace=False)
            negatives = shown
        self._n_shown = 1 + len(negatives)

        # Top up with random items the user never interacted with, without duplicates.
        if len(negatives) < self.k:
            negatives = np.concatenate([negatives, self._random_negatives(self.k - len(negatives), negatives)])

        # Put the click among the negatives at a uniformly random slot (the slot where the permutation holds 0).
        candidates = np.empty(self.k + 1, dtype=np.int64)
        candidates[0] = clicked_item
        candidates[1:] = negatives
        order = self.np_random.permutation(self.k + 1)
        self._candidates = candidates[order]
        self._clicked_slot = int(order.argmin())

    def _random_negatives(self, count: int, exclude: np.ndarray) -> np.ndarray:
        """``count`` distinct items outside the user's items and ``exclude``, drawn uniformly."""
        data = self.dataset
        # The user's items are sorted (CSR of the cache): membership is a binary search, not a set union.
        user_items = data.user_item_set(self._user)
        last = len(user_items) - 1
        picked: list[int] = []
        seen = set(picked)
        while len(picked) < count:
            draws = self.np_random.integers(data.n_items, size=2 * (count - len(picked)) + 8)
            forbidden = np.zeros(len(draws), dtype=bool)
            if last >= 0:
                forbidden = user_items[np.minimum(np.searchsorted(user_items, draws), last)] == draws
            if len(exclude):
                forbidden |= np.isin(draws, exclude)
            for item in draws[~forbidden].tolist():
                if item not in seen:
                    seen.add(item)
                    picked.append(item)
                    if len(picked) == count:
                        break
        return np.asarray(picked, dtype=np.int64)

    def _user_state(self) -> np.ndarray:
        """The user block of the observation (see the class docstring)."""
        data = self.dataset
        features = data.item_features
        state = np.zeros(self.user_dim, dtype=np.float32)
        item_dim = self.item_dim
        if self._history:
            recent = self._history[-self.history_len :]
            # The same float32 mean as .mean(axis=0), without its per-call overhead.
            state[:item_dim] = np.add.reduce(features[recent], axis=0) / np.float32(len(recent))
            state[item_dim : 2 * item_dim] = features[recent[-1]]
        state[2 * item_dim] = min(1.0, np.log1p(len(self._history)) / _HISTORY_SCALE)

        # Context of the current impression: platform and the page's content.
        if self._position < len(self._rows):
            row = int(self._rows[self._position])
            state[2 * item_dim + 1 + int(data.imp_platform[row])] = 1.0
            context = int(data.imp_context[row])
            context_start = 2 * item_dim + 1 + N_PLATFORMS
            if context >= 0 and self.context_dim:
                state[context_start : context_start + self.context_dim] = data.context_features[context]

            # The pages read strictly before this impression (computed so by the preparation).
            if self.pageview_dim:
                state[context_start + self.context_dim :] = data.imp_pageviews[row]
        return state

    def _observation(self) -> Any:
        user = self._user_state()
        candidates = np.zeros((self.k + 1, self.item_dim), dtype=np.float32)
        if len(self._candidates):
            candidates[:] = self.dataset.item_features[self._candidates]
        if self.obs_mode == "dict":
            return {"user": user, "candidates": candidates}
        return np.concatenate([user, candidates.ravel()])

    def _info(self) -> dict[str, Any]:
        return {
            "user": self.dataset.user_ids[self._user],
            "user_index": self._user,
            "candidate_items": self._candidates.copy(),
        }
