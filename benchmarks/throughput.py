"""Training throughput on ``OutbrainRec-v0``: DADRL beside SB3's A2C and DQN, in one run.

Measures environment steps per second of ``learn()`` for DADRL with 1 and 2 devices (worker
processes), SB3's ``A2C`` with 1 and 8 environments (``DummyVecEnv``), SB3's ``DQN``, and the
learner's ceiling: how many device messages per second DADRL's learner validates and applies when
devices cost nothing. Every method uses the same candidate-scoring network on the same data with
``k`` negatives, and one PyTorch thread per process. Results are written to ``--out``
(``throughput.md``, ``throughput.csv``, ``run.json``) with ratios to SB3 A2C with 8 environments.

Example::

    python benchmarks/throughput.py --timesteps 20000 --out benchmarks/results/throughput
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
import torch
from stable_baselines3 import A2C, DQN
from stable_baselines3.common.env_util import make_vec_env

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import run_metadata, write_json

import recsys_gym  # noqa: F401  (registers OutbrainRec-v0)
from dadrl_sb3 import DADRL
from dadrl_sb3.common.candidate_policies import CandidateActorCriticPolicy, CandidateDQNPolicy
from dadrl_sb3.common.devices import GradientMessage

logger = logging.getLogger("benchmarks.throughput")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--timesteps", type=int, default=20_000, help="environment steps per measured learn() call")
    parser.add_argument("--k", type=int, default=10, help="negatives per candidate set")
    parser.add_argument("--n-steps", type=int, default=5, help="rollout length of DADRL devices and A2C")
    parser.add_argument(
        "--envs-per-device", type=int, default=8, help="sessions each DADRL device steps side by side per message"
    )
    parser.add_argument("--learner-messages", type=int, default=3000, help="messages applied when measuring the learner")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/throughput", help="folder for the results")
    args = parser.parse_args(argv)
    for name in ("timesteps", "k", "n_steps", "envs_per_device", "learner_messages"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def timed_learn(model: Any, timesteps: int) -> tuple[float, int]:
    """Wall seconds and steps of one ``learn()`` call."""
    started = time.perf_counter()
    model.learn(total_timesteps=timesteps)
    return time.perf_counter() - started, int(model.num_timesteps)


def learner_ceiling(env: gym.Env, messages: int, n_steps: int, seed: int) -> float:
    """Device messages per second that DADRL's learner validates and applies, with free devices."""
    model = DADRL("CandidatePolicy", env, n_workers=1, backend="inline", n_steps=n_steps, seed=seed)
    rng = np.random.default_rng(seed)
    shapes = [parameter.shape for parameter in model.policy.parameters()]
    gradients = [[rng.normal(scale=1e-3, size=shape).astype(np.float32) for shape in shapes] for _ in range(16)]
    started = time.perf_counter()
    for index in range(messages):
        message = GradientMessage(version=model.version, gradients=gradients[index % 16], n_steps=n_steps)
        model._apply_gradients(message)
    return messages / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env_kwargs = {"k": args.k, "obs_mode": "dict"}
    metadata = run_metadata([os.path.relpath(Path(__file__).resolve(), Path.cwd()), *argv], [args.seed])
    write_json(out / "run.json", metadata)
    rows: list[dict[str, Any]] = []

    def record(method: str, workers_or_envs: int, seconds: float, steps: int) -> None:
        rows.append(
            {
                "method": method,
                "parallelism": workers_or_envs,
                "steps": steps,
                "seconds": seconds,
                "steps_per_s": steps / seconds,
            }
        )
        logger.info("%s (%d): %d steps in %.1f s = %.0f steps/s", method, workers_or_envs, steps, seconds, steps / seconds)

    # DADRL with 1 and 2 devices; a short first call starts the forkserver so both measure warm starts.
    warm = DADRL(
        "CandidatePolicy", gym.make("OutbrainRec-v0", **env_kwargs), n_workers=1, n_steps=args.n_steps, seed=args.seed
    )
    warm.learn(total_timesteps=200)
    for n_workers in (1, 2):
        env = gym.make("OutbrainRec-v0", **env_kwargs)
        model = DADRL(
            "CandidatePolicy",
            env,
            n_workers=n_workers,
            n_steps=args.n_steps,
            envs_per_device=args.envs_per_device,
            seed=args.seed,
        )
        record("DADRL", n_workers, *timed_learn(model, args.timesteps))

    # SB3's A2C with 1 and 8 environments in one process.
    for n_envs in (1, 8):
        vec_env = make_vec_env("OutbrainRec-v0", n_envs=n_envs, seed=args.seed, env_kwargs=env_kwargs)
        a2c = A2C(CandidateActorCriticPolicy, vec_env, n_steps=args.n_steps, seed=args.seed, device="cpu")
        record("SB3 A2C", n_envs, *timed_learn(a2c, args.timesteps))

    # SB3's DQN, one environment, with the benchmark's value-based settings.
    dqn = DQN(
        CandidateDQNPolicy,
        gym.make("OutbrainRec-v0", **env_kwargs),
        learning_starts=500,
        buffer_size=50_000,
        target_update_interval=500,
        seed=args.seed,
        device="cpu",
    )
    record("SB3 DQN", 1, *timed_learn(dqn, args.timesteps))

    # The learner alone: messages per second, and the environment steps per second they stand for.
    message_steps = args.n_steps * args.envs_per_device
    per_second = learner_ceiling(gym.make("OutbrainRec-v0", **env_kwargs), args.learner_messages, message_steps, args.seed)
    rows.append(
        {
            "method": "DADRL learner ceiling",
            "parallelism": 0,
            "steps": args.learner_messages * message_steps,
            "seconds": args.learner_messages / per_second,
            "steps_per_s": per_second * message_steps,
        }
    )
    logger.info(
        "learner: %.0f messages/s = %.0f steps/s at %d steps per message",
        per_second,
        per_second * message_steps,
        message_steps,
    )

    # Ratios to SB3 A2C with 8 environments, and the files.
    table = pd.DataFrame(rows)
    reference = float(table.loc[(table["method"] == "SB3 A2C") & (table["parallelism"] == 8), "steps_per_s"].iloc[0])
    table["ratio_to_a2c_8_envs"] = table["steps_per_s"] / reference
    table.to_csv(out / "throughput.csv", index=False)
    dadrl = table[table["method"] == "DADRL"].set_index("parallelism")["steps_per_s"]
    lines = [
        "# Training throughput on OutbrainRec-v0",
        "",
        f"- k={args.k}, candidate-scoring network, {args.timesteps} steps per learn(), n_steps={args.n_steps}, "
        f"DADRL envs_per_device={args.envs_per_device} ({message_steps} steps per message), one torch thread per process",
        f"- machine: {metadata['machine']['cpu_count']} CPUs, {metadata['machine']['platform']}; commit {metadata['git']}",
        f"- command: `{metadata['command']}`",
        "",
        "| method | workers / envs | env steps/s | ratio to SB3 A2C (8 envs) |",
        "|---|---|---|---|",
    ]
    for row in table.itertuples():
        label = "–" if row.parallelism == 0 else str(row.parallelism)
        lines.append(f"| {row.method} | {label} | {row.steps_per_s:,.0f} | {row.ratio_to_a2c_8_envs:.2f} |")
    lines += [
        "",
        f"DADRL speed-up from 1 to 2 devices: {dadrl[2] / dadrl[1]:.2f}x.",
        "The learner ceiling is measured with devices that cost nothing: the rate at which the learner alone "
        "validates and applies messages, times the steps per message (n_steps x envs_per_device).",
        "",
    ]
    (out / "throughput.md").write_text("\n".join(lines), encoding="utf-8")
    metadata["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    write_json(out / "run.json", metadata)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
