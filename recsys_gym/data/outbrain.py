"""The Kaggle "Outbrain Click Prediction" files read into a :class:`~recsys_gym.data.raw.RawLog`.

Files of ``data_dir`` and what becomes of them:

============================  ========  ================================================================
file                          needed    columns read, and their use
============================  ========  ================================================================
``clicks_train.csv``          required  ``display_id, ad_id, clicked``: the ads shown (``RawLog.shown``)
                                        and the one clicked (``clicked_item``) of each display
``events.csv``                required  ``display_id, uuid, document_id, timestamp, platform``: one
                                        impression per display (``geo_location`` is not used)
``promoted_content.csv``      optional  ``ad_id, document_id, campaign_id, advertiser_id``: the ad's
                                        landing page (whose tokens the ad gets), ``campaign:<id>``,
                                        ``advertiser:<id>``
``documents_topics.csv``      optional  ``document_id, topic_id, confidence_level``: ``topic:<id>``
``documents_categories.csv``  optional  ``document_id, category_id, confidence_level``: ``category:<id>``
``documents_entities.csv``    optional  ``document_id, entity_id, confidence_level``: ``entity:<id>``
                                        (entity ids are hex strings)
``documents_meta.csv``        optional  ``document_id, source_id, publisher_id``: ``source:<id>``,
                                        ``publisher:<id>`` (empty ids give no token)
============================  ========  ================================================================

Document tokens weigh their ``confidence_level``; source, publisher, campaign and advertiser tokens
weigh 1. ``item_content`` is keyed by ``ad_id`` and holds the tokens of the ad's landing document
plus its campaign and advertiser; ``context_content`` is keyed by the ``document_id`` of the page
being read. Only the ads and documents that occur in the displays read are kept.

Files are parsed in chunks with explicit dtypes, and the optional files are filtered chunk by chunk,
so memory holds the output plus one chunk of raw text. Note: the clicks of all displays are held at
once (two int64 columns and an int8, about 1.5 GB for the 87 million rows of the real file).

This in-memory reader is the reference that the streaming, bounded-memory
:func:`recsys_gym.data.prepare.prepare_outbrain` is tested against; :func:`~recsys_gym.data.dataset.load_dataset`
and ``recsys-gym prepare outbrain`` use the streaming one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_gym.data.interactions import DEFAULT_CHUNK_ROWS, line_of_row, read_csv_checked
from recsys_gym.data.raw import RawLog
from recsys_gym.error import DataError, MissingDataError

logger = logging.getLogger(__name__)

#: A function applied to every chunk read, returning the rows to keep.
ChunkTransform = Callable[[pd.DataFrame], pd.DataFrame]

#: Outbrain's ``platform`` values and their codes in :attr:`RawLog.impressions` (``\N`` means unknown).
PLATFORM_CODES = {"1": 1, "2": 2, "3": 3, "\\N": 0}

#: Column kinds read from each file (see :func:`recsys_gym.data.interactions.read_csv_checked`).
FILE_COLUMNS = {
    "clicks_train.csv": {"display_id": "int", "ad_id": "int", "clicked": "int"},
    "events.csv": {"display_id": "int", "uuid": "str", "document_id": "int", "timestamp": "int", "platform": "category?"},
    "promoted_content.csv": {"ad_id": "int", "document_id": "int", "campaign_id": "int", "advertiser_id": "int"},
    "documents_topics.csv": {"document_id": "int", "topic_id": "int", "confidence_level": "float"},
    "documents_categories.csv": {"document_id": "int", "category_id": "int", "confidence_level": "float"},
    "documents_entities.csv": {"document_id": "int", "entity_id": "str", "confidence_level": "float"},
    "documents_meta.csv": {"document_id": "int", "source_id": "int?", "publisher_id": "int?"},
}

#: What is lost when an optional file is missing.
OPTIONAL_FILES = {
    "promoted_content.csv": "ads get no landing-page, campaign or advertiser tokens (item_content stays empty)",
    "documents_topics.csv": "no topic:<id> tokens for ads or context pages",
    "documents_categories.csv": "no category:<id> tokens for ads or context pages",
    "documents_entities.csv": "no entity:<id> tokens for ads or context pages",
    "documents_meta.csv": "no publisher:<id> or source:<id> tokens for ads or context pages",
}

_DOWNLOAD_HINT = (
    "download the Kaggle files with `kaggle competitions download -c outbrain-click-prediction` and unzip them there, "
    "or write synthetic files in the same schema with recsys_gym.data.synthetic.generate_outbrain(data_dir)"
)


def read_outbrain(data_dir: str | os.PathLike[str], *, chunksize: int = DEFAULT_CHUNK_ROWS) -> RawLog:
    """Read the raw Outbrain Click Prediction CSV files of a folder into a :class:`RawLog`.

    Each display of ``clicks_train.csv`` that has its row in ``events.csv`` becomes an impression:
    ``impression_id`` = ``display_id``, ``user`` = ``uuid``, ``context`` = the ``document_id`` of the
    event, ``timestamp`` as given (ms after 1465876799998), ``platform`` 1, 2 or 3 (``\\N`` gives 0,
    unknown), ``clicked_item`` = the ``ad_id`` with ``clicked == 1``. Every (display, ad) row is a row
    of ``shown``. Events without clicks (the displays of ``clicks_test.csv``) are skipped.

    Degraded input is repaired and counted in ``RawLog.notes``: a duplicate (display_id, ad_id) row is
    dropped (keeping the clicked copy if there is one); clicks of a display without an event are
    dropped (logged at INFO); a missing optional file is logged in one WARNING and its tokens are
    left out.

    :param data_dir: the folder holding the Kaggle CSV files (uncompressed).
    :param chunksize: rows parsed per chunk; bounds the memory taken by raw text.
    :return: the log, validated, named ``"outbrain"``.
    :raises MissingDataError: when ``data_dir`` or a required file does not exist.
    :raises DataError: naming the file and column when a column is missing, the file and line of a
        malformed row, or the file and ``display_id`` of a display with zero or several clicks.
    """
    # Check the folder and the required files.
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise MissingDataError(f"data_dir={str(data_dir)!r} {what}; {_DOWNLOAD_HINT}")
    for required in ("events.csv", "clicks_train.csv"):
        if not (folder / required).is_file():
            raise MissingDataError(
                f"data_dir={str(data_dir)!r} has no {required} (looked for {folder / required}); {_DOWNLOAD_HINT}"
            )
    notes: list[str] = []

    # Read the clicks, drop duplicate rows and check one click per display.
    clicks_path = folder / "clicks_train.csv"
    clicks = read_csv_checked(
        clicks_path, FILE_COLUMNS["clicks_train.csv"], chunksize=chunksize, transform=_clicked_checker(clicks_path)
    )
    clicks = _drop_duplicate_clicks(clicks, notes)
    clicked_ads = _clicked_ad_per_display(clicks, clicks_path)

    # Read the events of the clicked displays, with platform codes.
    events_path = folder / "events.csv"
    displays = pd.Index(clicked_ads.index)
    n_event_rows = [0]
    events = read_csv_checked(
        events_path,
        FILE_COLUMNS["events.csv"],
        chunksize=chunksize,
        transform=_event_filter(events_path, displays, n_event_rows),
    )
    _check_unique_displays(events, events_path)
    n_unclicked = n_event_rows[0] - len(events)
    if n_unclicked:
        notes.append(f"skipped {n_unclicked} row(s) of events.csv without clicks in clicks_train.csv (e.g. test displays)")

    # Drop the clicks of displays without an event.
    has_event = pd.Index(events["display_id"]).get_indexer(pd.Index(clicks["display_id"])) >= 0
    if not has_event.all():
        n_displays = clicks.loc[~has_event, "display_id"].nunique()
        message = f"dropped {int((~has_event).sum())} click row(s) of {n_displays} display(s) that have no row in events.csv"
        logger.info(message)
        notes.append(message)
        clicks = clicks.loc[has_event].reset_index(drop=True)

    # Assemble the impressions and the shown items.
    impressions = pd.DataFrame(
        {
            "impression_id": events["display_id"].to_numpy(),
            "user": events["uuid"],
            "timestamp": events["timestamp"].to_numpy(),
            "context": events["document_id"].to_numpy(),
            "platform": events["platform"].to_numpy(),
            "clicked_item": clicked_ads.reindex(events["display_id"]).to_numpy(),
        }
    )
    shown = pd.DataFrame({"impression_id": clicks["display_id"].to_numpy(), "item": clicks["ad_id"].to_numpy()})

    # Content tokens of ads (through their landing pages) and of context pages.
    item_content, context_content = _read_content(
        folder, pd.unique(shown["item"].to_numpy()), pd.unique(impressions["context"].to_numpy()), chunksize, notes
    )
    raw = RawLog(
        impressions=impressions,
        shown=shown,
        item_content=item_content,
        context_content=context_content,
        name="outbrain",
        notes=notes,
    )
    raw.validate()
    return raw


def _clicked_checker(path: Path) -> ChunkTransform:
    """Return a chunk transform that checks ``clicked`` is 0 or 1 and stores it as int8."""

    def check(chunk: pd.DataFrame) -> pd.DataFrame:
        clicked = chunk["clicked"].to_numpy()
        invalid = (clicked != 0) & (clicked != 1)
        if invalid.any():
            row_index = int(chunk.index[np.flatnonzero(invalid)[0]])
            raise DataError(
                f"{path}: line {line_of_row(path, row_index)} column 'clicked' holds {clicked[invalid][0]}, expected 0 or 1"
            )
        return chunk.assign(clicked=clicked.astype(np.int8))

    return check


def _drop_duplicate_clicks(clicks: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Drop repeated (display_id, ad_id) rows, keeping the clicked copy where one copy was clicked."""
    display_ids = clicks["display_id"].to_numpy()
    ad_ids = clicks["ad_id"].to_numpy()

    # Kaggle's file is sorted by (display_id, ad_id): then one pass finds repeats; otherwise sort first.
    same_as_next = (display_ids[1:] == display_ids[:-1]) & (ad_ids[1:] == ad_ids[:-1])
    increasing = (display_ids[1:] > display_ids[:-1]) | ((display_ids[1:] == display_ids[:-1]) & (ad_ids[1:] >= ad_ids[:-1]))
    order = None
    if not increasing.all():
        order = np.lexsort((ad_ids, display_ids))
        sorted_displays, sorted_ads = display_ids[order], ad_ids[order]
        same_as_next = (sorted_displays[1:] == sorted_displays[:-1]) & (sorted_ads[1:] == sorted_ads[:-1])
    repeated_sorted = np.zeros(len(clicks), dtype=bool)
    repeated_sorted[1:] |= same_as_next
    repeated_sorted[:-1] |= same_as_next
    if order is None:
        repeated = repeated_sorted
    else:
        repeated = np.zeros(len(clicks), dtype=bool)
        repeated[order] = repeated_sorted
    if not repeated.any():
        return clicks

    # Among the copies of a pair, keep the first clicked one, else the first.
    copies = clicks.loc[repeated].sort_values("clicked", ascending=False, kind="stable")
    kept = copies.drop_duplicates(["display_id", "ad_id"]).index
    keep = ~repeated
    keep[kept] = True
    n_dropped = int((~keep).sum())
    notes.append(f"dropped {n_dropped} duplicate (display_id, ad_id) row(s) of clicks_train.csv")
    logger.info("dropped %d duplicate (display_id, ad_id) row(s) of clicks_train.csv", n_dropped)
    return clicks.loc[keep].reset_index(drop=True)


def _clicked_ad_per_display(clicks: pd.DataFrame, path: Path) -> pd.Series:
    """Return the clicked ``ad_id`` of every display (indexed by ``display_id``); raise unless there is exactly one."""
    n_clicks = clicks.groupby("display_id", sort=False)["clicked"].sum()
    wrong = n_clicks.to_numpy() != 1
    if wrong.any():
        display_id = int(n_clicks.index[np.flatnonzero(wrong)[0]])
        count = int(n_clicks.to_numpy()[wrong][0])
        rows = np.flatnonzero(clicks["display_id"].to_numpy() == display_id)
        raise DataError(
            f"{path}: display_id {display_id} has {count} clicked ad(s) in its {len(rows)} row(s) (the first on line "
            f"{_line_of_display(path, display_id)}), expected exactly one row with clicked=1 per display"
        )
    clicked = clicks.loc[clicks["clicked"].to_numpy() == 1]
    return pd.Series(clicked["ad_id"].to_numpy(), index=clicked["display_id"].to_numpy(), name="ad_id")


def _line_of_display(path: Path, display_id: int) -> int:
    """Return the first line of a file whose first field is ``display_id`` (-1 when none); used on error paths only."""
    lines = _lines_of_display(path, display_id, 1)
    return lines[0] if lines else -1


def _lines_of_display(path: Path, display_id: int, most: int) -> list[int]:
    """Return the first ``most`` lines of a file whose first field is ``display_id`` (fewer where there are fewer)."""
    prefix = f"{display_id},".encode()
    found: list[int] = []
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if raw.startswith(prefix):
                found.append(line_number)
                if len(found) == most:
                    break
    return found


def _two_rows_text(path: Path, display_id: int) -> str:
    """``"lines 3 and 9"``: where the first two rows of ``display_id`` are (error paths only)."""
    lines = _lines_of_display(path, display_id, 2)
    return "lines " + " and ".join(str(line) for line in lines) if len(lines) == 2 else f"line {lines[0] if lines else -1}"


def _event_filter(path: Path, displays: pd.Index, counter: list[int]) -> ChunkTransform:
    """Return a chunk transform that keeps the events of ``displays``, turns ``platform`` into codes and adds
    the number of rows it saw to ``counter[0]``."""

    def keep(chunk: pd.DataFrame) -> pd.DataFrame:
        counter[0] += len(chunk)
        chunk = chunk.loc[displays.get_indexer(pd.Index(chunk["display_id"])) >= 0]

        # Map the few distinct platform values once (pandas may have parsed them as numbers), then every row
        # through its category code (-1: empty).
        platform = chunk["platform"].cat
        mapped = np.array([PLATFORM_CODES.get(str(value), -1) for value in platform.categories], dtype=np.int16)
        category_codes = platform.codes.to_numpy()
        codes = np.where(category_codes >= 0, mapped[category_codes], -1)
        unknown = codes < 0
        if unknown.any():
            position = np.flatnonzero(unknown)[0]
            value = chunk["platform"].iloc[position]
            raise DataError(
                f"{path}: line {line_of_row(path, int(chunk.index[position]))} column 'platform' holds "
                f"{'' if pd.isna(value) else str(value)!r}, expected one of {list(PLATFORM_CODES)}"
            )
        return chunk.assign(platform=codes.astype(np.int8))

    return keep


def _check_unique_displays(events: pd.DataFrame, path: Path) -> None:
    """Raise when a ``display_id`` has more than one event."""
    repeated = events["display_id"].duplicated().to_numpy()
    if repeated.any():
        display_id = int(events["display_id"].to_numpy()[repeated][0])
        raise DataError(
            f"{path}: display_id {display_id} has more than one row ({_two_rows_text(path, display_id)}); "
            "expected one event per display"
        )


class _Vocabulary:
    """Token strings shared by the content tables, so tokens are stored as small integer codes while tables are joined."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    def encode(self, prefix: str, values: np.ndarray | pd.Series) -> np.ndarray:
        """Return the codes of the tokens ``<prefix>:<value>``; each prefix must be encoded once."""
        codes, uniques = pd.factorize(values)
        offset = len(self.tokens)
        self.tokens.extend(f"{prefix}:{value}" for value in uniques.tolist())
        return (codes + offset).astype(np.int64)

    def table(self, keys: np.ndarray, codes: np.ndarray, weights: np.ndarray) -> pd.DataFrame | None:
        """Return a content table (``key``, categorical ``token``, float32 ``weight``), or None when it is empty."""
        if len(keys) == 0:
            return None
        tokens = pd.Categorical.from_codes(codes, categories=pd.Index(self.tokens)).remove_unused_categories()
        return pd.DataFrame({"key": keys, "token": tokens, "weight": weights.astype(np.float32)})


def note_missing_optional_files(folder: Path, notes: list[str]) -> list[str]:
    """Note every optional file missing from ``folder`` (what is lost without it), warn once for all of them.

    :return: the names of the missing files.
    """
    missing = [file_name for file_name in OPTIONAL_FILES if not (folder / file_name).is_file()]
    for file_name in missing:
        notes.append(f"{file_name} is missing: {OPTIONAL_FILES[file_name]}")
    if missing:
        logger.warning(
            "optional Outbrain file(s) missing in %s, features degrade: %s",
            folder,
            "; ".join(f"{file_name}: {OPTIONAL_FILES[file_name]}" for file_name in missing),
        )
    return missing


def _read_content(
    folder: Path, ad_ids: np.ndarray, context_documents: np.ndarray, chunksize: int, notes: list[str]
) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Read the optional files into item (ad) and context (document) content tables."""
    missing = note_missing_optional_files(folder, notes)
    vocabulary = _Vocabulary()

    # Landing document, campaign and advertiser of every ad in the log.
    promoted = None
    if "promoted_content.csv" not in missing:
        path = folder / "promoted_content.csv"
        promoted = read_csv_checked(
            path, FILE_COLUMNS["promoted_content.csv"], chunksize=chunksize, transform=_keep_ids("ad_id", ad_ids)
        )
        repeated = promoted["ad_id"].duplicated().to_numpy()
        if repeated.any():
            raise DataError(
                f"{path}: ad_id {int(promoted['ad_id'].to_numpy()[repeated][0])} has more than one row; expected one per ad"
            )
    landing = promoted["document_id"].to_numpy() if promoted is not None else np.zeros(0, dtype=np.int64)
    documents = np.union1d(landing, context_documents)

    # Tokens of every needed document: (document_id, token code, weight) from each document file.
    doc_parts = []
    for file_name, id_column, prefix in (
        ("documents_topics.csv", "topic_id", "topic"),
        ("documents_categories.csv", "category_id", "category"),
        ("documents_entities.csv", "entity_id", "entity"),
    ):
        if file_name in missing:
            continue
        path = folder / file_name
        table = read_csv_checked(
            path, FILE_COLUMNS[file_name], chunksize=chunksize, transform=_keep_confident(path, documents)
        )
        doc_parts.append(
            (
                table["document_id"].to_numpy(),
                vocabulary.encode(prefix, table[id_column]),
                table["confidence_level"].to_numpy(),
            )
        )
    if "documents_meta.csv" not in missing:
        path = folder / "documents_meta.csv"
        meta = read_csv_checked(
            path, FILE_COLUMNS["documents_meta.csv"], chunksize=chunksize, transform=_keep_ids("document_id", documents)
        )
        for column, prefix in (("source_id", "source"), ("publisher_id", "publisher")):
            known = meta.loc[meta[column].notna()]
            codes = vocabulary.encode(prefix, known[column].astype("int64").to_numpy())
            doc_parts.append((known["document_id"].to_numpy(), codes, np.ones(len(known))))
    doc_tokens = pd.DataFrame(
        {
            "document_id": np.concatenate([part[0] for part in doc_parts]) if doc_parts else np.zeros(0, dtype=np.int64),
            "code": np.concatenate([part[1] for part in doc_parts]) if doc_parts else np.zeros(0, dtype=np.int64),
            "weight": np.concatenate([part[2] for part in doc_parts]) if doc_parts else np.zeros(0),
        }
    )

    # Context content: the tokens of the pages being read.
    is_context = np.isin(doc_tokens["document_id"].to_numpy(), context_documents)
    context_tokens = doc_tokens.loc[is_context]
    context_content = vocabulary.table(
        context_tokens["document_id"].to_numpy(), context_tokens["code"].to_numpy(), context_tokens["weight"].to_numpy()
    )
    if promoted is None:
        return None, context_content

    # Item content: the landing page's tokens, then campaign and advertiser.
    landing_tokens = promoted[["ad_id", "document_id"]].merge(doc_tokens, on="document_id", how="inner", sort=False)
    n_ads = len(promoted)
    item_keys = np.concatenate(
        [landing_tokens["ad_id"].to_numpy(), promoted["ad_id"].to_numpy(), promoted["ad_id"].to_numpy()]
    )
    item_codes = np.concatenate(
        [
            landing_tokens["code"].to_numpy(),
            vocabulary.encode("campaign", promoted["campaign_id"].to_numpy()),
            vocabulary.encode("advertiser", promoted["advertiser_id"].to_numpy()),
        ]
    )
    item_weights = np.concatenate([landing_tokens["weight"].to_numpy(), np.ones(2 * n_ads)])
    return vocabulary.table(item_keys, item_codes, item_weights), context_content


def _keep_ids(column: str, ids: np.ndarray) -> ChunkTransform:
    """Return a chunk transform that keeps the rows whose ``column`` is in ``ids``."""
    index = pd.Index(pd.unique(ids))

    def keep(chunk: pd.DataFrame) -> pd.DataFrame:
        return chunk.loc[index.get_indexer(pd.Index(chunk[column])) >= 0]

    return keep


def _keep_confident(path: Path, documents: np.ndarray) -> ChunkTransform:
    """Return a chunk transform keeping the rows of ``documents``; a confidence outside [0, 1] raises, 0 is dropped."""
    index = pd.Index(pd.unique(documents))

    def keep(chunk: pd.DataFrame) -> pd.DataFrame:
        confidence = chunk["confidence_level"].to_numpy()
        invalid = (confidence < 0) | (confidence > 1)
        if invalid.any():
            row_index = int(chunk.index[np.flatnonzero(invalid)[0]])
            raise DataError(
                f"{path}: line {line_of_row(path, row_index)} column 'confidence_level' holds {confidence[invalid][0]}, "
                "expected a number in [0, 1]"
            )
        return chunk.loc[(index.get_indexer(pd.Index(chunk["document_id"])) >= 0) & (confidence > 0)]

    return keep
