"""The ``recsys-gym`` command line.

- ``recsys-gym prepare outbrain --raw DIR [--out DIR] [options]`` runs
  :func:`recsys_gym.data.prepare.prepare_outbrain` and prints what was read, dropped and why, then the
  prepared dataset's summary. Progress bars go to stderr (``--quiet`` turns them and the log lines off).
- ``recsys-gym generate outbrain --out DIR [--size F] [--seed N]`` writes the built-in synthetic data
  (:func:`recsys_gym.data.synthetic.generate_outbrain`): a raw folder in Kaggle's schema, ready for ``--raw``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from recsys_gym.data.prepare import DEFAULT_CHUNK_ROWS
from recsys_gym.error import DataError, MissingDataError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``recsys-gym``."""
    parser = argparse.ArgumentParser(prog="recsys-gym", description="Tools of the recsys_gym environments.")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="turn raw logs into the environment's cache")
    sources = prepare.add_subparsers(dest="source", required=True)
    outbrain = sources.add_parser(
        "outbrain",
        help="the Kaggle Outbrain Click Prediction files",
        description="Prepare the Kaggle Outbrain files (clicks_train.csv, events.csv, and optionally promoted_content.csv, "
        "documents_*.csv and page_views.csv) in bounded memory.",
    )
    outbrain.add_argument("--raw", required=True, help="folder of the uncompressed Kaggle CSV files")
    outbrain.add_argument(
        "--out", default=None, help="cache folder to write (default: the folder load_dataset uses under --cache-dir)"
    )
    outbrain.add_argument("--cache-dir", default=None, help="where caches live when --out is not given")
    outbrain.add_argument("--min-impressions", type=int, default=1, help="drop users with fewer impressions (default 1)")
    outbrain.add_argument("--start-time", type=int, default=None, help="drop impressions before this timestamp (ms)")
    outbrain.add_argument("--end-time", type=int, default=None, help="drop impressions at or after this timestamp (ms)")
    split = outbrain.add_mutually_exclusive_group()
    split.add_argument("--test-fraction", type=float, default=0.2, help="latest share of impressions held out (default 0.2)")
    split.add_argument("--split-time", type=int, default=None, help="impressions at or after this timestamp (ms) are test")
    outbrain.add_argument("--content-dim", type=int, default=8, help="content embedding size, 0 for none (default 8)")
    outbrain.add_argument("--cf-dim", type=int, default=8, help="co-click embedding size, 0 for none (default 8)")
    outbrain.add_argument("--no-page-views", action="store_true", help="ignore page_views.csv even when the folder has it")
    outbrain.add_argument(
        "--page-view-history",
        type=int,
        default=20,
        help="latest pages read before an impression whose content is averaged (default 20)",
    )
    outbrain.add_argument(
        "--skip-bad-lines", action="store_true", help="skip and count malformed lines and bad displays instead of failing"
    )
    outbrain.add_argument(
        "--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help=f"rows parsed at a time (default {DEFAULT_CHUNK_ROWS:,})"
    )
    outbrain.add_argument(
        "--quiet", action="store_true", help="no progress bars and no log lines; the counts and notes are printed at the end"
    )
    generate = commands.add_parser("generate", help="write the built-in synthetic data as raw files")
    kinds = generate.add_subparsers(dest="source", required=True)
    synthetic = kinds.add_parser(
        "outbrain",
        help="every Kaggle Outbrain file, in its schema and with its statistics",
        description="Write the built-in synthetic click log as the Kaggle Outbrain files (page_views.csv excepted), "
        "a raw folder for `recsys-gym prepare outbrain --raw`.",
    )
    synthetic.add_argument("--out", required=True, help="folder to write (created; files of an earlier run replaced)")
    synthetic.add_argument(
        "--size", type=float, default=0.0005, help="fraction of the real data's counts (default 0.0005; 0.1 is a tenth)"
    )
    synthetic.add_argument("--seed", type=int, default=0, help="random seed: the same arguments write the same bytes")
    return parser


def generate(args: argparse.Namespace) -> int:
    """Run ``recsys-gym generate outbrain``."""
    from recsys_gym.data.synthetic import generate_outbrain

    try:
        folder = generate_outbrain(args.out, size=args.size, seed=args.seed)
    except (ValueError, OSError) as err:
        print(f"recsys-gym generate outbrain: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("recsys-gym generate outbrain: interrupted; the folder has no GENERATED.json and is incomplete", file=sys.stderr)
        return 130
    print(f"wrote {folder}: " + ", ".join(sorted(path.name for path in folder.glob("*.csv"))))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``recsys-gym``; return the exit status (0 done, 1 bad input or options, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        return generate(args)
    # Quiet: errors only (the notes and counts are printed below); else each phase and the counts are logged.
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from recsys_gym.data.prepare import PrepareOptions, format_counts, prepare_outbrain

    try:
        options = PrepareOptions(
            test_fraction=args.test_fraction,
            split_time=args.split_time,
            start_time=args.start_time,
            end_time=args.end_time,
            min_impressions=args.min_impressions,
            content_dim=args.content_dim,
            cf_dim=args.cf_dim,
            page_views=not args.no_page_views,
            page_view_history=args.page_view_history,
        )
        # Log lines are written through tqdm, so they do not break its progress bars.
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():
            dataset = prepare_outbrain(
                args.raw,
                args.out,
                options=options,
                on_bad_lines="skip" if args.skip_bad_lines else "error",
                chunk_rows=args.chunk_rows,
                progress=not args.quiet,
                cache_dir=args.cache_dir,
            )
    except (DataError, MissingDataError, ValueError, OSError) as err:
        # The system's own errors (no space left, no permission, ...) too: one line, not a traceback.
        print(f"recsys-gym prepare outbrain: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("recsys-gym prepare outbrain: interrupted; no cache was written (a later run starts afresh)", file=sys.stderr)
        return 130
    print(f"prepared {dataset.path}")
    if args.quiet:
        # Without --quiet the log above already holds the counts.
        print("read, dropped and kept:")
        print(format_counts(dataset.manifest.get("prepare_counts", {})))
    for note in dataset.manifest.get("notes", []):
        print(f"note: {note}")
    print("dataset: " + ", ".join(f"{key}={value}" for key, value in dataset.summary().items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
