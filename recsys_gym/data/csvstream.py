"""Checked, streaming reading of large CSV files with :mod:`pyarrow.csv`, for the Outbrain preparation.

:func:`stream_csv` yields the columns asked for, batch by batch, with explicit types, so memory holds
one block of text and its parsed batch whatever the file's size. Faults are reported by file and
line: a missing or misspelt column (with the closest spelling found), a line with the wrong number
of fields, an empty required value, a value of the wrong type; compressed or binary files are
recognised before parsing and named as such. With ``on_bad_lines="skip"`` lines with the wrong
number of fields, empty required values and values that do not parse as their type (``abc`` in an
integer column, a repeated header line) are skipped and counted instead.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recsys_gym.data.interactions import _find_malformed_row, check_columns, line_of_row, read_header
from recsys_gym.error import DataError

logger = logging.getLogger(__name__)

_Item = TypeVar("_Item")

#: Column kinds (as in :data:`recsys_gym.data.interactions.COLUMN_KINDS`) and the Arrow type each is parsed into.
ARROW_KINDS = {
    "int": pa.int64(),
    "int?": pa.int64(),
    "float": pa.float64(),
    "float?": pa.float64(),
    "str": pa.string(),
    "str?": pa.string(),
    "category?": pa.string(),
}

#: Values accepted by ``on_bad_lines``.
BAD_LINE_MODES = ("error", "skip")

#: Leading bytes of compressed or archive formats, and how to unpack each.
_MAGIC = (
    (b"\x1f\x8b", "gzip-compressed", "unpack it with `gunzip`"),
    (b"PK\x03\x04", "a zip archive", "unzip it (Kaggle ships every file as <name>.csv.zip)"),
    (b"BZh", "bzip2-compressed", "unpack it with `bunzip2`"),
    (b"\xfd7zXZ\x00", "xz-compressed", "unpack it with `unxz`"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "unpack it with `unzstd`"),
)


def check_text_file(path: Path) -> None:
    """Raise unless ``path`` starts like a UTF-8 text file (not compressed, not binary, not empty).

    :raises DataError: naming the file and what it looks like instead, with how to fix it.
    """
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if not head.strip():
        raise DataError(f"{path}: the file is empty; expected a CSV header line and rows")
    for magic, what, fix in _MAGIC:
        if head.startswith(magic):
            raise DataError(f"{path}: the file is {what}, not CSV text; {fix} and point --raw at the folder of .csv files")
    if head.startswith(b"\xef\xbb\xbf"):
        raise DataError(
            f"{path}: the file starts with a UTF-8 byte-order mark (BOM), which Kaggle's files do not have; save it "
            f"without one (for example: sed -i '1s/^\\xEF\\xBB\\xBF//' {path.name})"
        )
    if b"\x00" in head:
        raise DataError(f"{path}: the file holds NUL bytes: it is binary, not CSV text")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        # A multi-byte character cut by the 4096-byte read is fine; anything earlier is not.
        if err.start < len(head) - 4:
            raise DataError(f"{path}: the file is not UTF-8 text (byte {err.start}: {err.reason}); expected CSV") from err


#: The most bytes of text parsed at a time (a line longer than that still makes its block as long as itself).
MAX_BLOCK_BYTES = 64 << 20


def _block_size(path: Path, chunk_rows: int) -> int:
    """Bytes per parsed block: about ``chunk_rows`` lines, never less than a few of the longest lines seen, and never
    more than :data:`MAX_BLOCK_BYTES` or the file (a long line among the first ones would otherwise make every block
    huge: the line lengths are sampled from the file's first 64 KiB)."""
    with open(path, "rb") as handle:
        sample = handle.read(1 << 16)
    lines = sample.splitlines() or [sample]
    longest = max(len(line) for line in lines) + 1
    mean = max(len(sample) / max(len(lines), 1), 1.0)
    wanted = max(min(chunk_rows * mean, MAX_BLOCK_BYTES), 4 * longest, 1024)
    return int(min(wanted, max(path.stat().st_size, 1024)))


def stream_csv(
    path: Path,
    columns: Mapping[str, str],
    *,
    chunk_rows: int,
    on_bad_lines: str = "error",
    counts: dict[str, int] | None = None,
    progress: Callable[[int], Any] | None = None,
    parse_threads: bool = True,
) -> Iterator[dict[str, Any]]:
    """Yield the given columns of a CSV file batch by batch, checked.

    :param path: the file (with a header line).
    :param columns: the columns to read, each with its kind (see :data:`ARROW_KINDS`; ``?`` allows empty).
    :param chunk_rows: about how many rows each batch holds.
    :param on_bad_lines: ``"error"`` raises on a malformed line; ``"skip"`` skips it and counts it in
        ``counts[f"{path.name}: malformed lines skipped"]``.
    :param counts: where counts are added: ``"<file>: rows read"`` and skipped lines.
    :param progress: called with the approximate number of bytes consumed by each batch.
    :param parse_threads: parse each block on Arrow's thread pool; ``False`` parses it on the calling thread, which
        is faster where other threads already keep the cores busy (files read side by side).
    :return: an iterator of dicts: column name to a NumPy array (numbers) or an Arrow array (strings).
    :raises DataError: naming the file, line and column of the fault.
    """
    if on_bad_lines not in BAD_LINE_MODES:
        raise ValueError(f"on_bad_lines must be one of {list(BAD_LINE_MODES)}, got {on_bad_lines!r}")
    counts = counts if counts is not None else {}
    check_text_file(path)
    header = read_header(path)
    check_columns(path, header, list(columns))
    skipped_key = f"{path.name}: malformed lines skipped"
    read_key = f"{path.name}: rows read"
    counts.setdefault(read_key, 0)

    # A malformed line is either skipped and counted or remembered for the error message.
    bad_lines: list[str] = []

    def on_invalid(row: Any) -> str:
        if on_bad_lines == "skip":
            counts[skipped_key] = counts.get(skipped_key, 0) + 1
            return "skip"
        bad_lines.append(str(row.text))
        return "error"

    rows_done = 0
    for block in _text_blocks(path, _block_size(path, chunk_rows)):
        try:
            batch = _parse_block(block, header, columns, on_invalid, parse_threads)
        except pa.ArrowInvalid as err:
            if on_bad_lines != "skip":
                raise _located_error(path, header, columns, err, bad_lines, rows_done) from err
            # A value that does not parse as its type: the block again, as text, without the lines that hold one.
            batch, dropped = _parse_block_leniently(block, header, columns, on_invalid)
            counts[skipped_key] = counts.get(skipped_key, 0) + dropped
        n_rows = batch.num_rows
        keep = np.ones(n_rows, dtype=bool)

        # Empty required values: an error naming the line, or skipped lines.
        for name, kind in columns.items():
            if kind.endswith("?"):
                continue
            column = batch.column(name)
            # Cheap checks first: most blocks have no missing value and no empty string.
            if column.null_count == 0 and (kind != "str" or len(column) == 0 or pc.min(pc.binary_length(column)).as_py() > 0):
                continue
            empty = column.is_null().to_numpy(zero_copy_only=False)
            if kind == "str":
                empty = empty | (pc.utf8_length(column).to_numpy(zero_copy_only=False) == 0)
            if empty.any():
                if on_bad_lines == "skip":
                    keep &= ~empty
                    continue
                line = line_of_row(path, rows_done + int(np.flatnonzero(empty)[0]))
                raise DataError(f"{path}: line {line} column {name!r} is empty, expected a value")
        if not keep.all():
            counts[skipped_key] = counts.get(skipped_key, 0) + int((~keep).sum())
            batch = batch.filter(pa.array(keep))
        rows_done += n_rows
        counts[read_key] += batch.num_rows
        if progress is not None:
            progress(len(block))
        out: dict[str, Any] = {}
        for name, kind in columns.items():
            column = batch.column(name)
            if ARROW_KINDS[kind] == pa.string():
                out[name] = column
            else:
                out[name] = column.to_numpy(zero_copy_only=False)
        out["_row"] = rows_done - n_rows
        yield out
        # Nothing of this block is held while the next one is parsed (the caller may still hold its batch).
        del out, batch, column


def _text_blocks(path: Path, block_size: int) -> Iterator[bytearray]:
    """The data lines of a file (the header line left out) in blocks of about ``block_size`` bytes of whole lines.

    Reading here, one block at a time, bounds memory by the block: Arrow's streaming reader reads up to 32 blocks
    ahead of the parser on a background thread, which grows memory with the file up to that depth. Each block is
    read straight into its own buffer after the previous block's unfinished line (no other copy); the caller may
    keep it.
    """
    with open(path, "rb") as handle:
        handle.readline()
        carried = b""
        while True:
            block = bytearray(len(carried) + block_size)
            block[: len(carried)] = carried
            got = handle.readinto(memoryview(block)[len(carried) :])
            if not got:
                break
            del block[len(carried) + got :]
            # Cut after the last complete line; the rest waits for the next read (a line longer than a block grows it).
            cut = block.rfind(b"\n", len(carried)) + 1
            if cut == 0:
                carried = bytes(block)
                continue
            carried = bytes(block[cut:])
            del block[cut:]
            yield block
        if carried:
            yield bytearray(carried)


def _parse_block(
    block: bytes | bytearray, header: list[str], columns: Mapping[str, str], on_invalid: Callable[[Any], str], threads: bool
) -> Any:
    """Parse one block of whole lines into a record batch of ``columns`` with explicit types.

    With ``threads``, Arrow parses pieces of the block on its thread pool (then joins them); without, the block is
    one piece parsed on the calling thread.
    """
    options = pacsv.ReadOptions(column_names=header, use_threads=True)
    if not threads:
        options = pacsv.ReadOptions(column_names=header, use_threads=False, block_size=len(block) + 1)
    table = pacsv.read_csv(
        pa.py_buffer(block),
        read_options=options,
        parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            column_types={name: ARROW_KINDS[kind] for name, kind in columns.items()},
            include_columns=list(columns),
            null_values=[""],
            strings_can_be_null=False,
            # A quoted empty value is as empty as an unquoted one (writers that quote every field write "").
            quoted_strings_can_be_null=True,
        ),
    )
    return table.combine_chunks().to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist([], schema=table.schema)


#: What a value must look like to parse as each numeric type (an int64 of up to 18 digits; a decimal float).
_NUMBER_PATTERNS = {
    pa.int64(): r"^[+-]?[0-9]{1,18}$",
    pa.float64(): r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$|^(?i:[+-]?(nan|inf|infinity))$",
}


def _parse_block_leniently(
    block: bytes | bytearray, header: list[str], columns: Mapping[str, str], on_invalid: Callable[[Any], str]
) -> tuple[Any, int]:
    """Parse a block whose typed parse failed: every column as text, the lines with a value of the wrong type dropped.

    :return: the record batch of ``columns`` with their types, and the number of lines dropped.
    """
    table = pacsv.read_csv(
        pa.py_buffer(block),
        read_options=pacsv.ReadOptions(column_names=header, use_threads=False, block_size=len(block) + 1),
        parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in columns},
            include_columns=list(columns),
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    ).combine_chunks()
    keep = np.ones(table.num_rows, dtype=bool)
    for name, kind in columns.items():
        pattern = _NUMBER_PATTERNS.get(ARROW_KINDS[kind])
        if pattern is not None:
            text = table.column(name)
            good = pc.or_(pc.equal(text, ""), pc.match_substring_regex(text, pattern))
            keep &= good.to_numpy(zero_copy_only=False)
    table = table.filter(pa.array(keep))
    arrays = []
    for name, kind in columns.items():
        text = table.column(name)
        if ARROW_KINDS[kind] != pa.string():
            # Empty values become missing ones, as in the typed parse.
            text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text).cast(ARROW_KINDS[kind])
        arrays.append(text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text)
    batch = pa.RecordBatch.from_arrays(arrays, names=list(columns))
    return batch, int((~keep).sum())


def _located_error(
    path: Path, header: list[str], columns: Mapping[str, str], err: Exception, bad_lines: list[str], rows_done: int
) -> DataError:
    """Turn a pyarrow parse error into a :class:`DataError` naming the file and line."""
    # A line with the wrong number of fields: find it by its text.
    if bad_lines:
        text = bad_lines[0]
        line = -1
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if raw.decode("utf-8", "replace").rstrip("\r\n") == text:
                    line = number
                    break
        n_fields = len(text.split(","))
        return DataError(
            f"{path}: line {line} has {n_fields} field(s), expected {len(header)} ({','.join(header)}): {text[:80]!r} "
            "(a truncated or malformed line; pass on_bad_lines='skip' / --skip-bad-lines to skip and count such lines)"
        )

    # A value that does not parse: scan from the batch on with the exact checker.
    kinds = {name: ("int" if kind.startswith("int") else kind) for name, kind in columns.items()}
    found = _find_malformed_row(
        path, header, kinds, has_header=True, sep=",", encoding="utf-8", quoting=0, start_row=rows_done
    )
    if found is None:
        return DataError(f"{path}: cannot be parsed after data row {rows_done}: {err}")
    line, reason = found
    return DataError(
        f"{path}: line {line} {reason} (pass on_bad_lines='skip' / --skip-bad-lines to skip and count such lines)"
    )


def prefetched(items: Iterator[_Item], depth: int = 1) -> Iterator[_Item]:
    """Produce the next items of ``items`` on a thread while the caller works on the current one.

    At most ``depth`` items wait ahead (plus the one being produced), so memory stays bounded. The producer's
    exceptions are raised to the caller in order; when the caller stops early, the producer stops too.

    :param items: an iterator whose work releases the GIL (parsing by Arrow), or the overlap gains nothing.
    :param depth: items produced ahead of the caller.
    """
    waiting: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                waiting.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((False, item)):
                    return
        except BaseException as err:  # handed to the caller's thread
            put((True, err))
            return
        put((True, None))

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            finished, value = waiting.get()
            if finished:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        stop.set()
        thread.join()
