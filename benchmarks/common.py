"""Pieces shared by the benchmark scripts: the methods, a training-curve recorder, run metadata."""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3 import A2C, DQN
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

import recsys_gym  # noqa: F401  (registers OutbrainRec-v0)
from dadrl_sb3 import A2CD, A2CF, DADRL, DoubleDQN, LinUCB
from dadrl_sb3.baselines import MostPopular, RandomRecommender
from dadrl_sb3.common.candidate_policies import CandidateActorCriticPolicy, CandidateDQNPolicy, transfer_candidate_policy

logger = logging.getLogger("benchmarks")

#: Methods the benchmark knows, in table order, and whether they learn.
METHODS = {
    "DADRL": True,
    "DQN": True,
    "DDQN": True,
    "A2C": True,
    "A2C-D": True,
    "A2C-F": True,
    "LinUCB": True,
    "MostPopular": False,
    "Random": False,
}

#: Methods whose model is a neural network trained by SB3-style ``learn`` (the others need no policy transfer).
NEURAL = ("DADRL", "DQN", "DDQN", "A2C", "A2C-D", "A2C-F")

#: The main job's methods under ``--quick``: DADRL, SB3's own DQN and A2C, and the two sanity floors.
QUICK_METHODS = ("DADRL", "DQN", "A2C", "MostPopular", "Random")

#: Table 1 of Shi et al. (RecSys 2020): One-Plus-k CTR on Outbrain.
PAPER_TABLE1 = {
    "LinUCB": {1: 0.856, 10: 0.359, 20: 0.213, 50: 0.096, 100: 0.049},
    "DQN": {1: 0.883, 10: 0.417, 20: 0.261, 50: 0.120, 100: 0.063},
    "DDQN": {1: 0.881, 10: 0.403, 20: 0.246, 50: 0.113, 100: 0.059},
    "A2C-F": {1: 0.888, 10: 0.428, 20: 0.261, 50: 0.122, 100: 0.064},
    "A2C-D": {1: 0.869, 10: 0.381, 20: 0.240, 50: 0.109, 100: 0.057},
    "DADRL": {1: 0.914, 10: 0.567, 20: 0.393, 50: 0.201, 100: 0.111},
}


class EpisodeRecorder(BaseCallback):
    """Keep every finished training episode's clicks and length, for the training-curve figure.

    Reads the Monitor-style ``info["episode"]`` entries that SB3 algorithms (through their
    ``Monitor`` wrapper) and DADRL (from its devices' statistics) hand to callbacks.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clicks: list[float] = []
        self.lengths: list[int] = []

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            episode = info.get("episode")
            if episode is not None:
                self.clicks.append(float(episode["r"]))
                self.lengths.append(int(episode["l"]))
        return True


@dataclass
class TrainedMethod:
    """A method after training: how to get its policy at any ``k``, and its training curve."""

    name: str
    policy_at: Callable[[int], Any]
    episode_clicks: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    train_seconds: float = 0.0
    timesteps: int = 0


def make_model(name: str, env: gym.Env, policy: str, seed: int, n_workers: int, gamma: float, verbose: int) -> BaseAlgorithm:
    """Build one learning method with the benchmark's settings.

    :param policy: ``"candidate"`` (candidate-scoring network, dict observations) or ``"mlp"``.
    """
    candidate = policy == "candidate"
    common: dict[str, Any] = {"seed": seed, "verbose": verbose, "gamma": gamma, "device": "cpu"}
    # DADRL and A2C share the advantage actor-critic settings (SB3's A2C defaults: 5-step rollouts, no
    # entropy bonus, RMSprop at 7e-4); DQN and DDQN share theirs, sized for budgets of 10^4-10^5 steps.
    actor_critic = {"n_steps": 5, "ent_coef": 0.0, "learning_rate": 7e-4}
    value_based = {"learning_starts": 500, "buffer_size": 50_000, "exploration_fraction": 0.2, "target_update_interval": 500}
    if name == "DADRL":
        return DADRL("CandidatePolicy" if candidate else "MlpPolicy", env, n_workers=n_workers, **actor_critic, **common)
    if name in ("A2C-D", "A2C-F"):
        synchronous = A2CD if name == "A2C-D" else A2CF
        return synchronous("CandidatePolicy" if candidate else "MlpPolicy", env, n_workers=n_workers, **actor_critic, **common)
    if name == "A2C":
        return A2C(CandidateActorCriticPolicy if candidate else "MlpPolicy", env, **actor_critic, **common)
    if name in ("DQN", "DDQN"):
        algorithm = DQN if name == "DQN" else DoubleDQN
        return algorithm(CandidateDQNPolicy if candidate else "MlpPolicy", env, **value_based, **common)
    raise ValueError(f"method must be one of {list(NEURAL)}, got {name!r}")


def train_method(
    name: str,
    env_kwargs: dict[str, Any],
    train_k: int,
    policy: str,
    timesteps: int,
    seed: int,
    n_workers: int,
    gamma: float,
    progress_bar: bool,
    verbose: int = 0,
) -> TrainedMethod:
    """Train (or set up) one method on the training split at ``train_k`` negatives.

    :return: the trained method; ``policy_at(k)`` gives the policy to evaluate at ``k``. A
        candidate-scoring policy is trained once and its weights are moved to a policy built for
        each ``k``; an MLP policy only serves the ``k`` it was trained at.
    """
    obs_mode = "dict" if policy == "candidate" else "flat"
    env = gym.make("OutbrainRec-v0", **env_kwargs, k=train_k, split="train", obs_mode=obs_mode)
    started = time.perf_counter()

    # Sanity baselines: nothing to learn beyond training counts; replay the training stream for their curve.
    if name in ("Random", "MostPopular"):
        baseline: Any = RandomRecommender(env, seed=seed) if name == "Random" else MostPopular(env, seed=seed).learn()
        clicks, lengths = replay_training_stream(env, baseline, timesteps, seed)
        return TrainedMethod(name, lambda k: baseline, clicks, lengths, time.perf_counter() - started, timesteps)

    # LinUCB: one linear model over per-candidate features serves every k, whatever the observation form.
    recorder = EpisodeRecorder()
    if name == "LinUCB":
        bandit = LinUCB(env, seed=seed)
        bandit.learn(total_timesteps=timesteps, callback=recorder, progress_bar=progress_bar)
        seconds = time.perf_counter() - started
        return TrainedMethod(name, lambda k: bandit, recorder.clicks, recorder.lengths, seconds, bandit.num_timesteps)

    # Neural methods.
    model = make_model(name, env, policy, seed, n_workers, gamma, verbose)
    model.learn(total_timesteps=timesteps, callback=recorder, progress_bar=progress_bar)
    seconds = time.perf_counter() - started

    def policy_at(k: int) -> Any:
        if policy != "candidate":
            if k != train_k:
                raise ValueError(f"an MLP policy trained at k={train_k} cannot be evaluated at k={k}")
            return model
        test_env = gym.make("OutbrainRec-v0", **env_kwargs, k=k, split="test", obs_mode="dict")
        return transfer_candidate_policy(model.policy, test_env.observation_space, test_env.action_space)

    return TrainedMethod(name, policy_at, recorder.clicks, recorder.lengths, seconds, model.num_timesteps)


def replay_training_stream(env: gym.Env, baseline: Any, timesteps: int, seed: int) -> tuple[list[float], list[int]]:
    """Run a non-learning baseline over ``timesteps`` training steps and return its episodes' clicks and lengths."""
    clicks: list[float] = []
    lengths: list[int] = []
    obs, info = env.reset(seed=seed)
    episode_clicks, episode_length = 0.0, 0
    for _ in range(timesteps):
        obs, reward, terminated, truncated, info = env.step(baseline.act(obs, info))
        episode_clicks += float(reward)
        episode_length += 1
        if terminated or truncated:
            clicks.append(episode_clicks)
            lengths.append(episode_length)
            episode_clicks, episode_length = 0.0, 0
            obs, info = env.reset()
    return clicks, lengths


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` values (shorter at the start)."""
    cumulative = np.cumsum(np.insert(values.astype(np.float64), 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(0, ends - window)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def run_metadata(argv: list[str], seeds: list[int]) -> dict[str, Any]:
    """The command, seeds, library versions and machine, written next to every result."""
    versions = {}
    for package in ("gymnasium", "stable-baselines3", "torch", "numpy", "pandas", "scipy", "dadrl"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "command": " ".join(shlex.quote(part) for part in [Path(sys.executable).name, *argv]),
        "git": _git_state(),
        "seeds": seeds,
        "versions": versions,
        "python": platform.python_version(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        },
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _git_state() -> str:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it; ``unknown`` outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=root, capture_output=True, text=True, check=True)
        commit = head.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty.stdout.strip() else "")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def write_report(out: Path, name: str, lines: list[str], metadata: dict[str, Any]) -> None:
    """Write a benchmark's Markdown report, stamp ``run.json`` with the finishing time, and print the report."""
    (out / name).write_text("\n".join(lines), encoding="utf-8")
    metadata["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    write_json(out / "run.json", metadata)
    print("\n".join(lines))
