"""Shared fixtures: a private cache folder, a hand-made log with known answers, and data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from recsys_gym.data.dataset import BuildOptions, CompactDataset, build_dataset
from recsys_gym.data.raw import RawLog

#: Real Outbrain rows, read in place and never copied into the repository: ``../shared/data/outbrain-sample``
#: beside the checkout, or the folder named by ``$RECSYS_GYM_OUTBRAIN_SAMPLE``.
OUTBRAIN_SAMPLE = Path(
    os.environ.get(
        "RECSYS_GYM_OUTBRAIN_SAMPLE", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "outbrain-sample"
    )
)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep every cache and SB3 log folder of the test run in a temporary folder (worker processes inherit it)."""
    os.environ["RECSYS_GYM_CACHE"] = str(tmp_path_factory.mktemp("recsys_gym_cache"))
    # SB3 makes a log folder in the system's temporary folder at every learn() unless told where: keep them here too
    os.environ["SB3_LOGDIR"] = str(tmp_path_factory.mktemp("sb3_logs"))


def tiny_raw_log(test_clicks: tuple[str, str] = ("A", "D")) -> RawLog:
    """Eight impressions of three users over five items, the last two (by time) the test split.

    ====  ====  ====  =======  =========  =====
    id    user  time  clicked  shown      split
    ====  ====  ====  =======  =========  =====
    1     u1    10    A        A, B, C    train
    2     u2    20    A        A, C, D    train
    3     u3    30    A        A, B       train
    4     u1    40    B        B, D       train
    5     u2    50    A        A, E       train
    6     u3    60    C        C, D, E    train
    7     u1    70    A        A, C       test
    8     u2    80    D        D, B       test
    ====  ====  ====  =======  =========  =====

    Training clicks: A 4, B 1, C 1, D 0, E 0. User u1 interacted with A and B, u2 with A and D, so
    each test user has exactly three items left as negatives.
    """
    clicked = ["A", "A", "A", "B", "A", "C", test_clicks[0], test_clicks[1]]
    impressions = pd.DataFrame(
        {
            "impression_id": range(1, 9),
            "user": ["u1", "u2", "u3", "u1", "u2", "u3", "u1", "u2"],
            "timestamp": [10, 20, 30, 40, 50, 60, 70, 80],
            "context": [100, 101, 100, 102, 101, 100, 102, -1],
            "platform": [1, 2, 3, 1, 2, 0, 1, 2],
            "clicked_item": clicked,
        }
    )
    shown_lists = [["B", "C"], ["C", "D"], ["B"], ["D"], ["E"], ["D", "E"], ["C"], ["B"]]
    shown = pd.DataFrame(
        [
            (impression, item)
            for impression, (click, others) in enumerate(zip(clicked, shown_lists, strict=True), start=1)
            for item in [click, *others]
        ],
        columns=["impression_id", "item"],
    )
    item_content = pd.DataFrame(
        {
            "key": ["A", "A", "B", "C", "D", "E"],
            "token": ["topic:1", "topic:2", "topic:1", "topic:2", "topic:3", "topic:3"],
            "weight": [0.9, 0.1, 0.8, 0.7, 0.6, 0.5],
        }
    )
    context_content = pd.DataFrame(
        {"key": [100, 101, 102], "token": ["topic:1", "topic:2", "topic:3"], "weight": [1.0, 1.0, 1.0]}
    )
    return RawLog(impressions, shown, item_content, context_content, name="tiny")


@pytest.fixture()
def tiny_dataset(tmp_path: Path) -> CompactDataset:
    """The :func:`tiny_raw_log` built with a 25% test split."""
    return build_dataset(tiny_raw_log(), tmp_path / "tiny", BuildOptions(test_fraction=0.25, content_dim=2, cf_dim=2))
