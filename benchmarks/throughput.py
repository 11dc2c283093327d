"""Training throughput on ``OutbrainRec-v0``: DADRL beside SB3's A2C and DQN, in one run.

Measures environment steps per second of ``learn()`` for DADRL with 1 and 2 devices (worker
processes), SB3's ``A2C`` with 1 and 8 environments (``DummyVecEnv``), SB3's ``DQN``, and the
learner's ceiling: how many device messages per second DADRL's learner validates and applies when
devices cost nothing. Every method uses the same candidate-scoring network on the same data with
``k`` negatives, and one PyTorch thread per process.

Wall-clock rates depend on what else the machine runs, so the three measurements the target compares
(DADRL with 1 and 2 devices, A2C with 8 environments) are repeated ``--repeats`` times, interleaved,
and their median is reported with the range; the load average before and after is recorded. Beside
the wall-clock rate, the CPU time of every process involved (the learner and, read from ``/proc``,
each device's worker process, start-up included) gives CPU milliseconds per 1,000 steps, which other
load disturbs much less. Results are written to ``--out`` (``throughput.md``, ``throughput.csv`` with
one row per measurement, ``run.json``) with ratios to SB3 A2C with 8 environments.

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
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import run_metadata, write_json, write_report

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
    parser.add_argument(
        "--repeats", type=int, default=3, help="measurements of DADRL (1 and 2 devices) and A2C (8 envs), interleaved"
    )
    parser.add_argument("--learner-messages", type=int, default=3000, help="messages applied when measuring the learner")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/throughput", help="folder for the results")
    args = parser.parse_args(argv)
    for name in ("timesteps", "k", "n_steps", "envs_per_device", "repeats", "learner_messages"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def process_cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of a process, from ``/proc/<pid>/stat``; ``None`` where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # Fields 14 and 15 of stat(5) (utime, stime) are the 12th and 13th after the command name
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class DeviceCpuMeter(BaseCallback):
    """Reads the CPU time of DADRL's device processes after every message, keeping the last reading of each."""

    def __init__(self) -> None:
        super().__init__()
        self.latest: dict[int, float] = {}
        self.readable = True

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        for pid in getattr(self.model, "device_pids", []):
            seconds = process_cpu_seconds(pid)
            if seconds is None:
                self.readable = False
            else:
                self.latest[pid] = seconds

    def total(self) -> float | None:
        return sum(self.latest.values()) if self.readable and self.latest else None


def timed_learn(model: Any, timesteps: int) -> tuple[float, int, float | None]:
    """Wall seconds, steps and CPU seconds (this process plus DADRL's devices) of one ``learn()`` call."""
    meter = DeviceCpuMeter()
    started, cpu_started = time.perf_counter(), time.process_time()
    model.learn(total_timesteps=timesteps, callback=meter)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    devices = meter.total() if isinstance(model, DADRL) else 0.0
    return seconds, int(model.num_timesteps), None if devices is None else cpu + devices


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
    metadata["load_average_before"] = list(os.getloadavg())
    write_json(out / "run.json", metadata)
    rows: list[dict[str, Any]] = []

    def record(method: str, parallelism: int, repeat: int, seconds: float, steps: int, cpu: float | None) -> None:
        rows.append(
            {
                "method": method,
                "parallelism": parallelism,
                "repeat": repeat,
                "steps": steps,
                "seconds": seconds,
                "steps_per_s": steps / seconds,
                "cpu_ms_per_1000_steps": np.nan if cpu is None else 1e6 * cpu / steps,
            }
        )
        logger.info(
            "%s (%d) #%d: %d steps in %.1f s = %.0f steps/s", method, parallelism, repeat, steps, seconds, steps / seconds
        )

    def dadrl(n_workers: int, repeat: int) -> None:
        env = gym.make("OutbrainRec-v0", **env_kwargs)
        model = DADRL(
            "CandidatePolicy",
            env,
            n_workers=n_workers,
            n_steps=args.n_steps,
            envs_per_device=args.envs_per_device,
            seed=args.seed,
        )
        record("DADRL", n_workers, repeat, *timed_learn(model, args.timesteps))

    def a2c(n_envs: int, repeat: int) -> None:
        vec_env = make_vec_env("OutbrainRec-v0", n_envs=n_envs, seed=args.seed, env_kwargs=env_kwargs)
        model = A2C(CandidateActorCriticPolicy, vec_env, n_steps=args.n_steps, seed=args.seed, device="cpu")
        record("SB3 A2C", n_envs, repeat, *timed_learn(model, args.timesteps))

    # A short first DADRL call starts the forkserver, so every measured call has a warm start.
    warm = DADRL(
        "CandidatePolicy", gym.make("OutbrainRec-v0", **env_kwargs), n_workers=1, n_steps=args.n_steps, seed=args.seed
    )
    warm.learn(total_timesteps=200)

    # The target's three measurements, interleaved so that a change of load hits them alike.
    for repeat in range(args.repeats):
        dadrl(1, repeat)
        dadrl(2, repeat)
        a2c(8, repeat)

    # SB3's A2C with 1 environment and DQN (the benchmark's value-based settings), once each.
    a2c(1, 0)
    dqn = DQN(
        CandidateDQNPolicy,
        gym.make("OutbrainRec-v0", **env_kwargs),
        learning_starts=500,
        buffer_size=50_000,
        target_update_interval=500,
        seed=args.seed,
        device="cpu",
    )
    record("SB3 DQN", 1, 0, *timed_learn(dqn, args.timesteps))

    # The learner alone: messages per second, and the environment steps per second they stand for.
    message_steps = args.n_steps * args.envs_per_device
    per_second = learner_ceiling(gym.make("OutbrainRec-v0", **env_kwargs), args.learner_messages, message_steps, args.seed)
    rows.append(
        {
            "method": "DADRL learner ceiling",
            "parallelism": 0,
            "repeat": 0,
            "steps": args.learner_messages * message_steps,
            "seconds": args.learner_messages / per_second,
            "steps_per_s": per_second * message_steps,
            "cpu_ms_per_1000_steps": np.nan,
        }
    )
    logger.info(
        "learner: %.0f messages/s = %.0f steps/s at %d steps per message",
        per_second,
        per_second * message_steps,
        message_steps,
    )
    metadata["load_average_after"] = list(os.getloadavg())

    # Medians over the repeats, ratios to SB3 A2C with 8 environments, and the files.
    table = pd.DataFrame(rows)
    table.to_csv(out / "throughput.csv", index=False)
    summary = (
        table.groupby(["method", "parallelism"], sort=False)
        .agg(
            runs=("steps_per_s", "size"),
            steps_per_s=("steps_per_s", "median"),
            low=("steps_per_s", "min"),
            high=("steps_per_s", "max"),
            cpu_ms=("cpu_ms_per_1000_steps", "median"),
        )
        .reset_index()
    )
    reference = float(summary.loc[(summary["method"] == "SB3 A2C") & (summary["parallelism"] == 8), "steps_per_s"].iloc[0])
    summary["ratio"] = summary["steps_per_s"] / reference
    rate = summary[summary["method"] == "DADRL"].set_index("parallelism")["steps_per_s"]
    lines = [
        "# Training throughput on OutbrainRec-v0",
        "",
        f"- k={args.k}, candidate-scoring network, {args.timesteps} steps per learn(), n_steps={args.n_steps}, "
        f"DADRL envs_per_device={args.envs_per_device} ({message_steps} steps per message), one torch thread per process",
        f"- machine: {metadata['machine']['cpu_count']} CPUs, {metadata['machine']['platform']}; commit {metadata['git']}",
        f"- load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in metadata['load_average_before'])}; "
        f"after: {', '.join(f'{v:.2f}' for v in metadata['load_average_after'])}",
        f"- command: `{metadata['command']}`",
        "",
        "| method | workers / envs | runs | env steps/s, median (range) | CPU ms / 1,000 steps | ratio to SB3 A2C (8 envs) |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary.itertuples():
        label = "–" if row.parallelism == 0 else str(row.parallelism)
        spread = f" ({row.low:,.0f}–{row.high:,.0f})" if row.runs > 1 else ""
        cpu = "–" if np.isnan(row.cpu_ms) else f"{row.cpu_ms:,.0f}"
        lines.append(f"| {row.method} | {label} | {row.runs} | {row.steps_per_s:,.0f}{spread} | {cpu} | {row.ratio:.2f} |")
    lines += [
        "",
        f"DADRL speed-up from 1 to 2 devices: {rate[2] / rate[1]:.2f}x (medians).",
        "CPU time counts every process of the run: the learner's (or SB3's) process and, for DADRL, each device's "
        "worker process including its start-up. The learner ceiling is measured with devices that cost nothing: "
        "the rate at which the learner alone validates and applies messages, times the steps per message "
        "(n_steps x envs_per_device).",
        "",
    ]
    write_report(out, "throughput.md", lines, metadata)
    return 0


if __name__ == "__main__":
    sys.exit(main())
