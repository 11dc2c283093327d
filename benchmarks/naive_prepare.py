"""The obvious way to prepare the Outbrain files, the reference ``benchmarks/prepare.py`` measures against.

Each file is read whole with ``pandas.read_csv``, the clicks are merged with their events and the ads
with their landing pages, and the result is grouped and sorted in memory: what one writes first
with pandas. It computes the same core arrays as ``recsys-gym prepare outbrain`` (impressions sorted
by user then time, the ads shown in each, the time split, each ad's training clicks and impressions,
each user's items, and a content embedding of the ads from their landing pages' topics and
categories) and saves them as ``.npy`` files, so both sides do comparable work. It imports only
NumPy, pandas and SciPy, so its peak memory is the data's, not a deep-learning library's.

Run as a script (``python benchmarks/naive_prepare.py RAW_DIR OUT_DIR``); it prints one JSON line of
counts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def naive_prepare(raw_dir: Path, out_dir: Path, test_fraction: float = 0.2, content_dim: int = 8) -> dict[str, int]:
    """Prepare the raw files in memory with whole-file reads and merges; return the counts written.

    :param raw_dir: folder with the Kaggle CSV files (``events.csv``, ``clicks_train.csv``, optional others).
    :param out_dir: folder the arrays are saved into (created).
    :param test_fraction: share of the latest impressions held out.
    :param content_dim: size of the ads' content embedding.
    :return: numbers of impressions, users, items and training impressions.
    """
    out_dir.mkdir(parents=True, exist_ok=True)

    # Whole files, then one merge of every (display, ad) row with its display's event.
    clicks = pd.read_csv(raw_dir / "clicks_train.csv")
    events = pd.read_csv(
        raw_dir / "events.csv",
        usecols=["display_id", "uuid", "document_id", "timestamp", "platform"],
        dtype={"platform": str},
    )
    rows = clicks.merge(events, on="display_id", how="inner").drop_duplicates(["display_id", "ad_id"])

    # Impressions: the clicked row of each display, sorted by user, time and display.
    impressions = rows[rows["clicked"] == 1].sort_values(["uuid", "timestamp", "display_id"], kind="stable")
    impressions = impressions.drop_duplicates("display_id")
    user_codes, users = pd.factorize(impressions["uuid"], sort=True)
    ads = np.sort(rows["ad_id"].unique())
    clicked = np.searchsorted(ads, impressions["ad_id"].to_numpy())
    platform = pd.to_numeric(impressions["platform"], errors="coerce").fillna(0).astype(np.int8).to_numpy()

    # One global time cut.
    times = impressions["timestamp"].to_numpy()
    cut = np.sort(times)[int(len(times) * (1.0 - test_fraction))]
    is_train = times < cut

    # The ads shown in each impression, as CSR in impression order.
    order = pd.Series(np.arange(len(impressions)), index=impressions["display_id"].to_numpy())
    shown = rows[rows["display_id"].isin(order.index)].copy()
    shown["row"] = order.loc[shown["display_id"].to_numpy()].to_numpy()
    shown = shown.sort_values(["row", "clicked"], ascending=[True, False], kind="stable")
    shown_items = np.searchsorted(ads, shown["ad_id"].to_numpy()).astype(np.int32)
    shown_ptr = np.concatenate([[0], np.cumsum(np.bincount(shown["row"].to_numpy(), minlength=len(impressions)))])

    # Training counts per ad, and each user's clicked ads.
    train_clicks = np.bincount(clicked[is_train], minlength=len(ads))
    train_rows = shown["row"].to_numpy()
    train_shown = np.bincount(shown_items[is_train[train_rows]], minlength=len(ads))
    pairs = pd.DataFrame({"user": user_codes, "item": clicked}).drop_duplicates().sort_values(["user", "item"])

    # Content: merge the ads' landing pages with their topics and categories, then a truncated SVD.
    content = np.zeros((len(ads), 0), dtype=np.float32)
    if (raw_dir / "promoted_content.csv").is_file():
        promoted = pd.read_csv(raw_dir / "promoted_content.csv")
        tables = []
        for name, column in (("documents_topics.csv", "topic_id"), ("documents_categories.csv", "category_id")):
            if (raw_dir / name).is_file():
                table = pd.read_csv(raw_dir / name).rename(columns={column: "token"})
                table["token"] = column + ":" + table["token"].astype(str)
                tables.append(table)
        if tables:
            tokens = promoted.merge(pd.concat(tables), on="document_id")
            tokens = tokens[tokens["ad_id"].isin(ads)]
            token_codes, _ = pd.factorize(tokens["token"])
            from scipy import sparse
            from scipy.sparse.linalg import svds

            matrix = sparse.csr_matrix(
                (tokens["confidence_level"].to_numpy(), (np.searchsorted(ads, tokens["ad_id"].to_numpy()), token_codes)),
                shape=(len(ads), token_codes.max() + 1),
            )
            dim = min(content_dim, min(matrix.shape) - 1)
            if dim > 0:
                _, _, right = svds(matrix, k=dim)
                content = np.asarray(matrix @ right.T, dtype=np.float32)

    # Save everything.
    arrays = {
        "imp_user": user_codes.astype(np.int32),
        "imp_time": times.astype(np.int64),
        "imp_context": impressions["document_id"].to_numpy(dtype=np.int64),
        "imp_platform": platform,
        "imp_clicked": clicked.astype(np.int32),
        "imp_is_train": is_train,
        "shown_ptr": shown_ptr.astype(np.int64),
        "shown_items": shown_items,
        "user_items": np.searchsorted(ads, ads[pairs["item"].to_numpy()]).astype(np.int32),
        "item_train_clicks": train_clicks.astype(np.int64),
        "item_train_shown": train_shown.astype(np.int64),
        "item_content": content,
    }
    for name, array in arrays.items():
        np.save(out_dir / f"{name}.npy", array)
    return {
        "impressions": len(impressions),
        "users": len(users),
        "items": len(ads),
        "train_impressions": int(is_train.sum()),
    }


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python benchmarks/naive_prepare.py RAW_DIR OUT_DIR")
    print(json.dumps(naive_prepare(Path(sys.argv[1]), Path(sys.argv[2]))))
