"""Reproduce Table 1 (One-Plus-k CTR) and Figure 2 (training curves) of Shi et al., RecSys 2020.

Trains DADRL and the baselines on the training split of ``OutbrainRec-v0``, scores each with the
One-Plus-k protocol on the test split for every ``k``, and writes to ``--out``:

- ``table1.csv``: one row per method, ``k`` and seed (``method, k, seed, ctr`` and the counts).
- ``table1.md``: mean and spread per method and ``k``, beside the paper's numbers and the random floor.
- ``figure2.png`` and ``curves.csv``: moving CTR against training episodes for every method.
- ``run.json``: the exact command, seeds, library versions and machine.

Examples::

    python benchmarks/table1.py --quick                       # built-in synthetic data, < 10 min on 2 cores
    python benchmarks/table1.py --dataset movielens-100k --quick
    python benchmarks/table1.py --data-dir ~/data/outbrain --negatives shown --seeds 0 1 2

With the default ``--policy candidate``, every neural method uses a candidate-scoring network,
trained once at ``--train-k`` negatives and evaluated at every ``k`` (the network does not depend
on ``k``). With ``--policy mlp`` each neural method is an MLP over the flat observation, trained
once per ``k``.
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
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    METHODS,
    NEURAL,
    PAPER_TABLE1,
    QUICK_METHODS,
    TrainedMethod,
    moving_average,
    run_metadata,
    train_method,
    write_json,
)

from recsys_gym.evaluation import PAPER_KS, evaluate_one_plus_k

logger = logging.getLogger("benchmarks.table1")

#: Files a run writes into ``--out``.
RESULT_FILES = ("table1.csv", "table1.md", "figure2.png", "curves.csv", "run.json")

#: Offset between a run's training seed and the seed of its evaluation candidate sets.
EVAL_SEED_OFFSET = 10_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--dataset",
        default="outbrain",
        choices=["outbrain", "movielens-100k", "interactions"],
        help="outbrain: the Kaggle files in --data-dir, or the built-in synthetic data without it",
    )
    parser.add_argument("--data-dir", default=None, help="folder (or log file) of the data; see the README")
    parser.add_argument("--negatives", default="random", choices=["random", "shown"], help="how negatives are drawn")
    parser.add_argument("--ks", type=int, nargs="+", default=list(PAPER_KS), help="numbers of negatives per candidate set")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        choices=list(METHODS),
        help="methods to run [all; --quick: the five of the main job]",
    )
    parser.add_argument("--policy", default="candidate", choices=["candidate", "mlp"], help="network of the neural methods")
    parser.add_argument("--train-k", type=int, default=10, help="k used for training with --policy candidate")
    parser.add_argument("--timesteps", type=int, default=None, help="training steps per run [100000; --quick: 20000]")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds [0 1 2; --quick: 0]")
    parser.add_argument("--n-workers", type=int, default=2, help="DADRL devices (worker processes)")
    parser.add_argument("--gamma", type=float, default=0.9, help="discount factor of every RL method")
    parser.add_argument(
        "--max-test-impressions", type=int, default=None, help="cap on test impressions per k [all; --quick: 3000]"
    )
    parser.add_argument("--window", type=int, default=200, help="episodes in the moving average of Figure 2")
    parser.add_argument("--out", default="runs/table1", help="folder for the results")
    parser.add_argument("--quick", action="store_true", help="a small budget that finishes in under 10 minutes on 2 cores")
    parser.add_argument(
        "--no-progress", action="store_true", help="hide progress bars (shown only when stderr is a terminal anyway)"
    )
    args = parser.parse_args(argv)

    # Fill the budget-dependent defaults and check the values.
    args.timesteps = args.timesteps if args.timesteps is not None else (20_000 if args.quick else 100_000)
    args.seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    args.methods = args.methods if args.methods is not None else list(QUICK_METHODS if args.quick else METHODS)
    if args.max_test_impressions is None and args.quick:
        args.max_test_impressions = 3000
    if any(k < 1 for k in args.ks):
        parser.error(f"--ks must all be >= 1, got {args.ks}")
    if any(seed < 0 for seed in args.seeds):
        parser.error(f"--seeds must all be >= 0, got {args.seeds}")
    for option in ("ks", "seeds", "methods"):
        values = getattr(args, option)
        if len(set(values)) != len(values):
            parser.error(f"--{option} lists a value twice ({values}); repeated runs would be averaged as if independent")
    if not 0.0 < args.gamma <= 1.0:
        parser.error(f"--gamma must lie in (0, 1], got {args.gamma}")
    if args.train_k < 1:
        parser.error(f"--train-k must be >= 1, got {args.train_k}")
    if args.window < 1:
        parser.error(f"--window must be >= 1 episode, got {args.window}")
    if args.max_test_impressions is not None and args.max_test_impressions < 1:
        parser.error(f"--max-test-impressions must be >= 1, got {args.max_test_impressions}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out must be a folder, but {args.out} is a file")
    if args.timesteps < 1:
        parser.error(f"--timesteps must be >= 1, got {args.timesteps}")
    if args.n_workers < 1:
        parser.error(f"--n-workers must be >= 1, got {args.n_workers}")
    if args.dataset == "interactions" and args.data_dir is None:
        parser.error("--dataset interactions needs --data-dir: the log file or RecBole folder")
    return args


def run(args: argparse.Namespace, argv: list[str]) -> pd.DataFrame:
    """Train and evaluate every (seed, method) pair and write the result files."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # The checkout's state is read before old results go, or removing committed ones would mark it "+dirty".
    metadata = run_metadata(argv, args.seeds)
    # Results of an earlier run in the same folder would sit beside this run's: remove them first.
    for name in RESULT_FILES:
        (out / name).unlink(missing_ok=True)
    env_kwargs: dict[str, Any] = {"dataset": args.dataset, "data_dir": args.data_dir, "negatives": args.negatives}

    # Load (or build) the data once up front, so a bad path fails before any training.
    probe = gym.make("OutbrainRec-v0", **env_kwargs, k=min(args.ks))
    summary = probe.unwrapped.dataset.summary()  # type: ignore[attr-defined]
    logger.info("data: %s", summary)
    metadata["data"] = summary
    metadata["settings"] = {key: value for key, value in vars(args).items() if key not in ("no_progress",)}
    write_json(out / "run.json", metadata)

    # One job per (seed, method, training k): candidate policies and baselines train once.
    train_ks = args.ks if args.policy == "mlp" else [args.train_k]
    jobs = [
        (seed, method, train_k)
        for seed in args.seeds
        for method in args.methods
        for train_k in (train_ks if method in NEURAL else [args.train_k])
    ]
    figure_k = args.train_k if args.policy == "candidate" or args.train_k in args.ks else args.ks[0]
    rows: list[dict[str, Any]] = []
    curves: list[pd.DataFrame] = []
    # Bars on a terminal only: in a log file they would be lines of carriage returns between the log lines.
    progress = not args.no_progress and sys.stderr.isatty()
    for seed, method, train_k in tqdm(jobs, desc="Table 1 runs", disable=not progress, unit="run"):
        logger.info("training %s (seed %d, k=%d, %d steps)", method, seed, train_k, args.timesteps)
        trained = train_method(
            method, env_kwargs, train_k, args.policy, args.timesteps, seed, args.n_workers, args.gamma, progress_bar=progress
        )

        # Evaluate on the test split: at every k, or only at the k an MLP policy was trained for.
        eval_ks = [train_k] if (args.policy == "mlp" and method in NEURAL) else args.ks
        table = evaluate_one_plus_k(
            {k: trained.policy_at(k) for k in eval_ks},
            ks=eval_ks,
            env_kwargs=env_kwargs,
            seed=seed + EVAL_SEED_OFFSET,
            max_impressions=args.max_test_impressions,
            progress_bar=progress,
        )
        for record in table.to_dict("records"):
            rows.append({"method": method, "seed": seed, "train_k": train_k, "train_seconds": trained.train_seconds, **record})
            logger.info(
                "%s seed %d k=%d: CTR %.4f (random %.4f)", method, seed, record["k"], record["ctr"], record["random_floor"]
            )
        if train_k == figure_k:
            curves.append(_curve(trained, seed))

    # Write the tables, the curves and the figure.
    results = pd.DataFrame(rows)
    columns = ["method", "k", "seed", "ctr", "hits", "n_impressions", "random_floor", "ci95", "train_k", "train_seconds"]
    results = results[columns].sort_values(["method", "k", "seed"], kind="stable")
    results.to_csv(out / "table1.csv", index=False)
    curve_table = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    curve_table.to_csv(out / "curves.csv", index=False)
    (out / "table1.md").write_text(markdown_table(results, args, metadata), encoding="utf-8")
    if len(curve_table):
        plot_figure2(curve_table, figure_k, args.window, out / "figure2.png", title=_title(args))
    metadata["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    write_json(out / "run.json", metadata)
    logger.info("wrote %s", ", ".join(str(out / name) for name in RESULT_FILES if (out / name).exists()))
    return results


def _curve(trained: TrainedMethod, seed: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": trained.name,
            "seed": seed,
            "episode": np.arange(1, len(trained.episode_clicks) + 1),
            "clicks": trained.episode_clicks,
            "length": trained.episode_lengths,
        }
    )


def _title(args: argparse.Namespace) -> str:
    source = args.data_dir or ("built-in synthetic Outbrain" if args.dataset == "outbrain" else args.dataset)
    return f"{source}, {args.negatives} negatives, {args.policy} policy"


def markdown_table(results: pd.DataFrame, args: argparse.Namespace, metadata: dict[str, Any]) -> str:
    """Mean CTR per method and ``k`` with its spread, the paper's numbers and the random floor."""
    ks = sorted(results["k"].unique())
    n_seeds = results["seed"].nunique()
    spread = "standard deviation over seeds" if n_seeds > 1 else "95% binomial interval half-width (one seed)"
    lines = [
        "# Table 1: One-Plus-k CTR on the test split",
        "",
        f"- data: {_title(args)}; {metadata['data']['test_impressions']} test impressions"
        + (
            f", scoring whole test episodes until {args.max_test_impressions} per k are reached"
            if args.max_test_impressions
            else ""
        ),
        f"- training: {args.timesteps} steps per run, seeds {args.seeds}, gamma {args.gamma}, DADRL devices {args.n_workers}; "
        + (
            f"neural methods trained once at k={args.train_k} and evaluated at every k"
            if args.policy == "candidate"
            else "neural methods trained once per k (MLP over the flat observation)"
        ),
        f"- each cell: mean CTR ± {spread}",
        f"- command: `{metadata['command']}`",
        "",
        "| method | " + " | ".join(f"k={k}" for k in ks) + " |",
        "|---|" + "---|" * len(ks),
    ]
    for method in [m for m in METHODS if m in set(results["method"])]:
        cells = []
        for k in ks:
            subset = results[(results["method"] == method) & (results["k"] == k)]
            if subset.empty:
                cells.append("–")
                continue
            half = subset["ctr"].std(ddof=1) if n_seeds > 1 else subset["ci95"].iloc[0]
            cells.append(f"{subset['ctr'].mean():.3f} ± {half:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    floor = [f"{1 / (k + 1):.3f}" for k in ks]
    lines.append("| random floor 1/(k+1) | " + " | ".join(floor) + " |")
    lines += ["", "The paper's Table 1 (Outbrain, Shi et al. 2020), for comparison:", ""]
    lines.append("| method | " + " | ".join(f"k={k}" for k in ks) + " |")
    lines.append("|---|" + "---|" * len(ks))
    for method, values in PAPER_TABLE1.items():
        lines.append(f"| {method} (paper) | " + " | ".join(f"{values[k]:.3f}" if k in values else "–" for k in ks) + " |")
    lines.append("")
    return "\n".join(lines)


def plot_figure2(curves: pd.DataFrame, k: int, window: int, path: Path, title: str) -> None:
    """Moving CTR (clicks over steps in the last ``window`` episodes) against training episodes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=120)
    for method in [m for m in METHODS if m in set(curves["method"])]:
        per_seed = []
        for _, group in curves[curves["method"] == method].groupby("seed"):
            clicks = moving_average(group["clicks"].to_numpy(), window)
            steps = moving_average(group["length"].to_numpy(), window)
            per_seed.append(clicks / np.maximum(steps, 1e-12))
        length = min(len(values) for values in per_seed)
        if length == 0:
            continue
        mean = np.mean([values[:length] for values in per_seed], axis=0)
        style = "--" if not METHODS[method] else "-"
        axis.plot(np.arange(1, length + 1), mean, style, label=method, linewidth=1.5)
    axis.axhline(1.0 / (k + 1), color="grey", linestyle=":", label=f"random floor 1/{k + 1}")
    axis.set_xlabel("training episodes")
    axis.set_ylabel(f"moving CTR over {window} episodes (k={k})")
    axis.set_title(f"Figure 2: training CTR, {title}", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # Small networks run faster on one thread each; DADRL's devices take the other cores.
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    script = os.path.relpath(Path(__file__).resolve(), Path.cwd())
    # Log lines go through tqdm, so they do not cut a bar in two.
    with logging_redirect_tqdm():
        results = run(args, [script, *argv])
    summary = results.groupby(["method", "k"])["ctr"].mean().unstack("k")
    print(summary.round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
