"""Generic interaction logs read into a :class:`~recsys_gym.data.raw.RawLog`.

Three layouts are understood:

- **MovieLens-100K**: ``u.data`` (tab separated, no header: ``user item rating timestamp``), with the
  catalogue ``u.item`` beside it (pipe separated, latin-1: id, title, release date, video release
  date, IMDb URL, then 19 genre flags) giving ``genre:<name>`` and ``release_year:<yyyy>`` tokens.
- **RecBole atomic files**: a ``.inter`` file (or a folder holding one) whose tab-separated header
  types every column, e.g. ``user_id:token  item_id:token  rating:float  timestamp:float``, with an
  optional sibling ``<name>.item`` whose ``token`` and ``token_seq`` columns give content tokens
  such as ``class:Comedy`` or ``release_year:1995``.
- **CSV or TSV with a header** naming a user and an item column (common spellings are accepted, see
  :data:`COLUMN_ALIASES`), optionally a timestamp, a rating and a click column.

Every positive interaction becomes an impression that showed its item alone: ``shown`` is ``None``,
``context`` is -1, ``platform`` is 0 and ``impression_id`` counts the positive interactions in file
order. An interaction is positive unless its rating is below ``min_rating`` or its click column is 0;
the others go to ``other_user_items``, so they are never clicks but still keep the item out of that
user's random negatives.

The module also holds :func:`read_csv_checked`, the chunked CSV reader with exact error reports that
the Outbrain loader uses as well.
"""

from __future__ import annotations

import csv
import difflib
import importlib.util
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from recsys_gym.data.raw import RawLog
from recsys_gym.error import DataError, MissingDataError

logger = logging.getLogger(__name__)

#: A :mod:`csv` quoting constant (``csv.QUOTE_MINIMAL``, ``csv.QUOTE_NONE``, ...).
Quoting = Literal[0, 1, 2, 3]

#: Rows parsed per chunk by :func:`read_csv_checked`: memory holds one chunk of raw text at a time.
DEFAULT_CHUNK_ROWS = 1_000_000

#: Column kinds understood by :func:`read_csv_checked`, with the pandas dtype each is parsed into.
#: A kind ending in ``?`` may be empty; the others must hold a value on every row.
COLUMN_KINDS = {
    "int": "int64",
    "int?": "Int64",
    "float": "float64",
    "float?": "float64",
    "str": "str",
    "str?": "str",
    "category?": "category",
}

_KIND_WORDS = {
    "int": "an integer (64-bit)",
    "int?": "an integer (64-bit) or nothing",
    "float": "a number",
    "float?": "a number or nothing",
    "str": "a non-empty value",
    "str?": "any value",
    "category?": "any value",
}

#: Accepted spellings (compared case-insensitively) of the columns of a generic log, in order of preference.
COLUMN_ALIASES = {
    "user": ("user", "user_id", "userid", "uuid"),
    "item": ("item", "item_id", "itemid", "movie_id", "movieid", "ad_id"),
    "timestamp": ("timestamp", "time", "ts"),
    "rating": ("rating",),
    "click": ("click", "clicked", "label"),
}

#: The 19 genres of MovieLens-100K, in the order of the flags that end each ``u.item`` row.
MOVIELENS_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

#: Values accepted by the ``format`` argument of :func:`read_interactions`.
FORMATS = ("auto", "movielens", "recbole", "csv")

_RECBOLE_INSTALL_HINT = "pip install --no-deps recbole==1.2.1"


# ---------------------------------------------------------------------------------------------------
# Checked CSV reading, shared with the Outbrain loader
# ---------------------------------------------------------------------------------------------------


def read_header(path: Path, *, sep: str = ",", encoding: str = "utf-8", quoting: Quoting = csv.QUOTE_MINIMAL) -> list[str]:
    """Return the column names on the first line of a delimited text file.

    :param path: the file.
    :param sep: the field separator.
    :param encoding: the text encoding.
    :param quoting: a :mod:`csv` quoting constant.
    :raises DataError: when the file is empty or its first line cannot be decoded.
    """
    with open(path, "rb") as handle:
        first_line = handle.readline()
    try:
        text = first_line.decode(encoding).rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: line 1 (the header) is not valid {encoding} text: {err.reason}") from err
    if not text.strip():
        raise DataError(f"{path}: the file is empty or its first line is blank; expected a header line")
    return next(csv.reader([text], delimiter=sep, quoting=quoting))


def check_columns(path: Path, found: Sequence[str], expected: Sequence[str]) -> None:
    """Raise if a header lacks some expected column, suggesting the closest spelling found.

    :param path: the file, for the message.
    :param found: the column names of its header.
    :param expected: the column names that must all be present (in any order).
    :raises DataError: listing the missing columns, the expected and the found ones.
    """
    missing = [column for column in expected if column not in found]
    if not missing:
        return
    hints = []
    for column in missing:
        close = difflib.get_close_matches(column, found, n=1, cutoff=0.6)
        if close:
            hints.append(f"{close[0]!r} for {column!r}")
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    raise DataError(
        f"{path}: missing column(s) {missing}{hint}; expected columns {list(expected)}, the header has {list(found)}"
    )


def line_of_row(path: Path, row_index: int, *, has_header: bool = True) -> int:
    """Return the 1-based line number of a data row, counted as pandas counts rows (blank lines skipped).

    :param path: the file.
    :param row_index: the 0-based index of the row among the data rows.
    :param has_header: whether the first line is a header.
    :return: the line number, or -1 when the file has fewer rows.
    """
    seen = -1
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if (has_header and line_number == 1) or not raw.strip():
                continue
            seen += 1
            if seen == row_index:
                return line_number
    return -1


def _parses(value: str, kind: str) -> bool:
    """Whether a raw field parses as a column kind the way pandas parses it."""
    if kind in ("str?", "category?"):
        return True
    if kind in ("float?", "int?") and value == "":
        return True
    if kind == "str":
        return value != ""
    try:
        if kind.startswith("int"):
            # An integer beyond 64 bits does not parse either (the files' ids are int64).
            return -(1 << 63) <= int(value) < 1 << 63
        float(value)
    except ValueError:
        return False
    return True


def _shown_value(value: str, limit: int = 40) -> str:
    """A value for an error message: its repr, cut after ``limit`` characters (with the full length said)."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value):,} characters)"


def _find_malformed_row(
    path: Path,
    header_names: Sequence[str],
    columns: Mapping[str, str],
    *,
    has_header: bool,
    sep: str,
    encoding: str,
    quoting: Quoting,
    start_row: int,
) -> tuple[int, str] | None:
    """Scan a file from a data row on for the first row pandas cannot parse; return its line and why."""
    positions = {name: header_names.index(name) for name in columns}
    row_index = -1
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if has_header and line_number == 1:
                continue
            if not raw.strip():
                continue
            row_index += 1
            if row_index < start_row:
                continue

            # Decode the line, split it into fields and check their number.
            try:
                line = raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError as err:
                return line_number, f"is not valid {encoding} text ({err.reason})"
            # The csv module refuses fields over its limit (128 KiB by default): a line is split whatever its length.
            if len(line) >= csv.field_size_limit():
                csv.field_size_limit(len(line) + 1)
            fields = next(csv.reader([line], delimiter=sep, quoting=quoting))
            if len(fields) != len(header_names):
                return line_number, f"has {len(fields)} field(s), expected {len(header_names)} ({sep.join(header_names)})"

            # Check that every field we read parses as its kind.
            for name, kind in columns.items():
                value = fields[positions[name]]
                if not _parses(value, kind):
                    return line_number, f"column {name!r} holds {_shown_value(value)}, expected {_KIND_WORDS[kind]}"
    return None


def read_csv_checked(
    path: Path,
    columns: Mapping[str, str],
    *,
    sep: str = ",",
    names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    quoting: Quoting = csv.QUOTE_MINIMAL,
    chunksize: int = DEFAULT_CHUNK_ROWS,
    transform: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Read some columns of a delimited text file in chunks, with explicit dtypes and exact error reports.

    The file is parsed ``chunksize`` rows at a time; each chunk keeps only ``columns`` and goes
    through ``transform`` (which may filter rows) before it is kept, so memory holds the output plus
    one chunk of raw text. When pandas cannot parse a chunk, the file is scanned from that chunk on
    to report the first faulty row by its line number.

    :param path: the file.
    :param columns: the column names to keep, each mapped to its kind, a key of :data:`COLUMN_KINDS`
        (``"int"``, ``"float"``, ``"str"``, or the same with ``?`` where empty fields are allowed, or
        ``"category?"`` for a text column of few distinct values).
    :param sep: the field separator.
    :param names: the column names of a file without a header line; ``None`` when the first line is
        the header, which must then contain every key of ``columns``.
    :param encoding: the text encoding.
    :param quoting: a :mod:`csv` quoting constant (``csv.QUOTE_NONE`` for files whose text fields may
        hold quote characters).
    :param chunksize: rows parsed per chunk.
    :param transform: called on every chunk (whose index holds the 0-based row numbers of the file);
        returns the rows to keep. It may raise :class:`DataError` itself.
    :return: the kept rows of every chunk, with a fresh ``RangeIndex``.
    :raises DataError: naming the file and the missing column, or the line and column of a malformed
        row (wrong number of fields, a value of the wrong kind, an empty required value).
    """
    # Check that the header holds the columns we need.
    if names is None:
        header_names = read_header(path, sep=sep, encoding=encoding, quoting=quoting)
        check_columns(path, header_names, list(columns))
    else:
        header_names = list(names)
    has_header = names is None
    dtypes = {name: COLUMN_KINDS[columns.get(name, "str?")] for name in header_names}

    # Parse chunk by chunk; a malformed row anywhere in a chunk sends us to the line scanner.
    parts = []
    rows_done = 0
    try:
        reader = pd.read_csv(
            path,
            sep=sep,
            header=0 if has_header else None,
            names=None if has_header else header_names,
            dtype=dtypes,
            encoding=encoding,
            quoting=quoting,
            keep_default_na=False,
            na_values=[""],
            chunksize=chunksize,
        )
        with reader:
            for chunk in reader:
                # pandas takes a first row with extra fields as an index instead of failing.
                if not isinstance(chunk.index, pd.RangeIndex):
                    raise ValueError("a row has more fields than the header")
                chunk = chunk[list(columns)]
                _check_required_values(path, chunk, columns, has_header)
                parts.append(transform(chunk) if transform is not None else chunk)
                rows_done += len(chunk)
    except DataError:
        raise
    except (ValueError, OverflowError) as err:
        found = _find_malformed_row(
            path,
            header_names,
            columns,
            has_header=has_header,
            sep=sep,
            encoding=encoding,
            quoting=quoting,
            start_row=rows_done,
        )
        if found is None:
            raise DataError(f"{path}: cannot be parsed after data row {rows_done}: {err}") from err
        line_number, reason = found
        raise DataError(f"{path}: line {line_number} {reason}") from err

    # Stack the kept rows.
    if not parts:
        return pd.DataFrame({name: pd.Series(dtype=COLUMN_KINDS[kind]) for name, kind in columns.items()})
    return pd.concat(parts, ignore_index=True)


def _check_required_values(path: Path, chunk: pd.DataFrame, columns: Mapping[str, str], has_header: bool) -> None:
    """Raise on the first empty value of a column whose kind does not allow it (pandas parses these as NaN)."""
    for name, kind in columns.items():
        if kind.endswith("?") or kind.startswith("int"):
            continue
        empty = chunk[name].isna().to_numpy()
        if empty.any():
            row_index = int(chunk.index[np.flatnonzero(empty)[0]])
            line_number = line_of_row(path, row_index, has_header=has_header)
            raise DataError(f"{path}: line {line_number} column {name!r} is empty, expected {_KIND_WORDS[kind]}")


# ---------------------------------------------------------------------------------------------------
# Generic interaction logs
# ---------------------------------------------------------------------------------------------------


def find_movielens_100k() -> Path:
    """Locate the MovieLens-100K atomic files that the ``recbole`` wheel ships.

    RecBole 1.2.1 carries ``recbole/dataset_example/ml-100k/`` (``ml-100k.inter`` with 100,000 ratings
    of 1,682 movies by 943 users, and ``ml-100k.item``). The package is found without importing it,
    so its own dependencies need not be installed.

    :return: the ``ml-100k`` folder, ready for :func:`read_interactions`.
    :raises MissingDataError: when ``recbole`` is not installed or its wheel lacks the folder, with
        the command that installs it.
    """
    spec = importlib.util.find_spec("recbole")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "dataset_example" / "ml-100k"
        if (folder / "ml-100k.inter").is_file():
            return folder
    where = (
        f" (searched {[str(Path(location) / 'dataset_example' / 'ml-100k') for location in locations]})" if locations else ""
    )
    raise MissingDataError(
        f"MovieLens-100K was not found: the recbole package that ships it is not installed{where}; "
        f"install it with `{_RECBOLE_INSTALL_HINT}`"
    )


def read_interactions(
    path: str | os.PathLike[str],
    *,
    format: str = "auto",
    min_rating: float | None = None,
    name: str | None = None,
) -> RawLog:
    """Read a generic interaction log (MovieLens-100K, RecBole atomic files, CSV/TSV) into a :class:`RawLog`.

    Each positive interaction becomes an impression that showed its item alone (``shown=None``,
    ``context=-1``, ``platform=0``), numbered in file order from 0. Repeated (user, item) pairs are
    kept: each is an impression. Ids that are all plain integers are read as ``int64``, others stay
    strings.

    :param path: a MovieLens ``u.data`` file or the folder holding it; a RecBole ``.inter`` file or the
        folder holding one; or a CSV/TSV file with a header.
    :param format: ``"auto"`` (decided from the path: a folder holding ``u.data`` or a file named
        ``u.data`` is MovieLens, a ``.inter`` file or a folder holding one is RecBole, any other file
        is CSV/TSV), ``"movielens"``, ``"recbole"`` or ``"csv"``.
    :param min_rating: interactions rated below this are not impressions; they go to
        ``other_user_items``. ``None`` keeps every rating. Needs a rating column.
    :param name: the name of the returned log; by default the folder name (MovieLens) or the file
        stem.
    :return: the log, validated. ``item_content`` holds the catalogue tokens (weight 1.0) when a
        ``u.item`` or ``.item`` file lies beside the interactions, else ``None``.
    :raises MissingDataError: when ``path`` does not exist or a folder holds no known log.
    :raises DataError: naming the file, line and column of a malformed row or a missing column.
    :raises ValueError: when ``format`` or ``min_rating`` is not usable.
    """
    # Check the arguments and decide the layout.
    path = Path(path)
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not supported; expected one of {list(FORMATS)}")
    if min_rating is not None and not np.isfinite(min_rating):
        raise ValueError(f"min_rating={min_rating!r} must be a finite number or None")
    if not path.exists():
        raise MissingDataError(
            f"path={str(path)!r} does not exist; pass a MovieLens u.data file or folder, a RecBole .inter file or folder, "
            "or a CSV/TSV file with user and item columns"
        )
    layout, log_path = _resolve_layout(path, format)

    # Read the interactions (and the catalogue beside them) of that layout.
    notes: list[str] = []
    if layout == "movielens":
        table = _read_movielens_data(log_path)
        item_content = _read_movielens_items(log_path.parent / "u.item", notes)
        default_name = path.name if path.is_dir() else log_path.parent.name
    elif layout == "recbole":
        table = _read_recbole_inter(log_path)
        item_content = _read_recbole_items(log_path.with_suffix(".item"), notes)
        default_name = log_path.stem
    else:
        table = _read_delimited(log_path)
        item_content = None
        default_name = log_path.stem

    # Split positives from the rest and build the log.
    raw = _build_log(
        table,
        log_path,
        min_rating=min_rating,
        item_content=item_content,
        name=name or default_name,
        has_header=layout != "movielens",
        notes=notes,
    )
    raw.validate()
    return raw


def _resolve_layout(path: Path, format: str) -> tuple[str, Path]:
    """Decide the layout of ``path`` and the interaction file to read."""
    if path.is_dir():
        inter_files = sorted(path.glob("*.inter"))
        if format in ("auto", "movielens") and (path / "u.data").is_file():
            return "movielens", path / "u.data"
        if format in ("auto", "recbole") and inter_files:
            named = path / f"{path.name}.inter"
            if named.is_file():
                return "recbole", named
            if len(inter_files) == 1:
                return "recbole", inter_files[0]
            raise DataError(
                f"path={str(path)!r} holds several .inter files {[file.name for file in inter_files]} and none is named "
                f"{path.name}.inter; pass the one to read"
            )
        if format == "csv":
            raise MissingDataError(f"path={str(path)!r} is a folder, but format='csv' reads one file; pass the file itself")
        wanted = {"auto": "a u.data or .inter file", "movielens": "u.data", "recbole": "a .inter file"}[format]
        raise MissingDataError(
            f"path={str(path)!r} is a folder without {wanted}; found {sorted(p.name for p in path.iterdir())}"
        )
    if format != "auto":
        return format, path
    if path.name == "u.data":
        return "movielens", path
    if path.suffix == ".inter":
        return "recbole", path
    return "csv", path


def _read_movielens_data(path: Path) -> pd.DataFrame:
    """Read MovieLens ``u.data``: tab separated ``user item rating timestamp``, no header."""
    columns = {"user": "int", "item": "int", "rating": "float", "timestamp": "int"}
    return read_csv_checked(path, columns, sep="\t", names=list(columns), quoting=csv.QUOTE_NONE)


def _read_movielens_items(path: Path, notes: list[str]) -> pd.DataFrame | None:
    """Read MovieLens ``u.item`` into ``genre:<name>`` and ``release_year:<yyyy>`` tokens; None if absent."""
    if not path.is_file():
        message = f"{path.name} is missing beside u.data: items get no genre or release_year tokens"
        logger.warning("%s (looked for %s)", message, path)
        notes.append(message)
        return None

    # Read the catalogue: id, title, dates, URL, then one 0/1 flag per genre.
    genre_columns = [f"genre_{index}" for index in range(len(MOVIELENS_GENRES))]
    names = ["item", "title", "release_date", "video_release_date", "url", *genre_columns]
    columns = {"item": "int", "release_date": "str?", **dict.fromkeys(genre_columns, "int")}
    catalogue = read_csv_checked(path, columns, sep="|", names=names, encoding="latin-1", quoting=csv.QUOTE_NONE)

    # One genre token per raised flag, one release_year token per dated movie.
    flags = catalogue[genre_columns].to_numpy() != 0
    item_index, genre_index = np.nonzero(flags)
    genres = pd.DataFrame(
        {"key": catalogue["item"].to_numpy()[item_index], "token": [f"genre:{MOVIELENS_GENRES[g]}" for g in genre_index]}
    )
    years = catalogue["release_date"].str.extract(r"(\d{4})\s*$", expand=False)
    dated = years.notna().to_numpy()
    release = pd.DataFrame(
        {"key": catalogue["item"].to_numpy()[dated], "token": ("release_year:" + years[dated]).to_numpy(dtype=object)}
    )
    return _content_table(pd.concat([genres, release], ignore_index=True))


def _split_recbole_header(path: Path) -> list[tuple[str, str, str]]:
    """Return ``(raw header name, field name, field type)`` for each column of a RecBole atomic file."""
    fields = []
    for raw_name in read_header(path, sep="\t", quoting=csv.QUOTE_NONE):
        field_name, _, field_type = raw_name.partition(":")
        if field_type not in ("token", "token_seq", "float", "float_seq"):
            raise DataError(
                f"{path}: header column {raw_name!r} lacks a RecBole type; expected name:type with type one of "
                "token, token_seq, float, float_seq"
            )
        fields.append((raw_name, field_name, field_type))
    return fields


def _find_column(names: Sequence[str], role: str) -> str | None:
    """Return the first of ``names`` that is an accepted spelling of ``role`` (case-insensitive), else None."""
    lowered = {column.lower(): column for column in reversed(names)}
    for alias in COLUMN_ALIASES[role]:
        if alias in lowered:
            return lowered[alias]
    return None


def _read_recbole_inter(path: Path) -> pd.DataFrame:
    """Read a RecBole ``.inter`` file into the columns user, item and, when present, timestamp, rating, click."""
    fields = _split_recbole_header(path)
    field_names = [field_name for _, field_name, _ in fields]
    raw_of = {field_name: raw_name for raw_name, field_name, _ in fields}
    roles = _locate_roles(path, field_names)
    columns = {raw_of[column]: ("float" if role in ("rating", "click") else "str") for role, column in roles.items()}
    table = read_csv_checked(path, columns, sep="\t", quoting=csv.QUOTE_NONE)
    return table.rename(columns={raw_of[column]: role for role, column in roles.items()})


def _locate_roles(path: Path, names: Sequence[str]) -> dict[str, str]:
    """Map each role (user, item, timestamp, rating, click) to its column; raise when user or item is absent."""
    roles = {role: _find_column(names, role) for role in COLUMN_ALIASES}
    for role in ("user", "item"):
        if roles[role] is None:
            raise DataError(
                f"{path}: no {role} column; expected one named {' / '.join(COLUMN_ALIASES[role])} "
                f"(any case), the header has {list(names)}"
            )
    return {role: column for role, column in roles.items() if column is not None}


def _read_recbole_items(path: Path, notes: list[str]) -> pd.DataFrame | None:
    """Read a RecBole ``.item`` file into content tokens; None when there is no such file.

    Every ``token`` column gives ``<field>:<value>`` and every ``token_seq`` column one token per
    space-separated piece, except the item id and free-text fields (whose name ends in ``title`` or
    is ``name``): words of a title are no category.
    """
    if not path.is_file():
        logger.info("%s not found: items get no content tokens", path)
        notes.append(f"{path.name} not found: items have no content tokens")
        return None

    # Find the item id and the categorical columns.
    fields = _split_recbole_header(path)
    item_column = _find_column([field_name for _, field_name, _ in fields], "item")
    if item_column is None:
        raise DataError(
            f"{path}: no item column; expected one named {' / '.join(COLUMN_ALIASES['item'])}, "
            f"the header has {[raw_name for raw_name, _, _ in fields]}"
        )
    token_fields = [
        (raw_name, field_name, field_type)
        for raw_name, field_name, field_type in fields
        if field_type in ("token", "token_seq")
        and field_name != item_column
        and not (field_name.lower().endswith("title") or field_name.lower() == "name")
    ]
    item_raw = next(raw_name for raw_name, field_name, _ in fields if field_name == item_column)
    columns = {item_raw: "str", **{raw_name: "str?" for raw_name, _, _ in token_fields}}
    catalogue = read_csv_checked(path, columns, sep="\t", quoting=csv.QUOTE_NONE)

    # One token per value (per piece of a sequence).
    parts = []
    for raw_name, field_name, field_type in token_fields:
        values = catalogue[[item_raw, raw_name]].dropna()
        if field_type == "token_seq":
            values = values.assign(**{raw_name: values[raw_name].str.split()}).explode(raw_name).dropna()
        tokens = (field_name + ":" + values[raw_name]).to_numpy()
        parts.append(pd.DataFrame({"key": values[item_raw].to_numpy(), "token": tokens}))
    if not parts:
        notes.append(f"{path.name} has no token or token_seq column besides the item id: items have no content tokens")
        return None
    content = pd.concat(parts, ignore_index=True)
    return _content_table(content.assign(key=_as_ids(content["key"])))


def _read_delimited(path: Path) -> pd.DataFrame:
    """Read a CSV/TSV log with a header into the columns user, item and, when present, timestamp, rating, click."""
    sep = "\t" if path.suffix.lower() == ".tsv" else _sniff_separator(path)
    header = read_header(path, sep=sep)
    roles = _locate_roles(path, header)
    columns = {column: ("float" if role in ("rating", "click") else "str") for role, column in roles.items()}
    table = read_csv_checked(path, columns, sep=sep)
    return table.rename(columns={column: role for role, column in roles.items()})


def _sniff_separator(path: Path) -> str:
    """Pick the separator among comma, tab, semicolon and pipe that splits the header line most."""
    with open(path, "rb") as handle:
        first_line = handle.readline().decode("utf-8", errors="replace")
    return max((",", "\t", ";", "|"), key=first_line.count)


def _as_ids(values: pd.Series) -> pd.Series:
    """Return ids as int64 when every one is a plain integer (no sign, no leading zero), else as strings."""
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.astype("int64")
    text = values.astype("str")
    if len(text) and text.str.fullmatch(r"0|[1-9][0-9]{0,17}").all():
        return text.astype("int64")
    return text


def _parse_timestamps(values: pd.Series, path: Path, *, has_header: bool) -> np.ndarray:
    """Parse a timestamp column (numbers, or ISO 8601 dates turned into seconds) into int64."""
    if pd.api.types.is_numeric_dtype(values.dtype):
        return np.floor(values.to_numpy(dtype=np.float64)).astype(np.int64)

    # Numbers where any value is a number, else dates throughout.
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().any():
        if numbers.notna().all():
            return np.floor(numbers.to_numpy(dtype=np.float64)).astype(np.int64)
        bad = int(np.flatnonzero(numbers.isna().to_numpy())[0])
    else:
        dates = pd.to_datetime(values, errors="coerce", format="ISO8601", utc=True)
        if dates.notna().all():
            return ((dates - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
        bad = int(np.flatnonzero(dates.isna().to_numpy())[0])
    raise DataError(
        f"{path}: line {line_of_row(path, bad, has_header=has_header)} column 'timestamp' holds {values.iloc[bad]!r}, "
        "expected a number (the same unit on every row) or an ISO 8601 date like 2016-06-14 12:00:00"
    )


def _build_log(
    table: pd.DataFrame,
    path: Path,
    *,
    min_rating: float | None,
    item_content: pd.DataFrame | None,
    name: str,
    has_header: bool,
    notes: list[str],
) -> RawLog:
    """Turn a table of interactions (user, item, optional timestamp/rating/click) into a :class:`RawLog`."""
    users = _as_ids(table["user"])
    items = _as_ids(table["item"])

    # Positives: rated at least min_rating, and clicked where a click column exists.
    positive = np.ones(len(table), dtype=bool)
    if min_rating is not None:
        if "rating" not in table.columns:
            raise ValueError(f"min_rating={min_rating!r} needs a rating column, but {path} has none")
        positive &= table["rating"].to_numpy() >= min_rating
        notes.append(f"{int((~positive).sum())} interaction(s) rated below min_rating={min_rating} kept as non-clicks")
    if "click" in table.columns:
        clicks = table["click"].to_numpy()
        invalid = ~np.isin(clicks, (0.0, 1.0))
        if invalid.any():
            row_index = int(np.flatnonzero(invalid)[0])
            raise DataError(
                f"{path}: line {line_of_row(path, row_index, has_header=has_header)} column 'click' holds "
                f"{float(clicks[row_index]):g}, expected 0 or 1"
            )
        unclicked = clicks == 0.0
        notes.append(f"{int((unclicked & positive).sum())} interaction(s) with click 0 kept as non-clicks")
        positive &= ~unclicked

    # Timestamps, or the file order when there are none.
    if "timestamp" in table.columns:
        timestamps = _parse_timestamps(table["timestamp"], path, has_header=has_header)
    else:
        expected = " / ".join(COLUMN_ALIASES["timestamp"])
        message = f"{path.name} has no timestamp column (expected one named {expected}): file order is used as time"
        logger.warning(message)
        notes.append(message)
        timestamps = np.arange(len(table), dtype=np.int64)

    # One impression per positive interaction, in file order.
    n_positive = int(positive.sum())
    impressions = pd.DataFrame(
        {
            "impression_id": np.arange(n_positive, dtype=np.int64),
            "user": users[positive].reset_index(drop=True),
            "timestamp": timestamps[positive],
            "context": np.full(n_positive, -1, dtype=np.int64),
            "platform": np.zeros(n_positive, dtype=np.int8),
            "clicked_item": items[positive].reset_index(drop=True),
        }
    )
    other = None
    if not positive.all():
        other = pd.DataFrame({"user": users[~positive], "item": items[~positive]}).reset_index(drop=True)

    # Catalogue keys must match the dtype of the items of the log.
    if item_content is not None and item_content["key"].dtype != impressions["clicked_item"].dtype:
        if pd.api.types.is_integer_dtype(impressions["clicked_item"].dtype):
            keys = pd.to_numeric(item_content["key"], errors="coerce")
            item_content = item_content.loc[keys.notna()].assign(key=keys[keys.notna()].astype("int64")).reset_index(drop=True)
        else:
            item_content = item_content.assign(key=item_content["key"].astype("str"))
    return RawLog(
        impressions=impressions,
        shown=None,
        item_content=item_content,
        other_user_items=other,
        name=name,
        notes=notes,
    )


def _content_table(content: pd.DataFrame) -> pd.DataFrame:
    """Give a ``key``/``token`` table the weight 1.0 and the dtypes of a content table (token categorical)."""
    return pd.DataFrame(
        {
            "key": content["key"].to_numpy(),
            "token": pd.Categorical(content["token"]),
            "weight": np.ones(len(content), dtype=np.float32),
        }
    )
