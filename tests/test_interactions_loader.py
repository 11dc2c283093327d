"""Tests of :func:`recsys_gym.data.interactions.read_interactions` and :func:`find_movielens_100k`."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pandas as pd
import pytest

from recsys_gym.data import interactions
from recsys_gym.data.interactions import find_movielens_100k, read_interactions
from recsys_gym.error import DataError, MissingDataError

U_DATA = "1\t10\t5\t100\n1\t20\t2\t90\n2\t10\t4\t80\n"


def movielens_item_row(item: int, title: str, date: str, genres: set[int]) -> str:
    """One ``u.item`` line: id, title, release date, video date, URL, 19 genre flags."""
    flags = "|".join("1" if index in genres else "0" for index in range(19))
    return f"{item}|{title}|{date}||http://us.imdb.com/x|{flags}\n"


def write_movielens(folder: Path, with_items: bool = True) -> Path:
    """A three-rating MovieLens folder; ``u.item`` is latin-1 and gives movie 10 Animation+Comedy, movie 20 Drama."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text(U_DATA)
    if with_items:
        rows = movielens_item_row(10, "Toy Story (1995)", "01-Jan-1995", {3, 5}) + movielens_item_row(
            20, "Café (1996)", "", {8}
        )
        (folder / "u.item").write_bytes(rows.encode("latin-1"))
    return folder


def content_set(table: pd.DataFrame | None) -> set[tuple[object, str]]:
    """The (key, token) pairs of a content table."""
    assert table is not None
    return {(key, str(token)) for key, token in zip(table["key"].tolist(), table["token"].tolist(), strict=True)}


def rows(table: pd.DataFrame | None) -> list[tuple]:
    """The rows of a table that must be present, as tuples."""
    assert table is not None
    return list(table.itertuples(index=False, name=None))


def present(table: pd.DataFrame | None) -> pd.DataFrame:
    """A table that must be present."""
    assert table is not None
    return table


def test_movielens_folder(tmp_path: Path) -> None:
    raw = read_interactions(write_movielens(tmp_path / "ml-tiny"))
    impressions = raw.impressions
    assert impressions["impression_id"].tolist() == [0, 1, 2]
    assert impressions["user"].tolist() == [1, 1, 2]
    assert impressions["clicked_item"].tolist() == [10, 20, 10]
    assert impressions["timestamp"].tolist() == [100, 90, 80]
    assert impressions["context"].tolist() == [-1, -1, -1]
    assert impressions["platform"].tolist() == [0, 0, 0]
    assert raw.shown is None and raw.other_user_items is None
    assert content_set(raw.item_content) == {
        (10, "genre:Animation"),
        (10, "genre:Comedy"),
        (10, "release_year:1995"),
        (20, "genre:Drama"),
    }
    assert set(present(raw.item_content)["weight"]) == {1.0}
    assert raw.name == "ml-tiny"


def test_movielens_min_rating_keeps_low_ratings_as_non_clicks(tmp_path: Path) -> None:
    raw = read_interactions(write_movielens(tmp_path) / "u.data", min_rating=4)
    assert raw.impressions["user"].tolist() == [1, 2]
    assert raw.impressions["clicked_item"].tolist() == [10, 10]
    assert raw.impressions["impression_id"].tolist() == [0, 1]
    assert rows(raw.other_user_items) == [(1, 20)]
    assert any("1 interaction(s) rated below min_rating=4" in note for note in raw.notes)


def test_movielens_without_u_item_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="recsys_gym.data.interactions"):
        raw = read_interactions(write_movielens(tmp_path, with_items=False))
    assert raw.item_content is None
    assert any("u.item is missing" in record.getMessage() for record in caplog.records)


def test_recbole_folder_with_item_file(tmp_path: Path) -> None:
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "toy.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\nu1\ti1\t3.0\t881250949\nu2\ti2\t5\t881250950.0\n"
    )
    (folder / "toy.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        'i1\tToy "Story"\t1995\tAnimation Comedy\ni2\tHeat\t\tThriller\n'
    )
    raw = read_interactions(folder, min_rating=4.0)
    assert raw.impressions["user"].tolist() == ["u2"]
    assert raw.impressions["clicked_item"].tolist() == ["i2"]
    assert raw.impressions["timestamp"].tolist() == [881250950]
    assert rows(raw.other_user_items) == [("u1", "i1")]
    # Titles are free text and give no token.
    assert content_set(raw.item_content) == {
        ("i1", "class:Animation"),
        ("i1", "class:Comedy"),
        ("i1", "release_year:1995"),
        ("i2", "class:Thriller"),
    }
    assert raw.name == "toy"


def test_csv_with_click_column_and_common_names(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("userId,movieId,ts,clicked,extra\n7,3,50,1,a\n7,4,40,0,b\n8,3,30,1,c\n")
    raw = read_interactions(path)
    assert raw.impressions["user"].tolist() == [7, 8]
    assert raw.impressions["clicked_item"].tolist() == [3, 3]
    assert raw.impressions["timestamp"].tolist() == [50, 30]
    assert rows(raw.other_user_items) == [(7, 4)]
    assert raw.item_content is None
    assert raw.name == "log"


def test_tsv_without_timestamp_uses_file_order(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "log.tsv"
    path.write_text("user\titem\nalice\tx\nbob\ty\nalice\tz\n")
    with caplog.at_level(logging.WARNING, logger="recsys_gym.data.interactions"):
        raw = read_interactions(path)
    assert raw.impressions["timestamp"].tolist() == [0, 1, 2]
    assert raw.impressions["user"].tolist() == ["alice", "bob", "alice"]
    assert any("no timestamp column" in record.getMessage() for record in caplog.records)


def test_csv_with_iso_dates(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,item,time\na,x,1970-01-01 00:01:00\nb,y,1970-01-02\n")
    assert read_interactions(path).impressions["timestamp"].tolist() == [60, 86400]


@pytest.mark.parametrize(
    ("file_name", "text", "error", "pattern"),
    [
        (
            "log.csv",
            "person,item\n1,2\n",
            DataError,
            r"log\.csv: no user column; expected one named user / user_id .* has \['person', 'item'\]",
        ),
        ("log.csv", "user,thing\n1,2\n", DataError, r"log\.csv: no item column"),
        (
            "log.csv",
            "user,item,rating\n1,2,3\n1,3,x\n",
            DataError,
            r"log\.csv: line 3 column 'rating' holds 'x', expected a number",
        ),
        ("log.csv", "user,item,rating\n1,2,3\n1,,3\n", DataError, r"log\.csv: line 3 column 'item' is empty"),
        ("log.csv", "user,item,click\n1,2,1\n1,3,2\n", DataError, r"log\.csv: line 3 column 'click' holds 2, expected 0 or 1"),
        ("log.csv", "user,item,ts\n1,2,10\n1,3,soon\n", DataError, r"log\.csv: line 3 column 'timestamp' holds 'soon'"),
        ("log.csv", "user,item\n1,2\n1,3,4\n", DataError, r"log\.csv: line 3 has 3 field\(s\), expected 2"),
        ("u.data", "1\t10\t5\t100\n1\t20\t2\n", DataError, r"u\.data: line 2 has 3 field\(s\), expected 4"),
        (
            "u.data",
            "1\t10\t5\t100\nx\t20\t2\t90\n",
            DataError,
            r"u\.data: line 2 column 'user' holds 'x', expected an integer",
        ),
        (
            "bad.inter",
            "user_id\titem_id:token\nu\ti\n",
            DataError,
            r"bad\.inter: header column 'user_id' lacks a RecBole type",
        ),
        ("log.csv", "", DataError, r"log\.csv: the file is empty"),
    ],
)
def test_bad_input_names_file_line_and_column(tmp_path: Path, file_name: str, text: str, error: type, pattern: str) -> None:
    path = tmp_path / file_name
    path.write_text(text)
    with pytest.raises(error, match=pattern):
        read_interactions(path)


def test_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,item\n1,2\n")
    with pytest.raises(MissingDataError, match=r"path=.*missing\.csv.* does not exist"):
        read_interactions(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match=r"format='parquet' is not supported; expected one of \['auto', 'movielens'"):
        read_interactions(path, format="parquet")
    with pytest.raises(ValueError, match=r"min_rating=4 needs a rating column, but .*log\.csv has none"):
        read_interactions(path, min_rating=4)
    with pytest.raises(MissingDataError, match=r"is a folder without a u\.data or \.inter file; found \['log\.csv'\]"):
        read_interactions(tmp_path)


def test_movielens_100k_from_the_recbole_wheel() -> None:
    if importlib.util.find_spec("recbole") is None:
        pytest.skip("recbole is not installed: pip install --no-deps recbole==1.2.1")
    folder = find_movielens_100k()
    assert folder.name == "ml-100k"
    raw = read_interactions(folder)
    assert len(raw.impressions) == 100_000
    assert raw.impressions["user"].nunique() == 943
    assert raw.impressions["clicked_item"].nunique() == 1682
    assert raw.name == "ml-100k"
    assert (raw.impressions.iloc[0][["user", "clicked_item", "timestamp"]].tolist()) == [196, 242, 881250949]
    tokens = set(present(raw.item_content)["token"].astype(str))
    assert {"class:Comedy", "class:Children's", "release_year:1995"} <= tokens
    assert not any(token.startswith("movie_title:") for token in tokens)
    assert set(present(raw.item_content)["key"]) == set(raw.impressions["clicked_item"])

    # Ratings of 4 and 5 are clicks; the 44,625 others only keep their items out of the negatives.
    rated = read_interactions(folder, min_rating=4)
    assert len(rated.impressions) == 55_375
    assert len(present(rated.other_user_items)) == 44_625


def test_missing_recbole_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interactions.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDataError, match=r"pip install --no-deps recbole==1\.2\.1"):
        find_movielens_100k()
