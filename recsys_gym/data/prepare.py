"""Streaming, bounded-memory preparation of the Kaggle Outbrain files into the environment's cache.

:func:`prepare_outbrain` (and ``recsys-gym prepare outbrain``) turns ``clicks_train.csv`` and
``events.csv`` (plus the optional ``promoted_content.csv`` and ``documents_*.csv``) into the cache
directory that :class:`~recsys_gym.data.dataset.CompactDataset` maps. It gives the same impressions,
users, shown sets, user-item sets, split and counts as the in-memory reference
(:func:`~recsys_gym.data.outbrain.read_outbrain` + :func:`~recsys_gym.data.dataset.build_dataset`),
but memory grows with the catalogue (ads, documents) and one chunk, not with the number of rows.

Design (phases, in order; each ``tqdm`` bar is one phase):

1. **Partition clicks.** ``clicks_train.csv`` is read one block of whole lines at a time and each block
   parsed by :func:`pyarrow.csv.read_csv` (explicit types, columns checked by name; see
   :func:`~recsys_gym.data.csvstream.stream_csv`), and its rows ``(display_id, ad_id, clicked)`` are
   appended to ``P`` temporary Arrow IPC files by ``display_id mod P``; ``P`` is chosen from the
   file sizes so one bucket holds about ``bucket_bytes`` of text (default 4 MB).
2. **Partition events.** ``events.csv`` likewise, rows ``(display_id, uuid, document_id,
   timestamp, platform code)``; a systematic sample of the users' 8-byte uuid prefixes (as big-endian
   integers) gives ``Q - 1`` quantile boundaries for the user buckets of phase 3.
3. **Join per display bucket.** Each bucket's clicks and events are joined in memory. Repairs and
   faults are counted (see :data:`REASONS`): duplicate click rows are dropped (the clicked copy is
   kept), identical duplicate events are dropped, a display with no click or two clicks, or two
   different events, is an error naming the file, ``display_id`` and line (or, with
   ``on_bad_lines="skip"``, dropped and counted); clicks whose display has no event are dropped and
   counted; events without clicks (the test displays) are skipped and counted; impressions outside
   the time window are dropped and counted. Each impression (with its shown ads in file order) goes
   to the user bucket of its uuid prefix: buckets are *ranges* of uuids, so reading them in order
   gives users in the sorted order the reference uses.
4. **Sort per user bucket.** Each user bucket is sorted by (uuid, time, display), users with fewer
   than ``min_impressions`` impressions are dropped and counted, and the sorted bucket is written
   back. Catalogue-sized facts are gathered: the ads and context documents seen, a histogram of
   timestamps (at most 2**21 bins over the observed range: 1 ms per bin up to 35 minutes of data,
   about 0.6 s per bin for Kaggle's 15 days) and the output sizes.
5. **Split point.** The cut is the timestamp at rank ``floor(n * (1 - test_fraction))`` of the kept
   impressions, as in the reference: the histogram finds its bin, and the timestamps of that one bin
   (read back from the buckets) give the exact value. ``split_time`` overrides it.
6. **Write.** The output arrays have known sizes, so their ``.npy`` headers are written first and
   each file is then filled front to back, bucket by bucket (users in sorted order), without mapping
   it; per-ad training click and impression counts are summed on the way.
7. **Collaborative embedding.** The item Gram matrix ``MᵀM`` of the binary training user-ad matrix
   ``M`` (entry (i, j): users who clicked both i and j) is summed over the written arrays one chunk of
   users at a time, so no user × item matrix is ever held: it is items × items, catalogue-sized. Its
   top eigenvectors (ARPACK, fixed start vector) are ``M``'s right singular vectors, the reference's
   item vectors up to ARPACK's accuracy and the sign convention.
8. **Content features.** The document files are read once, chunk by chunk and two at a time, keeping
   only the rows of the documents that matter: the ads' landing pages (via ``promoted_content.csv``)
   as compact token keys in memory (a hash for entity ids, whose text is kept once), and the rows of the
   context pages and pages read (the pages of every page view written to the user buckets in phase 9: a
   superset of those kept) in spill files beside the buckets, since only the reduction can use them.
   This read runs beside phase 6. A missing file warns once and degrades. The token reduction
   (IDF-weighted truncated SVD) is learned on the ads shown in the training split only; every ad is
   projected on it, then the spilled rows are read back block by block and every context page and page
   read is projected too (tokens no ad has are ignored). What stays in memory is catalogue-sized: the
   ads' token matrix and one vector per page (with page views, the documents read count in the
   catalogue).

Phases 1 and 2 run side by side, as do phase 6 and the read of phase 8; phases 3 and 4 work on two buckets at a time
(threads: NumPy and Arrow release the GIL in their loops).

9. **Page views** (when ``page_views.csv`` is present and ``PrepareOptions.page_views`` is on). Phase 4
   also sets, for every kept user, one bit of a fixed-size bitset (at most 128 MB) addressed by a hash of
   the uuid prefix. After phase 4, ``page_views.csv`` (``uuid, document_id, timestamp``; the other columns
   are not read, so ``\\N`` or empty platforms do not matter) is streamed once, the next block parsed on a
   thread while this one is filtered and written: rows outside the time window are dropped, rows whose
   bit is not set (their user has no impression) are dropped, and the rest are appended to the page-view
   file of their user bucket (the same uuid ranges). While phase 6 writes a
   user bucket it joins that bucket's page views with its users exactly: rows of other users (hash
   collisions) are dropped and counted with the others, rows at or after the user's last impression can
   never be used and are dropped, identical (uuid, document_id, timestamp) rows are dropped, and the
   rest are kept sorted by (user, timestamp, document_id). Phase 8 reads the content rows of the
   documents read as well and projects them on the reduction learned from the ads (tokens it does not
   know are ignored, so ads and context pages get the same vectors as without page views). Last, every
   impression gets its vector, bucket by bucket (see below), written as ``imp_pageviews``.

**The page-view vector** of an impression of user ``u`` at time ``t`` (``PAGE_VIEW_FEATURES``) uses only
the pages ``u`` read *strictly* before ``t`` (``timestamp < t``, both in Kaggle's milliseconds). A page view
with the impression's own timestamp is excluded: the file cannot say whether it came before or after the
display, and it may be the visit to the ad clicked in that very display. With ``n`` such views and
``H = PrepareOptions.page_view_history``:

- ``pageviews_log_count = min(1, log(1 + n) / log(1 + 1000))``;
- ``pageviews_content_i``: the mean content vector (the ``content_dim`` reduction of phase 8, rows of unit
  length) of the last ``H`` of those views (by timestamp, then document id), taken over the views whose
  document has a non-zero content vector; a page without content (no row in ``documents_*.csv``, or no
  token the reduction knows) counts in ``n`` and in the window of ``H`` but adds nothing to the mean; 0
  when no page of the window has content.

So ``imp_pageviews`` has ``1 + content width`` columns in ``[-1, 1]``, and 0 columns when ``page_views.csv``
is absent or ``page_views=False``: the cache and the observation are then the same as without this
feature. Each vector is summed view by view from the newest to the oldest of its window, so a page view at
or after ``t`` cannot change a single bit of it. Page views outside ``[start_time, end_time)`` are dropped
like impressions.

Everything is written into a ``.partial`` directory beside the output, bucket files included; the
manifest (array sizes and BLAKE2b digests) is written last and the directory renamed into place,
so a run killed at any point leaves nothing a later run trusts, and the next run removes the
leftover and rebuilds.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from recsys_gym.data.csvstream import BAD_LINE_MODES, prefetched, stream_csv
from recsys_gym.data.dataset import (
    CACHE_VERSION,
    DENSE_LIMIT,
    CompactDataset,
    _count_features,
    _is_trusted,
    _normalise_rows,
    cache_path_for,
    check_replaceable,
    check_writable,
    clean_stale_partials,
    default_cache_dir,
    encode_strings,
    fit_content_reduction,
    partial_dir,
    seal_cache,
)
from recsys_gym.data.interactions import _shown_value
from recsys_gym.data.outbrain import (
    _DOWNLOAD_HINT,
    FILE_COLUMNS,
    PLATFORM_CODES,
    _line_of_display,
    _two_rows_text,
    note_missing_optional_files,
)
from recsys_gym.error import DataError, MissingDataError

logger = logging.getLogger(__name__)

#: Rows per parsed block by default: each file is read one block at a time (see :mod:`recsys_gym.data.csvstream`), so
#: this bounds the text and parsed columns held per file. 250,000 was no faster and took 15% more peak memory at size 0.1.
DEFAULT_CHUNK_ROWS = 100_000

#: Text bytes aimed at per temporary bucket by default. Smaller buckets hold less at a time in phases 3, 4 and 6: 16 MB
#: took 254 MB at size 0.01 and 369 MB at size 0.1, 4 MB 215 and 306 MB, in the same time (benchmarks/prepare.py).
DEFAULT_BUCKET_BYTES = 4 << 20

#: Most temporary buckets per partition (open files). At the bucket size above, Kaggle's clicks and events make about
#: 600 display buckets, and with ``page_views.csv`` (100 GB) the user buckets hold about 100 MB of its text each.
MAX_BUCKETS = 1024

#: Longest user id (``uuid``) accepted, in bytes (Kaggle's are 14): the cache stores ids at the longest one's width.
MAX_ID_BYTES = 64

#: Files kept free for everything else when the bucket files are counted against the open-file limit.
_SPARE_FILES = 64

#: Bytes buffered per temporary bucket file before a write to it.
_WRITE_BUFFER = 64 << 10

#: Number of page views at which ``pageviews_log_count`` saturates at 1.
PAGE_VIEW_COUNT_SCALE = 1000

#: Columns read from ``page_views.csv`` (its ``platform``, ``geo_location`` and ``traffic_source`` are not used).
PAGE_VIEW_COLUMNS = {"uuid": "str", "document_id": "int", "timestamp": "int"}

#: Largest bitset (bits) of users with impressions that filters ``page_views.csv`` (2**30 bits: 128 MB).
_MAX_FILTER_BITS = 1 << 30

#: Environment variable naming a phase at which a preparation pauses (for tests of killed runs).
PAUSE_ENV = "RECSYS_GYM_PREPARE_PAUSE_AT"

#: The counters of a preparation, in the order they are reported.
REASONS = (
    "clicks_train.csv: rows read",
    "clicks_train.csv: malformed lines skipped",
    "events.csv: rows read",
    "events.csv: malformed lines skipped",
    "duplicate click rows dropped",
    "displays dropped: no clicked ad (skip mode)",
    "displays dropped: two or more clicked ads (skip mode)",
    "duplicate event rows dropped",
    "displays dropped: conflicting events (skip mode)",
    "click rows dropped: display has no event",
    "displays dropped: no event",
    "events skipped: display has no clicks (test displays)",
    "impressions dropped: outside the time window",
    "impressions dropped: user below min_impressions",
    "users dropped: below min_impressions",
    "impressions kept",
    "users kept",
    "page_views.csv: rows read",
    "page_views.csv: malformed lines skipped",
    "page views dropped: outside the time window",
    "page views dropped: user has no impression",
    "page views dropped: at or after the user's last impression",
    "duplicate page view rows dropped",
    "page views kept",
    "promoted_content.csv: rows read",
    "promoted_content.csv: rows of the log's ads",
    "documents_topics.csv: rows read",
    "documents_categories.csv: rows read",
    "documents_entities.csv: rows read",
    "documents_meta.csv: rows read",
    "items",
    "contexts",
)

_CLICK_SCHEMA = pa.schema([("display_id", pa.int64()), ("ad_id", pa.int64()), ("clicked", pa.int8())])
_EVENT_SCHEMA = pa.schema(
    [
        ("display_id", pa.int64()),
        ("uuid", pa.string()),
        ("document_id", pa.int64()),
        ("timestamp", pa.int64()),
        ("platform", pa.int8()),
    ]
)
_PAGE_VIEW_SCHEMA = pa.schema([("uuid", pa.string()), ("document_id", pa.int64()), ("timestamp", pa.int64())])
_IMPRESSION_SCHEMA = pa.schema(
    [
        ("display_id", pa.int64()),
        ("uuid", pa.string()),
        ("timestamp", pa.int64()),
        ("document_id", pa.int64()),
        ("platform", pa.int8()),
        ("clicked", pa.int64()),
        ("shown", pa.list_(pa.int64())),
    ]
)


@dataclass(frozen=True)
class PrepareOptions:
    """What a preparation keeps, where it splits and which features it computes (all part of the cache key).

    :param test_fraction: share of impressions, the latest by time, held out as the test split.
    :param split_time: an explicit cut instead: impressions with ``timestamp < split_time`` train, the
        others test (Kaggle's milliseconds). Overrides ``test_fraction``.
    :param start_time: impressions before this timestamp are dropped (``None``: no lower bound).
    :param end_time: impressions at or after this timestamp are dropped (``None``: no upper bound).
    :param min_impressions: users with fewer impressions (after the time window) are dropped.
    :param content_dim: size of the content embedding of ads and context pages; 0 turns it off.
    :param cf_dim: size of the collaborative embedding of ads; 0 turns it off.
    :param page_views: use ``page_views.csv`` when the folder has it (the ``imp_pageviews`` vectors);
        ``False`` ignores the file (zero-width vectors).
    :param page_view_history: how many of the latest pages read before an impression its content mean covers.
    """

    test_fraction: float = 0.2
    split_time: int | None = None
    start_time: int | None = None
    end_time: int | None = None
    min_impressions: int = 1
    content_dim: int = 8
    cf_dim: int = 8
    page_views: bool = True
    page_view_history: int = 20

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must lie in (0, 1), got {self.test_fraction!r}")
        for name in ("content_dim", "cf_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if isinstance(self.min_impressions, bool) or not isinstance(self.min_impressions, (int, np.integer)):
            raise ValueError(f"min_impressions must be an integer >= 1, got {self.min_impressions!r}")
        if self.min_impressions < 1:
            raise ValueError(f"min_impressions must be an integer >= 1, got {self.min_impressions!r}")
        if not isinstance(self.page_views, (bool, np.bool_)):
            raise ValueError(f"page_views must be True or False, got {self.page_views!r}")
        history = self.page_view_history
        if isinstance(history, bool) or not isinstance(history, (int, np.integer)) or history < 1:
            raise ValueError(f"page_view_history must be an integer >= 1, got {history!r}")
        for name in ("split_time", "start_time", "end_time"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
                raise ValueError(f"{name} must be an integer timestamp (ms) or None, got {value!r}")
        if self.start_time is not None and self.end_time is not None and self.start_time >= self.end_time:
            raise ValueError(f"start_time={self.start_time} must be before end_time={self.end_time}")


def prepare_outbrain(
    raw_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    options: PrepareOptions | None = None,
    on_bad_lines: str = "error",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> CompactDataset:
    """Prepare the Kaggle Outbrain files of ``raw_dir`` as a cache directory, streaming, and map it.

    :param raw_dir: the folder holding ``clicks_train.csv`` and ``events.csv`` (uncompressed), and
        optionally ``promoted_content.csv``, ``documents_{topics,categories,entities,meta}.csv`` and
        ``page_views.csv``.
    :param out_dir: the cache directory to write. ``None`` uses the directory that
        :func:`~recsys_gym.data.dataset.load_dataset` would use under ``cache_dir`` (keyed by the files
        and ``options``). An existing trusted cache of the same files and options is returned as is; an
        untrusted or different cache there is replaced once the new one is complete; any other non-empty folder is
        refused. A second preparation of the same folder (another process) waits for the first to end.
    :param options: what to keep, where to split, which features; defaults when ``None``.
    :param on_bad_lines: ``"error"`` (default) raises on a malformed line or a display without
        exactly one click; ``"skip"`` skips and counts them.
    :param chunk_rows: about how many rows are parsed at a time.
    :param progress: show ``tqdm`` progress bars.
    :param cache_dir: where caches are kept when ``out_dir`` is ``None``.
    :param bucket_bytes: text bytes aimed at per temporary bucket (smaller: more buckets, less memory).
    :return: the dataset, mapped read-only; its manifest's ``prepare_counts`` say what was read and
        dropped, and why.
    :raises MissingDataError: when ``raw_dir`` or a required file does not exist.
    :raises DataError: naming the file, line and column (or ``display_id``) of bad input.
    """
    options = options or PrepareOptions()
    if on_bad_lines not in BAD_LINE_MODES:
        raise ValueError(f"on_bad_lines must be one of {list(BAD_LINE_MODES)}, got {on_bad_lines!r}")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be an integer >= 1, got {chunk_rows!r}")
    if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, (int, np.integer)) or bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be an integer >= 1, got {bucket_bytes!r}")

    folder = check_raw_folder(raw_dir)

    # Decide the output directory and whether an existing one can be reused.
    key_options = asdict(options)
    if out_dir is None:
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        target = cache_path_for("outbrain", folder, key_options, root)
    else:
        target = Path(out_dir).expanduser()
    source_key = cache_path_for("outbrain", folder, key_options, Path(".")).name
    check_writable(target)
    # One preparation of a folder at a time: a second one waits, then finds the first one's cache.
    with _preparation_lock(target):
        if target.is_dir() and _is_trusted(target) and _manifest_of(target).get("source_key") == source_key:
            logger.info("%s is already prepared from %s with these options", target, folder)
            return CompactDataset(target)
        # Only a cache (or an empty folder) is ever replaced, and only once the new one is complete.
        check_replaceable(target)
        replace = target.exists()
        if replace:
            logger.warning(
                "%s will be replaced once the new cache is complete: it is an incomplete, changed or different cache", target
            )

        # Prepare in a fresh .partial directory, after removing those of killed runs.
        clean_stale_partials(target)
        tmp_dir = partial_dir(target)
        try:
            with _returning_memory_pool():
                preparer = _Preparer(folder, tmp_dir, options, on_bad_lines, int(chunk_rows), progress, int(bucket_bytes))
                manifest = preparer.run()
            manifest["source_key"] = source_key
            shutil.rmtree(tmp_dir / "buckets", ignore_errors=True)
            _pause_if_asked("before_seal", tmp_dir)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
        seal_cache(tmp_dir, target, manifest, replace=replace)
    dataset = CompactDataset(target)
    logger.info("prepared %r", dataset)
    return dataset


def check_raw_folder(raw_dir: str | os.PathLike[str], argument: str = "raw_dir") -> Path:
    """Check that ``raw_dir`` is a folder holding the two required files; return it as a path.

    :param argument: the name the caller knows the folder by, for the errors.
    :raises MissingDataError: naming the argument, when the folder or a required file is missing (or is compressed).
    """
    folder = Path(raw_dir).expanduser()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise MissingDataError(f"{argument}={str(raw_dir)!r} {what}; {_DOWNLOAD_HINT}")
    for required in ("events.csv", "clicks_train.csv"):
        if (folder / required).exists() and not (folder / required).is_file():
            raise MissingDataError(
                f"{argument}={str(raw_dir)!r}: {required} is a folder, not a file; expected the CSV file there"
            )
        if not (folder / required).is_file():
            compressed = [path.name for path in folder.glob(f"{required}.*")]
            hint = f" (found {compressed}: unpack it first)" if compressed else ""
            raise MissingDataError(f"{argument}={str(raw_dir)!r} has no {required}{hint}; {_DOWNLOAD_HINT}")
    return folder


@contextmanager
def _preparation_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``.<name>.lock`` beside ``target`` (where the system has ``fcntl``; it stays there).

    The lock goes with the process, however it ends; a second preparation of the same folder waits for it.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux or macOS
        yield
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("waiting for another preparation of %s to finish", target)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _returning_memory_pool() -> Iterator[None]:
    """Run with Arrow's jemalloc pool set to give freed memory back at once, then restore the caller's pool.

    Arrow's default allocator keeps freed blocks for reuse, so each phase's peak would stay resident through the
    next ones; where jemalloc is not built in, the default pool is kept.
    """
    previous = pa.default_memory_pool()
    try:
        pool = pa.jemalloc_memory_pool()
        pa.jemalloc_set_decay_ms(0)
    except (NotImplementedError, pa.ArrowNotImplementedError):
        yield
        return
    pa.set_memory_pool(pool)
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def _release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; nothing elsewhere).

    NumPy's arrays live on the C heap, whose freed blocks glibc keeps for reuse: without this, each phase's
    temporaries would stay resident through the next phases, and a peak would add to the one before it.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _open_file_budget(wanted: int) -> int:
    """How many files this process may open, after raising its soft limit towards ``wanted`` where the hard limit allows."""
    try:
        import resource
    except ImportError:  # not a Unix system: no such limit to raise
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return int(soft)
    return int(target)


def _manifest_of(path: Path) -> dict[str, Any]:
    try:
        with open(path / "manifest.json", encoding="utf-8") as handle:
            manifest: dict[str, Any] = json.load(handle)
    except (OSError, json.JSONDecodeError):
        return {}
    return manifest


def _pause_if_asked(phase: str, tmp_dir: Path) -> None:
    """Test hook: when ``$RECSYS_GYM_PREPARE_PAUSE_AT`` names ``phase``, write ``PAUSED`` into ``tmp_dir`` and wait."""
    if os.environ.get(PAUSE_ENV) == phase:
        (tmp_dir / "PAUSED").write_text(phase, encoding="utf-8")
        time.sleep(3600)


def format_counts(counts: dict[str, int]) -> str:
    """The counts of a preparation as aligned lines, in the order of :data:`REASONS`."""
    names = [name for name in REASONS if name in counts] + sorted(name for name in counts if name not in REASONS)
    width = max((len(name) for name in names), default=0)
    return "\n".join(f"  {name:<{width}}  {counts[name]:>12,}" for name in names)


def uuid_prefix_keys(uuids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The first 8 UTF-8 bytes of each string (NUL-padded) as a big-endian ``uint64``: monotone in the string order.

    :param uuids: Arrow strings.
    :return: uint64 keys, one per string.
    """
    if isinstance(uuids, pa.ChunkedArray):
        uuids = uuids.combine_chunks() if uuids.num_chunks else pa.array([], type=pa.string())
    if uuids.type != pa.large_string():
        uuids = uuids.cast(pa.large_string())
    uuids = pa.concat_arrays([uuids]) if uuids.offset else uuids
    n = len(uuids)
    out = np.zeros((n, 8), dtype=np.uint8)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    buffers = uuids.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64)[: n + 1]
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, dtype=np.uint8)
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    shortest = int(lengths.min())
    if shortest >= 8:
        if shortest == int(lengths.max()):
            # One width (Kaggle's uuids): the strings are the rows of a matrix; its first 8 columns are the keys.
            out[:] = data[offsets[0] : offsets[0] + n * shortest].reshape(n, shortest)[:, :8]
        else:
            out[:] = data[starts[:, None] + np.arange(8)]
        return out.view(">u8").ravel().astype(np.uint64)
    for position in range(8):
        has = lengths > position
        out[has, position] = data[starts[has] + position]
    return out.view(">u8").ravel().astype(np.uint64)


class _Writers:
    """``n`` Arrow IPC stream files appended to batch by batch, one per bucket."""

    def __init__(self, folder: Path, stem: str, n: int, schema: pa.Schema) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.paths = [folder / f"{stem}-{index:04d}.arrows" for index in range(n)]
        self.schema = schema
        # Each file written through a small buffer: a batch's buffers would otherwise be one system call each.
        self.sinks = [pa.BufferedOutputStream(pa.OSFile(str(path), "wb"), buffer_size=_WRITE_BUFFER) for path in self.paths]
        self.writers = [ipc.new_stream(sink, schema) for sink in self.sinks]

    def write(self, bucket: np.ndarray, columns: list[Any], rows: np.ndarray | None = None) -> None:
        """Append each row of ``columns`` to its bucket's file, keeping row order.

        :param bucket: the bucket of each row written.
        :param columns: arrays aligned with ``bucket``, or with the whole batch when ``rows`` is given.
        :param rows: the positions in ``columns`` of the rows written (aligned with ``bucket``); ``None``: all.
        """
        if len(bucket) == 0:
            return
        # The rows grouped by bucket (a stable radix sort of the small bucket numbers), then one slice per bucket.
        order = np.argsort(bucket.astype(np.uint8 if len(self.writers) <= 256 else np.int64), kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(len(self.writers) + 1))
        if rows is not None:
            # One gather of the kept rows in bucket order, instead of a filter and then a gather.
            order = rows[order]
        indices = pa.array(order)
        arrays = [
            column.take(indices) if isinstance(column, (pa.Array, pa.ChunkedArray)) else pa.array(np.asarray(column)[order])
            for column in columns
        ]
        grouped = pa.record_batch(arrays, schema=self.schema)
        for index in np.flatnonzero(np.diff(bounds)):
            self.writers[index].write_batch(grouped.slice(bounds[index], bounds[index + 1] - bounds[index]))

    def close(self) -> None:
        for writer, sink in zip(self.writers, self.sinks, strict=True):
            writer.close()
            sink.close()


def _read_stream(path: Path) -> pa.Table:
    with ipc.open_stream(str(path)) as reader:
        return reader.read_all()


class _Preparer:
    """One preparation run: the phases of the module docstring, writing into ``tmp_dir``."""

    def __init__(
        self,
        folder: Path,
        tmp_dir: Path,
        options: PrepareOptions,
        on_bad_lines: str,
        chunk_rows: int,
        progress: bool,
        bucket_bytes: int,
    ) -> None:
        self.folder = folder
        self.tmp_dir = tmp_dir
        self.buckets = tmp_dir / "buckets"
        self.options = options
        self.skip = on_bad_lines == "skip"
        self.on_bad_lines = on_bad_lines
        self.chunk_rows = chunk_rows
        self.progress = progress
        self.counts: dict[str, int] = {}
        # Phases 3 and 4 work on several buckets at once, one per core (at most 4 at a time, to bound memory).
        self.lock = threading.Lock()
        self.n_threads = max(1, min(4, os.cpu_count() or 1))
        self.notes: list[str] = []
        self.seconds: dict[str, float] = {}
        self.clicks_path = folder / "clicks_train.csv"
        self.events_path = folder / "events.csv"
        total = self.clicks_path.stat().st_size + self.events_path.stat().st_size
        self.n_display_buckets = int(np.clip(-(-total // bucket_bytes), 1, MAX_BUCKETS))

        # Page views: used when present and asked for; their text counts in the size of the user buckets.
        self.page_views_path = folder / "page_views.csv"
        self.use_page_views = bool(options.page_views) and self.page_views_path.is_file()
        if not self.page_views_path.is_file():
            self.notes.append("page_views.csv is missing: impressions get no page-view vector (imp_pageviews has 0 columns)")
            logger.info("no page_views.csv in %s: impressions get no page-view vector", folder)
        elif not options.page_views:
            self.notes.append("page_views.csv is ignored (page_views=False): imp_pageviews has 0 columns")
        # Page views count for a quarter of their text: with 20 million generated ones beside size 0.1, buckets four
        # times as large for them took 0.7 s less (fewer, larger writes) and no more memory (350 MB against 367 MB).
        user_text = self.events_path.stat().st_size
        if self.use_page_views:
            user_text += self.page_views_path.stat().st_size // 4
        self.n_user_buckets = int(np.clip(-(-user_text // bucket_bytes), 1, MAX_BUCKETS))

        # Phases 1 and 2 hold both display partitions' files open, phases 3 and 9 the user buckets': fewer (larger)
        # buckets when the system allows fewer open files.
        budget = _open_file_budget(max(2 * self.n_display_buckets, self.n_user_buckets) + _SPARE_FILES) - _SPARE_FILES
        if 2 * self.n_display_buckets > budget or self.n_user_buckets > budget:
            logger.warning(
                "only %d files may be open at once: %d display and %d user buckets instead of %d and %d (more memory each)",
                budget + _SPARE_FILES,
                max(1, min(self.n_display_buckets, budget // 2)),
                max(1, min(self.n_user_buckets, budget)),
                self.n_display_buckets,
                self.n_user_buckets,
            )
            self.n_display_buckets = max(1, min(self.n_display_buckets, budget // 2))
            self.n_user_buckets = max(1, min(self.n_user_buckets, budget))
        rough_events = max(1, self.events_path.stat().st_size // 48)
        self.filter_bits = int(np.clip(1 << int(np.ceil(np.log2(8 * rough_events))), 1 << 16, _MAX_FILTER_BITS))
        self.user_filter = np.zeros(self.filter_bits // 8 if self.use_page_views else 0, dtype=np.uint8)
        self.page_view_buckets: list[Path] = []
        self.page_view_parts: list[tuple[int, int, int, Path | None]] = []
        self.page_documents = np.zeros(0, dtype=np.int64)
        # The documents of the page views kept in phase 6, and of those written to the buckets (a superset, known earlier).
        self.page_document_set = _DistinctIds()
        self.page_document_candidates = _DistinctIds()

    def add(self, reason: str, count: int) -> None:
        """Add ``count`` to a counter (from any of the phase threads)."""
        with self.lock:
            self.counts[reason] = self.counts.get(reason, 0) + int(count)

    @contextmanager
    def bar(self, description: str, total: int | None, unit: str = "it") -> Iterator[Callable[[int], Any]]:
        """A tqdm bar (or nothing when progress is off); yields its ``update``."""
        from tqdm.auto import tqdm

        started = time.perf_counter()
        with tqdm(total=total, desc=description, unit=unit, unit_scale=True, disable=not self.progress, leave=False) as bar:
            yield bar.update
        _release_free_memory()
        self.seconds[description] = round(self.seconds.get(description, 0.0) + time.perf_counter() - started, 3)
        logger.info("%s: %.1f s", description, time.perf_counter() - started)

    def stream(
        self, path: Path, columns: dict[str, str], update: Callable[[int], Any], parse_threads: bool
    ) -> Iterator[dict[str, Any]]:
        """The checked batches of a large input file, counted, with this run's chunk size and bad-line mode."""
        return stream_csv(
            path,
            columns,
            chunk_rows=self.chunk_rows,
            on_bad_lines=self.on_bad_lines,
            counts=self.counts,
            progress=update,
            parse_threads=parse_threads,
        )

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        # The two required files are partitioned side by side (each pass is parsing and bucketing of its own file).
        with ThreadPoolExecutor(min(2, self.n_threads)) as pool:
            for done in [pool.submit(self.partition_clicks), pool.submit(self.partition_events)]:
                done.result()
        _pause_if_asked("after_events", self.tmp_dir)
        self.join_displays()
        self.sort_users()
        _pause_if_asked("after_sort", self.tmp_dir)
        if self.use_page_views:
            self.partition_page_views()
        # The items, in the reference's order: their ids compared as strings.
        self.item_ids = self.ads[np.argsort(self.ads.astype(str), kind="stable")]
        # The documents whose content is needed are known now: read them while the arrays are written (the ads' token
        # matrix is built, the other pages' rows spilled: the reduction itself waits for the training counts).
        with ThreadPoolExecutor(1) as pool:
            early = None
            if self.options.content_dim > 0:
                # The context pages, and every page of the page views written to the buckets (a superset of those kept).
                targets = _sorted_unique(np.concatenate([self.documents, self.page_document_candidates.result()]))
                # In smaller chunks than the other files: this read shares the memory of phase 6 (and is not the longer).
                chunk = max(1, self.chunk_rows // 4)
                early = pool.submit(self.read_content, targets, chunk)
            cut_time = self.split_point()
            self.write_arrays(cut_time)
            _pause_if_asked("after_write", self.tmp_dir)
            # The co-click embedding, then the content one: one after the other, each peak on its own (side by side,
            # their peaks added up and they ran no faster: both are mostly single-threaded sparse products).
            cf = self.cf_embedding()
            content_items, content_contexts, content_pages = self.content_features(None if early is None else early.result())
        page_view_names = self.page_view_features(content_pages)
        count_features = _count_features(self.item_train_clicks, self.item_train_shown)
        item_features = np.concatenate([count_features, content_items, cf], axis=1).astype(np.float32)
        np.save(self.tmp_dir / "item_features.npy", item_features, allow_pickle=False)
        np.save(self.tmp_dir / "context_features.npy", content_contexts.astype(np.float32, copy=False), allow_pickle=False)
        np.save(self.tmp_dir / "item_train_clicks.npy", self.item_train_clicks, allow_pickle=False)
        np.save(self.tmp_dir / "item_train_shown.npy", self.item_train_shown, allow_pickle=False)
        feature_names = (
            ["log_train_clicks", "log_train_shown", "train_ctr"]
            + [f"content_{i}" for i in range(content_items.shape[1])]
            + [f"cf_{i}" for i in range(cf.shape[1])]
        )
        self.counts["items"] = len(self.item_ids)
        self.counts["contexts"] = len(self.context_ids)
        seconds = time.perf_counter() - started
        logger.info("prepared %s in %.1f s:\n%s", self.folder, seconds, format_counts(self.counts))
        return {
            "cache_version": CACHE_VERSION,
            "name": "outbrain",
            "options": asdict(self.options),
            "cut_time": int(cut_time),
            "has_shown": True,
            "feature_names": feature_names,
            "page_view_feature_names": page_view_names,
            "notes": self.notes,
            "prepare_counts": dict(self.counts),
            "prepare_seconds": round(seconds, 3),
            "prepare_phase_seconds": dict(self.seconds),
            "raw_dir": str(self.folder),
        }

    # -- phase 1 -------------------------------------------------------------------------------
    def partition_clicks(self) -> None:
        """Phase 1: clicks_train.csv into display buckets."""
        path = self.clicks_path
        writers = _Writers(self.buckets, "clicks", self.n_display_buckets, _CLICK_SCHEMA)
        try:
            with self.bar("clicks_train.csv", path.stat().st_size, "B") as update:
                # Read side by side with the other partition: each block is parsed on this thread.
                for batch in self.stream(path, FILE_COLUMNS["clicks_train.csv"], update, parse_threads=False):
                    display, ad, clicked = batch["display_id"], batch["ad_id"], batch["clicked"]
                    invalid = (clicked != 0) & (clicked != 1)
                    if invalid.any():
                        if not self.skip:
                            from recsys_gym.data.interactions import line_of_row

                            first = int(np.flatnonzero(invalid)[0])
                            raise DataError(
                                f"{path}: line {line_of_row(path, batch['_row'] + first)} column 'clicked' holds "
                                f"{clicked[first]}, expected 0 or 1"
                            )
                        self.add("clicks_train.csv: malformed lines skipped", int(invalid.sum()))
                        self.add("clicks_train.csv: rows read", -int(invalid.sum()))
                        keep = ~invalid
                        display, ad, clicked = display[keep], ad[keep], clicked[keep]
                    bucket = (display % self.n_display_buckets).astype(np.int64)
                    writers.write(bucket, [display, ad, clicked.astype(np.int8)])
        finally:
            writers.close()
        self.click_buckets = writers.paths

    # -- phase 2 -------------------------------------------------------------------------------
    def partition_events(self) -> None:
        """Phase 2: events.csv into display buckets, and the user-bucket boundaries from a sample of uuids."""
        path = self.events_path
        writers = _Writers(self.buckets, "events", self.n_display_buckets, _EVENT_SCHEMA)
        sample: list[np.ndarray] = []
        sample_size = 0
        stride = 1
        known = list(PLATFORM_CODES)
        try:
            with self.bar("events.csv", path.stat().st_size, "B") as update:
                # Read side by side with the other partition: each block is parsed on this thread.
                for batch in self.stream(path, FILE_COLUMNS["events.csv"], update, parse_threads=False):
                    # Platform codes: 1, 2, 3, and \N for unknown (0); anything else is bad input.
                    platform_index = pc.index_in(batch["platform"], value_set=pa.array(known)).to_numpy(zero_copy_only=False)
                    unknown = np.isnan(platform_index.astype(np.float64))
                    keep = None
                    if unknown.any():
                        first = int(np.flatnonzero(unknown)[0])
                        if not self.skip:
                            from recsys_gym.data.interactions import line_of_row

                            raise DataError(
                                f"{path}: line {line_of_row(path, batch['_row'] + first)} column 'platform' holds "
                                f"{_shown_value(str(batch['platform'][first].as_py()))}, expected one of {known} "
                                "(on_bad_lines='skip' / --skip-bad-lines skips and counts such lines)"
                            )
                        keep = ~unknown
                    # User ids longer than MAX_ID_BYTES: bad input (the cache stores every id at the longest one's width).
                    too_long = self._too_long_ids(path, batch)
                    if too_long is not None:
                        keep = ~too_long if keep is None else keep & ~too_long
                    if keep is not None:
                        self.add("events.csv: malformed lines skipped", int((~keep).sum()))
                        self.add("events.csv: rows read", -int((~keep).sum()))
                    codes = np.array([PLATFORM_CODES[value] for value in known], dtype=np.int8)
                    platform = codes[np.nan_to_num(platform_index.astype(np.float64), nan=0).astype(np.int64)]
                    display, uuid, document, timestamp = (
                        batch["display_id"],
                        batch["uuid"],
                        batch["document_id"],
                        batch["timestamp"],
                    )
                    if keep is not None:
                        mask = pa.array(keep)
                        display, document, timestamp, platform = display[keep], document[keep], timestamp[keep], platform[keep]
                        uuid = uuid.filter(mask)

                    # A systematic sample of uuid prefixes for the user-bucket boundaries (at most 2**20 kept).
                    keys = uuid_prefix_keys(uuid)[::stride]
                    sample.append(keys)
                    sample_size += len(keys)
                    if sample_size > 1 << 20:
                        merged = np.concatenate(sample)[::2]
                        sample, sample_size, stride = [merged], len(merged), stride * 2
                    bucket = (display % self.n_display_buckets).astype(np.int64)
                    writers.write(bucket, [display, uuid, document, timestamp, platform])
        finally:
            writers.close()
        self.event_buckets = writers.paths
        keys = np.sort(np.concatenate(sample)) if sample else np.zeros(0, dtype=np.uint64)
        if len(keys):
            cuts = keys[(np.arange(1, self.n_user_buckets) * len(keys)) // self.n_user_buckets]
            self.user_bounds = np.unique(cuts)
        else:
            self.user_bounds = np.zeros(0, dtype=np.uint64)
        self.user_bucket_of = _BucketOf(self.user_bounds)

    def _too_long_ids(self, path: Path, batch: dict[str, Any]) -> np.ndarray | None:
        """Rows whose ``uuid`` is longer than :data:`MAX_ID_BYTES` (``None`` when none is): an error, or a mask to skip."""
        widths = pc.binary_length(batch["uuid"].cast(pa.binary())).to_numpy(zero_copy_only=False)
        too_long = widths > MAX_ID_BYTES
        if not too_long.any():
            return None
        if not self.skip:
            from recsys_gym.data.interactions import line_of_row

            first = int(np.flatnonzero(too_long)[0])
            raise DataError(
                f"{path}: line {line_of_row(path, batch['_row'] + first)} column 'uuid' holds an id of "
                f"{int(widths[first]):,} bytes; ids of at most {MAX_ID_BYTES} bytes are supported (each user id is "
                "stored at the width of the longest) (on_bad_lines='skip' / --skip-bad-lines skips and counts such lines)"
            )
        return too_long

    # -- phase 3 -------------------------------------------------------------------------------
    def join_displays(self) -> None:
        """Phase 3: per display bucket, repair and join clicks with events, and send impressions to user buckets."""
        n_user_buckets = len(self.user_bounds) + 1
        writers = _Writers(self.buckets, "users", n_user_buckets, _IMPRESSION_SCHEMA)
        self.time_min, self.time_max = np.iinfo(np.int64).max, np.iinfo(np.int64).min
        try:
            with self.bar("join displays", len(self.click_buckets), "bucket") as update:

                def join(paths: tuple[Path, Path]) -> None:
                    click_path, event_path = paths
                    self._join_bucket(_read_stream(click_path), _read_stream(event_path), writers)
                    click_path.unlink()
                    event_path.unlink()

                # Buckets are independent: one per thread (NumPy and Arrow release the GIL in their loops).
                with ThreadPoolExecutor(self.n_threads) as pool:
                    for _ in pool.map(join, zip(self.click_buckets, self.event_buckets, strict=True)):
                        update(1)
        finally:
            writers.close()
        self.user_buckets = writers.paths

    def _join_bucket(self, clicks: pa.Table, events: pa.Table, writers: _Writers) -> None:
        display = clicks.column("display_id").to_numpy()
        ad = clicks.column("ad_id").to_numpy()
        clicked = clicks.column("clicked").to_numpy().astype(np.int8)

        # Rows grouped by display, file order kept within a display (a stable sort: linear on Kaggle's sorted file).
        grouped = np.argsort(display, kind="stable")
        if not np.array_equal(grouped, np.arange(len(display))):
            display, ad, clicked = display[grouped], ad[grouped], clicked[grouped]

        # Duplicate (display, ad) rows: keep the first clicked copy, else the first copy. One sort of a combined key
        # finds whether there are any; the full ordering below runs only when there are.
        if _has_duplicate_pairs(display, ad):
            position = np.arange(len(display))
            order = np.lexsort((position, -clicked, ad, display))
            first_of_pair = np.ones(len(order), dtype=bool)
            first_of_pair[1:] = (display[order][1:] != display[order][:-1]) | (ad[order][1:] != ad[order][:-1])
            kept = np.sort(order[first_of_pair])
            self.add("duplicate click rows dropped", len(display) - len(kept))
            display, ad, clicked = display[kept], ad[kept], clicked[kept]
        else:
            self.add("duplicate click rows dropped", 0)

        # Exactly one clicked ad per display: an error, or the display is dropped in skip mode.
        dropped_displays = np.zeros(0, dtype=display.dtype)
        starts = _group_starts(display)
        click_displays = display[starts]
        n_clicked = np.add.reduceat(clicked.astype(np.int64), starts) if len(starts) else np.zeros(0, dtype=np.int64)
        wrong = n_clicked != 1
        if wrong.any():
            if not self.skip:
                first = int(np.flatnonzero(wrong)[0])
                bad = int(click_displays[first])
                raise DataError(
                    f"{self.clicks_path}: display_id {bad} has {int(n_clicked[first])} clicked ad(s) in its "
                    f"{int((display == bad).sum())} row(s) (the first on line {_line_of_display(self.clicks_path, bad)}), "
                    "expected exactly one row with clicked=1 per display "
                    "(on_bad_lines='skip', or --skip-bad-lines on the command line, drops such displays)"
                )
            self.add("displays dropped: no clicked ad (skip mode)", int((n_clicked == 0).sum()))
            self.add("displays dropped: two or more clicked ads (skip mode)", int((n_clicked > 1).sum()))
            good = ~np.repeat(wrong, np.diff(np.append(starts, len(display))))
            display, ad, clicked = display[good], ad[good], clicked[good]
            dropped_displays = click_displays[wrong]
            click_displays = click_displays[~wrong]

        # Events: identical duplicate rows are dropped; two different events of one display are an error.
        event_display = events.column("display_id").to_numpy()
        if len(event_display):
            events = events.take(pa.array(np.argsort(event_display, kind="stable")))
            event_display = events.column("display_id").to_numpy()
        repeated = np.zeros(len(event_display), dtype=bool)
        repeated[1:] = event_display[1:] == event_display[:-1]
        if repeated.any():
            previous = pa.array(np.flatnonzero(repeated) - 1)
            current = pa.array(np.flatnonzero(repeated))
            same = np.ones(len(current), dtype=bool)
            for name in ("uuid", "document_id", "timestamp", "platform"):
                column = events.column(name)
                same &= pc.equal(column.take(previous), column.take(current)).to_numpy(zero_copy_only=False)
            self.add("duplicate event rows dropped", int(same.sum()))
            conflicting = np.unique(event_display[np.flatnonzero(repeated)[~same]])
            if len(conflicting) and not self.skip:
                bad = int(conflicting[0])
                raise DataError(
                    f"{self.events_path}: display_id {bad} has two different rows ({_two_rows_text(self.events_path, bad)}); "
                    "expected one event per display "
                    "(on_bad_lines='skip', or --skip-bad-lines on the command line, drops such displays)"
                )
            self.add("displays dropped: conflicting events (skip mode)", len(conflicting))
            keep = ~repeated & ~np.isin(event_display, conflicting)
            events = events.filter(pa.array(keep))
            event_display = event_display[keep]
            if len(conflicting):
                good = ~np.isin(display, conflicting)
                display, ad, clicked = display[good], ad[good], clicked[good]
                click_displays = click_displays[~np.isin(click_displays, conflicting)]

        # Join: events without clicks are test displays; clicks without an event are dropped (both sides sorted).
        event_has_clicks = _in_sorted(event_display, click_displays)
        # The events of displays dropped above are not test displays: they are counted with their drop.
        test_displays = ~event_has_clicks & ~_in_sorted(event_display, dropped_displays)
        self.add("events skipped: display has no clicks (test displays)", int(test_displays.sum()))
        click_has_event = _in_sorted(display, event_display)
        if not click_has_event.all():
            self.add("click rows dropped: display has no event", int((~click_has_event).sum()))
            self.add("displays dropped: no event", len(np.unique(display[~click_has_event])))
            display, ad, clicked = display[click_has_event], ad[click_has_event], clicked[click_has_event]
        events = events.filter(pa.array(event_has_clicks))
        timestamp = events.column("timestamp").to_numpy()

        # The time window.
        inside = np.ones(len(timestamp), dtype=bool)
        if self.options.start_time is not None:
            inside &= timestamp >= self.options.start_time
        if self.options.end_time is not None:
            inside &= timestamp < self.options.end_time
        if not inside.all():
            self.add("impressions dropped: outside the time window", int((~inside).sum()))
            events = events.filter(pa.array(inside))
            timestamp = timestamp[inside]
            keep_clicks = np.isin(display, events.column("display_id").to_numpy())
            display, ad, clicked = display[keep_clicks], ad[keep_clicks], clicked[keep_clicks]
        if events.num_rows == 0:
            return
        with self.lock:
            self.time_min = min(self.time_min, int(timestamp.min()))
            self.time_max = max(self.time_max, int(timestamp.max()))

        # Each impression's clicked ad and shown ads (file order), aligned with the events (sorted by display).
        event_display = events.column("display_id").to_numpy()
        row_of_click = np.searchsorted(event_display, display)
        is_clicked = clicked == 1
        clicked_ad = np.empty(len(event_display), dtype=np.int64)
        clicked_ad[row_of_click[is_clicked]] = ad[is_clicked]
        by_row = np.argsort(row_of_click, kind="stable")
        offsets = np.zeros(len(event_display) + 1, dtype=np.int32)
        np.cumsum(np.bincount(row_of_click, minlength=len(event_display)), out=offsets[1:])
        shown = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ad[by_row]))

        # Send every impression to the user bucket of its uuid prefix.
        uuid = events.column("uuid")
        bucket = self.user_bucket_of(uuid_prefix_keys(uuid))
        # The order rows reach a user bucket does not matter: phase 4 sorts each bucket by a total order.
        with self.lock:
            writers.write(
                bucket,
                [
                    events.column("display_id").combine_chunks(),
                    uuid.combine_chunks(),
                    events.column("timestamp").combine_chunks(),
                    events.column("document_id").combine_chunks(),
                    events.column("platform").combine_chunks(),
                    clicked_ad,
                    shown,
                ],
            )

    # -- phase 4 -------------------------------------------------------------------------------
    def sort_users(self) -> None:
        """Phase 4: sort each user bucket, apply min_impressions, and gather the catalogue and the sizes."""
        self.ads = np.zeros(0, dtype=np.int64)
        self.documents = np.zeros(0, dtype=np.int64)
        if self.time_max < self.time_min:
            raise DataError(
                f"{self.folder}: no impression is left: no display of clicks_train.csv has an event in events.csv "
                "(inside the time window); see the counts:\n" + format_counts(self.counts)
            )
        span = self.time_max - self.time_min + 1
        self.bin_width = max(1, -(-span // (1 << 21)))
        self.histogram = np.zeros(span // self.bin_width + 1, dtype=np.int64)
        self.sizes: list[dict[str, int]] = []
        self.id_width = 1
        with self.bar("sort users", len(self.user_buckets), "bucket") as update:
            # Buckets are independent: one per thread; results come back in bucket order.
            sorted_paths = []
            with ThreadPoolExecutor(self.n_threads) as pool:
                for sorted_path, sizes, ads, documents in pool.map(self._sort_bucket, self.user_buckets):
                    sorted_paths.append(sorted_path)
                    self.sizes.append(sizes)
                    self.ads = _sorted_unique(np.concatenate([self.ads, ads]))
                    self.documents = _sorted_unique(np.concatenate([self.documents, documents]))
                    update(1)
        self.user_buckets = sorted_paths
        self.n_impressions = sum(size["rows"] for size in self.sizes)
        self.n_users = sum(size["users"] for size in self.sizes)
        self.counts["impressions kept"] = self.n_impressions
        self.counts["users kept"] = self.n_users
        if self.n_impressions == 0:
            raise DataError(
                f"{self.folder}: no impression is left after min_impressions={self.options.min_impressions}; "
                "see the counts:\n" + format_counts(self.counts)
            )

    def _sort_bucket(self, path: Path) -> tuple[Path, dict[str, int], np.ndarray, np.ndarray]:
        """Sort one user bucket into its ``.arrow`` file; return it, its sizes, and its distinct ads and context pages."""
        table = _read_stream(path)
        path.unlink()
        sizes = {"rows": 0, "users": 0, "shown": 0, "user_items": 0}
        ads = documents = np.zeros(0, dtype=np.int64)
        if table.num_rows:
            # Sort by (uuid, time, display): each uuid's rank among the bucket's distinct uuids (byte order) makes
            # the users' order an integer one.
            table = table.combine_chunks()
            encoded = pc.dictionary_encode(table.column("uuid").chunk(0))
            user_rank = _string_ranks(encoded.dictionary)[encoded.indices.to_numpy()]
            order = _order_by_user_time_document(
                user_rank, table.column("timestamp").to_numpy(), table.column("display_id").to_numpy()
            )
            table = table.take(pa.array(order))
            starts = _group_starts(user_rank[order])
            lengths = np.diff(np.append(starts, table.num_rows))
            if self.options.min_impressions > 1:
                small = lengths < self.options.min_impressions
                if small.any():
                    self.add("impressions dropped: user below min_impressions", int(lengths[small].sum()))
                    self.add("users dropped: below min_impressions", int(small.sum()))
                    keep = np.repeat(~small, lengths)
                    table = table.filter(pa.array(keep))
                    lengths = lengths[~small]
                    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        table = table.combine_chunks()
        if table.num_rows:
            user_of_row = np.repeat(np.arange(len(lengths)), lengths)
            clicked = table.column("clicked").to_numpy()
            shown = table.column("shown").combine_chunks()
            flat = shown.flatten().to_numpy()
            timestamp = table.column("timestamp").to_numpy()
            small_ids = len(clicked) == 0 or (clicked.min() >= 0 and clicked.max() < (1 << 40))
            item_codes = clicked.astype(np.int64) if small_ids else _dense(clicked)
            sizes = {
                "rows": table.num_rows,
                "users": len(lengths),
                "shown": len(flat),
                "user_items": len(_sorted_unique(user_of_row.astype(np.int64) * (1 << 40) + item_codes)),
            }
            ads = _distinct(flat)
            documents = _distinct(table.column("document_id").to_numpy())
            bins = (timestamp - self.time_min) // self.bin_width
            widths = pc.binary_length(table.column("uuid").cast(pa.binary()))
            slots = None
            if self.use_page_views:
                slots = self._filter_slots(uuid_prefix_keys(table.column("uuid").take(pa.array(starts))))
            with self.lock:
                np.add.at(self.histogram, bins, 1)
                self.id_width = max(self.id_width, int(pc.max(widths).as_py() or 1))
                if slots is not None:
                    np.bitwise_or.at(self.user_filter, slots >> 3, (1 << (slots & 7)).astype(np.uint8))
        sorted_path = path.with_suffix(".arrow")
        with ipc.new_file(str(sorted_path), _IMPRESSION_SCHEMA) as writer:
            writer.write_table(table.cast(_IMPRESSION_SCHEMA))
        return sorted_path, sizes, ads, documents

    def _filter_slots(self, keys: np.ndarray) -> np.ndarray:
        """Bit positions of uuid prefix keys in the bitset of users with impressions (a multiplicative hash)."""
        shift = np.uint64(64 - int(np.log2(self.filter_bits)))
        return ((keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> shift).astype(np.int64)

    # -- phase 9, first part -------------------------------------------------------------------
    def partition_page_views(self) -> None:
        """Phase 9 (first part): page_views.csv into the user buckets, keeping rows whose user may have impressions."""
        path = self.page_views_path
        n_user_buckets = len(self.user_bounds) + 1
        writers = _Writers(self.buckets, "pageviews", n_user_buckets, _PAGE_VIEW_SCHEMA)
        start, end = self.options.start_time, self.options.end_time
        try:
            with self.bar("page_views.csv", path.stat().st_size, "B") as update:
                # The next block is read and parsed while this one is filtered and written (this phase runs alone).
                for batch in prefetched(self.stream(path, PAGE_VIEW_COLUMNS, update, parse_threads=True)):
                    uuid, document, timestamp = batch["uuid"], batch["document_id"], batch["timestamp"]

                    # The time window, as for impressions; over-long user ids are bad input as in events.csv.
                    valid = np.ones(len(timestamp), dtype=bool)
                    too_long = self._too_long_ids(path, batch)
                    if too_long is not None:
                        valid = ~too_long
                        self.add("page_views.csv: malformed lines skipped", int(too_long.sum()))
                        self.add("page_views.csv: rows read", -int(too_long.sum()))
                    keep = valid.copy()
                    if start is not None:
                        keep &= timestamp >= start
                    if end is not None:
                        keep &= timestamp < end
                    self.add("page views dropped: outside the time window", int((valid & ~keep).sum()))

                    # Users whose bit is not set have no impression (a set bit may be a collision: checked in phase 6).
                    keys = uuid_prefix_keys(uuid)
                    slots = self._filter_slots(keys)
                    maybe = ((self.user_filter[slots >> 3] >> (slots & 7).astype(np.uint8)) & 1).astype(bool)
                    self.add("page views dropped: user has no impression", int((keep & ~maybe).sum()))
                    keep &= maybe
                    if not keep.any():
                        continue
                    rows = np.flatnonzero(keep)
                    writers.write(self.user_bucket_of(keys[rows]), [uuid, document, timestamp], rows)
                    self.page_document_candidates.add(document[rows])
        finally:
            writers.close()
        self.page_view_buckets = writers.paths
        self.user_filter = np.zeros(0, dtype=np.uint8)

    def _join_page_views(self, bucket: int, users: pa.Array, last_time: np.ndarray, user0: int) -> Path | None:
        """Phase 6 (with page views): keep the page views of one user bucket's users before their last impression.

        :param bucket: the user bucket's index.
        :param users: the bucket's users (uuids, sorted, unique).
        :param last_time: the timestamp of each user's last impression.
        :param user0: the global index of the bucket's first user.
        :return: a ``.npy`` file of ``(user, timestamp, document_id)`` int64 rows sorted in that order, or ``None``.
        """
        if not self.page_view_buckets:
            return None
        path = self.page_view_buckets[bucket]
        views = _read_stream(path)
        path.unlink()
        if views.num_rows == 0:
            return None

        # Rows of other users (hash collisions of the bitset) are dropped.
        local = pc.index_in(views.column("uuid"), value_set=users).to_numpy(zero_copy_only=False)
        known = ~np.isnan(local.astype(np.float64))
        self.add("page views dropped: user has no impression", int((~known).sum()))
        user = np.nan_to_num(local.astype(np.float64), nan=0).astype(np.int64)[known]
        timestamp = views.column("timestamp").to_numpy()[known]
        document = views.column("document_id").to_numpy()[known]
        del views

        # Views at or after the user's last impression can shape no vector.
        useful = timestamp < last_time[user]
        self.add("page views dropped: at or after the user's last impression", int((~useful).sum()))
        user, timestamp, document = user[useful], timestamp[useful], document[useful]

        # Sort by (user, time, document) and drop identical rows.
        order = _order_by_user_time_document(user, timestamp, document)
        user, timestamp, document = user[order], timestamp[order], document[order]
        repeated = np.zeros(len(user), dtype=bool)
        repeated[1:] = (user[1:] == user[:-1]) & (timestamp[1:] == timestamp[:-1]) & (document[1:] == document[:-1])
        self.add("duplicate page view rows dropped", int(repeated.sum()))
        self.add("page views kept", int((~repeated).sum()))
        if (~repeated).sum() == 0:
            return None
        rows = np.stack([user[~repeated] + user0, timestamp[~repeated], document[~repeated]], axis=1)
        self.page_document_set.add(rows[:, 2])
        out = self.buckets / f"pageviews-{bucket:04d}.npy"
        np.save(out, rows, allow_pickle=False)
        return out

    # -- phase 5 -------------------------------------------------------------------------------
    def split_point(self) -> int:
        """Phase 5: the exact time cut, from the histogram and the timestamps of one bin."""
        n = self.n_impressions
        if self.options.split_time is not None:
            cut = int(self.options.split_time)
            n_train = int(self.histogram[: max(0, (cut - self.time_min) // self.bin_width)].sum())
            n_train += sum(self._times_in_bin((cut - self.time_min) // self.bin_width, below=cut))
        else:
            rank = int(n * (1.0 - self.options.test_fraction))
            cumulative = np.cumsum(self.histogram)
            target_bin = int(np.searchsorted(cumulative, rank, side="right"))
            before = int(cumulative[target_bin - 1]) if target_bin > 0 else 0
            times = np.sort(np.concatenate(self._times_in_bin(target_bin)))
            cut = int(times[rank - before])
            n_train = before + int((times < cut).sum())
        self.n_train = n_train
        if n_train == 0 or n_train == n:
            how = (
                f"split_time={self.options.split_time}"
                if self.options.split_time is not None
                else (f"test_fraction={self.options.test_fraction}")
            )
            raise DataError(
                f"the time split of 'outbrain' with {how} leaves {n_train} training and {n - n_train} test impressions; "
                "both must be non-empty (are all timestamps equal?)"
            )
        return cut

    def _times_in_bin(self, target_bin: int, below: int | None = None) -> list[Any]:
        """The timestamps of one histogram bin, read back from the sorted user buckets (or their count below ``below``)."""
        if not 0 <= target_bin < len(self.histogram):
            return [] if below is None else [0]
        low = self.time_min + target_bin * self.bin_width
        high = low + self.bin_width
        found: list[Any] = []
        for path in self.user_buckets:
            with pa.memory_map(str(path)) as source:
                timestamp = ipc.open_file(source).read_all().column("timestamp").to_numpy()
            inside = timestamp[(timestamp >= low) & (timestamp < high)]
            found.append(int((inside < below).sum()) if below is not None else inside)
        return found

    # -- phase 6 -------------------------------------------------------------------------------
    def write_arrays(self, cut_time: int) -> None:
        """Phase 6: write the impression, shown and user-item arrays bucket by bucket into memory-mapped .npy files."""
        # Vocabularies: ads in the items' order (set by run), context documents sorted.
        ads = self.ads
        item_of_ad = np.empty(len(ads), dtype=np.int32)
        item_of_ad[np.searchsorted(ads, self.item_ids)] = np.arange(len(ads), dtype=np.int32)
        self.context_ids = self.documents
        n_items = len(ads)
        n, n_users = self.n_impressions, self.n_users
        n_shown = sum(size["shown"] for size in self.sizes)
        n_user_items = sum(size["user_items"] for size in self.sizes)

        def create(name: str, dtype: Any, shape: tuple[int, ...]) -> _NpyWriter:
            return _NpyWriter(self.tmp_dir / f"{name}.npy", dtype, shape[0], leading_zero=name.endswith("_ptr"))

        out = {
            "user_ptr": create("user_ptr", np.int64, (n_users + 1,)),
            "imp_user": create("imp_user", np.int32, (n,)),
            "imp_time": create("imp_time", np.int64, (n,)),
            "imp_context": create("imp_context", np.int32, (n,)),
            "imp_platform": create("imp_platform", np.int8, (n,)),
            "imp_clicked": create("imp_clicked", np.int32, (n,)),
            "imp_is_train": create("imp_is_train", np.bool_, (n,)),
            "imp_raw_id": create("imp_raw_id", np.int64, (n,)),
            "shown_ptr": create("shown_ptr", np.int64, (n + 1,)),
            "shown_items": create("shown_items", np.int32, (n_shown,)),
            "user_items_ptr": create("user_items_ptr", np.int64, (n_users + 1,)),
            "user_items": create("user_items", np.int32, (n_user_items,)),
            "user_ids": create("user_ids", f"S{self.id_width}", (n_users,)),
        }
        self.item_train_clicks = np.zeros(n_items, dtype=np.int64)
        self.item_train_shown = np.zeros(n_items, dtype=np.int64)
        ad_position, document_position = _Lookup(ads), _Lookup(self.documents)
        row0 = user0 = shown0 = items0 = 0
        with self.bar("write arrays", len(self.user_buckets), "bucket") as update:
            for bucket_index, (path, sizes) in enumerate(zip(self.user_buckets, self.sizes, strict=True)):
                if sizes["rows"] == 0:
                    path.unlink()
                    empty = np.zeros(0, dtype=np.int64)
                    self._join_page_views(bucket_index, pa.array([], type=pa.string()), empty, user0)
                    update(1)
                    continue
                with pa.memory_map(str(path)) as source:
                    table = ipc.open_file(source).read_all()
                rows, users = sizes["rows"], sizes["users"]
                uuid = table.column("uuid").combine_chunks()
                starts = _run_starts(uuid)
                lengths = np.diff(np.append(starts, rows))
                user_of_row = np.repeat(np.arange(users, dtype=np.int64), lengths)
                timestamp = table.column("timestamp").to_numpy()
                clicked = item_of_ad[ad_position(table.column("clicked").to_numpy())]
                is_train = timestamp < cut_time

                # Impression arrays.
                block = slice(row0, row0 + rows)
                out["imp_user"][block] = user0 + user_of_row
                out["imp_time"][block] = timestamp
                out["imp_context"][block] = document_position(table.column("document_id").to_numpy())
                out["imp_platform"][block] = table.column("platform").to_numpy()
                out["imp_clicked"][block] = clicked
                out["imp_is_train"][block] = is_train
                out["imp_raw_id"][block] = table.column("display_id").to_numpy()
                out["user_ptr"][user0 + 1 : user0 + users + 1] = row0 + np.cumsum(lengths)
                out["user_ids"][user0 : user0 + users] = np.asarray(
                    uuid.take(pa.array(starts)).cast(pa.binary()).to_numpy(zero_copy_only=False), dtype=f"S{self.id_width}"
                )

                # Shown items: the clicked one first, then the others in file order.
                shown = table.column("shown").combine_chunks()
                list_lengths = pc.list_value_length(shown).to_numpy().astype(np.int64)
                flat = item_of_ad[ad_position(shown.flatten().to_numpy())]
                row_of_flat = np.repeat(np.arange(rows), list_lengths)
                is_other = flat != clicked[row_of_flat]
                order = np.argsort(row_of_flat * 2 + is_other, kind="stable")
                out["shown_items"][shown0 : shown0 + len(flat)] = flat[order]
                out["shown_ptr"][row0 + 1 : row0 + rows + 1] = shown0 + np.cumsum(list_lengths)

                # Every item each user clicked, sorted and unique.
                pairs = _sorted_unique(user_of_row * (1 << 32) + clicked.astype(np.int64))
                pair_users, pair_items = pairs >> 32, (pairs & 0xFFFFFFFF).astype(np.int32)
                out["user_items"][items0 : items0 + len(pairs)] = pair_items
                out["user_items_ptr"][user0 + 1 : user0 + users + 1] = items0 + np.cumsum(
                    np.bincount(pair_users, minlength=users)
                )

                # The bucket's page views, joined with its users (phase 9).
                if self.use_page_views:
                    last_time = timestamp[starts + lengths - 1]
                    views = self._join_page_views(bucket_index, uuid.take(pa.array(starts)), last_time, user0)
                    self.page_view_parts.append((row0, rows, user0, views))

                # Training counts per item.
                self.item_train_clicks += np.bincount(clicked[is_train], minlength=n_items)
                self.item_train_shown += np.bincount(flat[is_train[row_of_flat]], minlength=n_items)
                row0, user0, shown0, items0 = row0 + rows, user0 + users, shown0 + len(flat), items0 + len(pairs)
                del table
                path.unlink()
                update(1)
        for writer in out.values():
            writer.close()
        self.page_documents = self.page_document_set.result()
        self.arrays = {name: writer.path for name, writer in out.items()}
        np.save(self.tmp_dir / "item_ids.npy", encode_strings([str(item) for item in self.item_ids]), allow_pickle=False)
        np.save(self.tmp_dir / "context_ids.npy", self.context_ids.astype(np.int64), allow_pickle=False)
        self.item_index_of_ad = item_of_ad

    # -- phase 7 -------------------------------------------------------------------------------
    def cf_embedding(self) -> np.ndarray:
        """Phase 7: item vectors of the truncated SVD of the binary training user-item matrix, from its item Gram matrix."""
        from scipy.sparse.linalg import eigsh

        n_items, n_users = len(self.item_ids), self.n_users
        dim = min(self.options.cf_dim, min(n_users, n_items) - 1)
        if dim <= 0 or self.n_train == 0:
            return np.zeros((n_items, 0))
        with self.bar("co-click embedding", None, "pass"):
            gram = self._gram()
            # The right singular vectors of M are the top eigenvectors of MᵀM: by LAPACK for a small catalogue (ARPACK
            # draws a start vector of its own on tied eigenvalues, see _truncated_svd), else by ARPACK from a fixed one.
            if n_items <= DENSE_LIMIT:
                eigenvalues, eigenvectors = np.linalg.eigh(gram.toarray())
                eigenvalues, eigenvectors = eigenvalues[-dim:], eigenvectors[:, -dim:]
            else:
                start = np.full(n_items, 1.0 / np.sqrt(n_items))
                eigenvalues, eigenvectors = eigsh(gram, k=dim, v0=start)
        order = np.argsort(-eigenvalues)
        singular = np.sqrt(np.clip(eigenvalues[order], 0.0, None))
        right = eigenvectors[:, order].T
        # Fix each component's sign as the reference does: its first clearly non-zero entry is positive.
        magnitude = np.abs(right)
        first = (magnitude > 1e-6 * magnitude.max(axis=1, keepdims=True)).argmax(axis=1)
        signs = np.sign(right[np.arange(dim), first])
        signs[signs == 0] = 1.0
        right = right * signs[:, None]
        return _normalise_rows(right.T * np.sqrt(singular))

    def _gram(self) -> Any:
        """``MᵀM`` (sparse, items × items) for the binary training user-item matrix ``M``, one chunk of users at a time.

        Its entry (i, j) counts the users who clicked both i and j in training: catalogue-sized, whatever the number
        of rows.
        """
        from scipy import sparse

        n_items = len(self.item_ids)
        gram = sparse.csr_matrix((n_items, n_items))
        step = max(self.chunk_rows, 1024)
        carried: tuple[np.ndarray, ...] = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool))
        for start in range(0, self.n_impressions, step):
            # Rows of whole users: the last user of a chunk is carried into the next one.
            stop = min(start + step, self.n_impressions)
            users = np.concatenate([carried[0], _read_rows(self.arrays["imp_user"], start, stop).astype(np.int64)])
            items = np.concatenate([carried[1], _read_rows(self.arrays["imp_clicked"], start, stop).astype(np.int64)])
            train = np.concatenate([carried[2], _read_rows(self.arrays["imp_is_train"], start, stop)])
            cut = len(users) if stop == self.n_impressions else int(np.searchsorted(users, users[-1]))
            carried = (users[cut:], items[cut:], train[cut:])
            users, items = users[:cut][train[:cut]], items[:cut][train[:cut]]
            if len(users):
                first = int(users[0])
                chunk = sparse.csr_matrix(
                    (np.ones(len(users)), (users - first, items)), shape=(int(users[-1]) - first + 1, n_items)
                )
                chunk.data = np.minimum(chunk.data, 1.0)
                gram = gram + (chunk.T @ chunk).tocsr()
        return gram

    # -- phase 8 -------------------------------------------------------------------------------
    def read_content(self, targets: np.ndarray, chunk_rows: int) -> _ContentTokens | None:
        """Phase 8, first part: the ads' token matrix, and the rows of ``targets`` spilled to disk (:func:`_content_tokens`).

        :param targets: sorted, distinct document ids whose vectors are wanted (context pages and pages read).
        :param chunk_rows: rows parsed per chunk.
        :return: the tokens, or ``None`` when no ad has content.
        """
        rows = _read_document_rows(
            self.folder, self.ads, targets, chunk_rows, self.notes, self.counts, self.buckets, self.on_bad_lines
        )
        return None if rows is None else _content_tokens(rows, self.item_ids)

    def content_features(self, tokens: _ContentTokens | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Phase 8: content vectors of ads, context pages and pages read, the reduction learned on the training split's ads.

        :param tokens: the result of :meth:`read_content` (``None``: content is off or no ad has any).
        :return: vectors of every item (n_items, d), context (n_contexts, d) and document of
            ``self.page_documents`` (n_documents, d); ``d = 0`` when content is off or missing.
        """
        n_items, n_contexts, n_pages = len(self.item_ids), len(self.context_ids), len(self.page_documents)
        if tokens is None:
            return np.zeros((n_items, 0)), np.zeros((n_contexts, 0)), np.zeros((n_pages, 0))
        with self.bar("content vectors", None, "pass"):
            return _content_vectors(
                tokens, self.item_train_shown > 0, self.context_ids, self.page_documents, self.options.content_dim
            )

    # -- phase 9, last part --------------------------------------------------------------------
    def page_view_features(self, page_vectors: np.ndarray) -> list[str]:
        """Phase 9 (last part): every impression's page-view vector (module docstring), written as ``imp_pageviews``.

        :param page_vectors: content vector of every document of ``self.page_documents``.
        :return: the names of the vector's columns.
        """
        path = self.tmp_dir / "imp_pageviews.npy"
        if not self.use_page_views:
            np.save(path, np.zeros((self.n_impressions, 0), dtype=np.float32), allow_pickle=False)
            self.arrays["imp_pageviews"] = path
            return []
        if self.counts.get("page views kept", 0) == 0:
            # The columns stay (a cache's layout follows the options and the files, not their content), but say why
            # they hold nothing.
            note = (
                f"page_views.csv: no page view was kept ({self.counts.get('page_views.csv: rows read', 0):,} rows read): "
                "every imp_pageviews value is 0"
            )
            self.notes.append(note)
            logger.warning(note)
        vectors = np.asarray(page_vectors, dtype=np.float32)
        has_content = np.any(vectors != 0, axis=1)
        width = 1 + vectors.shape[1]
        writer = _NpyWriter(path, np.float32, self.n_impressions, width=width)
        page_document_row = _Lookup(self.page_documents)
        with self.bar("page-view vectors", len(self.page_view_parts), "bucket") as update:
            for row0, rows, user0, views_path in self.page_view_parts:
                imp_user = _read_rows(self.arrays["imp_user"], row0, row0 + rows).astype(np.int64) - user0
                imp_time = _read_rows(self.arrays["imp_time"], row0, row0 + rows)
                views = np.load(views_path) if views_path is not None else np.zeros((0, 3), dtype=np.int64)
                if views_path is not None:
                    views_path.unlink()
                document_row = page_document_row(views[:, 2])
                writer[row0 : row0 + rows] = _page_view_vectors(
                    imp_user,
                    imp_time,
                    views[:, 0] - user0,
                    views[:, 1],
                    vectors[document_row],
                    has_content[document_row],
                    self.options.page_view_history,
                )
                update(1)
        writer.close()
        self.arrays["imp_pageviews"] = path
        return ["pageviews_log_count"] + [f"pageviews_content_{i}" for i in range(vectors.shape[1])]


def _page_view_vectors(
    imp_user: np.ndarray,
    imp_time: np.ndarray,
    view_user: np.ndarray,
    view_time: np.ndarray,
    view_vectors: np.ndarray,
    view_has_content: np.ndarray,
    history: int,
) -> np.ndarray:
    """The page-view vector of every impression (see the module docstring) from the views before it.

    :param imp_user: user of each impression (n,), impressions sorted by (user, time).
    :param imp_time: timestamp of each impression (n,).
    :param view_user: user of each page view (m,), views sorted by (user, time, document).
    :param view_time: timestamp of each page view (m,).
    :param view_vectors: content vector of each page view's document (m, d).
    :param view_has_content: whether that vector counts in the mean (m,).
    :param history: the most views the mean covers (the latest ones).
    :return: (n, 1 + d) float32: the saturating log count, then the mean content vector.
    """
    n, dim = len(imp_user), view_vectors.shape[1]
    out = np.zeros((n, 1 + dim), dtype=np.float32)
    if n == 0 or len(view_user) == 0:
        return out

    # One sort key for (user, time): the time since the earliest one here, or (when a product could overflow
    # int64) the time's rank among all times here.
    earliest = min(int(imp_time.min()), int(view_time.min()))
    stride = max(int(imp_time.max()), int(view_time.max())) - earliest + 1
    if stride * (int(max(imp_user.max(), view_user.max())) + 1) < 1 << 62:
        view_key = view_user * stride + (view_time - earliest)
        imp_key = imp_user * stride + (imp_time - earliest)
    else:
        times = np.unique(np.concatenate([imp_time, view_time]))
        stride = len(times) + 1
        view_key = view_user * stride + np.searchsorted(times, view_time)
        imp_key = imp_user * stride + np.searchsorted(times, imp_time)

    # The views strictly before each impression are view_key[first:end]: its user's views, older than it.
    end = np.searchsorted(view_key, imp_key, side="left")
    first = np.searchsorted(view_key, imp_user * stride, side="left")
    count = end - first
    out[:, 0] = np.minimum(1.0, np.log1p(count) / np.log1p(PAGE_VIEW_COUNT_SCALE))

    # The mean over the last `history` of them, summed from the newest back (nothing later ever enters a sum).
    total = np.zeros((n, dim))
    counted = np.zeros(n)
    active = np.flatnonzero(count > 0)
    for back in range(1, history + 1):
        # The impressions with at least `back` views before them (fewer at each step).
        active = active[count[active] >= back]
        if len(active) == 0:
            break
        impressions, views = active, end[active] - back
        with_content = view_has_content[views]
        impressions, views = impressions[with_content], views[with_content]
        total[impressions] += view_vectors[views]
        counted[impressions] += 1.0
    has_mean = counted > 0
    out[has_mean, 1:] = np.clip(total[has_mean] / counted[has_mean, None], -1.0, 1.0)
    return out


#: The document files and, for each, the columns that give a document's tokens: (column, token prefix, weight column).
_DOCUMENT_TOKENS: dict[str, list[tuple[str, str, str | None]]] = {
    "documents_topics.csv": [("topic_id", "topic", "confidence_level")],
    "documents_categories.csv": [("category_id", "category", "confidence_level")],
    "documents_entities.csv": [("entity_id", "entity", "confidence_level")],
    "documents_meta.csv": [("source_id", "source", None), ("publisher_id", "publisher", None)],
}


#: The token prefixes of the document files, in string order; a token's prefix is stored as its index here.
_PREFIXES = sorted({prefix for specs in _DOCUMENT_TOKENS.values() for _, prefix, _ in specs})

#: A token row of a context page or page read, as spilled to disk until the content reduction is known: the page (an
#: index into the sorted targets), the token (prefix index and key) and its weight; 17 bytes.
_TARGET_ROW = np.dtype([("document", "<i4"), ("prefix", "i1"), ("key", "<i8"), ("weight", "<f4")])


@dataclass
class _TokenRows:
    """Token rows of documents, compact: no string is held except the distinct entity ids of ``texts``.

    :param document: document id (or index) of each row.
    :param prefix: index of the row's prefix in :data:`_PREFIXES`.
    :param key: the token's 64-bit key (the id, or :func:`_entity_keys`).
    :param weight: the row's weight (confidence, or 1).
    :param texts: the text of each entity key seen in these rows (only where the texts are kept).
    """

    document: np.ndarray
    prefix: np.ndarray
    key: np.ndarray
    weight: np.ndarray
    texts: dict[int, str]

    @staticmethod
    def join(parts: list[_TokenRows]) -> _TokenRows:
        texts: dict[int, str] = {}
        for part in parts:
            texts.update(part.texts)
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return _TokenRows(empty, np.zeros(0, dtype=np.int8), empty, np.zeros(0, dtype=np.float32), texts)
        document, prefix, key, weight = (
            np.concatenate([getattr(part, name) for part in parts]) for name in ("document", "prefix", "key", "weight")
        )
        return _TokenRows(document, prefix, key, weight, texts)


def _document_token_rows(
    folder: Path,
    file_name: str,
    documents: np.ndarray,
    chunk_rows: int,
    consume: Callable[[tuple[int, int], np.ndarray, int, np.ndarray, np.ndarray, pa.Array | None], None],
    counts: dict[str, int] | None = None,
    on_bad_lines: str = "error",
) -> None:
    """Stream one document file, handing ``consume`` the token rows of ``documents``, one chunk at a time.

    ``consume(origin, document, prefix index, key, weight, texts)`` gets NumPy arrays aligned by row (``texts``: the Arrow
    strings of entity ids, ``None`` for numeric tokens); nothing is kept between chunks. A confidence outside [0, 1]
    is an error naming the line; a confidence of 0 gives no token.

    :param documents: the sorted, distinct document ids wanted.
    """
    path = folder / file_name
    # The document files are read two at a time: each block is parsed on its reading thread.
    counts = counts if counts is not None else {}
    batches = stream_csv(
        path, FILE_COLUMNS[file_name], chunk_rows=chunk_rows, parse_threads=False, counts=counts, on_bad_lines=on_bad_lines
    )
    for batch in batches:
        wanted = _in_sorted(batch["document_id"], documents)
        if "confidence_level" in batch:
            confidence = batch["confidence_level"]
            invalid = (confidence < 0) | (confidence > 1) | np.isnan(confidence)
            if invalid.any():
                if on_bad_lines != "skip":
                    from recsys_gym.data.interactions import line_of_row

                    first = int(np.flatnonzero(invalid)[0])
                    raise DataError(
                        f"{path}: line {line_of_row(path, batch['_row'] + first)} column 'confidence_level' holds "
                        f"{confidence[first]}, expected a number in [0, 1] "
                        "(on_bad_lines='skip' / --skip-bad-lines skips and counts such lines)"
                    )
                skipped = f"{file_name}: malformed lines skipped"
                counts[skipped] = counts.get(skipped, 0) + int(invalid.sum())
                counts[f"{file_name}: rows read"] -= int(invalid.sum())
                wanted &= ~invalid
            wanted &= confidence > 0
        if not wanted.any():
            continue
        for position, (column, prefix, weight_column) in enumerate(_DOCUMENT_TOKENS[file_name]):
            values = batch[column]
            texts = None
            if isinstance(values, (pa.Array, pa.ChunkedArray)):
                # Strings (entity ids): only the wanted rows become keys.
                known = wanted & ~values.is_null().to_numpy(zero_copy_only=False)
                texts = values.filter(pa.array(known))
                keys = _entity_keys(texts)
            else:
                known = wanted & ~np.isnan(values.astype(np.float64))
                keys = values[known].astype(np.int64)
            if known.any():
                weights = batch[weight_column][known] if weight_column else np.ones(int(known.sum()))
                origin = (int(batch["_row"]), position)
                consume(origin, batch["document_id"][known], _PREFIXES.index(prefix), keys, weights.astype(np.float64), texts)


def _read_document_rows(
    folder: Path,
    ad_ids: np.ndarray,
    targets: np.ndarray,
    chunk_rows: int,
    notes: list[str],
    counts: dict[str, int],
    spill: Path,
    on_bad_lines: str = "error",
) -> _DocumentRows | None:
    """Read what the content features need from the optional files, in one pass over the document files.

    Keeps the ads' landing, campaign and advertiser (``promoted_content.csv``) and the token rows of their landing
    pages as compact numeric rows (:class:`_TokenRows`), catalogue-sized; the token rows of ``targets`` (context
    pages and pages read), which only the reduction learned later can use, go to one file per document file in
    ``spill`` (:data:`_TARGET_ROW` records, in the order read), so they take no memory until then.

    :param folder: the raw folder.
    :param ad_ids: the ads of the log (any order).
    :param targets: sorted, distinct document ids whose vectors are wanted.
    :param chunk_rows: rows parsed per chunk.
    :param notes: where missing optional files are noted.
    :param counts: where the rows read from each file are counted.
    :param spill: an existing folder for the targets' rows.
    :param on_bad_lines: ``"skip"`` skips and counts malformed lines of these files too.
    :return: the rows, or ``None`` when no ad has content (no ``promoted_content.csv``, or none of its ads in the log).
    """
    missing = note_missing_optional_files(folder, notes)
    if "promoted_content.csv" in missing:
        return None

    # The ads' landing pages, campaigns and advertisers.
    path = folder / "promoted_content.csv"
    log_ads = np.sort(np.asarray(ad_ids, dtype=np.int64))
    columns = FILE_COLUMNS["promoted_content.csv"]
    pieces = []
    for batch in stream_csv(path, columns, chunk_rows=chunk_rows, on_bad_lines=on_bad_lines, counts=counts):
        of_log = _in_sorted(batch["ad_id"], log_ads)
        pieces.append(pd.DataFrame({name: batch[name][of_log] for name in columns}))
    promoted = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame({name: [] for name in columns}, dtype=np.int64)
    repeated = promoted["ad_id"].duplicated().to_numpy()
    if repeated.any():
        first = int(promoted["ad_id"].to_numpy()[repeated][0])
        raise DataError(f"{path}: ad_id {first} has more than one row; expected one per ad")
    counts["promoted_content.csv: rows of the log's ads"] = len(promoted)
    if len(promoted) == 0:
        return None
    landing = np.unique(promoted["document_id"].to_numpy(dtype=np.int64))

    # One pass over the document files: the rows of the landing pages (with the text of their entity ids, which
    # orders the token columns), and those of the targets (documents as indices into targets) into the spill files.
    document_files = [name for name in _DOCUMENT_TOKENS if name not in missing]
    landing_parts: list[tuple[tuple[int, int, int], _TokenRows]] = []
    lock = threading.Lock()
    spills = [spill / f"content-rows-{index}.bin" for index in range(len(document_files))]

    def keep_rows(
        file_index: int,
        origin: tuple[int, int],
        documents: np.ndarray,
        prefix: int,
        keys: np.ndarray,
        weights: np.ndarray,
        texts: pa.Array | None,
    ) -> None:
        for_items = _in_sorted(documents, landing)
        for_pages = _in_sorted(documents, targets)
        if for_items.any():
            known: dict[int, str] = {}
            if texts is not None:
                chosen = texts.filter(pa.array(for_items)).to_pylist()
                known = dict(zip(keys[for_items].tolist(), chosen, strict=True))
            codes = np.full(int(for_items.sum()), prefix, dtype=np.int8)
            part = _TokenRows(documents[for_items], codes, keys[for_items], weights[for_items], known)
            with lock:
                landing_parts.append(((file_index, *origin), part))
        if for_pages.any():
            # Each file is read by one thread, in order: its spill file holds its rows in the order of the file.
            records = np.empty(int(for_pages.sum()), dtype=_TARGET_ROW)
            records["document"] = np.searchsorted(targets, documents[for_pages])
            records["prefix"] = prefix
            records["key"] = keys[for_pages]
            records["weight"] = weights[for_pages]
            with open(spills[file_index], "ab") as handle:
                handle.write(records.tobytes())

    threads = max(1, min(2, os.cpu_count() or 1))
    # The document files are independent: two at a time (parsing and NumPy work release the GIL).
    with ThreadPoolExecutor(threads) as pool:
        wanted = np.union1d(landing, targets)
        jobs = [
            pool.submit(
                _document_token_rows,
                folder,
                name,
                wanted,
                chunk_rows,
                functools.partial(keep_rows, index),
                counts,
                on_bad_lines,
            )
            for index, name in enumerate(document_files)
        ]
        for done in jobs:
            done.result()
    # The pieces in file order, whichever thread read them first: the same input always gives the same sums.
    landing_parts.sort(key=lambda entry: entry[0])
    return _DocumentRows(
        promoted, _TokenRows.join([part for _, part in landing_parts]), [path for path in spills if path.exists()], targets
    )


@dataclass
class _DocumentRows:
    """What :func:`_read_document_rows` keeps for the content features."""

    promoted: pd.DataFrame
    landing: _TokenRows
    #: the files of the targets' rows (:data:`_TARGET_ROW`, documents as indices into ``targets``), in file order
    target: list[Path]
    targets: np.ndarray


def _item_token_matrix(
    promoted: pd.DataFrame, landing: _TokenRows, item_ids: np.ndarray
) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """The (items × tokens) weight matrix of the ads' landing-page, campaign and advertiser tokens.

    Its columns are the distinct tokens in the order of their text (``"prefix:id"``), as the reference orders them.

    :return: the CSR matrix, the distinct tokens as sorted (prefix code, key) pairs (prefix codes index
        :data:`_PREFIXES`, then ``campaign`` and ``advertiser``), and each pair's column.
    """
    from scipy import sparse

    # The token of every landing-page row, then of every ad's campaign and advertiser (prefix codes after the document
    # prefixes).
    n_ads, n_rows = len(promoted), len(landing.key)
    ad_ids, ad_pages = promoted["ad_id"].to_numpy(np.int64), promoted["document_id"].to_numpy(np.int64)
    campaign, advertiser = promoted["campaign_id"].to_numpy(np.int64), promoted["advertiser_id"].to_numpy(np.int64)
    campaign_code, advertiser_code = len(_PREFIXES), len(_PREFIXES) + 1
    prefix = np.concatenate([landing.prefix.astype(np.int64), np.full(n_ads, campaign_code), np.full(n_ads, advertiser_code)])
    key = np.concatenate([landing.key, campaign, advertiser])

    # The columns: the distinct tokens, in the order of their text ("prefix:id").
    names = [*_PREFIXES, "campaign", "advertiser"]
    order = np.lexsort((key, prefix))
    new = np.ones(len(order), dtype=bool)
    new[1:] = (prefix[order][1:] != prefix[order][:-1]) | (key[order][1:] != key[order][:-1])
    pair_prefix, pair_key = prefix[order][new], key[order][new]
    token_of_row = np.empty(len(order), dtype=np.int64)
    token_of_row[order] = np.cumsum(new) - 1
    del order, new, prefix, key
    texts = [
        f"{names[code]}:{landing.texts[value] if names[code] == 'entity' else value}"
        for code, value in zip(pair_prefix.tolist(), pair_key.tolist(), strict=True)
    ]
    text_order = np.argsort(np.asarray(texts, dtype=object), kind="stable")
    column_of_token = np.empty(len(texts), dtype=np.int64)
    column_of_token[text_order] = np.arange(len(texts))
    n_columns = len(texts)
    column = column_of_token[token_of_row]

    # Each landing page's token weights (pages × tokens) and each ad's landing page (items × pages): the ads' page
    # tokens are their product, never listed row by row. Campaigns and advertisers are added on their own.
    pages = _sorted_unique(landing.document)
    page_tokens = sparse.csr_matrix(
        (landing.weight, (np.searchsorted(pages, landing.document), column[:n_rows])), shape=(len(pages), n_columns)
    )
    item_row = pd.Index(item_ids).get_indexer(ad_ids)
    has_page = _in_sorted(ad_pages, pages)
    ad_page = sparse.csr_matrix(
        (np.ones(int(has_page.sum())), (item_row[has_page], np.searchsorted(pages, ad_pages[has_page]))),
        shape=(len(item_ids), len(pages)),
    )
    own = sparse.csr_matrix((np.ones(2 * n_ads), (np.tile(item_row, 2), column[n_rows:])), shape=(len(item_ids), n_columns))
    items = (ad_page @ page_tokens + own).tocsr()
    return items, pair_prefix, pair_key, column_of_token


@dataclass
class _ContentTokens:
    """The ads' content tokens as a matrix, and the targets' token rows still to be matched with its columns.

    :param items: the (items × tokens) weight matrix; its columns are the ads' distinct tokens, in text order.
    :param pair_prefix: each distinct token's prefix code (sorted, with ``pair_key``; see :func:`_item_token_matrix`).
    :param pair_key: each distinct token's key.
    :param column_of_token: each distinct token's column.
    :param target: the files of the targets' rows (:func:`_read_document_rows`).
    :param targets: sorted, distinct document ids the rows of ``target`` index.
    """

    items: Any
    pair_prefix: np.ndarray
    pair_key: np.ndarray
    column_of_token: np.ndarray
    target: list[Path]
    targets: np.ndarray

    def target_blocks(self, rows: int = 1 << 18) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The targets' rows whose token an ad has, as (target index, column, weight), ``rows`` records at a time.

        Rows whose token no ad has are dropped (the reduction would ignore them); each file is deleted once read.
        """
        for path in self.target:
            with open(path, "rb") as handle:
                while len(block := np.fromfile(handle, dtype=_TARGET_ROW, count=rows)):
                    found = np.full(len(block), -1, dtype=np.int64)
                    prefix, key = block["prefix"], block["key"]
                    for code in np.unique(prefix):
                        # The tokens of one prefix are a sorted run of the distinct pairs: one binary search per row.
                        low, high = np.searchsorted(self.pair_prefix, [code, code + 1])
                        if high == low:
                            continue
                        rows_of_code = np.flatnonzero(prefix == code)
                        position = np.searchsorted(self.pair_key[low:high], key[rows_of_code])
                        position = np.minimum(position, high - low - 1)
                        hit = self.pair_key[low + position] == key[rows_of_code]
                        found[rows_of_code[hit]] = low + position[hit]
                    hit = found >= 0
                    yield block["document"][hit], self.column_of_token[found[hit]], block["weight"][hit]
            path.unlink()


def _content_tokens(rows: _DocumentRows, item_ids: np.ndarray) -> _ContentTokens:
    """The item-token matrix of the rows of :func:`_read_document_rows`, letting the landing pages' rows go.

    :param item_ids: ad id of every item index.
    """
    items, pair_prefix, pair_key, column_of_token = _item_token_matrix(rows.promoted, rows.landing, item_ids)
    return _ContentTokens(items, pair_prefix, pair_key, column_of_token, rows.target, rows.targets)


def _content_vectors(
    tokens: _ContentTokens, fit: np.ndarray, context_ids: np.ndarray, page_ids: np.ndarray, dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Content vectors of ads, context pages and pages read from their tokens (:func:`_content_tokens`).

    The reduction is learned from the ads in ``fit``: IDF weights, then an IDF-weighted truncated SVD; every ad,
    context page and page read is projected on it (tokens no ad has are ignored).

    :param tokens: the tokens; their ``targets`` must hold ``context_ids`` and ``page_ids``.
    :param fit: mask over items: those the reduction is learned from.
    :param context_ids: sorted document ids of the context pages.
    :param page_ids: sorted document ids of the pages read (``page_views.csv``).
    :param dim: the most dimensions.
    :return: item (n_items, d), context (n_contexts, d) and page (n_pages, d) vectors, rows of unit length or zero.
    """
    from scipy import sparse

    items, targets = tokens.items, tokens.targets

    # IDF and basis from the training ads alone.
    n_columns = items.shape[1]
    idf, right = fit_content_reduction(items, fit, dim)
    # Every ad, context page and page read: each token's weight times its IDF-scaled basis row.
    contribution = idf[:, None] * right.T
    item_vectors = _normalise_rows(np.asarray(items @ contribution))

    del items
    tokens.items = None

    # The targets' rows block by block, as a sparse product over the documents a block touches only (a product over
    # every target would make a dense array of them all per block). Summed in single precision, the cache's.
    totals = np.zeros((len(targets), right.shape[0]), dtype=np.float32)
    for documents, columns, weights in tokens.target_blocks():
        touched, row = np.unique(documents, return_inverse=True)
        shares = sparse.csr_matrix((weights.astype(np.float64), (row, columns)), shape=(len(touched), n_columns))
        totals[touched] += shares @ contribution
    # Rows scaled to unit length in place; the context pages are all the targets unless there are page views.
    norms = np.linalg.norm(totals, axis=1, keepdims=True)
    np.divide(totals, norms, out=totals, where=norms > 0)
    contexts = totals if len(context_ids) == len(targets) else totals[np.searchsorted(targets, context_ids)]
    return item_vectors, contexts, totals[np.searchsorted(targets, page_ids)]


def _entity_keys(texts: pa.Array) -> np.ndarray:
    """64-bit keys of entity ids (text in Kaggle's files): a hash of each text; numeric token ids are their own keys."""
    return pd.util.hash_array(texts.to_numpy(zero_copy_only=False)).view(np.int64)


class _NpyWriter:
    """A ``.npy`` file of known length written front to back, one slice after another, without mapping it.

    :param path: the file.
    :param dtype: its dtype.
    :param length: its number of elements (1-D).
    :param leading_zero: write a first element 0 (the start of a CSR pointer array).
    :param width: a 2-D array of ``width`` columns instead, written row slice by row slice.
    """

    def __init__(self, path: Path, dtype: Any, length: int, *, leading_zero: bool = False, width: int | None = None) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.length = length
        self.handle = open(path, "wb")  # noqa: SIM115  (closed by close())
        shape = (length,) if width is None else (length, width)
        self.row_shape = shape[1:]
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(self.handle, header)
        self.position = 0
        if leading_zero:
            self[0:1] = np.zeros(1, dtype=self.dtype)

    def __setitem__(self, index: slice, values: Any) -> None:
        if index.start != self.position:
            raise RuntimeError(f"{self.path.name}: writes must follow each other, got {index} at {self.position}")
        array = np.ascontiguousarray(values, dtype=self.dtype)
        if array.shape[1:] != self.row_shape:
            raise RuntimeError(f"{self.path.name}: rows of shape {self.row_shape} expected, got {array.shape[1:]}")
        self.handle.write(array.tobytes())
        self.position += len(array)

    def close(self) -> None:
        self.handle.close()
        if self.position != self.length:
            raise RuntimeError(f"{self.path.name}: wrote {self.position} of {self.length} elements")


def _read_rows(path: Path, start: int, stop: int) -> np.ndarray:
    """Elements ``start:stop`` of a 1-D ``.npy`` file, read (not mapped), so they leave no resident pages behind."""
    with open(path, "rb") as handle:
        major, _ = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        _, _, dtype = read_header(handle)
        return np.fromfile(handle, dtype=dtype, count=stop - start, offset=start * dtype.itemsize)


def _positions_in_ties(ordered: np.ndarray) -> np.ndarray:
    """The positions of a sorted array that belong to a run of two or more equal values."""
    tie = ordered[1:] == ordered[:-1]
    in_run = np.zeros(len(ordered), dtype=bool)
    in_run[1:] |= tie
    in_run[:-1] |= tie
    return np.flatnonzero(in_run)


def _string_ranks(strings: pa.Array) -> np.ndarray:
    """Each string's rank in byte order among ``strings`` (distinct): by its 8-byte prefix key, and in full where those tie."""
    keys = uuid_prefix_keys(strings)
    order = np.argsort(keys)
    ordered = keys[order]
    where = _positions_in_ties(ordered)
    if len(where):
        # Strings sharing a prefix key: ordered in full by Arrow, within their run.
        runs = pa.table({"key": ordered[where], "text": strings.take(pa.array(order[where]))})
        within = pc.sort_indices(runs, sort_keys=[("key", "ascending"), ("text", "ascending")]).to_numpy()
        order[where] = order[where][within]
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def _order_by_user_time_document(user: np.ndarray, timestamp: np.ndarray, document: np.ndarray) -> np.ndarray:
    """The permutation sorting rows by (user, timestamp, document); rows equal in all three keep some order among them.

    ``user`` is non-negative. Users and times make one int64 key when they fit, sorted by NumPy's fast unstable sort;
    the few runs of equal (user, timestamp) are then ordered by document. Otherwise a three-key ``lexsort``.
    """
    if len(user) == 0:
        return np.zeros(0, dtype=np.int64)
    earliest = int(timestamp.min())
    span = int(timestamp.max()) - earliest + 1
    if (int(user.max()) + 1) * span >= 1 << 62:
        return np.lexsort((document, timestamp, user))
    key = user.astype(np.int64) * span + (timestamp - earliest)
    order = np.argsort(key)
    ordered = key[order]
    where = _positions_in_ties(ordered)
    if len(where):
        # The rows of each run of equal keys, in place, sorted by (key, document).
        order[where] = order[where][np.lexsort((document[order[where]], ordered[where]))]
    return order


class _BucketOf:
    """The bucket of uint64 keys among sorted bounds (``searchsorted(bounds, keys, side="right")``), by a table.

    A table over the keys' top 16 bits gives the bucket of every key whose cell of the table holds no bound (cells
    are 2**48 keys wide: at most one per bound holds one); only the keys of those few cells are searched. A gather
    from a 512 KB table instead of a binary search per key: 5 times as fast on a million keys with 30 bounds, 9 times
    with 1,023.

    :param bounds: sorted, distinct uint64 bucket bounds.
    """

    SHIFT = 48

    def __init__(self, bounds: np.ndarray) -> None:
        self.bounds = np.asarray(bounds, dtype=np.uint64)
        starts = np.arange(1 << (64 - self.SHIFT), dtype=np.uint64) << np.uint64(self.SHIFT)
        self.table = np.searchsorted(self.bounds, starts, side="right").astype(np.int64)
        # A cell whose last key falls in another bucket than its first holds a bound: its keys are searched.
        last = np.searchsorted(self.bounds, starts + np.uint64((1 << self.SHIFT) - 1), side="right")
        self.mixed = last != self.table

    def __call__(self, keys: np.ndarray) -> np.ndarray:
        cell = (keys >> np.uint64(self.SHIFT)).astype(np.int64)
        bucket = self.table[cell]
        searched = np.flatnonzero(self.mixed[cell])
        if len(searched):
            bucket[searched] = np.searchsorted(self.bounds, keys[searched], side="right")
        return bucket


def _run_starts(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Start positions of the runs of equal values in a sorted Arrow array."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    differs = pc.not_equal(values[1:], values[:-1]).to_numpy(zero_copy_only=False)
    return np.concatenate([[0], np.flatnonzero(differs) + 1]).astype(np.int64)


def _group_starts(sorted_values: np.ndarray) -> np.ndarray:
    """Start positions of the runs of equal values in a sorted NumPy array."""
    if len(sorted_values) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([[0], np.flatnonzero(sorted_values[1:] != sorted_values[:-1]) + 1]).astype(np.int64)


def _in_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Whether each value is in ``sorted_set`` (sorted, distinct): one binary search each."""
    if len(sorted_set) == 0:
        return np.zeros(len(values), dtype=bool)
    position = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[position] == values


def _has_duplicate_pairs(display: np.ndarray, ad: np.ndarray) -> bool:
    """Whether some (display, ad) pair occurs twice; ``display`` is grouped (equal values adjacent)."""
    if len(display) < 2:
        return False
    if display.min() >= 0 and display.max() < (1 << 31) and ad.min() >= 0 and ad.max() < (1 << 32):
        keys = np.sort(display.astype(np.int64) * (1 << 32) + ad.astype(np.int64))
        return bool((keys[1:] == keys[:-1]).any())
    pairs = np.stack([display, ad], axis=1)
    return len(np.unique(pairs, axis=0)) < len(pairs)


class _DistinctIds:
    """The distinct integer ids of many arrays, gathered piece by piece in memory linear in the number of distinct ids.

    Small non-negative ids (below ``2**25``, as Kaggle's documents) are marked in one table of flags; otherwise the
    pieces are reduced to their distinct ids as they come and merged once they hold as many ids as the merged set
    (plus a million), so the work stays linear however many pieces there are.
    """

    #: Largest table of flags (one byte an id).
    TABLE_LIMIT = 1 << 25

    def __init__(self) -> None:
        self.seen = np.zeros(0, dtype=bool)
        self.merged = np.zeros(0, dtype=np.int64)
        self.pending: list[np.ndarray] = []
        self.n_pending = 0

    def add(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        low, high = int(ids.min()), int(ids.max())
        if low >= 0 and high < self.TABLE_LIMIT:
            if high >= len(self.seen):
                # Grown by doubling, so growing costs no more than the final table.
                grown = np.zeros(max(high + 1, 2 * len(self.seen)), dtype=bool)
                grown[: len(self.seen)] = self.seen
                self.seen = grown
            self.seen[ids] = True
            return
        part = _distinct(ids)
        self.pending.append(part)
        self.n_pending += len(part)
        if self.n_pending > len(self.merged) + (1 << 20):
            self._merge()

    def _merge(self) -> None:
        if self.pending:
            self.merged = _sorted_unique(np.concatenate([self.merged, *self.pending]))
            self.pending, self.n_pending = [], 0

    def result(self) -> np.ndarray:
        """The sorted distinct ids added so far."""
        self._merge()
        if not self.seen.any():
            return self.merged
        return _sorted_unique(np.concatenate([np.flatnonzero(self.seen).astype(np.int64), self.merged]))


def _distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values in ascending order: marked in a table when they are small non-negative integers, else sorted."""
    if len(values) and values.min() >= 0 and values.max() < max(8 * len(values), 1 << 22):
        seen = np.zeros(int(values.max()) + 1, dtype=bool)
        seen[values] = True
        return np.flatnonzero(seen).astype(values.dtype)
    return _sorted_unique(values)


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """The distinct values in ascending order, by one sort (faster than ``np.unique`` on millions of integers)."""
    ordered = np.sort(values, kind="stable")
    if len(ordered) < 2:
        return ordered
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


class _Lookup:
    """Positions of raw integer ids in a sorted vocabulary: a table indexed by id when the ids are small, else a search.

    :param vocabulary: the sorted, distinct ids; every id looked up must be one of them.
    """

    def __init__(self, vocabulary: np.ndarray) -> None:
        self.vocabulary = vocabulary
        self.table: np.ndarray | None = None
        # A table costs 4 bytes per id up to the largest: worth it while that stays near the vocabulary's size.
        if len(vocabulary) and vocabulary[0] >= 0 and vocabulary[-1] < max(8 * len(vocabulary), 1 << 22):
            self.table = np.full(int(vocabulary[-1]) + 1, -1, dtype=np.int32)
            self.table[vocabulary] = np.arange(len(vocabulary), dtype=np.int32)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        if self.table is not None:
            return self.table[ids]
        return np.searchsorted(self.vocabulary, ids).astype(np.int32)


def _dense(values: np.ndarray) -> np.ndarray:
    """Small non-negative codes of arbitrary int64 values (their rank among the distinct values)."""
    return np.unique(values, return_inverse=True)[1].astype(np.int64)
