"""Speed and memory of preparing Outbrain data: ``recsys-gym prepare outbrain`` beside the obvious pandas way.

In one run, on data written by the built-in generator at two sizes ten times apart (fractions of the
real Kaggle data; the default larger one is a tenth of it), each side prepares the same raw folder in
a fresh process:

- **streaming**: ``python -m recsys_gym prepare outbrain --raw DIR --out DIR --quiet``, the project's
  pipeline (chunked reads, bucket files on disk, the cache written array by array);
- **naive**: ``benchmarks/naive_prepare.py``, whole-file ``pandas.read_csv`` plus merges, grouping
  and sorting in memory (see that file).

For each it records the wall time, the peak resident memory of the process (``ru_maxrss`` from
``os.wait4``; the process is started from a small launcher) and the input rows per second. It then
extrapolates the streaming time to the full real data (the real row counts of the files the
generator wrote, ``page_views.csv`` excluded) at the rate measured on the larger size, and checks
that the cache is shared, not copied: ``--processes`` processes map the larger cache and read every
array, and each one's private memory (from ``/proc/<pid>/smaps_rollup``) is compared with the
cache's size.

``page_views.csv`` (about 2 billion rows in the real data) is measured apart, since the generator does not write it:
``--page-views`` rows in Kaggle's schema are written beside the larger input (users drawn from its events, a share
``--page-view-known`` of them with impressions and the rest unknown, documents from its events, times over its
span), the streaming side prepares that folder, and the page-view rate is those rows over the extra seconds. The
full-data time is then the seven files at their rate plus 2 billion page views at theirs.

Results go to ``--out``: ``prepare.md`` (the table, ratios and targets), ``prepare.csv``, ``run.json``.

Example::

    python benchmarks/prepare.py --sizes 0.01 0.1 --out benchmarks/results/prepare
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import run_metadata, write_json, write_report

from recsys_gym.data.synthetic import generate_outbrain

logger = logging.getLogger("benchmarks.prepare")

#: Rows of the real Kaggle files (``wc -l`` minus the header), for the extrapolation.
REAL_ROWS = {
    "clicks_train.csv": 87_141_731,
    "events.csv": 23_120_126,
    "promoted_content.csv": 559_583,
    "documents_topics.csv": 11_325_960,
    "documents_categories.csv": 5_481_475,
    "documents_entities.csv": 5_537_552,
    "documents_meta.csv": 2_999_334,
}

#: Rows of the real ``page_views.csv``: "about 2 billion" (the issue's figure; the exact count is not at hand here).
REAL_PAGE_VIEW_ROWS = 2_000_000_000

#: The issue's targets.
TARGET_PEAK_MB = 1500
TARGET_GROWTH = 0.30
TARGET_SPEEDUP = 3.0
TARGET_FULL_MINUTES = 10.0

_SHARING_PROBE = """
import json, sys
import numpy as np
from recsys_gym.data.dataset import CompactDataset
data = CompactDataset(sys.argv[1])
# Read every byte of every mapped array, as environments do over time.
total = 0
for name, value in vars(data).items():
    if isinstance(value, np.ndarray) and value.size:
        total += int(np.asarray(value).view(np.uint8).reshape(-1)[:: 4096].sum()) if value.flags.c_contiguous else 0
        np.asarray(value).sum()
fields = {}
with open("/proc/self/smaps_rollup") as handle:
    for line in handle:
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            fields[parts[0][:-1]] = int(parts[1])
print(json.dumps(fields))
sys.stdout.flush()
sys.stdin.read()
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("``", "")
        + " The defaults (sizes 0.01 and 0.1, 20 million page views, 3 runs each) take about 6 minutes and 3 GB of memory"
        " on 2 cores, and 2 GB of disk under --work.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--sizes", type=float, nargs=2, default=[0.01, 0.1], help="two generator sizes (fractions of the real data)"
    )
    parser.add_argument("--work", default="runs/prepare-work", help="folder for the generated data and the prepared caches")
    parser.add_argument("--processes", type=int, default=4, help="processes mapping one cache in the sharing check")
    parser.add_argument("--skip-naive", action="store_true", help="measure the streaming pipeline only")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side on each input (medians are reported)")
    parser.add_argument(
        "--page-views", type=int, default=20_000_000, help="page_views.csv rows written beside the larger input (0: none)"
    )
    parser.add_argument("--page-view-known", type=float, default=0.5, help="share of those rows whose user has impressions")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data and page views")
    parser.add_argument("--out", default="runs/prepare", help="folder for the results")
    args = parser.parse_args(argv)
    small, large = args.sizes
    if not 0 < small < large <= 1:
        parser.error(f"--sizes must be two fractions 0 < small < large <= 1, got {args.sizes}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.page_views < 0 or not 0.0 <= args.page_view_known <= 1.0:
        parser.error(
            f"--page-views must be >= 0 and --page-view-known in [0, 1], got {args.page_views}, {args.page_view_known}"
        )
    if args.processes < 1:
        parser.error(f"--processes must be >= 1, got {args.processes}")
    return args


#: Starts the measured command from a small process: Linux keeps a process' peak memory across ``exec``, so a
#: command forked straight from this (large) benchmark process would report at least this process' size.
_LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as handle:
    json.dump({"exit_code": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss}, handle)
"""


def run_measured(command: list[str], log_path: Path) -> tuple[float, float, int]:
    """Run a command in a fresh process; return its wall seconds, peak resident memory in MB and exit code."""
    report = log_path.with_suffix(".rusage.json")
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        subprocess.run([sys.executable, "-c", _LAUNCHER, str(report), *command], stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    measured = json.loads(report.read_text(encoding="utf-8"))
    # ru_maxrss is in kilobytes on Linux
    return seconds, measured["maxrss_kb"] / 1024, int(measured["exit_code"])


def write_page_views(source: Path, target: Path, rows: int, known: float, seed: int) -> None:
    """A copy of ``source`` (its files linked) with ``rows`` page views in Kaggle's schema written beside them.

    A share ``known`` of the rows come from users with impressions (drawn from ``events.csv``), the rest from other
    users (random uuids of the same length); documents are drawn from the events' context pages, times uniformly
    over the events' span, and the three columns the preparation ignores are filled as Kaggle fills them.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if not (target / path.name).exists():
            (target / path.name).symlink_to(path.resolve())
    events = pacsv.read_csv(
        source / "events.csv",
        convert_options=pacsv.ConvertOptions(include_columns=["uuid", "document_id", "timestamp"]),
    )
    users = pc.unique(events["uuid"])
    documents = events["document_id"].to_numpy()
    times = events["timestamp"].to_numpy()
    width = int(pc.max(pc.utf8_length(users)).as_py())
    rng = np.random.default_rng(seed)
    hex_digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    partial = target / "page_views.csv.partial"
    schema = pa.schema(
        [
            ("uuid", pa.string()),
            ("document_id", pa.int64()),
            ("timestamp", pa.int64()),
            ("platform", pa.int64()),
            ("geo_location", pa.string()),
            ("traffic_source", pa.int64()),
        ]
    )
    # Nothing quoted, header included, as Kaggle writes its files (Arrow would quote every string and name).
    with open(partial, "wb") as handle:
        handle.write((",".join(schema.names) + "\n").encode())
        options = pacsv.WriteOptions(include_header=False, quoting_style="none")
        with pacsv.CSVWriter(handle, schema, write_options=options) as writer:
            for start in range(0, rows, 2_000_000):
                n = min(2_000_000, rows - start)
                is_known = rng.random(n) < known
                # Unknown users: random hex strings of the uuids' width.
                strangers = hex_digits[rng.integers(0, 16, size=(n, width))].view(f"S{width}").ravel()
                uuid = pa.array(strangers).cast(pa.string())
                uuid = pc.if_else(pa.array(is_known), users.take(pa.array(rng.integers(0, len(users), n))), uuid)
                locations = np.array(["US>CA>807", "US>NY>501", "GB>H9", "IN>10"])
                columns = {
                    "uuid": uuid,
                    "document_id": documents[rng.integers(0, len(documents), n)],
                    "timestamp": rng.integers(times.min(), times.max() + 1, n),
                    "platform": rng.integers(1, 4, n),
                    "geo_location": pa.array(locations[rng.integers(0, 4, n)]),
                    "traffic_source": rng.integers(1, 4, n),
                }
                writer.write_table(pa.table(columns, schema=schema))
    partial.rename(target / "page_views.csv")


def run_row(
    label: str,
    size: float,
    raw: Path,
    side: str,
    repeat: int,
    n_rows: int,
    counts: dict[str, int],
    seconds: float,
    peak_mb: float,
) -> dict[str, Any]:
    """One measured run as a row of ``prepare.csv``."""
    return {
        "input": label,
        "size": size,
        "ads": int(json.loads((raw / "GENERATED.json").read_text(encoding="utf-8"))["n_ads"]),
        "side": side,
        "repeat": repeat,
        "input_rows": n_rows,
        "clicks_rows": counts.get("clicks_train.csv", 0),
        "seconds": seconds,
        "peak_mb": peak_mb,
        "rows_per_s": n_rows / seconds,
    }


def input_rows(raw: Path) -> dict[str, int]:
    """Data rows of each CSV file of a generated folder, from its GENERATED.json."""
    generated = json.loads((raw / "GENERATED.json").read_text(encoding="utf-8"))
    counts = generated.get("rows") or generated.get("row_counts") or {}
    return {name: int(count) for name, count in counts.items() if name.endswith(".csv")}


def sharing_check(cache: Path, processes: int) -> dict[str, float]:
    """Start processes that map the same cache and read all of it; return their memory in MB."""
    cache_mb = sum(path.stat().st_size for path in cache.glob("*.npy")) / 2**20
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _SHARING_PROBE, str(cache)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(processes)
    ]
    readings = []
    try:
        for child in children:
            assert child.stdout is not None
            readings.append(json.loads(child.stdout.readline()))
    finally:
        for child in children:
            child.communicate(input="")
    private = [(reading["Private_Clean"] + reading["Private_Dirty"]) / 1024 for reading in readings]
    shared = [(reading["Shared_Clean"] + reading["Shared_Dirty"]) / 1024 for reading in readings]
    return {
        "cache_mb": cache_mb,
        "processes": processes,
        "private_mb_mean": sum(private) / len(private),
        "shared_mb_mean": sum(shared) / len(shared),
        "rss_mb_mean": sum(reading["Rss"] for reading in readings) / len(readings) / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    metadata = run_metadata([os.path.relpath(Path(__file__).resolve(), Path.cwd()), *argv], [args.seed])
    write_json(out / "run.json", metadata)
    naive_script = str(Path(__file__).resolve().parent / "naive_prepare.py")
    rows: list[dict[str, Any]] = []

    small, large = args.sizes
    # The inputs: each size with the generator's catalogue for it (ads and documents grow with the size), and the
    # small size with the large size's catalogue (only the displays grow tenfold, as in a sample of the real log).
    inputs = [(small, f"{small:g}", {}), (large, f"{large:g}", {})]
    for size, label, catalogue in [*inputs, (small, f"{small:g}-catalogue-{large:g}", None)]:
        # Generated data, reused when a complete folder of the same parameters is there.
        raw = work / f"generated-{label}"
        if catalogue is None:
            generated = json.loads((work / f"generated-{large:g}" / "GENERATED.json").read_text(encoding="utf-8"))
            catalogue = {"n_ads": generated["n_ads"], "n_documents": generated["n_documents"]}
        if not (raw / "GENERATED.json").is_file():
            logger.info("generating size %g (%s) into %s", size, catalogue or "its own catalogue", raw)
            started = time.perf_counter()
            generate_outbrain(raw, size=size, seed=args.seed, **catalogue)
            logger.info("generated in %.1f s", time.perf_counter() - started)
        counts = input_rows(raw)
        n_rows = sum(counts.get(name, 0) for name in REAL_ROWS)

        # Each side in a fresh process, on a fresh output folder.
        sides = {"streaming": [sys.executable, "-m", "recsys_gym", "prepare", "outbrain", "--raw", str(raw), "--quiet"]}
        if not args.skip_naive:
            sides["naive"] = [sys.executable, naive_script, str(raw)]
        # Both sides in turn, --repeats times, so a change of load hits them alike.
        for repeat in range(args.repeats):
            for side, command in sides.items():
                target = work / f"{side}-{label}"
                shutil.rmtree(target, ignore_errors=True)
                full = [*command, "--out", str(target)] if side == "streaming" else [*command, str(target)]
                seconds, peak_mb, code = run_measured(full, work / f"{side}-{label}.log")
                if code != 0:
                    log = work / f"{side}-{label}.log"
                    raise SystemExit(f"{side} preparation of {label} failed (exit code {code}); see {log}")
                rows.append(run_row(label, size, raw, side, repeat, n_rows, counts, seconds, peak_mb))
                logger.info("%s, %s #%d: %.1f s, peak %.0f MB", side, label, repeat, seconds, peak_mb)

    # page_views.csv beside the larger input: the streaming side only (the obvious approach has no page views).
    small, large = args.sizes
    views_label = f"{large:g}+page_views"
    if args.page_views:
        raw = work / f"generated-{views_label}"
        marker = raw / "PAGE_VIEWS.json"
        wanted = {"rows": args.page_views, "known": args.page_view_known, "seed": args.seed, "quoting": "none"}
        if not marker.is_file() or json.loads(marker.read_text(encoding="utf-8")) != wanted:
            shutil.rmtree(raw, ignore_errors=True)
            logger.info("writing %d page views beside size %g into %s", args.page_views, large, raw)
            write_page_views(work / f"generated-{large:g}", raw, args.page_views, args.page_view_known, args.seed)
            marker.write_text(json.dumps(wanted), encoding="utf-8")
        counts = input_rows(raw)
        for repeat in range(args.repeats):
            target = work / f"streaming-{views_label}"
            shutil.rmtree(target, ignore_errors=True)
            command = [sys.executable, "-m", "recsys_gym", "prepare", "outbrain", "--raw", str(raw), "--quiet", "--out"]
            seconds, peak_mb, code = run_measured([*command, str(target)], work / f"streaming-{views_label}.log")
            if code != 0:
                raise SystemExit(f"streaming preparation of {views_label} failed (exit code {code})")
            n_rows = sum(counts.get(name, 0) for name in REAL_ROWS) + args.page_views
            rows.append(run_row(views_label, large, raw, "streaming", repeat, n_rows, counts, seconds, peak_mb))
            logger.info("streaming, %s #%d: %.1f s, peak %.0f MB", views_label, repeat, seconds, peak_mb)

    # Ratios, the extrapolation to the full data and the sharing check.
    runs = pd.DataFrame(rows)
    runs.to_csv(out / "prepare.csv", index=False)
    # Medians over the repeats: seconds, peak memory and the rate.
    table = (
        runs.groupby(["input", "side"], sort=False)
        .agg(
            size=("size", "first"),
            ads=("ads", "first"),
            input_rows=("input_rows", "first"),
            clicks_rows=("clicks_rows", "first"),
            seconds=("seconds", "median"),
            low=("seconds", "min"),
            high=("seconds", "max"),
            peak_mb=("peak_mb", "median"),
        )
        .reset_index()
    )
    table["rows_per_s"] = table["input_rows"] / table["seconds"]
    stream = table[table["side"] == "streaming"].set_index("input")
    small_label, large_label, fixed_label = f"{small:g}", f"{large:g}", f"{small:g}-catalogue-{large:g}"
    growth = stream.loc[large_label, "peak_mb"] / stream.loc[small_label, "peak_mb"] - 1.0
    growth_fixed = stream.loc[large_label, "peak_mb"] / stream.loc[fixed_label, "peak_mb"] - 1.0
    large_raw = work / f"generated-{large_label}"
    present = [name for name in REAL_ROWS if (large_raw / name).is_file()]
    full_rows = sum(REAL_ROWS[name] for name in present)
    full_minutes = full_rows / stream.loc[large_label, "rows_per_s"] / 60.0
    sharing = sharing_check(work / f"streaming-{large_label}", args.processes)
    metadata["sharing"] = sharing

    lines = [
        "# Preparing Outbrain data: streaming pipeline vs whole-file pandas",
        "",
        f"- data: the built-in generator at sizes {small:g} and {large:g} of the real Kaggle data (seed {args.seed}), and "
        f"size {small:g} with the catalogue (ads, documents) of size {large:g}",
        f"- machine: {metadata['machine']['cpu_count']} CPUs, {metadata['machine']['platform']}; commit {metadata['git']}",
        f"- command: `{metadata['command']}`",
        f"- medians of {args.repeats} runs per input and side, the sides taking turns",
        "",
        "| input | side | ads | input rows | clicks_train rows | seconds (range) | peak memory (MB) | rows/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples():
        lines.append(
            f"| {row.input} | {row.side} | {row.ads:,} | {row.input_rows:,} | {row.clicks_rows:,} | "
            f"{row.seconds:.1f} ({row.low:.1f}–{row.high:.1f}) | {row.peak_mb:,.0f} | {row.rows_per_s:,.0f} |"
        )
    lines += ["", "| measure | value | target |", "|---|---|---|"]
    peak = stream.loc[large_label, "peak_mb"]
    lines.append(f"| streaming peak memory at size {large:g} | {peak:,.0f} MB | < {TARGET_PEAK_MB:,} MB |")
    lines.append(
        f"| its growth from size {small:g} to {large:g}, catalogue {stream.loc[small_label, 'ads']:,} → "
        f"{stream.loc[large_label, 'ads']:,} ads | {100 * growth:+.0f}% "
        f"| <= +{100 * TARGET_GROWTH:.0f}% |"
    )
    lines.append(
        f"| its growth from size {small:g} to {large:g}, same catalogue | {100 * growth_fixed:+.0f}% "
        f"| <= +{100 * TARGET_GROWTH:.0f}% |"
    )
    if not args.skip_naive:
        naive = table[table["side"] == "naive"].set_index("input")
        for label in (small_label, fixed_label, large_label):
            speedup = naive.loc[label, "seconds"] / stream.loc[label, "seconds"]
            lines.append(f"| speed vs naive, input {label} | {speedup:.2f}x | >= {TARGET_SPEEDUP:.0f}x |")
        lines.append(f"| peak memory vs naive at size {large:g} | {peak / naive.loc[large_label, 'peak_mb']:.2f}x | – |")
    lines.append(
        f"| extrapolated time for the full data without page views ({full_rows:,} rows of {len(present)} files) "
        f"| {full_minutes:.1f} min | < {TARGET_FULL_MINUTES:.0f} min |"
    )
    views_note = "`page_views.csv` was not measured (`--page-views 0`)."
    if args.page_views and (
        stream.loc[views_label, "seconds"] - stream.loc[large_label, "seconds"] < 0.1 * stream.loc[large_label, "seconds"]
    ):
        # Too few page views to time apart from the run-to-run spread.
        views_note = (
            f"The {args.page_views:,} page views added less than a tenth to the run's time: too few to measure their "
            "rate (raise --page-views)."
        )
    elif args.page_views:
        extra = stream.loc[views_label, "seconds"] - stream.loc[large_label, "seconds"]
        view_rate = args.page_views / extra
        with_views = full_minutes + REAL_PAGE_VIEW_ROWS / view_rate / 60.0
        metadata["page_views"] = {"rows": args.page_views, "extra_seconds": extra, "rows_per_s": view_rate}
        lines.append(f"| page views: {args.page_views:,} rows beside size {large:g}, extra seconds | {extra:.1f} s | – |")
        lines.append(f"| page-view rate | {view_rate:,.0f} rows/s | – |")
        lines.append(
            f"| peak memory at size {large:g} with page views | {stream.loc[views_label, 'peak_mb']:,.0f} MB "
            f"| < {TARGET_PEAK_MB:,} MB |"
        )
        lines.append(
            f"| extrapolated time for the full data with {REAL_PAGE_VIEW_ROWS:,} page views | {with_views:.1f} min "
            f"| < {TARGET_FULL_MINUTES:.0f} min |"
        )
        views_note = (
            f"Page views: {args.page_views:,} rows in Kaggle's schema written beside size {large:g}, "
            f"{100 * args.page_view_known:.0f}% of them by users with impressions; the rate is those rows over the "
            "seconds they added, and the full-data time adds about 2 billion of them at that rate."
        )
    lines += [
        "",
        f"Sharing: {sharing['processes']} processes mapped the {sharing['cache_mb']:,.0f} MB cache of size {large:g} and read "
        f"all of it; each held {sharing['private_mb_mean']:,.0f} MB private and {sharing['shared_mb_mean']:,.0f} MB shared "
        f"memory (mean resident {sharing['rss_mb_mean']:,.0f} MB): the arrays are mapped once by the system, not copied "
        "per process.",
        "",
        "The extrapolation assumes time linear in rows at the rate of the larger size. " + views_note,
        "",
    ]
    write_report(out, "prepare.md", lines, metadata)
    return 0


if __name__ == "__main__":
    sys.exit(main())
