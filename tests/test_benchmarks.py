"""The main job, ``benchmarks/table1.py``, end to end on a small budget: every file it promises, sane numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def test_table1_writes_every_result_on_a_small_budget(tmp_path: Path) -> None:
    out = tmp_path / "table1"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "table1.py"),
        *("--methods", "Random", "MostPopular", "DADRL"),
        *("--ks", "1", "4", "--train-k", "4", "--timesteps", "400", "--seeds", "0"),
        *("--max-test-impressions", "400", "--n-workers", "1", "--out", str(out)),
    ]
    environment = {**os.environ, "RECSYS_GYM_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("table1.csv", "table1.md", "figure2.png", "curves.csv", "run.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    # Not a terminal: no progress bar among the log lines; the last line names every file written.
    assert "\r" not in done.stderr
    assert "curves.csv" in done.stderr.strip().splitlines()[-1]

    table = pd.read_csv(out / "table1.csv")
    assert sorted(zip(table["method"], table["k"], strict=True)) == [
        (method, k) for method in ("DADRL", "MostPopular", "Random") for k in (1, 4)
    ]
    assert table["n_impressions"].eq(400).all() and table["ctr"].between(0, 1).all()
    # The random floor is 1 / (k + 1); popularity on the built-in data beats it by far, at both k.
    assert (table["random_floor"] - 1 / (table["k"] + 1)).abs().max() < 1e-12
    popular = table[table["method"] == "MostPopular"].set_index("k")
    assert (popular["ctr"] > popular["random_floor"] + 0.15).all(), popular
    assert json.loads((out / "run.json").read_text())["settings"]["timesteps"] == 400
