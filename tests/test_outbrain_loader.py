"""Tests of :func:`recsys_gym.data.outbrain.read_outbrain` on hand-written files and on real Kaggle rows."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

#: Real Outbrain rows (1,959 displays), read in place and never copied into the repository.
from conftest import OUTBRAIN_SAMPLE

from recsys_gym.data.outbrain import read_outbrain
from recsys_gym.error import DataError, MissingDataError

EVENTS = """display_id,uuid,document_id,timestamp,platform,geo_location
1,aaa,100,61,3,US>SC>519
2,bbb,101,81,\\N,--
3,aaa,102,182,2,
4,ccc,103,200,1,GB>H9
"""

# Display 2 repeats (2, 12); display 5 has no event; display 4 (an event) has no clicks.
CLICKS = """display_id,ad_id,clicked
1,10,0
1,11,1
2,10,1
2,12,0
2,12,0
3,11,0
3,13,1
5,10,1
5,12,0
"""

PROMOTED = """ad_id,document_id,campaign_id,advertiser_id
10,200,7,70
11,201,7,70
12,200,8,71
99,300,9,72
"""

TOPICS = """document_id,topic_id,confidence_level
200,5,0.9
200,6,0.1
201,6,0.8
100,5,0.5
999,1,0.3
"""

CATEGORIES = """document_id,category_id,confidence_level
200,1403,0.7
101,1702,0.6
"""

ENTITIES = """document_id,entity_id,confidence_level
201,f9eec25663db4cd83183f5c805186f16,0.4
"""

META = """document_id,source_id,publisher_id,publish_time
200,11,450,2016-05-01 00:00:00
102,12,,
"""

ALL_FILES = {
    "events.csv": EVENTS,
    "clicks_train.csv": CLICKS,
    "promoted_content.csv": PROMOTED,
    "documents_topics.csv": TOPICS,
    "documents_categories.csv": CATEGORIES,
    "documents_entities.csv": ENTITIES,
    "documents_meta.csv": META,
}


def write_files(folder: Path, files: dict[str, str]) -> Path:
    """Write each named text into ``folder`` and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def content_set(table: pd.DataFrame | None) -> set[tuple[int, str, float]]:
    """A content table as a set of (key, token, weight rounded to 6 places)."""
    assert table is not None
    return {(int(key), str(token), round(float(weight), 6)) for key, token, weight in table.itertuples(index=False)}


def rows(table: pd.DataFrame | None) -> list[tuple]:
    """The rows of a table that must be present, as tuples."""
    assert table is not None
    return list(table.itertuples(index=False, name=None))


def present(table: pd.DataFrame | None) -> pd.DataFrame:
    """A table that must be present."""
    assert table is not None
    return table


@pytest.mark.parametrize("chunksize", [1, 2, 1000])
def test_tiny_files_give_the_hand_checked_log(tmp_path: Path, chunksize: int) -> None:
    raw = read_outbrain(write_files(tmp_path, ALL_FILES), chunksize=chunksize)

    impressions = raw.impressions
    assert impressions["impression_id"].tolist() == [1, 2, 3]
    assert impressions["user"].tolist() == ["aaa", "bbb", "aaa"]
    assert impressions["timestamp"].tolist() == [61, 81, 182]
    assert impressions["context"].tolist() == [100, 101, 102]
    assert impressions["platform"].tolist() == [3, 0, 2]
    assert impressions["clicked_item"].tolist() == [11, 10, 13]
    assert rows(raw.shown) == [(1, 10), (1, 11), (2, 10), (2, 12), (3, 11), (3, 13)]

    # Ads get their landing page's tokens plus campaign and advertiser; ad 99 is not in the log, ad 13 not promoted.
    landing_200 = {("topic:5", 0.9), ("topic:6", 0.1), ("category:1403", 0.7), ("source:11", 1.0), ("publisher:450", 1.0)}
    expected_items = {(10, token, weight) for token, weight in landing_200} | {
        (12, token, weight) for token, weight in landing_200
    }
    expected_items |= {(11, "topic:6", 0.8), (11, "entity:f9eec25663db4cd83183f5c805186f16", 0.4)}
    expected_items |= {
        (10, "campaign:7", 1.0),
        (10, "advertiser:70", 1.0),
        (11, "campaign:7", 1.0),
        (11, "advertiser:70", 1.0),
    }
    expected_items |= {(12, "campaign:8", 1.0), (12, "advertiser:71", 1.0)}
    assert content_set(raw.item_content) == expected_items
    assert content_set(raw.context_content) == {(100, "topic:5", 0.5), (101, "category:1702", 0.6), (102, "source:12", 1.0)}

    # Repairs are counted in the notes.
    assert any("dropped 1 duplicate (display_id, ad_id)" in note for note in raw.notes)
    assert any("dropped 2 click row(s) of 1 display(s)" in note for note in raw.notes)
    assert any("skipped 1 row(s) of events.csv" in note for note in raw.notes)
    assert raw.name == "outbrain"


@pytest.mark.parametrize(
    ("lines", "expected_shown"),
    [
        (["1,10,0", "1,11,0", "1,11,1"], [(1, 10), (1, 11)]),
        (["1,11,1", "1,10,0", "1,11,0"], [(1, 11), (1, 10)]),
    ],
)
def test_duplicate_keeps_the_clicked_copy(tmp_path: Path, lines: list[str], expected_shown: list[tuple[int, int]]) -> None:
    clicks = "display_id,ad_id,clicked\n" + "\n".join(lines) + "\n"
    raw = read_outbrain(write_files(tmp_path, {"events.csv": EVENTS, "clicks_train.csv": clicks}))
    assert raw.impressions["clicked_item"].tolist() == [11]
    assert rows(raw.shown) == expected_shown
    assert any("dropped 1 duplicate" in note for note in raw.notes)


def test_missing_optional_files_warn_once_and_degrade(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = write_files(tmp_path, {"events.csv": EVENTS, "clicks_train.csv": CLICKS, "documents_topics.csv": TOPICS})
    with caplog.at_level(logging.INFO, logger="recsys_gym.data.outbrain"):
        raw = read_outbrain(folder)
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    for name in ("promoted_content.csv", "documents_categories.csv", "documents_entities.csv", "documents_meta.csv"):
        assert name in warnings[0].getMessage()
        assert any(note.startswith(f"{name} is missing") for note in raw.notes)
    assert "documents_topics.csv" not in warnings[0].getMessage()
    assert any(record.levelno == logging.INFO and "no row in events.csv" in record.getMessage() for record in caplog.records)
    assert raw.item_content is None
    assert content_set(raw.context_content) == {(100, "topic:5", 0.5)}


def test_missing_folder_and_required_files(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match=r"data_dir=.*nowhere.* does not exist"):
        read_outbrain(tmp_path / "nowhere")
    folder = write_files(tmp_path / "partial", {"clicks_train.csv": CLICKS})
    with pytest.raises(MissingDataError, match=r"data_dir=.* has no events\.csv"):
        read_outbrain(folder)
    folder = write_files(tmp_path / "partial2", {"events.csv": EVENTS})
    with pytest.raises(MissingDataError, match=r"has no clicks_train\.csv"):
        read_outbrain(folder)


@pytest.mark.parametrize(
    ("file_name", "text", "pattern"),
    [
        (
            "events.csv",
            EVENTS.replace("uuid", "uid"),
            r"events\.csv: missing column\(s\) \['uuid'\] \(did you mean 'uid' for 'uuid'\?\); expected columns .* header has",
        ),
        ("clicks_train.csv", CLICKS.replace("clicked", "click"), r"clicks_train\.csv: missing column\(s\) \['clicked'\]"),
        (
            "clicks_train.csv",
            CLICKS.replace("2,10,1", "x,10,1"),
            r"clicks_train\.csv: line 4 column 'display_id' holds 'x', expected an integer",
        ),
        ("clicks_train.csv", CLICKS.replace("2,10,1", "2,10"), r"clicks_train\.csv: line 4 has 2 field\(s\), expected 3"),
        ("clicks_train.csv", CLICKS.replace("1,10,0", "1,10,0,4"), r"clicks_train\.csv: line 2 has 4 field\(s\), expected 3"),
        ("clicks_train.csv", CLICKS.replace("3,11,0", "3,11,0,0"), r"clicks_train\.csv: line 7 has 4 field\(s\), expected 3"),
        (
            "clicks_train.csv",
            CLICKS.replace("3,11,0", "3,11,2"),
            r"clicks_train\.csv: line 7 column 'clicked' holds 2, expected 0 or 1",
        ),
        (
            "clicks_train.csv",
            CLICKS.replace("3,13,1", "3,13,0"),
            r"clicks_train\.csv: display_id 3 has 0 clicked ad\(s\).*line 7",
        ),
        (
            "clicks_train.csv",
            CLICKS.replace("1,10,0", "1,10,1"),
            r"clicks_train\.csv: display_id 1 has 2 clicked ad\(s\).*line 2",
        ),
        (
            "events.csv",
            EVENTS.replace("102,182,2", "102,182,7"),
            r"events\.csv: line 4 column 'platform' holds '7', expected one of",
        ),
        (
            "events.csv",
            EVENTS.replace("102,182,2", "102,182,"),
            r"events\.csv: line 4 column 'platform' holds '', expected one of",
        ),
        (
            "events.csv",
            EVENTS.replace("2,bbb,101,81", "2,bbb,101,8.5"),
            r"events\.csv: line 3 column 'timestamp' holds '8\.5'",
        ),
        ("events.csv", EVENTS.replace("2,bbb,101", "2,,101"), r"events\.csv: line 3 column 'uuid' is empty"),
        (
            "events.csv",
            EVENTS.replace("3,aaa,102", "1,aaa,102"),
            r"events\.csv: display_id 1 has more than one row \(lines 2 and 4\)",
        ),
        (
            "documents_topics.csv",
            TOPICS.replace("0.8", "1.5"),
            r"documents_topics\.csv: line 4 column 'confidence_level' holds 1\.5",
        ),
        (
            "documents_topics.csv",
            TOPICS.replace("0.8", "high"),
            r"documents_topics\.csv: line 4 column 'confidence_level' holds 'high'",
        ),
        ("promoted_content.csv", PROMOTED + "10,201,7,70\n", r"promoted_content\.csv: ad_id 10 has more than one row"),
    ],
)
def test_bad_input_names_file_line_and_column(tmp_path: Path, file_name: str, text: str, pattern: str) -> None:
    folder = write_files(tmp_path, {**ALL_FILES, file_name: text})
    with pytest.raises(DataError, match=pattern):
        read_outbrain(folder, chunksize=2)


def test_real_sample_rows() -> None:
    if not (OUTBRAIN_SAMPLE / "events.csv").is_file():
        pytest.skip(f"the real Outbrain sample is not at {OUTBRAIN_SAMPLE.resolve()} (it lives outside the repository)")
    raw = read_outbrain(OUTBRAIN_SAMPLE)

    # The counts its README states.
    assert len(raw.impressions) == 1959
    shown = present(raw.shown)
    assert len(shown) == 9999
    assert raw.impressions["user"].nunique() == 1949
    assert shown["item"].nunique() == 4319
    assert raw.impressions["context"].nunique() == 1434
    assert raw.item_content is None and raw.context_content is None

    # The first display, as in the file; every clicked ad is among the ads shown in its display.
    first = raw.impressions.iloc[0]
    assert (first["impression_id"], first["user"], first["context"], first["timestamp"], first["platform"]) == (
        1,
        "cb8c55702adb93",
        379743,
        61,
        3,
    )
    assert first["clicked_item"] == 144739
    shown_pairs = set(rows(shown))
    clicked_pairs = zip(raw.impressions["impression_id"], raw.impressions["clicked_item"], strict=True)
    assert all(pair in shown_pairs for pair in clicked_pairs)
    counts = shown.groupby("impression_id").size()
    assert counts.min() >= 2 and counts.max() <= 12
    assert set(np.unique(raw.impressions["platform"])) <= {0, 1, 2, 3}
