"""The block reader under :func:`recsys_gym.data.csvstream.stream_csv`: whole lines, every row once, in order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys_gym.data.csvstream import MAX_BLOCK_BYTES, _block_size, _text_blocks, stream_csv
from recsys_gym.error import DataError


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def test_blocks_are_whole_lines_and_cover_the_data(tmp_path: Path) -> None:
    lines = [f"{i},{'x' * (i % 7)}\n" for i in range(50)]
    path = write(tmp_path / "a.csv", "id,name\n" + "".join(lines))
    blocks = list(_text_blocks(path, 16))
    # The header is left out, every block ends a line, and together they are the data lines in order.
    assert b"".join(blocks) == "".join(lines).encode()
    assert all(block.endswith(b"\n") for block in blocks)
    assert len(blocks) > 10


def test_a_line_longer_than_a_block_and_no_final_newline(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "id,name\n1," + "y" * 100 + "\n2,z")
    assert list(_text_blocks(path, 8)) == [b"1," + b"y" * 100 + b"\n", b"2,z"]


def test_block_sizes_follow_the_lines_and_stay_bounded(tmp_path: Path) -> None:
    # 1,000 lines of 10 bytes (header included in the sample): 100 rows make a 1,000-byte block, raised to 1,024.
    path = write(tmp_path / "a.csv", "id,name,x\n" + "12345,abc\n" * 999)
    assert _block_size(path, 100) == 1024
    assert _block_size(path, 500) == 5000
    # Never more than the file: a 200,000-byte first line made every block 100,000 such lines (3.3 GB) before.
    long_first = write(tmp_path / "b.csv", "id,name\n1," + "u" * 200_000 + "\n" + "2,v\n" * 10)
    assert _block_size(long_first, 100_000) == long_first.stat().st_size
    # Nor more than MAX_BLOCK_BYTES on a file larger than that (sparse: nothing is written after its first lines).
    large = tmp_path / "c.csv"
    with open(large, "wb") as handle:
        handle.write(b"id,name\n1," + b"u" * 70_000 + b"\n")
        handle.truncate(MAX_BLOCK_BYTES * 2)
    assert _block_size(large, 100_000) == MAX_BLOCK_BYTES


def test_small_blocks_give_the_same_rows_as_one_block(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 10**9, size=3000)
    path = write(tmp_path / "c.csv", "display_id,ad_id,clicked\n" + "".join(f"{i},{i % 97},{i % 2}\n" for i in ids))
    columns = {"display_id": "int", "ad_id": "int", "clicked": "int"}
    whole = list(stream_csv(path, columns, chunk_rows=10**6))
    pieces = list(stream_csv(path, columns, chunk_rows=7))
    assert len(whole) == 1 and len(pieces) > 20  # blocks of at least 1 KiB
    for name in columns:
        np.testing.assert_array_equal(np.concatenate([batch[name] for batch in pieces]), whole[0][name])
    np.testing.assert_array_equal(whole[0]["display_id"], ids)
    # Each batch says where its rows start in the file.
    assert [batch["_row"] for batch in pieces] == list(np.cumsum([0] + [len(b["ad_id"]) for b in pieces[:-1]]))


def test_a_bad_value_in_a_late_block_names_its_line(tmp_path: Path) -> None:
    body = "".join(f"{i},{i},0\n" for i in range(200)) + "200,abc,1\n" + "".join(f"{i},{i},0\n" for i in range(201, 300))
    path = write(tmp_path / "c.csv", "display_id,ad_id,clicked\n" + body)
    with pytest.raises(DataError, match=r"line 202\b"):
        list(stream_csv(path, {"display_id": "int", "ad_id": "int", "clicked": "int"}, chunk_rows=10))


def test_a_short_line_in_a_late_block_names_its_line(tmp_path: Path) -> None:
    body = "".join(f"{i},{i},0\n" for i in range(120)) + "120,5\n" + "".join(f"{i},{i},0\n" for i in range(121, 130))
    path = write(tmp_path / "c.csv", "display_id,ad_id,clicked\n" + body)
    with pytest.raises(DataError, match=r"line 122 has 2 field"):
        list(stream_csv(path, {"display_id": "int", "ad_id": "int", "clicked": "int"}, chunk_rows=10))
    # In skip mode the line is counted and the other rows all come through.
    counts: dict[str, int] = {}
    batches = list(
        stream_csv(
            path, {"display_id": "int", "ad_id": "int", "clicked": "int"}, chunk_rows=10, on_bad_lines="skip", counts=counts
        )
    )
    assert sum(len(batch["ad_id"]) for batch in batches) == 129
    assert counts == {"c.csv: rows read": 129, "c.csv: malformed lines skipped": 1}


CLICK_COLUMNS = {"display_id": "int", "ad_id": "int", "clicked": "int"}


def test_values_of_the_wrong_type_are_named_or_skipped(tmp_path: Path) -> None:
    huge = "9" * 200_000
    lines = [f"{i},{i},0" for i in range(30)]
    lines[5] = "5,x1,0"  # not an integer
    lines[12] = "display_id,ad_id,clicked"  # a repeated header
    lines[20] = f"20,{huge},0"  # too large for an int64 (and longer than the csv module's default field limit)
    path = write(tmp_path / "c.csv", "display_id,ad_id,clicked\n" + "\n".join(lines) + "\n")
    # Error mode: the first one, by line, with the skip option named.
    with pytest.raises(DataError, match=r"line 7 column 'ad_id' holds 'x1', expected an integer .*--skip-bad-lines"):
        list(stream_csv(path, CLICK_COLUMNS, chunk_rows=1000))
    # Skip mode: the three lines are counted and every other row comes through, in order.
    counts: dict[str, int] = {}
    batches = list(stream_csv(path, CLICK_COLUMNS, chunk_rows=10, on_bad_lines="skip", counts=counts))
    kept = np.concatenate([batch["display_id"] for batch in batches])
    assert kept.tolist() == [i for i in range(30) if i not in (5, 12, 20)]
    assert counts == {"c.csv: rows read": 27, "c.csv: malformed lines skipped": 3}
    assert all(batch["ad_id"].dtype == np.int64 for batch in batches)


def test_a_huge_bad_value_is_named_with_its_length_not_in_full(tmp_path: Path) -> None:
    lines = [f"{i},{i},0" for i in range(10)]
    lines[4] = "4," + "7" * 150_000 + "z,0"
    path = write(tmp_path / "c.csv", "display_id,ad_id,clicked\n" + "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 6 column 'ad_id' holds '7{40}'\.\.\. \(150,001 characters\)") as caught:
        list(stream_csv(path, CLICK_COLUMNS, chunk_rows=1000))
    assert len(str(caught.value)) < 500


def test_a_quoted_empty_value_is_as_empty_as_an_unquoted_one(tmp_path: Path) -> None:
    # Writers that quote every field write "" for an empty one: missing where a column may be, in both modes.
    path = write(tmp_path / "a.csv", 'a,b\n1,""\n2,\n"3","4"\n')
    for mode in ("error", "skip"):
        counts: dict[str, int] = {}
        (batch,) = stream_csv(path, {"a": "int", "b": "int?"}, chunk_rows=10, on_bad_lines=mode, counts=counts)
        np.testing.assert_array_equal(batch["a"], [1, 2, 3])
        np.testing.assert_array_equal(batch["b"], [np.nan, np.nan, 4.0])
        assert counts == {"a.csv: rows read": 3}
    # Where a value is required, a quoted empty one is an error naming its line, or a counted skip.
    path.write_text('a,b\n1,""\n"3","4"\n')
    with pytest.raises(DataError, match=r"a.csv: line 2 column 'b' is empty, expected a value"):
        list(stream_csv(path, {"a": "int", "b": "int"}, chunk_rows=10))
    counts = {}
    (batch,) = stream_csv(path, {"a": "int", "b": "int"}, chunk_rows=10, on_bad_lines="skip", counts=counts)
    assert batch["b"].tolist() == [4] and counts["a.csv: malformed lines skipped"] == 1
