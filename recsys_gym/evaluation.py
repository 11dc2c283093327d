"""The One-Plus-k-Random-Items evaluation protocol, usable with any policy.

Every test impression is shown as a candidate set of the clicked item plus ``k`` negatives in
random order; the policy picks one; the CTR is the share of picks that hit the clicked item (HR@1
over ``k + 1`` candidates). The user's state at test time starts from their whole training
history and follows the log. With the same ``seed``, every policy sees exactly the same candidate
sets, so two methods' CTRs are a paired comparison.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
from gymnasium import spaces
from tqdm.auto import tqdm

PolicyLike = Any
"""An object with ``act(obs, info) -> int``, an object with SB3's ``predict(obs, deterministic=...)``,
or a callable ``policy(obs, info) -> int``."""

PAPER_KS = (1, 10, 20, 50, 100)


def as_action_fn(policy: PolicyLike, deterministic: bool = True) -> Callable[[Any, dict[str, Any]], int]:
    """Wrap any supported policy into a function ``(obs, info) -> action``.

    :param policy: an object with ``act(obs, info)`` (candidate-aware baselines), an object with
        SB3's ``predict(obs, deterministic=...)`` (SB3 models and policies), or a plain callable
        ``policy(obs, info)``.
    :param deterministic: passed to ``predict``.
    :raises TypeError: when ``policy`` offers none of these.
    """
    if hasattr(policy, "act"):
        return lambda obs, info: int(policy.act(obs, info))
    if hasattr(policy, "predict"):

        def predict(obs: Any, info: dict[str, Any]) -> int:
            action, _ = policy.predict(obs, deterministic=deterministic)
            return int(np.asarray(action).reshape(-1)[0])

        return predict
    if callable(policy):
        return lambda obs, info: int(policy(obs, info))
    raise TypeError(
        f"policy must have act(obs, info), SB3's predict(obs, deterministic=...), or be a callable (obs, info) -> int; "
        f"got {type(policy).__name__}"
    )


def evaluate_one_plus_k(
    policy: PolicyLike | Mapping[int, PolicyLike],
    ks: Iterable[int] = PAPER_KS,
    env_id: str = "OutbrainRec-v0",
    env_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    max_impressions: int | None = None,
    deterministic: bool = True,
    progress_bar: bool = False,
) -> pd.DataFrame:
    """Score a policy by One-Plus-k CTR on the test split, for every ``k`` in ``ks``.

    :param policy: the policy, or a mapping from each ``k`` to the policy to use at that ``k``
        (a policy whose action space is tied to ``k`` is trained once per ``k``).
    :param ks: numbers of negatives per candidate set.
    :param env_id: a registered environment id taking the ``OutbrainRec-v0`` arguments.
    :param env_kwargs: further environment arguments (``data_dir``, ``dataset``, ``negatives``...).
        ``split`` is set to ``"test"`` and ``k`` to each value of ``ks``. When ``obs_mode`` is not
        given and the policy's ``observation_space`` is a ``Dict``, ``obs_mode="dict"`` is used.
    :param seed: seeds the candidate sets; the same seed gives every policy the same sets.
    :param max_impressions: stop after the episode that reaches this many test impressions, so a
        few more may be scored (``None``: every test impression).
    :param deterministic: passed to SB3's ``predict``.
    :param progress_bar: show a progress bar over the test impressions.
    :return: one row per ``k``: ``k``, ``ctr``, ``hits``, ``n_impressions``, ``random_floor``
        (``1 / (k + 1)``) and ``ci95`` (half-width of a normal 95% interval of the CTR).
    """
    import recsys_gym  # noqa: F401  (registers the environment in this process)

    ks = [int(k) for k in ks]
    if not ks:
        raise ValueError("ks must name at least one k, got an empty list")
    if max_impressions is not None and max_impressions < 1:
        raise ValueError(f"max_impressions must be None or >= 1, got {max_impressions!r}")
    if isinstance(policy, Mapping) and (missing := [k for k in ks if k not in policy]):
        raise ValueError(f"policy maps k to policies but has none for k={missing}; it has k={sorted(policy)}")
    rows = []
    for k in ks:
        # Pick the policy for this k and the observation form it expects.
        chosen = policy[k] if isinstance(policy, Mapping) else policy
        # A candidate-aware act(obs, info) serves any k; a predict() policy is tied to its action space.
        action_space = None if hasattr(chosen, "act") else getattr(chosen, "action_space", None)
        if isinstance(action_space, spaces.Discrete) and int(action_space.n) != k + 1:
            raise ValueError(
                f"the policy for k={k} was built for {action_space} (k={int(action_space.n) - 1}); pass a mapping "
                "{k: policy} with one policy per k, or rebuild a candidate-scoring policy for each k "
                "(dadrl_sb3.transfer_candidate_policy)"
            )
        kwargs = {**dict(env_kwargs or {}), "split": "test", "k": int(k)}
        observation_space = getattr(chosen, "observation_space", None)
        if "obs_mode" not in kwargs and isinstance(observation_space, spaces.Dict):
            kwargs["obs_mode"] = "dict"
        env = gym.make(env_id, **kwargs)
        act = as_action_fn(chosen, deterministic=deterministic)

        # Walk every test user in index order; seed only the first reset so the sets are paired.
        base: Any = env.unwrapped
        users = base.users
        total = sum(len(base.dataset.user_rows(int(user), "test")) for user in users)
        if max_impressions is not None:
            total = min(total, max_impressions)
        hits = 0
        impressions = 0
        with tqdm(total=total, desc=f"One-Plus-k k={k}", disable=not progress_bar, unit="imp") as bar:
            for position, user in enumerate(users):
                obs, info = env.reset(seed=seed if position == 0 else None, options={"user_index": int(user)})
                done = False
                episode_steps = 0
                while not done:
                    obs, reward, terminated, truncated, info = env.step(act(obs, info))
                    hits += int(float(reward) > 0)
                    episode_steps += 1
                    done = terminated or truncated
                impressions += episode_steps
                bar.update(min(bar.total - bar.n, episode_steps))
                if max_impressions is not None and impressions >= max_impressions:
                    break
        env.close()
        ctr = hits / impressions
        rows.append(
            {
                "k": int(k),
                "ctr": ctr,
                "hits": hits,
                "n_impressions": impressions,
                "random_floor": 1.0 / (k + 1),
                "ci95": 1.96 * math.sqrt(max(ctr * (1.0 - ctr), 1e-12) / impressions),
            }
        )
    return pd.DataFrame(rows)
