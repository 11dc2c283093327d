"""The obvious way to prepare the Outbrain files, the reference ``benchmarks/prepare.py`` measures against.

Each file is read whole with ``pandas.read_csv``, the clicks are merged with their events and the
document tables with the ads' landing pages and the context pages, and the result is grouped and
sorted in memory: what one writes first with pandas. It computes what ``recsys-gym prepare
outbrain`` computes (impressions sorted by user then time, the ads shown in each, the time split,
each ad's training clicks and impressions, each user's items, the content embedding of ads and
context pages from topics, categories, entities, sources, publishers, campaigns and advertisers, and
the co-click embedding) and saves it as ``.npy`` files, so both sides do the same work; it checks
nothing and counts nothing. It imports only
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


def naive_prepare(
    raw_dir: Path, out_dir: Path, test_fraction: float = 0.2, content_dim: int = 8, cf_dim: int = 8
) -> dict[str, int]:
    """Prepare the raw files in memory with whole-file reads and merges; return the counts written.

    :param raw_dir: folder with the Kaggle CSV files (``events.csv``, ``clicks_train.csv``, optional others).
    :param out_dir: folder the arrays are saved into (created).
    :param test_fraction: share of the latest impressions held out.
    :param content_dim: size of the content embedding of ads and context pages.
    :param cf_dim: size of the ads' co-click embedding.
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

    # Content: whole document tables merged onto the ads' landing pages and onto the context pages, an IDF-weighted
    # truncated SVD of the ads' tokens, and the context pages projected on it.
    from scipy import sparse
    from scipy.sparse.linalg import svds

    item_content = np.zeros((len(ads), 0))
    context_content = np.zeros((0, 0))
    contexts = np.sort(impressions["document_id"].unique())
    if (raw_dir / "promoted_content.csv").is_file():
        promoted = pd.read_csv(raw_dir / "promoted_content.csv")
        promoted = promoted[promoted["ad_id"].isin(ads)]
        tables = []
        for name, column in (
            ("documents_topics.csv", "topic_id"),
            ("documents_categories.csv", "category_id"),
            ("documents_entities.csv", "entity_id"),
        ):
            if (raw_dir / name).is_file():
                table = pd.read_csv(raw_dir / name)
                table["token"] = column.split("_")[0] + ":" + table[column].astype(str)
                tables.append(table[["document_id", "token", "confidence_level"]])
        if (raw_dir / "documents_meta.csv").is_file():
            meta = pd.read_csv(raw_dir / "documents_meta.csv")
            for column in ("source_id", "publisher_id"):
                known = meta[meta[column].notna()]
                tables.append(
                    pd.DataFrame(
                        {
                            "document_id": known["document_id"],
                            "token": column.split("_")[0] + ":" + known[column].astype("int64").astype(str),
                            "confidence_level": 1.0,
                        }
                    )
                )
        documents = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["document_id", "token"])
        landing = promoted.merge(documents, on="document_id")
        item_tokens = pd.concat(
            [
                landing[["ad_id", "token", "confidence_level"]],
                promoted.assign(token="campaign:" + promoted["campaign_id"].astype(str), confidence_level=1.0),
                promoted.assign(token="advertiser:" + promoted["advertiser_id"].astype(str), confidence_level=1.0),
            ],
            ignore_index=True,
        )[["ad_id", "token", "confidence_level"]]
        vocabulary = pd.Index(np.sort(item_tokens["token"].unique()))
        matrix = sparse.csr_matrix(
            (
                item_tokens["confidence_level"].to_numpy(np.float64),
                (np.searchsorted(ads, item_tokens["ad_id"].to_numpy()), vocabulary.get_indexer(item_tokens["token"])),
            ),
            shape=(len(ads), len(vocabulary)),
        )
        fitted = matrix[np.flatnonzero(train_shown > 0)]
        idf = np.log((1.0 + fitted.shape[0]) / (1.0 + np.asarray((fitted > 0).sum(axis=0)).ravel())) + 1.0
        dim = min(content_dim, min(fitted.shape) - 1)
        if dim > 0:
            _, _, right = svds(fitted @ sparse.diags(idf), k=dim)
            item_content = np.asarray((matrix @ sparse.diags(idf)) @ right.T)
            context_tokens = documents[documents["document_id"].isin(contexts)]
            columns = vocabulary.get_indexer(context_tokens["token"])
            known = columns >= 0
            context_matrix = sparse.csr_matrix(
                (
                    context_tokens["confidence_level"].to_numpy(np.float64)[known],
                    (np.searchsorted(contexts, context_tokens["document_id"].to_numpy()[known]), columns[known]),
                ),
                shape=(len(contexts), len(vocabulary)),
            )
            context_content = np.asarray((context_matrix @ sparse.diags(idf)) @ right.T)

    # Co-click embedding: a truncated SVD of the binary training user-ad matrix.
    train_matrix = sparse.csr_matrix(
        (np.ones(int(is_train.sum())), (user_codes[is_train], clicked[is_train])), shape=(len(users), len(ads))
    )
    train_matrix.data = np.minimum(train_matrix.data, 1.0)
    _, _, cf_right = svds(train_matrix, k=min(cf_dim, min(train_matrix.shape) - 1))

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
        "item_content": item_content.astype(np.float32),
        "context_content": context_content.astype(np.float32),
        "item_cf": cf_right.T.astype(np.float32),
        "user_ids": np.asarray(users.astype(str), dtype="S"),
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
