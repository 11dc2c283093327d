"""The compact, cached form of a log that every environment maps, and the builder that writes it.

:func:`build_dataset` turns a :class:`~recsys_gym.data.raw.RawLog` into a directory of ``.npy``
arrays plus a ``manifest.json``; :func:`load_dataset` finds or builds that directory for a named
source and maps it read-only, once per process.

Decisions written down here:

- **Split.** One global time cut: the earliest ``1 - test_fraction`` of impressions (by timestamp)
  are training, the rest test. A user's training impressions therefore all precede their test
  impressions, and nothing a test impression holds can shape a training feature.
- **Item features** come from the training split only (click and impression counts, and a
  collaborative embedding from the training click matrix) plus catalogue metadata (content tokens
  such as topics or genres), which describe items rather than interactions. Every value lies in
  ``[-1, 1]``.
- **A user's items** (never offered as random negatives) are every item the user clicked anywhere
  in the log plus the source's ``other_user_items`` (low ratings and the like), as the One-Plus-k
  protocol asks.
- **Atomic, verified cache.** Arrays are written into a temporary ``.partial`` directory that is
  renamed into place once complete; ``manifest.json`` is written last inside it and records every
  array's size and BLAKE2b digest. A directory missing its manifest, of another cache version, or
  with a file of another size or content is never trusted and is rebuilt. Leftover ``.partial``
  directories of dead processes (a killed build) are removed by the next build.
- **Ids live in arrays.** The raw user, item and context ids are ``.npy`` arrays mapped like the
  rest (UTF-8 bytes for user and item ids), never JSON lists, so nothing of the size of the log is
  copied into a process that maps the cache.

The Outbrain files are not read through :class:`RawLog`: :func:`load_dataset` hands them to the
streaming, bounded-memory :func:`recsys_gym.data.prepare.prepare_outbrain`, which writes the same
layout.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import operator
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, SupportsIndex, overload

import numpy as np
import pandas as pd

from recsys_gym.data.raw import RawLog
from recsys_gym.error import CacheError, DataError, MissingDataError

logger = logging.getLogger(__name__)

#: Bumped whenever the cache layout or a feature definition changes; old caches are then rebuilt.
CACHE_VERSION = 4

#: Names accepted by ``load_dataset(dataset=...)``.
DATASETS = ("outbrain", "movielens-100k", "interactions")

#: Number of platform codes (0 unknown, 1 desktop, 2 mobile, 3 tablet).
N_PLATFORMS = 4

_ARRAY_NAMES = (
    "user_ptr",
    "imp_user",
    "imp_time",
    "imp_context",
    "imp_platform",
    "imp_clicked",
    "imp_is_train",
    "imp_raw_id",
    "imp_pageviews",
    "shown_ptr",
    "shown_items",
    "user_items_ptr",
    "user_items",
    "item_train_clicks",
    "item_train_shown",
    "item_features",
    "context_features",
    "user_ids",
    "item_ids",
    "context_ids",
)


class StringColumn(Sequence[str]):
    """A read-only sequence of strings backed by a (mapped) ``.npy`` array of UTF-8 bytes.

    Only the item asked for is decoded, so a column of millions of ids costs no memory until read.

    :param array: a 1-D array of dtype ``S<n>`` (NUL-padded UTF-8).
    """

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    @overload
    def __getitem__(self, index: SupportsIndex) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: SupportsIndex | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [value.decode("utf-8") for value in self.array[index].tolist()]
        return bytes(self.array[operator.index(index)]).decode("utf-8")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StringColumn):
            return bool(np.array_equal(self.array, other.array))
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(other) == len(self) and all(mine == theirs for mine, theirs in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StringColumn(n={len(self)})"


def encode_strings(values: Sequence[str] | np.ndarray) -> np.ndarray:
    """Encode strings as a NUL-padded UTF-8 ``S<n>`` array (at least ``S1``), the form :class:`StringColumn` reads."""
    encoded = [str(value).encode("utf-8") for value in values]
    width = max((len(value) for value in encoded), default=1)
    return np.array(encoded, dtype=f"S{max(width, 1)}")


@dataclass(frozen=True)
class BuildOptions:
    """How a :class:`RawLog` is turned into a :class:`CompactDataset`.

    :param test_fraction: share of impressions, the latest by time, held out as the test split.
    :param content_dim: size of the content embedding (truncated SVD of the item-token matrix);
        0 turns it off. Fewer dimensions are used when the catalogue has fewer tokens.
    :param cf_dim: size of the collaborative embedding (truncated SVD of the training user-item
        click matrix); 0 turns it off.
    """

    test_fraction: float = 0.2
    content_dim: int = 8
    cf_dim: int = 8

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must lie in (0, 1), got {self.test_fraction!r}")
        for name in ("content_dim", "cf_dim"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


class CompactDataset:
    """A log of impressions in compact array form, read-only and shared by every environment.

    Impressions are sorted by user then time; user ``u`` owns rows ``user_ptr[u]:user_ptr[u + 1]``.
    Variable-length lists use CSR pairs (``*_ptr`` offsets into a flat array).

    ============================  ==========================  ==============================================
    array                         shape, dtype                meaning
    ============================  ==========================  ==============================================
    ``user_ptr``                  (n_users + 1,) int64        row offsets of each user's impressions
    ``imp_user``                  (n_impressions,) int32      user index of the impression
    ``imp_time``                  (n_impressions,) int64      timestamp, the source's unit
    ``imp_context``               (n_impressions,) int32      context index, -1 when unknown
    ``imp_platform``              (n_impressions,) int8       0 unknown, 1 desktop, 2 mobile, 3 tablet
    ``imp_clicked``               (n_impressions,) int32      item index of the clicked item
    ``imp_is_train``              (n_impressions,) bool       True for the training split
    ``imp_raw_id``                (n_impressions,) int64      the source's impression id
    ``imp_pageviews``             (n_impressions, pv) f32     the pages the user read strictly before the
                                                              impression, in [-1, 1] (``pv = 0`` without page
                                                              views; see :mod:`recsys_gym.data.prepare`)
    ``shown_ptr``, ``shown_items``  CSR of int32              items shown in each impression, click included
    ``user_items_ptr``, ``user_items``  CSR of int32, sorted  items each user interacted with anywhere
    ``item_train_clicks``         (n_items,) int64            clicks per item in the training split
    ``item_train_shown``          (n_items,) int64            impressions per item in the training split
    ``item_features``             (n_items, item_dim) f32     item feature vectors, in [-1, 1]
    ``context_features``          (n_contexts, ctx_dim) f32   content of each context, in [-1, 1]
    ``user_ids``, ``item_ids``    (n,) S<width>               raw ids as UTF-8 bytes (read as strings through
                                                              :attr:`user_ids` / :attr:`item_ids`)
    ``context_ids``               (n_contexts,) int64         raw id of each context
    ============================  ==========================  ==============================================

    :param path: the cache directory written by :func:`build_dataset`.
    :param mmap: map the arrays read-only instead of reading them into memory.
    """

    def __init__(self, path: str | os.PathLike[str], mmap: bool = True) -> None:
        self.path = Path(path)
        self.manifest: dict[str, Any] = _read_manifest(self.path)
        mode: Literal["r"] | None = "r" if mmap else None
        # Plain ndarray views of the maps: indexing an np.memmap object costs several times more per step.
        arrays = {
            name: np.asarray(np.load(self.path / f"{name}.npy", mmap_mode=mode, allow_pickle=False)) for name in _ARRAY_NAMES
        }
        self.user_ptr: np.ndarray = arrays["user_ptr"]
        self.imp_user: np.ndarray = arrays["imp_user"]
        self.imp_time: np.ndarray = arrays["imp_time"]
        self.imp_context: np.ndarray = arrays["imp_context"]
        self.imp_platform: np.ndarray = arrays["imp_platform"]
        self.imp_clicked: np.ndarray = arrays["imp_clicked"]
        self.imp_is_train: np.ndarray = arrays["imp_is_train"]
        self.imp_raw_id: np.ndarray = arrays["imp_raw_id"]
        self.imp_pageviews: np.ndarray = arrays["imp_pageviews"]
        self.shown_ptr: np.ndarray = arrays["shown_ptr"]
        self.shown_items: np.ndarray = arrays["shown_items"]
        self.user_items_ptr: np.ndarray = arrays["user_items_ptr"]
        self.user_items: np.ndarray = arrays["user_items"]
        self.item_train_clicks: np.ndarray = arrays["item_train_clicks"]
        self.item_train_shown: np.ndarray = arrays["item_train_shown"]
        # Features are small and read on every step: keep them in memory.
        self.item_features: np.ndarray = np.ascontiguousarray(arrays["item_features"])
        self.context_features: np.ndarray = np.ascontiguousarray(arrays["context_features"])
        self.user_ids: StringColumn = StringColumn(arrays["user_ids"])
        self.item_ids: StringColumn = StringColumn(arrays["item_ids"])
        self.context_ids: np.ndarray = arrays["context_ids"]

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """Short name of the source."""
        return str(self.manifest["name"])

    @property
    def n_users(self) -> int:
        return len(self.user_ptr) - 1

    @property
    def n_items(self) -> int:
        return len(self.item_train_clicks)

    @property
    def n_impressions(self) -> int:
        return len(self.imp_user)

    @property
    def item_dim(self) -> int:
        """Length of one item's feature vector."""
        return int(self.item_features.shape[1])

    @property
    def context_dim(self) -> int:
        """Length of one context's content vector."""
        return int(self.context_features.shape[1])

    @property
    def pageview_dim(self) -> int:
        """Length of one impression's page-view vector (0 when the source had no page views)."""
        return int(self.imp_pageviews.shape[1])

    @property
    def has_shown(self) -> bool:
        """Whether the source logged the items shown beside each click (Outbrain does, MovieLens does not)."""
        return bool(self.manifest["has_shown"])

    # -- per-user views ------------------------------------------------------------------------
    def user_rows(self, user: int, split: str | None = None) -> np.ndarray:
        """Row indices of a user's impressions in time order.

        :param user: user index.
        :param split: ``"train"``, ``"test"`` or ``None`` for both.
        :return: int64 array of row indices.
        """
        rows = np.arange(self.user_ptr[user], self.user_ptr[user + 1], dtype=np.int64)
        if split is None:
            return rows
        is_train = self.imp_is_train[rows]
        return rows[is_train] if split == "train" else rows[~is_train]

    def user_item_set(self, user: int) -> np.ndarray:
        """Sorted item indices the user interacted with anywhere in the log (never random negatives)."""
        return self.user_items[self.user_items_ptr[user] : self.user_items_ptr[user + 1]]

    def shown_in(self, row: int) -> np.ndarray:
        """Item indices shown in impression ``row``, the clicked one included."""
        return self.shown_items[self.shown_ptr[row] : self.shown_ptr[row + 1]]

    def users_in_split(self, split: str) -> np.ndarray:
        """Indices of the users with at least one impression in ``split``."""
        mask = self.imp_is_train if split == "train" else ~self.imp_is_train
        return np.unique(self.imp_user[mask]).astype(np.int64)

    def summary(self) -> dict[str, Any]:
        """Counts worth logging: users, items, impressions per split, features."""
        n_train = int(np.count_nonzero(self.imp_is_train))
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "impressions": self.n_impressions,
            "train_impressions": n_train,
            "test_impressions": self.n_impressions - n_train,
            "item_dim": self.item_dim,
            "context_dim": self.context_dim,
            "pageview_dim": self.pageview_dim,
            "has_shown": self.has_shown,
        }

    def __repr__(self) -> str:
        parts = ", ".join(f"{key}={value}" for key, value in self.summary().items())
        return f"CompactDataset({parts}, path={str(self.path)!r})"


# ----------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------
def build_dataset(raw: RawLog, out_dir: str | os.PathLike[str], options: BuildOptions | None = None) -> CompactDataset:
    """Encode, split and featurise a raw log, and write it atomically as a cache directory.

    :param raw: the log, as a loader returned it.
    :param out_dir: the cache directory to create. It must not exist yet, or must be an empty folder or an
        untrusted (incomplete, changed) cache, which is then replaced; any other folder is an error.
    :param options: split and feature settings; defaults when ``None``.
    :return: the dataset, mapped from ``out_dir``.
    :raises DataError: when the log cannot give both a training and a test split.
    """
    options = options or BuildOptions()
    raw.validate()
    out_dir = Path(out_dir)
    check_replaceable(out_dir)
    check_writable(out_dir)
    impressions = raw.impressions

    # Encode raw ids as contiguous indices, sorted by raw id so the encoding is reproducible.
    user_codes, user_ids = _encode(impressions["user"])
    item_values = [impressions["clicked_item"]]
    if raw.shown is not None:
        item_values.append(raw.shown["item"])
    if raw.other_user_items is not None:
        item_values.append(raw.other_user_items["item"])
    item_ids = _sorted_unique_strings(pd.concat(item_values, ignore_index=True))
    item_index = pd.Index(item_ids)
    clicked = item_index.get_indexer(impressions["clicked_item"].astype(str))
    context_raw = impressions["context"].astype("int64")
    context_ids = np.unique(context_raw[context_raw >= 0].to_numpy())
    context_codes = np.where(context_raw >= 0, np.searchsorted(context_ids, context_raw.to_numpy()), -1)

    # Sort impressions by user, then time, then impression id.
    timestamps = impressions["timestamp"].to_numpy(dtype=np.int64)
    raw_ids = impressions["impression_id"].to_numpy(dtype=np.int64)
    order = np.lexsort((raw_ids, timestamps, user_codes))
    imp_user = user_codes[order].astype(np.int32)
    imp_time = timestamps[order]
    imp_raw_id = raw_ids[order]
    imp_clicked = clicked[order].astype(np.int32)
    imp_context = context_codes[order].astype(np.int32)
    imp_platform = np.clip(impressions["platform"].fillna(0).to_numpy(dtype=np.int64), 0, N_PLATFORMS - 1)[order].astype(
        np.int8
    )
    n_users = len(user_ids)
    user_ptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(imp_user, minlength=n_users), out=user_ptr[1:])

    # Split by one global time cut, so every training impression precedes every test one.
    sorted_times = np.sort(imp_time)
    cut_time = sorted_times[int(len(sorted_times) * (1.0 - options.test_fraction))]
    imp_is_train = imp_time < cut_time
    n_train = int(imp_is_train.sum())
    if n_train == 0 or n_train == len(imp_is_train):
        raise DataError(
            f"the time split of {raw.name!r} with test_fraction={options.test_fraction} leaves "
            f"{n_train} training and {len(imp_is_train) - n_train} test impressions; both must be non-empty "
            "(are all timestamps equal?)"
        )

    # Items shown in each impression, the clicked one first and always present.
    shown_ptr, shown_items = _shown_csr(raw, imp_raw_id, imp_clicked, item_index)

    # Every item each user interacted with anywhere in the log.
    user_items_ptr, user_items = _user_items_csr(raw, imp_user, imp_clicked, user_ids, item_index)

    # Training-split counts per item.
    n_items = len(item_ids)
    item_train_clicks = np.bincount(imp_clicked[imp_is_train], minlength=n_items).astype(np.int64)
    train_rows = np.flatnonzero(imp_is_train)
    shown_counts = np.diff(shown_ptr)
    train_shown_items = shown_items[
        np.repeat(shown_ptr[:-1][train_rows], shown_counts[train_rows]) + _ragged_offsets(shown_counts[train_rows])
    ]
    item_train_shown = np.bincount(train_shown_items, minlength=n_items).astype(np.int64)

    # Features: counts, content embedding, collaborative embedding.
    content_items, content_contexts = _content_embeddings(
        raw, item_ids, item_train_shown > 0, context_ids, options.content_dim
    )
    cf_items = _cf_embedding(imp_user[imp_is_train], imp_clicked[imp_is_train], n_users, n_items, options.cf_dim)
    count_features = _count_features(item_train_clicks, item_train_shown)
    item_features = np.concatenate([count_features, content_items, cf_items], axis=1).astype(np.float32)
    context_features = content_contexts.astype(np.float32)
    feature_names = (
        ["log_train_clicks", "log_train_shown", "train_ctr"]
        + [f"content_{i}" for i in range(content_items.shape[1])]
        + [f"cf_{i}" for i in range(cf_items.shape[1])]
    )

    # Write everything into a temporary directory, the manifest last, then rename it into place.
    arrays = {
        "user_ptr": user_ptr,
        "imp_user": imp_user,
        "imp_time": imp_time,
        "imp_context": imp_context,
        "imp_platform": imp_platform,
        "imp_clicked": imp_clicked,
        "imp_is_train": imp_is_train,
        "imp_raw_id": imp_raw_id,
        "imp_pageviews": np.zeros((len(imp_raw_id), 0), dtype=np.float32),
        "shown_ptr": shown_ptr,
        "shown_items": shown_items,
        "user_items_ptr": user_items_ptr,
        "user_items": user_items,
        "item_train_clicks": item_train_clicks,
        "item_train_shown": item_train_shown,
        "item_features": item_features,
        "context_features": context_features,
    }
    manifest = {
        "cache_version": CACHE_VERSION,
        "name": raw.name,
        "options": asdict(options),
        "cut_time": int(cut_time),
        "has_shown": raw.shown is not None,
        "feature_names": feature_names,
        "notes": list(raw.notes),
    }
    arrays["user_ids"] = encode_strings(user_ids)
    arrays["item_ids"] = encode_strings(item_ids)
    arrays["context_ids"] = context_ids.astype(np.int64)
    _write_cache(out_dir, arrays, manifest)
    dataset = CompactDataset(out_dir)
    logger.info("built %r", dataset)
    return dataset


def _encode(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Map raw ids (compared as strings) to indices ``0..n-1`` in sorted order.

    :return: the code of each value and the sorted unique raw ids.
    """
    strings = values.astype(str)
    uniques = _sorted_unique_strings(strings)
    codes = pd.Index(uniques).get_indexer(strings)
    return codes.astype(np.int64), uniques


def _sorted_unique_strings(values: pd.Series) -> np.ndarray:
    return np.sort(pd.unique(values.astype(str).to_numpy()))


def _ragged_offsets(counts: np.ndarray) -> np.ndarray:
    """``[0, 1, .., c0 - 1, 0, 1, .., c1 - 1, ...]`` for the given run lengths."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total, dtype=np.int64) - starts


def _shown_csr(
    raw: RawLog, imp_raw_id: np.ndarray, imp_clicked: np.ndarray, item_index: pd.Index
) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the items shown in each (sorted) impression, the clicked item first."""
    n_impressions = len(imp_raw_id)
    if raw.shown is None:
        return np.arange(n_impressions + 1, dtype=np.int64), imp_clicked.astype(np.int32)
    rows = pd.Index(imp_raw_id).get_indexer(raw.shown["impression_id"].to_numpy(dtype=np.int64))
    items = item_index.get_indexer(pd.Index(raw.shown["item"].astype(str)))
    keep = rows >= 0
    rows, items = rows[keep], items[keep]
    # Drop the clicked item where it appears, then put it first in every row.
    not_clicked = items != imp_clicked[rows]
    rows, items = rows[not_clicked], items[not_clicked]
    frame = pd.DataFrame(
        {"row": np.concatenate([np.arange(n_impressions), rows]), "item": np.concatenate([imp_clicked, items])}
    )
    frame["first"] = np.concatenate([np.zeros(n_impressions, dtype=np.int8), np.ones(len(rows), dtype=np.int8)])
    frame = frame.drop_duplicates(["row", "item"]).sort_values(["row", "first"], kind="stable")
    counts = np.bincount(frame["row"].to_numpy(), minlength=n_impressions)
    shown_ptr = np.zeros(n_impressions + 1, dtype=np.int64)
    np.cumsum(counts, out=shown_ptr[1:])
    return shown_ptr, frame["item"].to_numpy(dtype=np.int32)


def _user_items_csr(
    raw: RawLog, imp_user: np.ndarray, imp_clicked: np.ndarray, user_ids: np.ndarray, item_index: pd.Index
) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the sorted, unique items each user clicked or otherwise interacted with."""
    users = [imp_user.astype(np.int64)]
    items = [imp_clicked.astype(np.int64)]
    if raw.other_user_items is not None and len(raw.other_user_items):
        other_users = pd.Index(user_ids).get_indexer(pd.Index(raw.other_user_items["user"].astype(str)))
        other_items = item_index.get_indexer(pd.Index(raw.other_user_items["item"].astype(str)))
        # Users who never clicked anything have no episode; their items are not needed.
        keep = other_users >= 0
        users.append(other_users[keep])
        items.append(other_items[keep])
    pairs = np.unique(np.stack([np.concatenate(users), np.concatenate(items)], axis=1), axis=0)
    counts = np.bincount(pairs[:, 0], minlength=len(user_ids))
    ptr = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr, pairs[:, 1].astype(np.int32)


def _count_features(clicks: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """Popularity and click-through features from training counts, each scaled into ``[-1, 1]``.

    :return: (n_items, 3): log clicks and log impressions scaled to [0, 1] by their maximum, and a
        smoothed CTR ``(clicks + 1) / (shown + 2)`` mapped to [-1, 1].
    """
    log_clicks = np.log1p(clicks.astype(np.float64))
    log_shown = np.log1p(shown.astype(np.float64))
    ctr = (clicks + 1.0) / (shown + 2.0)
    return np.stack(
        [log_clicks / max(log_clicks.max(), 1e-12), log_shown / max(log_shown.max(), 1e-12), 2.0 * ctr - 1.0], axis=1
    )


#: Matrices with at most this many rows or columns are decomposed densely (LAPACK), the others by ARPACK.
DENSE_LIMIT = 512


def _truncated_svd(matrix: Any, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``dim`` singular triplets of a sparse matrix, deterministic in sign and order."""
    from scipy.sparse.linalg import LinearOperator, svds

    dim = min(dim, min(matrix.shape) - 1)
    if dim <= 0:
        return np.zeros((matrix.shape[0], 0)), np.zeros(0), np.zeros((0, matrix.shape[1]))
    if min(matrix.shape) <= DENSE_LIMIT:
        # Small: LAPACK on the dense matrix. ARPACK restarts from a random vector of its own (a seed that moves on
        # from call to call) when it meets an invariant subspace, which small logs with tied values often have.
        dense = matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
        left, singular, right = np.linalg.svd(dense.astype(np.float64), full_matrices=False)
        left, singular, right = left[:, :dim], singular[:dim], right[:dim]
    else:
        # A fixed start vector; see above for when ARPACK still draws one of its own. The operator multiplies by the
        # matrix and by its transpose (a view): given the matrix itself, svds would copy it for its adjoint.
        matrix = matrix.astype(np.float64, copy=False)
        operator = LinearOperator(
            matrix.shape, matvec=matrix.dot, rmatvec=matrix.T.dot, matmat=matrix.dot, rmatmat=matrix.T.dot, dtype=np.float64
        )
        start = np.full(min(matrix.shape), 1.0 / np.sqrt(min(matrix.shape)))
        left, singular, right = svds(operator, k=dim, v0=start)
    order = np.argsort(-singular)
    left, singular, right = left[:, order], singular[order], right[order]
    # Fix each component's sign: its first clearly non-zero entry (in column order) is positive. Ties in
    # magnitude are common in small logs, so "the largest entry" would flip with round-off.
    magnitude = np.abs(right)
    first = (magnitude > 1e-6 * magnitude.max(axis=1, keepdims=True)).argmax(axis=1)
    signs = np.sign(right[np.arange(dim), first])
    signs[signs == 0] = 1.0
    return left * signs, singular, right * signs[:, None]


def _normalise_rows(vectors: np.ndarray) -> np.ndarray:
    """Scale every non-zero row to unit length, so every entry lies in [-1, 1]."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def fit_content_reduction(items: Any, fit: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The content reduction learned from the rows of ``fit``: IDF weights, then an IDF-weighted truncated SVD.

    :param items: the (items × tokens) sparse weight matrix (CSR).
    :param fit: mask over its rows: those the reduction is learned from.
    :param dim: the most dimensions.
    :return: each token's IDF weight (n_tokens,) and the basis (d, n_tokens); a row is projected as
        ``(row * idf) @ basis.T``.
    """
    # A copy of the fitted rows only, scaled in place (no second copy of it).
    fitted = items[np.flatnonzero(fit)]
    fitted.sum_duplicates()
    document_frequency = np.bincount(fitted.indices[fitted.data > 0], minlength=items.shape[1])
    idf = np.log((1.0 + fitted.shape[0]) / (1.0 + document_frequency)) + 1.0
    fitted.data *= idf[fitted.indices]
    _, _, right = _truncated_svd(fitted, dim)
    return idf, right


def _content_embeddings(
    raw: RawLog, item_ids: np.ndarray, fit: np.ndarray, context_ids: np.ndarray, dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Embed items and contexts in one content space learned from the metadata tokens of the items in ``fit``.

    :param fit: mask over items: those the IDF weights and the basis are learned from (the items shown in the
        training split: nothing of the test split shapes the features).
    :return: item vectors (n_items, d) and context vectors (n_contexts, d), rows of unit length or
        zero, with ``d <= dim`` (0 when the source has no item content).
    """
    from scipy import sparse

    if raw.item_content is None or len(raw.item_content) == 0 or dim == 0:
        return np.zeros((len(item_ids), 0)), np.zeros((len(context_ids), 0))
    tables = [raw.item_content.assign(kind=0)]
    if raw.context_content is not None:
        tables.append(raw.context_content.assign(kind=1))
    content = pd.concat(tables, ignore_index=True)
    tokens = pd.Index(_sorted_unique_strings(content["token"]))
    token_codes = tokens.get_indexer(content["token"].astype(str))
    weights = content["weight"].to_numpy(dtype=np.float64)

    # Item-token matrix, with tokens weighted by inverse document frequency.
    is_item = content["kind"].to_numpy() == 0
    item_rows = pd.Index(item_ids).get_indexer(content.loc[is_item, "key"].astype(str))
    keep = item_rows >= 0
    item_matrix = sparse.csr_matrix(
        (weights[is_item][keep], (item_rows[keep], token_codes[is_item][keep])), shape=(len(item_ids), len(tokens))
    )
    idf, right = fit_content_reduction(item_matrix, fit, dim)
    item_vectors = _normalise_rows(np.asarray((item_matrix @ sparse.diags(idf)) @ right.T))

    # Contexts are projected on the same basis.
    if raw.context_content is None or len(context_ids) == 0:
        return item_vectors, np.zeros((len(context_ids), right.shape[0]))
    context_rows = pd.Index(context_ids.astype(str)).get_indexer(content.loc[~is_item, "key"].astype("int64").astype(str))
    keep = context_rows >= 0
    context_matrix = sparse.csr_matrix(
        (weights[~is_item][keep], (context_rows[keep], token_codes[~is_item][keep])), shape=(len(context_ids), len(tokens))
    )
    context_vectors = _normalise_rows(np.asarray((context_matrix @ sparse.diags(idf)) @ right.T))
    return item_vectors, context_vectors


def _cf_embedding(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, dim: int) -> np.ndarray:
    """Item vectors from a truncated SVD of the (training) user-item click matrix.

    :param users: user index of every training click.
    :param items: item index of every training click.
    :return: (n_items, d) rows of unit length, zero for items never clicked in training.
    """
    from scipy import sparse

    if dim == 0 or len(users) == 0:
        return np.zeros((n_items, 0))
    matrix = sparse.csr_matrix((np.ones(len(users)), (users, items)), shape=(n_users, n_items))
    matrix.data = np.minimum(matrix.data, 1.0)
    _, singular, right = _truncated_svd(matrix, dim)
    return _normalise_rows(right.T * np.sqrt(singular))


def file_digest(path: Path) -> str:
    """BLAKE2b digest (hex) of a file's bytes, read 1 MiB at a time into one buffer (no new block per read)."""
    digest = hashlib.blake2b(digest_size=20)
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while size := handle.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def _digests(files: Mapping[str, Path]) -> dict[str, str]:
    """:func:`file_digest` of each file, two files at a time (hashlib releases the GIL on large blocks)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, min(2, os.cpu_count() or 1))) as pool:
        return dict(zip(files, pool.map(file_digest, files.values()), strict=True))


def partial_dir(out_dir: Path) -> Path:
    """Create a fresh temporary sibling of ``out_dir`` (``.<name>.<random>.partial``) owned by this process.

    The directory holds a ``PID`` file so that :func:`clean_stale_partials` can tell a live build from the
    leftover of a killed one.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    (tmp_dir / "PID").write_text(str(os.getpid()), encoding="utf-8")
    return tmp_dir


#: How long a ``.partial`` folder without a ``PID`` file is left alone before it counts as a leftover.
_UNOWNED_PARTIAL_SECONDS = 600


def clean_stale_partials(out_dir: Path) -> int:
    """Remove the ``.partial`` siblings of ``out_dir`` whose building process is gone; return how many."""
    removed = 0
    if not out_dir.parent.is_dir():
        return removed
    for candidate in out_dir.parent.glob(f".{out_dir.name}.*.partial"):
        try:
            pid = int((candidate / "PID").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pid = -1
        if pid > 0 and pid != os.getpid() and process_alive(pid):
            continue
        if pid == os.getpid():
            continue
        # Without a PID file, a folder may be one being created, or an old cache moved aside by a live seal_cache:
        # only one left untouched for a while is a leftover.
        try:
            if pid == -1 and time.time() - candidate.stat().st_mtime < _UNOWNED_PARTIAL_SECONDS:
                continue
        except OSError:
            continue
        logger.warning("removing %s, left by a preparation that did not finish", candidate)
        shutil.rmtree(candidate, ignore_errors=True)
        removed += 1
    return removed


def process_alive(pid: int) -> bool:
    """Whether the process ``pid`` of this machine is alive (a zombie counts as dead)."""
    stat = Path("/proc") / str(pid) / "stat"
    if stat.parent.parent.is_dir():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    """This process' file-creation mask, read without changing it (``/proc`` on Linux; 0o022 where unknown)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def is_cache_folder(path: Path) -> bool:
    """Whether ``path`` is a folder this package wrote as a cache, whole or not, changed or not since.

    It must hold a manifest of ours and nothing but the files a cache holds: only such a folder (or an empty one) is
    ever replaced, so a folder of other files that happens to hold a ``manifest.json`` is never deleted.
    """
    try:
        with open(path / "manifest.json", encoding="utf-8") as handle:
            manifest = json.load(handle)
        entries = [entry.name for entry in path.iterdir()]
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or not {"cache_version", "array_bytes"} <= manifest.keys():
        return False
    return not _foreign_entries(entries)


def _foreign_entries(names: list[str]) -> list[str]:
    """The names among a folder's entries that a cache never holds."""
    # A PID file stays only if a seal was killed between its rename and the file's removal.
    allowed = {f"{name}.npy" for name in _ARRAY_NAMES} | {"manifest.json", "PID"}
    return sorted(name for name in names if name not in allowed and not name.startswith(_VERIFIED_STAMP))


def check_replaceable(out_dir: Path, argument: str = "out_dir") -> None:
    """Raise unless ``out_dir`` is absent, an empty folder or a cache folder (:func:`is_cache_folder`).

    :param argument: the name the caller knows ``out_dir`` by, for the error.
    :raises DataError: naming the folder, when it holds anything else.
    """
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if out_dir.is_dir() and (is_cache_folder(out_dir) or not any(out_dir.iterdir())):
        return
    if not out_dir.is_dir():
        raise DataError(f"{argument}={str(out_dir)!r} exists and is not a folder; choose another path")
    foreign = _foreign_entries([entry.name for entry in out_dir.iterdir()])
    shown = ", ".join(repr(name) for name in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    what = f"holds {shown}" if foreign else "has a manifest.json that is not a cache's"
    raise DataError(f"{argument}={str(out_dir)!r} exists and {what}: it is not a dataset cache; choose another folder")


def check_writable(out_dir: Path, argument: str = "out_dir") -> None:
    """Raise unless a cache can be written at ``out_dir``: its folder writable, itself too where it exists.

    :param argument: the name the caller knows ``out_dir`` by, for the error.
    :raises DataError: naming the folder that cannot be written, or a path the file system cannot take.
    """
    try:
        str(out_dir).encode("utf-8")
    except UnicodeError:
        raise DataError(f"{argument}={str(out_dir)!r} is not valid UTF-8 text; choose a path that is") from None
    parent = next((folder for folder in [out_dir.parent, *out_dir.parent.parents] if folder.exists()), Path("/"))
    if not parent.is_dir():
        raise DataError(f"{argument}={str(out_dir)!r} cannot be written: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(f"{argument}={str(out_dir)!r} cannot be written: {str(parent)!r} is not writable")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not os.access(out_dir, os.W_OK | os.X_OK):
        raise DataError(f"{argument}={str(out_dir)!r} is not writable: the cache there cannot be replaced")


def seal_cache(tmp_dir: Path, out_dir: Path, manifest: dict[str, Any], *, replace: bool = False) -> None:
    """Record the size and digest of every array of ``tmp_dir`` in its manifest (written last), then rename it to ``out_dir``.

    :param tmp_dir: a directory from :func:`partial_dir` holding every array of :data:`_ARRAY_NAMES`.
    :param out_dir: the final cache directory. An untrusted cache or an empty folder there is replaced; a trusted one
        (a concurrent build) is kept and ``tmp_dir`` dropped, unless ``replace``. Anything else there is an error,
        raised before any change.
    :param manifest: the manifest's other fields.
    :param replace: replace a trusted cache too (one of other files or options): it is moved aside only once the
        new one is complete, and deleted once the new one is in place.
    """
    try:
        check_replaceable(out_dir)
        files = {name: tmp_dir / f"{name}.npy" for name in _ARRAY_NAMES}
        manifest = {
            **manifest,
            "array_bytes": {name: file.stat().st_size for name, file in files.items()},
            "array_blake2b": _digests(files),
        }
        # The temporary folder was made private (0700); the cache gets the permissions of any new folder.
        os.chmod(tmp_dir, 0o777 & ~_umask())
        with open(tmp_dir / "manifest.json.tmp", "w", encoding="utf-8") as handle:
            json.dump(manifest, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_dir / "manifest.json.tmp", tmp_dir / "manifest.json")
        aside = None
        if out_dir.exists():
            if _is_trusted(out_dir) and not replace:
                return
            check_replaceable(out_dir)
            # Renamed to a .partial sibling (without a PID file: a kill before it is deleted leaves it to
            # clean_stale_partials), so the old cache is never deleted before the new one is ready.
            aside = out_dir.parent / f".{out_dir.name}.{secrets.token_hex(6)}.partial"
            os.rename(out_dir, aside)
        try:
            os.rename(tmp_dir, out_dir)
        except OSError:
            if not _is_trusted(out_dir):
                raise
        else:
            # The PID file went with the folder (until here, clean_stale_partials of another process could tell the
            # folder was live); the digests were just taken of these very files: the first load need not hash them.
            (out_dir / "PID").unlink(missing_ok=True)
            _stamp_verified(out_dir)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _write_cache(out_dir: Path, arrays: Mapping[str, np.ndarray], manifest: dict[str, Any]) -> None:
    """Write arrays into a temporary sibling directory, then seal it (manifest last) and rename it to ``out_dir``."""
    clean_stale_partials(out_dir)
    tmp_dir = partial_dir(out_dir)
    try:
        for name, array in arrays.items():
            np.save(tmp_dir / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    seal_cache(tmp_dir, out_dir, manifest)


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise CacheError(f"{path} is not a complete dataset cache: {manifest_path.name} is missing")
    with open(manifest_path, encoding="utf-8") as handle:
        manifest: dict[str, Any] = json.load(handle)
    return manifest


def _is_trusted(path: Path, *, check_digests: bool = True) -> bool:
    """Whether a cache directory is complete, of this version, and its arrays have the recorded sizes and digests.

    :param path: the cache directory.
    :param check_digests: also hash every array and compare with the manifest (reads every byte once).
    """
    return untrusted_reason(path, check_digests=check_digests) is None


def untrusted_reason(path: Path, *, check_digests: bool = True) -> str | None:
    """Why a cache directory cannot be trusted (its first fault, naming the file), or ``None`` when it can.

    :param path: the cache directory.
    :param check_digests: also hash every array and compare with the manifest (reads every byte once).
    """
    try:
        manifest = _read_manifest(path)
    except (CacheError, json.JSONDecodeError, OSError) as err:
        return f"its manifest.json cannot be read ({err})"
    if manifest.get("cache_version") != CACHE_VERSION:
        return f"it has layout version {manifest.get('cache_version')!r}, this code writes {CACHE_VERSION}"
    sizes = manifest.get("array_bytes", {})
    digests = manifest.get("array_blake2b", {})
    for name in _ARRAY_NAMES:
        file = path / f"{name}.npy"
        if not file.is_file():
            return f"{file.name} is missing"
        if file.stat().st_size != sizes.get(name):
            return f"{file.name} has {file.stat().st_size} bytes, the manifest says {sizes.get(name)}"
    if check_digests and not _verified_unchanged(path):
        found = _digests({name: path / f"{name}.npy" for name in _ARRAY_NAMES})
        for name in _ARRAY_NAMES:
            if found[name] != digests.get(name):
                return f"{name}.npy changed since it was written (its BLAKE2b digest differs from the manifest's)"
        _stamp_verified(path)
    return None


#: Written beside a cache once every digest matched: the size and modification time of each file then. A later
#: load whose files all still match it skips re-hashing, so device processes and repeated loads of a large cache
#: do not each read every byte; any write to a file changes its time, and the full check runs again.
_VERIFIED_STAMP = ".verified.json"


def _file_states(path: Path) -> dict[str, list[int]]:
    files = ["manifest.json", *(f"{name}.npy" for name in _ARRAY_NAMES)]
    return {name: [(path / name).stat().st_size, (path / name).stat().st_mtime_ns] for name in files}


def _verified_unchanged(path: Path) -> bool:
    """Whether the cache's files are exactly as they were when every digest last matched."""
    try:
        with open(path / _VERIFIED_STAMP, encoding="utf-8") as handle:
            return bool(json.load(handle) == _file_states(path))
    except (OSError, ValueError):
        return False


def _stamp_verified(path: Path) -> None:
    """Record the files' states after a full check (skipped where the cache is read-only)."""
    with contextlib.suppress(OSError):
        temporary = path / f"{_VERIFIED_STAMP}.{os.getpid()}.tmp"
        temporary.write_text(json.dumps(_file_states(path)), encoding="utf-8")
        os.replace(temporary, path / _VERIFIED_STAMP)


# ----------------------------------------------------------------------------------------------
# Finding and loading
# ----------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """Where caches live: ``$RECSYS_GYM_CACHE``, else ``~/.cache/recsys_gym``."""
    configured = os.environ.get("RECSYS_GYM_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "recsys_gym"


_LOADED: dict[str, CompactDataset] = {}
_LOAD_LOCK = threading.Lock()
_SYNTHETIC_NOTICE_GIVEN = False


def load_dataset(
    dataset: str = "outbrain",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    test_fraction: float = 0.2,
    content_dim: int = 8,
    cf_dim: int = 8,
    min_rating: float | None = None,
    synthetic_kwargs: Mapping[str, Any] | None = None,
    prepare_options: Mapping[str, Any] | None = None,
) -> CompactDataset:
    """Find, or build and cache, the compact form of a named data source.

    :param dataset: ``"outbrain"`` (the Kaggle files in ``data_dir``; the built-in synthetic data in
        Outbrain's schema when ``data_dir`` is ``None``), ``"movielens-100k"`` (``data_dir`` or the
        ``ml-100k`` folder of the installed ``recbole`` wheel) or ``"interactions"`` (a generic log
        file or RecBole directory given by ``data_dir``).
    :param data_dir: where the source's files are.
    :param cache_dir: where caches are kept; :func:`default_cache_dir` when ``None``.
    :param test_fraction: share of the latest impressions held out for testing.
    :param content_dim: size of the content embedding of items and contexts.
    :param cf_dim: size of the collaborative embedding of items.
    :param min_rating: for rated logs, the rating from which an interaction counts as a click.
    :param synthetic_kwargs: arguments of :func:`recsys_gym.data.synthetic.generate_outbrain` for the
        built-in data.
    :param prepare_options: for ``"outbrain"``, further fields of
        :class:`~recsys_gym.data.prepare.PrepareOptions` (``min_impressions``, ``start_time``, ``end_time``,
        ``split_time``, ``page_views``, ``page_view_history``); they are part of the cache key.
    :return: the dataset, shared with every other caller in this process asking for the same one.
    :raises ValueError: for an unknown ``dataset``.
    :raises MissingDataError: when ``data_dir`` or a required file does not exist.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {list(DATASETS)}, got {dataset!r}")
    options = BuildOptions(test_fraction=test_fraction, content_dim=content_dim, cf_dim=cf_dim)
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    # Resolve the source: the built-in generator, the recbole wheel's MovieLens, or the given path.
    source = _resolve_source(dataset, data_dir, cache_root, synthetic_kwargs)

    # A folder written by `recsys-gym prepare outbrain --out` is used as it is, once its checks pass.
    if dataset == "outbrain" and data_dir is not None and (source / "manifest.json").is_file():
        return _load_prepared(source)

    # Outbrain's files go through the streaming preparation, with its own options in the cache key.
    if dataset == "outbrain":
        from recsys_gym.data.prepare import PrepareOptions, check_raw_folder, prepare_outbrain

        check_raw_folder(source, "data_dir")
        prepare = PrepareOptions(
            test_fraction=test_fraction, content_dim=content_dim, cf_dim=cf_dim, **dict(prepare_options or {})
        )
        cache_path = cache_path_for(dataset, source, asdict(prepare), cache_root)
        return _load_or_build(cache_path, lambda: prepare_outbrain(source, cache_path, options=prepare, progress=False))
    if prepare_options:
        raise ValueError(f"prepare_options only applies to dataset='outbrain', got dataset={dataset!r}")

    # The cache key covers the source files' names, sizes and times, the options and the layout version.
    cache_path = cache_path_for(dataset, source, {**asdict(options), "min_rating": min_rating}, cache_root)
    return _load_or_build(cache_path, lambda: build_dataset(_read_source(dataset, source, min_rating), cache_path, options))


def _load_prepared(folder: Path) -> CompactDataset:
    """A prepared cache folder given as ``data_dir``: mapped when it passes every check, else a clear error."""
    with _LOAD_LOCK:
        if str(folder) in _LOADED:
            return _LOADED[str(folder)]
        reason = untrusted_reason(folder)
        if reason is not None:
            raise CacheError(
                f"data_dir={str(folder)!r} is a prepared cache that cannot be trusted: {reason}; prepare it again with "
                "`recsys-gym prepare outbrain --raw <folder of the Kaggle files> --out <folder>`"
            )
        loaded = CompactDataset(folder)
        _LOADED[str(folder)] = loaded
        return loaded


def _load_or_build(cache_path: Path, build: Callable[[], Any]) -> CompactDataset:
    """The dataset of ``cache_path``, mapped once per process; ``build()`` writes it first when it is missing or untrusted."""
    with _LOAD_LOCK:
        if str(cache_path) in _LOADED:
            return _LOADED[str(cache_path)]
        reason = untrusted_reason(cache_path) if cache_path.exists() else "it does not exist"
        if reason is not None:
            if cache_path.exists():
                logger.warning(
                    "the cache %s is incomplete or changed since it was written (%s); rebuilding it", cache_path, reason
                )
            build()
        loaded = CompactDataset(cache_path)
        _LOADED[str(cache_path)] = loaded
        return loaded


def cache_path_for(dataset: str, source: Path, options: Mapping[str, Any], cache_root: Path) -> Path:
    """The cache directory of a source under ``cache_root``: keyed by the source files' names, sizes and times,
    the options and :data:`CACHE_VERSION`.

    :param dataset: the source's kind (``"outbrain"``, ...), the directory name's prefix.
    :param source: the source file or folder.
    :param options: every setting that changes the cache's content.
    :param cache_root: the folder holding caches.
    """
    key_material = {
        "dataset": dataset,
        "source": str(source.resolve()),
        "files": _fingerprint(source),
        "options": dict(options),
        "cache_version": CACHE_VERSION,
    }
    key = hashlib.sha256(json.dumps(key_material, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_root / f"{dataset}-{key}"


def _resolve_source(
    dataset: str, data_dir: str | os.PathLike[str] | None, cache_root: Path, synthetic_kwargs: Mapping[str, Any] | None
) -> Path:
    global _SYNTHETIC_NOTICE_GIVEN
    if dataset == "outbrain" and data_dir is None:
        from recsys_gym.data.synthetic import GENERATOR_VERSION, generate_outbrain

        params = dict(synthetic_kwargs or {})
        # Key the folder by every generator parameter, defaults included, so a changed default regenerates.
        resolved = {
            name: parameter.default
            for name, parameter in inspect.signature(generate_outbrain).parameters.items()
            if parameter.default is not inspect.Parameter.empty
        }
        resolved.update(params)
        # The generator's version too: the same parameters give other files after a change of the generator.
        material = {"parameters": resolved, "generator_version": GENERATOR_VERSION, "cache_version": CACHE_VERSION}
        tag = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:12]
        target = cache_root / f"synthetic-outbrain-{tag}"
        if not (target / "GENERATED.json").is_file():
            generate_outbrain(target, **params)
        if not _SYNTHETIC_NOTICE_GIVEN:
            logger.info(
                "OutbrainRec-v0 runs on built-in synthetic data in Outbrain's schema (%s); "
                "pass data_dir=<folder with events.csv and clicks_train.csv> to use the real Kaggle files",
                target,
            )
            _SYNTHETIC_NOTICE_GIVEN = True
        return target
    if dataset == "movielens-100k" and data_dir is None:
        from recsys_gym.data.interactions import find_movielens_100k

        return find_movielens_100k()
    if data_dir is None:
        raise ValueError(f"dataset={dataset!r} needs data_dir: a file or folder holding the interaction log")
    path = Path(data_dir).expanduser()
    if not path.exists():
        expected = {
            "outbrain": "events.csv and clicks_train.csv (Kaggle's Outbrain Click Prediction files)",
            "movielens-100k": "u.data or ml-100k.inter",
            "interactions": "an interaction log (CSV/TSV with user and item columns, or RecBole .inter files)",
        }[dataset]
        raise MissingDataError(f"data_dir={str(data_dir)!r} does not exist; for dataset={dataset!r} it should hold {expected}")
    return path


def _read_source(dataset: str, source: Path, min_rating: float | None) -> RawLog:
    if dataset == "outbrain":
        from recsys_gym.data.outbrain import read_outbrain

        return read_outbrain(source)
    from recsys_gym.data.interactions import read_interactions

    return read_interactions(source, min_rating=min_rating, name=dataset)


def _fingerprint(source: Path) -> list[tuple[str, int, int]]:
    """Name, size and modification time of the source's files (a folder's files, or one file and its siblings)."""
    if source.is_dir():
        files = sorted(path for path in source.iterdir() if path.is_file())
    else:
        files = sorted(path for path in source.parent.iterdir() if path.is_file() and path.stem == source.stem)
    return [(path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in files]
