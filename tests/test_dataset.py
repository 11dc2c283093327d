"""The compact dataset: encoding, time split, features from the training split only, atomic cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_raw_log

from recsys_gym.data.dataset import BuildOptions, CompactDataset, _is_trusted, build_dataset, load_dataset
from recsys_gym.error import DataError, MissingDataError


def test_encoding_sort_and_split(tiny_dataset: CompactDataset) -> None:
    data = tiny_dataset
    assert (data.n_users, data.n_items, data.n_impressions) == (3, 5, 8)
    assert data.user_ids == ["u1", "u2", "u3"]
    assert data.item_ids == ["A", "B", "C", "D", "E"]
    # Sorted by user then time: u1 owns impressions 1, 4, 7.
    assert data.imp_raw_id.tolist() == [1, 4, 7, 2, 5, 8, 3, 6]
    assert data.user_ptr.tolist() == [0, 3, 6, 8]
    assert data.imp_is_train.tolist() == [True, True, False, True, True, False, True, True]
    assert data.user_rows(0, "test").tolist() == [2]
    assert data.users_in_split("test").tolist() == [0, 1]


def test_shown_lists_put_the_click_first(tiny_dataset: CompactDataset) -> None:
    data = tiny_dataset
    # Row 0 is impression 1: A clicked beside B and C.
    assert data.shown_in(0).tolist() == [0, 1, 2]
    # Row 5 is impression 8: D clicked beside B.
    assert data.shown_in(5).tolist() == [3, 1]


def test_user_items_cover_every_split(tiny_dataset: CompactDataset) -> None:
    assert tiny_dataset.user_item_set(0).tolist() == [0, 1]  # u1: A, B
    assert tiny_dataset.user_item_set(1).tolist() == [0, 3]  # u2: A, D (D clicked in test)


def test_counts_and_features_use_the_training_split_only(tiny_dataset: CompactDataset, tmp_path: Path) -> None:
    data = tiny_dataset
    assert data.item_train_clicks.tolist() == [4, 1, 1, 0, 0]
    assert data.item_train_shown.tolist() == [4, 3, 3, 3, 2]
    names = data.manifest["feature_names"]
    assert names[:3] == ["log_train_clicks", "log_train_shown", "train_ctr"]
    np.testing.assert_allclose(data.item_features[:, 0], np.log1p([4, 1, 1, 0, 0]) / np.log1p(4), rtol=1e-6)
    np.testing.assert_allclose(
        data.item_features[:, 2], 2 * (np.array([4, 1, 1, 0, 0]) + 1) / (np.array([4, 3, 3, 3, 2]) + 2) - 1, rtol=1e-6
    )
    assert np.all(np.abs(data.item_features) <= 1.0)
    # Other clicks in the test split leave every feature unchanged: nothing leaks from test.
    changed = build_dataset(
        tiny_raw_log(test_clicks=("E", "C")), tmp_path / "changed", BuildOptions(test_fraction=0.25, content_dim=2, cf_dim=2)
    )
    np.testing.assert_allclose(changed.item_features, data.item_features, atol=1e-9)
    np.testing.assert_array_equal(changed.item_train_clicks, data.item_train_clicks)


def test_a_split_that_leaves_no_test_raises(tmp_path: Path) -> None:
    raw = tiny_raw_log()
    raw.impressions["timestamp"] = 5
    with pytest.raises(DataError, match=r"test_fraction=0.25.*both must be non-empty"):
        build_dataset(raw, tmp_path / "flat", BuildOptions(test_fraction=0.25))


@pytest.mark.parametrize(("argument", "value"), [("test_fraction", 1.5), ("content_dim", -1), ("cf_dim", 2.5)])
def test_bad_build_options_raise(argument: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{argument} must"):
        BuildOptions(**{argument: value})  # type: ignore[arg-type]


def test_missing_columns_are_named(tmp_path: Path) -> None:
    raw = tiny_raw_log()
    raw.impressions = raw.impressions.drop(columns=["clicked_item"])
    with pytest.raises(DataError, match=r"lacks the columns \['clicked_item'\]"):
        build_dataset(raw, tmp_path / "bad")


def test_an_incomplete_or_altered_cache_is_not_trusted(tiny_dataset: CompactDataset) -> None:
    path = tiny_dataset.path
    assert _is_trusted(path)
    # Truncate one array: its size no longer matches the manifest.
    target = path / "item_features.npy"
    original = target.read_bytes()
    target.write_bytes(original[:-4])
    assert not _is_trusted(path)
    # Same size, one byte changed: the digest no longer matches.
    target.write_bytes(original)
    assert _is_trusted(path)
    damaged = bytearray(original)
    damaged[-1] ^= 0xFF
    target.write_bytes(bytes(damaged))
    assert not _is_trusted(path)
    assert _is_trusted(path, check_digests=False)
    # No manifest at all: a build that died midway.
    (path / "manifest.json").unlink()
    assert not _is_trusted(path)


def test_a_verified_cache_is_not_hashed_again_until_a_file_changes(
    tiny_dataset: CompactDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    import recsys_gym.data.dataset as dataset_module

    path = tiny_dataset.path
    assert _is_trusted(path) and (path / ".verified.json").is_file()
    hashed: list[int] = []
    real_digests = dataset_module._digests
    monkeypatch.setattr(dataset_module, "_digests", lambda files: hashed.append(len(files)) or real_digests(files))
    # Unchanged files: trusted without reading them.
    assert _is_trusted(path) and hashed == []
    # A write of the same bytes changes the file's time: every digest is checked again, and still matches.
    target = path / "imp_clicked.npy"
    target.write_bytes(target.read_bytes())
    assert _is_trusted(path) and len(hashed) == 1
    # A changed byte of the same size is caught by that full check.
    damaged = bytearray(target.read_bytes())
    damaged[-1] ^= 0x01
    target.write_bytes(bytes(damaged))
    assert not _is_trusted(path) and len(hashed) == 2


def test_load_dataset_rebuilds_an_untrusted_cache(tmp_path: Path) -> None:
    source = tmp_path / "log.csv"
    rows = ["user_id,item_id,timestamp"] + [f"u{u},i{(u * 7 + t) % 40},{100 * t + u}" for u in range(12) for t in range(10)]
    source.write_text("\n".join(rows) + "\n")
    first = load_dataset("interactions", source, cache_dir=tmp_path / "cache")
    item_ids = list(first.item_ids)
    # Damage the cache, forget the in-process copy, and load again: it is rebuilt, not used.
    (first.path / "imp_user.npy").write_bytes(b"broken")
    from recsys_gym.data import dataset as dataset_module

    dataset_module._LOADED.clear()
    second = load_dataset("interactions", source, cache_dir=tmp_path / "cache")
    assert second.path == first.path
    assert second.n_impressions == 120
    assert list(second.item_ids) == item_ids


def test_load_dataset_errors_name_the_argument(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"dataset must be one of \['outbrain', 'movielens-100k', 'interactions'\], got 'netflix'"
    ):
        load_dataset("netflix")
    with pytest.raises(MissingDataError, match=r"data_dir=.*does not exist"):
        load_dataset("outbrain", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="needs data_dir"):
        load_dataset("interactions")


def test_a_sealed_cache_is_loaded_without_hashing_it_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import recsys_gym.data.dataset as dataset_module

    hashed: list[int] = []
    real_digests = dataset_module._digests
    monkeypatch.setattr(dataset_module, "_digests", lambda files: hashed.append(len(files)) or real_digests(files))
    source = tmp_path / "log.csv"
    rows = "".join(f"u{u},i{(u * 3 + t) % 9},{10 * t + u}\n" for u in range(6) for t in range(5))
    source.write_text("user_id,item_id,timestamp\n" + rows)
    built = load_dataset("interactions", source, cache_dir=tmp_path / "cache")
    # One pass of digests, when the cache was sealed; loading it (here and anew) reads no array in full.
    assert hashed == [len(dataset_module._ARRAY_NAMES)]
    assert _is_trusted(built.path) and CompactDataset(built.path).n_impressions == built.n_impressions
    assert hashed == [len(dataset_module._ARRAY_NAMES)]
    # A damaged array is still caught: its time changed, so the full check runs.
    target = built.path / "imp_clicked.npy"
    damaged = bytearray(target.read_bytes())
    damaged[-1] ^= 0x01
    target.write_bytes(bytes(damaged))
    assert not _is_trusted(built.path) and len(hashed) == 2


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_sealed_cache_has_the_permissions_of_a_new_folder(tmp_path: Path) -> None:
    source = tmp_path / "log.csv"
    source.write_text(
        "user_id,item_id,timestamp\n" + "".join(f"u{u},i{(u + t) % 5},{t}\n" for u in range(4) for t in range(4))
    )
    built = load_dataset("interactions", source, cache_dir=tmp_path / "cache")
    plain = tmp_path / "plain"
    plain.mkdir()
    # Not the private 0700 of the temporary folder it was built in: others may read a shared cache.
    assert built.path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
