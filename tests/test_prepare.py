"""Tests of the streaming Outbrain preparation against the in-memory reference, on bad input, and on killed runs."""

from __future__ import annotations

import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_outbrain_loader import ALL_FILES, CLICKS, EVENTS, write_files

from recsys_gym.cli import main
from recsys_gym.data import dataset as dataset_module
from recsys_gym.data import prepare as prepare_module
from recsys_gym.data.dataset import BuildOptions, CompactDataset, build_dataset, load_dataset
from recsys_gym.data.outbrain import read_outbrain
from recsys_gym.data.prepare import PAUSE_ENV, PrepareOptions, prepare_outbrain
from recsys_gym.data.synthetic import generate_outbrain
from recsys_gym.error import DataError, MissingDataError

#: Arrays that must equal the reference's exactly.
EXACT = (
    "user_ptr",
    "imp_user",
    "imp_time",
    "imp_context",
    "imp_platform",
    "imp_clicked",
    "imp_is_train",
    "imp_raw_id",
    "shown_ptr",
    "shown_items",
    "user_items_ptr",
    "user_items",
    "item_train_clicks",
    "item_train_shown",
    "context_ids",
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generator's files at size 0.0002: 3,959 users, 2,990 of them in clicks_train.csv (17,269 click rows)."""
    return generate_outbrain(tmp_path_factory.mktemp("generated"), size=0.0002)


def assert_same_as_reference(new: CompactDataset, reference: CompactDataset) -> None:
    """Every impression, user, shown set, user-item set, split, count and id equals the reference's."""
    for name in EXACT:
        assert np.array_equal(getattr(new, name), getattr(reference, name)), name
    assert list(new.user_ids) == list(reference.user_ids)
    assert list(new.item_ids) == list(reference.item_ids)
    assert np.array_equal(new.item_features[:, :3], reference.item_features[:, :3])
    assert new.manifest["cut_time"] == reference.manifest["cut_time"]
    # The content embedding: the same reduction, learned from the same training ads, float32 round-off apart.
    names = new.manifest["feature_names"]
    assert names == reference.manifest["feature_names"]
    content = [index for index, name in enumerate(names) if name.startswith("content_")]
    np.testing.assert_allclose(new.item_features[:, content], reference.item_features[:, content], atol=1e-5)
    np.testing.assert_allclose(new.context_features, reference.context_features, atol=1e-5)


@pytest.mark.parametrize(("chunk_rows", "bucket_bytes"), [(1_000_000, 64 << 20), (300, 4000)])
def test_generated_data_equals_the_in_memory_reference(
    generated: Path, tmp_path: Path, chunk_rows: int, bucket_bytes: int
) -> None:
    reference = build_dataset(read_outbrain(generated), tmp_path / "reference", BuildOptions())
    new = prepare_outbrain(generated, tmp_path / "new", chunk_rows=chunk_rows, bucket_bytes=bucket_bytes, progress=False)
    assert (new.n_users, new.n_items, new.n_impressions) == (2990, 1418, 3361)
    assert_same_as_reference(new, reference)
    assert new.item_dim == reference.item_dim == 3 + 8 + 8 and new.context_dim == 8
    assert np.all(np.abs(new.item_features) <= 1.0) and np.all(np.abs(new.context_features) <= 1.0)
    # The co-click embedding (a randomized method, not ARPACK) captures as much of the training click matrix as the
    # reference's. Most users click once, so the spectrum is flat and the two subspaces themselves may differ.
    train = new.imp_is_train
    clicks = np.zeros((new.n_users, new.n_items))
    clicks[new.imp_user[train], new.imp_clicked[train]] = 1.0

    def captured(data: CompactDataset) -> float:
        basis = np.linalg.qr(data.item_features[:, -8:].astype(np.float64))[0]
        return float(np.linalg.norm(clicks @ basis) ** 2)

    assert captured(new) >= 0.97 * captured(reference)


@pytest.mark.parametrize("chunk_rows", [1, 1000])
def test_tiny_log_equals_the_reference_and_counts_every_repair(tmp_path: Path, chunk_rows: int) -> None:
    raw_dir = write_files(tmp_path / "raw", ALL_FILES)
    reference = build_dataset(read_outbrain(raw_dir), tmp_path / "reference", BuildOptions(content_dim=2, cf_dim=1))
    new = prepare_outbrain(
        raw_dir, tmp_path / "new", options=PrepareOptions(content_dim=2, cf_dim=1), chunk_rows=chunk_rows, progress=False
    )
    assert_same_as_reference(new, reference)
    assert list(new.user_ids) == ["aaa", "bbb"] and list(new.item_ids) == ["10", "11", "12", "13"]
    assert new.imp_raw_id.tolist() == [1, 3, 2] and new.imp_platform.tolist() == [3, 2, 0]
    assert new.imp_is_train.tolist() == [True, False, True]
    counts = new.manifest["prepare_counts"]
    assert counts["clicks_train.csv: rows read"] == 9 and counts["events.csv: rows read"] == 4
    assert counts["duplicate click rows dropped"] == 1
    assert counts["click rows dropped: display has no event"] == 2 and counts["displays dropped: no event"] == 1
    assert counts["events skipped: display has no clicks (test displays)"] == 1
    assert (counts["impressions kept"], counts["users kept"], counts["items"], counts["contexts"]) == (3, 2, 4, 3)


def test_options_window_min_impressions_and_split_time(tmp_path: Path) -> None:
    raw_dir = write_files(tmp_path / "raw", {"events.csv": EVENTS, "clicks_train.csv": CLICKS})
    # Display 1 (t=61) falls before the window; user aaa is left with one impression, below min_impressions=2.
    windowed = prepare_outbrain(
        raw_dir, tmp_path / "a", options=PrepareOptions(start_time=70, end_time=1000, cf_dim=0), progress=False
    )
    assert windowed.imp_raw_id.tolist() == [3, 2]
    assert windowed.manifest["prepare_counts"]["impressions dropped: outside the time window"] == 1
    both = prepare_outbrain(
        raw_dir, tmp_path / "b", options=PrepareOptions(min_impressions=2, split_time=100, cf_dim=0), progress=False
    )
    assert list(both.user_ids) == ["aaa"] and both.imp_raw_id.tolist() == [1, 3]
    assert both.imp_is_train.tolist() == [True, False] and both.manifest["cut_time"] == 100
    counts = both.manifest["prepare_counts"]
    assert (counts["impressions dropped: user below min_impressions"], counts["users dropped: below min_impressions"]) == (
        1,
        1,
    )
    with pytest.raises(DataError, match=r"split_time=10 leaves 0 training and 3 test impressions"):
        prepare_outbrain(raw_dir, tmp_path / "c", options=PrepareOptions(split_time=10), progress=False)
    with pytest.raises(ValueError, match=r"min_impressions must be an integer >= 1, got 0"):
        PrepareOptions(min_impressions=0)


GOOD_CLICKS = "display_id,ad_id,clicked\n1,10,0\n1,11,1\n2,10,1\n2,12,0\n3,11,0\n3,13,1\n"


@pytest.mark.parametrize(
    ("file_name", "text", "pattern"),
    [
        (
            "clicks_train.csv",
            "display_id,ad_idd,clicked\n1,10,1\n",
            r"clicks_train.csv: missing column\(s\) \['ad_id'\] \(did you mean 'ad_idd' for 'ad_id'\?\)",
        ),
        ("events.csv", "display_id,uuid,document_id,platform\n1,a,1,1\n", r"events.csv: missing column\(s\) \['timestamp'\]"),
        ("clicks_train.csv", GOOD_CLICKS + "4,10\n", r"clicks_train.csv: line 8 has 2 field\(s\), expected 3"),
        ("clicks_train.csv", GOOD_CLICKS.replace("2,12,0", "2,12,"), r"clicks_train.csv: line 5 column 'clicked' is empty"),
        ("clicks_train.csv", GOOD_CLICKS.replace("2,12,0", "2,x,0"), r"clicks_train.csv: line 5 column 'ad_id' holds 'x'"),
        ("clicks_train.csv", GOOD_CLICKS.replace("3,11,0", "3,11,1"), r"clicks_train.csv: display_id 3 has 2 clicked ad\(s\)"),
        ("clicks_train.csv", GOOD_CLICKS.replace("3,13,1", "3,13,0"), r"display_id 3 has 0 clicked ad\(s\) .* on line 6"),
        (
            "events.csv",
            EVENTS.replace("2,bbb,101,81,\\N,--", "2,,101,81,\\N,--"),
            r"events.csv: line 3 column 'uuid' is empty",
        ),
        ("events.csv", EVENTS.replace(",\\N,", ",,"), r"events.csv: line 3 column 'platform' holds '', expected one of"),
        (
            "events.csv",
            EVENTS + "2,bbb,101,99,1,US\n",
            r"events.csv: display_id 2 has two different rows \(lines 3 and 6\)",
        ),
        ("clicks_train.csv", "", r"clicks_train.csv: the file is empty"),
        ("events.csv", "display_id,uuid,document_id,timestamp,platform\n", r"no impression is left"),
    ],
)
def test_bad_input_names_file_line_and_column(tmp_path: Path, file_name: str, text: str, pattern: str) -> None:
    files = {"events.csv": EVENTS, "clicks_train.csv": GOOD_CLICKS, file_name: text}
    with pytest.raises(DataError, match=pattern):
        prepare_outbrain(write_files(tmp_path / "raw", files), tmp_path / "out", progress=False)


def test_skip_mode_counts_bad_lines_and_displays(tmp_path: Path) -> None:
    clicks = GOOD_CLICKS.replace("3,11,0", "3,11,1") + "4,10\n1,12,0,9\n2,10,1\n"
    events = EVENTS + "2,bbb,101,81,\\N,--\n"  # an identical duplicate event is dropped and counted
    raw_dir = write_files(tmp_path / "raw", {"events.csv": events, "clicks_train.csv": clicks})
    data = prepare_outbrain(raw_dir, tmp_path / "out", on_bad_lines="skip", options=PrepareOptions(cf_dim=0), progress=False)
    assert data.imp_raw_id.tolist() == [1, 2]
    counts = data.manifest["prepare_counts"]
    assert counts["clicks_train.csv: malformed lines skipped"] == 2
    assert counts["displays dropped: two or more clicked ads (skip mode)"] == 1
    assert counts["duplicate click rows dropped"] == 1 and counts["duplicate event rows dropped"] == 1
    # Display 4 lost its only click row (malformed) and counts as a test display; the dropped display 3 does not.
    assert counts["events skipped: display has no clicks (test displays)"] == 1


def test_missing_and_compressed_files_are_named(tmp_path: Path) -> None:
    raw_dir = write_files(tmp_path / "raw", {"events.csv": EVENTS})
    with pytest.raises(MissingDataError, match=r"^raw_dir='.*raw' has no clicks_train.csv"):
        prepare_outbrain(raw_dir, progress=False)
    # Through load_dataset (and gym.make) the folder is named by the argument given there.
    with pytest.raises(MissingDataError, match=r"^data_dir='.*raw' has no clicks_train.csv"):
        load_dataset("outbrain", data_dir=raw_dir, cache_dir=tmp_path / "cache")
    (raw_dir / "clicks_train.csv").mkdir()
    with pytest.raises(MissingDataError, match=r"clicks_train.csv is a folder, not a file"):
        prepare_outbrain(raw_dir, progress=False)
    (raw_dir / "clicks_train.csv").rmdir()
    # A byte-order mark is named as such, not as a misspelt first column.
    bom_dir = write_files(tmp_path / "bom", {"events.csv": EVENTS, "clicks_train.csv": GOOD_CLICKS})
    (bom_dir / "events.csv").write_bytes(b"\xef\xbb\xbf" + EVENTS.encode())
    with pytest.raises(DataError, match=r"events.csv: the file starts with a UTF-8 byte-order mark"):
        prepare_outbrain(bom_dir, tmp_path / "bom-out", progress=False)
    with pytest.raises(MissingDataError, match=r"raw_dir='.*nowhere' does not exist"):
        prepare_outbrain(tmp_path / "nowhere", progress=False)
    (raw_dir / "clicks_train.csv").write_bytes(gzip.compress(GOOD_CLICKS.encode()))
    with pytest.raises(DataError, match=r"clicks_train.csv: the file is gzip-compressed, not CSV text; unpack it"):
        prepare_outbrain(raw_dir, tmp_path / "out", progress=False)
    with zipfile.ZipFile(raw_dir / "clicks_train.csv", "w") as archive:
        archive.writestr("clicks_train.csv", GOOD_CLICKS)
    with pytest.raises(DataError, match=r"the file is a zip archive, not CSV text; unzip it"):
        prepare_outbrain(raw_dir, tmp_path / "out", progress=False)
    (raw_dir / "clicks_train.csv").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match=r"the file holds NUL bytes: it is binary, not CSV text"):
        prepare_outbrain(raw_dir, tmp_path / "out", progress=False)


def test_load_dataset_uses_the_pipeline_and_rebuilds_a_tampered_cache(
    generated: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    first = load_dataset("outbrain", generated, cache_dir=cache, prepare_options={"min_impressions": 2})
    assert "prepare_counts" in first.manifest and first.manifest["options"]["min_impressions"] == 2
    assert "user_ids" not in first.manifest and isinstance(first.user_ids[0], str)
    clean = {name: np.array(getattr(first, name)) for name in EXACT}
    for damage in ("flip", "truncate"):
        target = first.path / "shown_items.npy"
        data = bytearray(target.read_bytes())
        if damage == "flip":
            data[-3] ^= 0x01
        else:
            del data[-8:]
        target.chmod(0o644)
        target.write_bytes(bytes(data))
        dataset_module._LOADED.clear()
        with caplog.at_level(logging.WARNING):
            again = load_dataset("outbrain", generated, cache_dir=cache, prepare_options={"min_impressions": 2})
        assert "is incomplete or changed since it was written" in caplog.text and "rebuilding it" in caplog.text
        expected = "shown_items.npy changed since it was written" if damage == "flip" else "shown_items.npy has "
        assert expected in caplog.text
        caplog.clear()
        assert again.path == first.path
        for name, array in clean.items():
            assert np.array_equal(getattr(again, name), array), name
        first = again
    # Other options are another cache.
    other = load_dataset("outbrain", generated, cache_dir=cache)
    assert other.path != first.path and other.n_users == 2990


@pytest.mark.parametrize("phase", ["after_events", "before_seal"])
def test_a_killed_run_is_never_trusted_and_the_next_run_rebuilds(generated: Path, tmp_path: Path, phase: str) -> None:
    out = tmp_path / "out"
    script = (
        "from recsys_gym.data.prepare import prepare_outbrain\n"
        f"prepare_outbrain({str(generated)!r}, {str(out)!r}, progress=False, bucket_bytes=20000)\n"
    )
    env = {**os.environ, PAUSE_ENV: phase, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".out.*.partial/PAUSED")):
            assert process.poll() is None, "the preparation ended before it paused"
            assert time.monotonic() < deadline, "the preparation never paused"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    # The killed run left a .partial directory and no output.
    assert not out.exists() and len(list(tmp_path.glob(".out.*.partial"))) == 1
    rebuilt = prepare_outbrain(generated, out, progress=False)
    assert list(tmp_path.glob(".out.*.partial")) == []
    clean = prepare_outbrain(generated, tmp_path / "clean", progress=False)
    for name in EXACT:
        assert np.array_equal(getattr(rebuilt, name), getattr(clean, name)), name
    digests = json.loads((out / "manifest.json").read_text())["array_blake2b"]
    assert digests == json.loads((tmp_path / "clean" / "manifest.json").read_text())["array_blake2b"]


def test_an_existing_output_is_reused_replaced_or_refused(tmp_path: Path) -> None:
    raw_dir = write_files(tmp_path / "raw", {"events.csv": EVENTS, "clicks_train.csv": CLICKS})
    first = prepare_outbrain(raw_dir, tmp_path / "out", progress=False)
    stamp = (first.path / "manifest.json").stat().st_mtime_ns
    assert prepare_outbrain(raw_dir, tmp_path / "out", progress=False).path == first.path
    assert (first.path / "manifest.json").stat().st_mtime_ns == stamp
    changed = prepare_outbrain(raw_dir, tmp_path / "out", options=PrepareOptions(cf_dim=0), progress=False)
    assert changed.item_dim == 3
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"out_dir='.*other' exists and holds 'notes.txt': it is not a dataset cache"):
        prepare_outbrain(raw_dir, tmp_path / "other", progress=False)
    # A folder of other files that holds a manifest.json of its own is not a cache either: nothing of it is deleted.
    (tmp_path / "other" / "manifest.json").write_text('{"name": "my web app"}')
    with pytest.raises(DataError, match=r"not a dataset cache"):
        prepare_outbrain(raw_dir, tmp_path / "other", progress=False)
    assert sorted(path.name for path in (tmp_path / "other").iterdir()) == ["manifest.json", "notes.txt"]
    # A cache with a file of the user's added is not replaced; nor is a file.
    (changed.path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"not a dataset cache"):
        prepare_outbrain(raw_dir, changed.path, progress=False)
    (tmp_path / "file").write_text("mine")
    with pytest.raises(DataError, match=r"out_dir='.*file' exists and is not a folder"):
        prepare_outbrain(raw_dir, tmp_path / "file", progress=False)
    with pytest.raises(DataError, match=r"out_dir='.*other' exists and holds 'notes.txt'"):
        build_dataset(read_outbrain(raw_dir), tmp_path / "other", BuildOptions())
    # A path the file system layer of pyarrow cannot take is named before any work.
    with pytest.raises(DataError, match=r"out_dir='.*bad.*out' is not valid UTF-8 text"):
        prepare_outbrain(raw_dir, tmp_path / "bad\udce9out", progress=False)


def paused_preparation(raw_dir: Path, out: Path, *options: str) -> subprocess.Popen[bytes]:
    """``recsys-gym prepare outbrain`` of ``raw_dir`` into ``out`` in another process, once paused before it seals."""
    command = [sys.executable, "-m", "recsys_gym", "prepare", "outbrain", "--raw", str(raw_dir), "--out", str(out)]
    env = {**os.environ, PAUSE_ENV: "before_seal"}
    process = subprocess.Popen([*command, "--quiet", *options], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(600):
        if list(out.parent.glob(f".{out.name}.*.partial/PAUSED")) or process.poll() is not None:
            break
        time.sleep(0.05)
    if not list(out.parent.glob(f".{out.name}.*.partial/PAUSED")):
        process.kill()
        raise AssertionError(f"the preparation did not pause: {process.communicate()[1].decode()[-2000:]}")
    return process


def test_a_cache_is_replaced_only_once_the_new_one_is_complete(tmp_path: Path) -> None:
    raw_dir = write_files(tmp_path / "raw", {"events.csv": EVENTS, "clicks_train.csv": CLICKS})
    old = prepare_outbrain(raw_dir, tmp_path / "out", progress=False)
    digests = old.manifest["array_blake2b"]
    # Other options on input that turns out bad: the run fails, the old cache stays as it was, and trusted.
    bad = write_files(tmp_path / "bad", {"events.csv": EVENTS, "clicks_train.csv": CLICKS + "x1,1,0\n"})
    with pytest.raises(DataError, match=r"line \d+ column 'display_id'"):
        prepare_outbrain(bad, tmp_path / "out", options=PrepareOptions(cf_dim=0), progress=False)
    again = CompactDataset(tmp_path / "out")
    assert again.manifest["array_blake2b"] == digests and again.item_dim == old.item_dim
    # The same with a run killed before it seals: the old cache is whole; the next run replaces it.
    process = paused_preparation(raw_dir, tmp_path / "out", "--cf-dim", "0")
    process.kill()
    process.wait()
    assert CompactDataset(tmp_path / "out").manifest["array_blake2b"] == digests
    new = prepare_outbrain(raw_dir, tmp_path / "out", options=PrepareOptions(cf_dim=0), progress=False)
    assert new.item_dim == 3 and not list(tmp_path.glob(".out.*.partial"))


def test_a_second_preparation_of_a_folder_waits_for_the_first(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw_dir = write_files(tmp_path / "raw", {"events.csv": EVENTS, "clicks_train.csv": CLICKS})
    # The first holds its lock, paused before sealing, in another process.
    first = paused_preparation(raw_dir, tmp_path / "out")
    # The second waits (it says so) until the first is gone, then prepares; the first's folder does not survive.
    results: list[CompactDataset] = []
    with caplog.at_level(logging.WARNING, logger="recsys_gym.data.prepare"):
        second = threading.Thread(target=lambda: results.append(prepare_outbrain(raw_dir, tmp_path / "out", progress=False)))
        second.start()
        for _ in range(200):
            if "waiting for another preparation" in caplog.text:
                break
            time.sleep(0.05)
        assert "waiting for another preparation" in caplog.text and second.is_alive() and not results
        first.kill()
        first.wait()
        second.join(timeout=120)
    assert results and results[0].n_impressions == 3
    assert not list(tmp_path.glob(".out.*.partial"))


def test_only_old_or_dead_partial_folders_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    young, old, dead = (tmp_path / f".out.{name}.partial" for name in ("young", "old", "dead"))
    for folder in (young, old, dead):
        folder.mkdir()
    # No PID file: being created, or an old cache moved aside by a live seal; a dead process's PID file: a leftover.
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    (dead / "PID").write_text("999999999")
    assert dataset_module.clean_stale_partials(out) == 2
    assert young.is_dir() and not old.exists() and not dead.exists()


def test_command_line_prints_the_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw_dir = write_files(tmp_path / "raw", {"events.csv": EVENTS, "clicks_train.csv": CLICKS})
    assert (
        main(["prepare", "outbrain", "--raw", str(raw_dir), "--out", str(tmp_path / "out"), "--quiet", "--cf-dim", "0"]) == 0
    )
    printed = capsys.readouterr().out
    assert "duplicate click rows dropped" in printed and "impressions kept" in printed
    assert "users=2, items=4, impressions=3" in printed
    assert main(["prepare", "outbrain", "--raw", str(tmp_path / "none"), "--quiet"]) == 1
    assert "error: raw_dir=" in capsys.readouterr().err
    # An output under a file: one line naming it, before any work, and no traceback; the same from the generator.
    (tmp_path / "file").write_text("mine")
    assert main(["prepare", "outbrain", "--raw", str(raw_dir), "--out", str(tmp_path / "file" / "out"), "--quiet"]) == 1
    assert "error: out_dir='" in (err := capsys.readouterr().err) and "is a file, not a folder" in err
    assert main(["generate", "outbrain", "--out", str(tmp_path / "file" / "raw"), "--size", "0.0001"]) == 1
    assert "recsys-gym generate outbrain: error:" in (err := capsys.readouterr().err) and "Traceback" not in err


def test_a_prepared_folder_is_a_data_dir_and_a_damaged_one_is_refused(generated: Path, tmp_path: Path) -> None:
    import gymnasium as gym

    from recsys_gym.error import CacheError

    out = tmp_path / "prepared"
    prepared = prepare_outbrain(generated, out, progress=False)
    dataset_module._LOADED.clear()
    env = gym.make("OutbrainRec-v0", data_dir=out, negatives="shown")
    assert env.unwrapped.dataset.path == prepared.path
    assert env.unwrapped.dataset.n_impressions == prepared.n_impressions == 3361
    env.close()
    # A flipped byte: refused with the file named and the command that prepares it again.
    target = out / "imp_clicked.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01
    target.chmod(0o644)
    target.write_bytes(bytes(data))
    dataset_module._LOADED.clear()
    with pytest.raises(
        CacheError, match=r"prepared cache that cannot be trusted: imp_clicked\.npy changed.*recsys-gym prepare"
    ):
        gym.make("OutbrainRec-v0", data_dir=out)


@pytest.mark.parametrize("widths", [(14,), (8,), (3, 8, 14, 20), (0, 1, 7), (9, 12)])
def test_uuid_prefix_keys_are_the_first_eight_bytes_big_endian(widths: tuple[int, ...]) -> None:
    from recsys_gym.data.prepare import uuid_prefix_keys

    rng = np.random.default_rng(len(widths))
    texts = ["".join(rng.choice(list("0123456789abcdef"), size=int(rng.choice(widths)))) for _ in range(500)]
    expected = np.array([int.from_bytes(text.encode()[:8].ljust(8, b"\0"), "big") for text in texts], dtype=np.uint64)
    np.testing.assert_array_equal(uuid_prefix_keys(pa.array(texts)), expected)
    # A slice (an array with an offset) and a chunked array give the same keys.
    np.testing.assert_array_equal(uuid_prefix_keys(pa.array(texts)[100:300]), expected[100:300])
    np.testing.assert_array_equal(uuid_prefix_keys(pa.chunked_array([texts[:250], texts[250:]])), expected)
    # The keys sort as the strings do.
    order = np.argsort(uuid_prefix_keys(pa.array(texts)), kind="stable")
    assert [texts[i][:8] for i in order] == sorted(text[:8] for text in texts)


def test_order_by_user_time_document_matches_lexsort() -> None:
    from recsys_gym.data.prepare import _order_by_user_time_document

    rng = np.random.default_rng(3)
    # Few users, times and documents: many ties on (user, time), and some rows equal in all three.
    user, timestamp, document = rng.integers(0, 5, 2000), rng.integers(10**12, 10**12 + 20, 2000), rng.integers(0, 4, 2000)
    order = _order_by_user_time_document(user, timestamp, document)
    expected = np.lexsort((document, timestamp, user))
    for column in (user, timestamp, document):
        np.testing.assert_array_equal(column[order], column[expected])
    assert sorted(order.tolist()) == list(range(2000))
    # Keys too wide for one int64 take the three-key sort.
    wide = rng.integers(0, 2**40, 100)
    order = _order_by_user_time_document(wide, np.array([0, 2**40] * 50), np.zeros(100, dtype=np.int64))
    np.testing.assert_array_equal(order, np.lexsort((np.zeros(100), np.array([0, 2**40] * 50), wide)))


def test_string_ranks_follow_byte_order_with_shared_prefixes() -> None:
    from recsys_gym.data.prepare import _string_ranks

    rng = np.random.default_rng(5)
    # Many strings share their first 8 bytes (a tiny alphabet), lengths vary around 8, and some are non-ASCII.
    texts = sorted({"".join(rng.choice(list("ab\u00e9"), size=int(rng.integers(1, 12)))) for _ in range(3000)})
    shuffled = [texts[i] for i in rng.permutation(len(texts))]
    ranks = _string_ranks(pa.array(shuffled))
    assert [shuffled[i] for i in np.argsort(ranks)] == sorted(shuffled, key=lambda text: text.encode())


@pytest.mark.skipif(sys.platform == "win32", reason="open-file limits are set with the resource module on Unix only")
def test_a_low_open_file_limit_gives_fewer_buckets_and_the_same_cache(generated: Path, tmp_path: Path) -> None:
    # A process whose hard limit allows 150 open files, asked for buckets of 2,000 bytes (hundreds of them).
    script = (
        "import logging, resource\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (150, 150))\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from recsys_gym.data.prepare import prepare_outbrain\n"
        f"prepare_outbrain({str(generated)!r}, {str(tmp_path / 'low')!r}, progress=False, bucket_bytes=2000)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "only 150 files may be open at once: 43 display and 86 user buckets" in done.stderr
    low = CompactDataset(tmp_path / "low")
    clean = prepare_outbrain(generated, tmp_path / "clean", progress=False)
    for name in EXACT:
        assert np.array_equal(getattr(low, name), getattr(clean, name)), name


def test_content_features_are_the_same_bits_in_every_run(generated: Path, tmp_path: Path) -> None:
    # Small chunks: the document files come in many pieces, read by two threads in whatever order they finish.
    runs = [prepare_outbrain(generated, tmp_path / f"run{i}", chunk_rows=200, progress=False) for i in range(3)]
    for run in runs[1:]:
        assert run.item_features.tobytes() == runs[0].item_features.tobytes()
        assert run.context_features.tobytes() == runs[0].context_features.tobytes()
        assert run.manifest["array_blake2b"] == runs[0].manifest["array_blake2b"]


def test_context_vectors_do_not_depend_on_the_block_size_of_the_spilled_rows(
    generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = prepare_outbrain(generated, tmp_path / "whole", progress=False)
    # Blocks of 7 rows: a page's rows fall in several blocks, and a block holds several rows of one page.
    blocks = prepare_module._ContentTokens.target_blocks
    monkeypatch.setattr(prepare_module._ContentTokens, "target_blocks", lambda self: blocks(self, rows=7))
    small = prepare_outbrain(generated, tmp_path / "small", progress=False)
    assert small.context_features.shape == whole.context_features.shape == (len(whole.context_ids), 8)
    assert np.count_nonzero(np.any(whole.context_features != 0, axis=1)) > 0.9 * len(whole.context_ids)
    np.testing.assert_allclose(small.context_features, whole.context_features, atol=1e-6)
    assert not any((tmp_path / "small").rglob("content-rows-*"))


def test_an_over_long_user_id_is_named_or_skipped(tmp_path: Path) -> None:
    from recsys_gym.data.prepare import MAX_ID_BYTES

    # Display 3's user id is 5 MB long: storing every id at its width would take 5 MB per user.
    long_id = "f" * 5_000_000
    events = EVENTS.replace("3,aaa,102,182,2,", f"3,{long_id},102,182,2,")
    raw_dir = write_files(tmp_path / "raw", {"events.csv": events, "clicks_train.csv": CLICKS})
    with pytest.raises(DataError, match=rf"events.csv: line 4 column 'uuid' holds an id of 5,000,000 bytes; .*{MAX_ID_BYTES}"):
        prepare_outbrain(raw_dir, tmp_path / "out", progress=False)
    # Skipped, the event is counted as a malformed line and its display has no event (its clicks are counted too).
    data = prepare_outbrain(raw_dir, tmp_path / "out", progress=False, on_bad_lines="skip")
    counts = data.manifest["prepare_counts"]
    assert counts["events.csv: malformed lines skipped"] == 1 and counts["events.csv: rows read"] == 3
    assert 3 not in data.imp_raw_id.tolist() and list(data.user_ids) == ["aaa", "bbb"]
    assert (data.path / "user_ids.npy").stat().st_size < 1000


def test_the_command_line_generates_a_raw_folder_that_prepares(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "outbrain", "--out", str(tmp_path / "raw"), "--size", "0.0002"]) == 0
    assert "clicks_train.csv" in capsys.readouterr().out
    # The same files as the Python function writes, byte for byte.
    reference = generate_outbrain(tmp_path / "reference", size=0.0002)
    for name in ("events.csv", "clicks_train.csv", "promoted_content.csv"):
        assert (tmp_path / "raw" / name).read_bytes() == (reference / name).read_bytes()
    assert main(["prepare", "outbrain", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "cache"), "--quiet"]) == 0
    assert CompactDataset(tmp_path / "cache").n_users == 2990
    assert main(["generate", "outbrain", "--out", str(tmp_path / "bad"), "--size", "2"]) == 1
    assert "size=2.0 is out of range" in capsys.readouterr().err


def test_every_file_read_is_counted(generated: Path, tmp_path: Path) -> None:
    counts = prepare_outbrain(generated, tmp_path / "out", progress=False).manifest["prepare_counts"]
    written = json.loads((generated / "GENERATED.json").read_text())["rows"]
    for name in (
        "clicks_train.csv",
        "events.csv",
        *(f"documents_{kind}.csv" for kind in ("topics", "categories", "entities", "meta")),
    ):
        assert counts[f"{name}: rows read"] == written[name], name
    # promoted_content.csv: the rows of the ads the log shows (the file lists every ad of the catalogue).
    assert 0 < counts["promoted_content.csv: rows of the log's ads"] <= written["promoted_content.csv"]
    assert counts["promoted_content.csv: rows of the log's ads"] == counts["items"]


def test_bad_lines_of_the_optional_files_are_named_or_skipped(tmp_path: Path) -> None:
    clean = prepare_outbrain(
        write_files(tmp_path / "clean", ALL_FILES),
        tmp_path / "clean-out",
        options=PrepareOptions(content_dim=2, cf_dim=1),
        progress=False,
    )
    # A wrong type in promoted_content.csv (line 6, an ad the log does not show) and a confidence above 1 in
    # documents_topics.csv (line 6, a page no one reads): errors naming the line, or skipped and counted.
    files = {
        **ALL_FILES,
        "promoted_content.csv": ALL_FILES["promoted_content.csv"] + "x1,300,9,72\n",
        "documents_topics.csv": ALL_FILES["documents_topics.csv"] + "999,2,1.5\n",
    }
    raw_dir = write_files(tmp_path / "raw", files)
    options = PrepareOptions(content_dim=2, cf_dim=1)
    with pytest.raises(DataError, match=r"promoted_content\.csv: line 6 column 'ad_id' holds 'x1', expected an integer"):
        prepare_outbrain(raw_dir, tmp_path / "strict", options=options, progress=False)
    (raw_dir / "promoted_content.csv").write_text(ALL_FILES["promoted_content.csv"])
    with pytest.raises(
        DataError, match=r"documents_topics\.csv: line 7 column 'confidence_level' holds 1\.5.*--skip-bad-lines"
    ):
        prepare_outbrain(raw_dir, tmp_path / "strict", options=options, progress=False)
    (raw_dir / "promoted_content.csv").write_text(files["promoted_content.csv"])
    skipped = prepare_outbrain(raw_dir, tmp_path / "skip", options=options, progress=False, on_bad_lines="skip")
    counts = skipped.manifest["prepare_counts"]
    assert counts["promoted_content.csv: malformed lines skipped"] == 1 and counts["promoted_content.csv: rows read"] == 4
    assert counts["documents_topics.csv: malformed lines skipped"] == 1 and counts["documents_topics.csv: rows read"] == 5
    # Nothing else changed: the same features as from the clean files.
    assert np.array_equal(skipped.item_features, clean.item_features)
    assert np.array_equal(skipped.context_features, clean.context_features)


def test_an_integer_beyond_64_bits_is_named_by_line_and_column(tmp_path: Path) -> None:
    events = EVENTS.replace("3,aaa,102,182,2,", "3,aaa,99999999999999999999999,182,2,")
    raw_dir = write_files(tmp_path / "raw", {"events.csv": events, "clicks_train.csv": CLICKS})
    with pytest.raises(
        DataError, match=r"events\.csv: line 4 column 'document_id' holds '9{23}', expected an integer \(64-bit\)"
    ):
        prepare_outbrain(raw_dir, tmp_path / "out", progress=False)


def test_bucket_table_equals_a_binary_search() -> None:
    rng = np.random.default_rng(0)
    top = np.uint64(0xFFFFFFFFFFFFFFFF)
    # Bounds spread out, two in one cell of the table, one at each end; keys at and beside every bound.
    bounds = np.unique(
        np.concatenate(
            [
                rng.integers(0, 2**63, 40).astype(np.uint64) * np.uint64(2),
                np.array([5 << 48, (5 << 48) + 7, 1, top], np.uint64),
            ]
        )
    )
    keys = np.concatenate(
        [
            rng.integers(0, 2**63, 100_000).astype(np.uint64) * np.uint64(2),
            bounds,
            bounds - np.uint64(1),
            np.array([0, top], np.uint64),
        ]
    )
    for chosen in (bounds, bounds[:1], np.zeros(0, dtype=np.uint64)):
        np.testing.assert_array_equal(prepare_module._BucketOf(chosen)(keys), np.searchsorted(chosen, keys, side="right"))


def test_distinct_ids_from_pieces_small_large_and_negative() -> None:
    from recsys_gym.data.prepare import _DistinctIds

    rng = np.random.default_rng(7)
    pieces = [rng.integers(0, 1000, 50), rng.integers(2**40, 2**40 + 10, 5), np.array([-3, 5, -3]), np.zeros(0, np.int64)]
    pieces += [rng.integers(0, 5000, 300) for _ in range(20)]
    ids = _DistinctIds()
    for piece in pieces:
        ids.add(piece)
    np.testing.assert_array_equal(ids.result(), np.unique(np.concatenate(pieces)))
    # More pieces after a result: the same answer as gathering them all at once.
    ids.add(np.array([7000, 2**40 + 99]))
    np.testing.assert_array_equal(ids.result(), np.unique(np.concatenate([*pieces, [7000, 2**40 + 99]])))


def test_tied_eigenvalues_give_the_same_embedding_in_every_run(tmp_path: Path) -> None:
    # Two ads clicked once each by different users: the co-click matrix is diag(1, 1, 0, 0), whose top eigenvalue is
    # tied. ARPACK drew its own start vector there (a seed moving from call to call): runs in one process differed.
    raw_dir = write_files(tmp_path / "raw", ALL_FILES)
    options = PrepareOptions(content_dim=2, cf_dim=1)
    runs = [prepare_outbrain(raw_dir, tmp_path / f"run{i}", options=options, progress=False) for i in range(6)]
    for run in runs[1:]:
        assert run.item_features.tobytes() == runs[0].item_features.tobytes()
