"""Tests of :func:`recsys_gym.data.synthetic.generate_outbrain`: schema, determinism, atomicity and learnable structure."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pandas as pd
import pytest

from recsys_gym.data import synthetic
from recsys_gym.data.outbrain import read_outbrain
from recsys_gym.data.synthetic import GENERATED_FILES, generate_outbrain

HEADERS = {
    "events.csv": "display_id,uuid,document_id,timestamp,platform,geo_location",
    "clicks_train.csv": "display_id,ad_id,clicked",
    "promoted_content.csv": "ad_id,document_id,campaign_id,advertiser_id",
    "documents_topics.csv": "document_id,topic_id,confidence_level",
    "documents_categories.csv": "document_id,category_id,confidence_level",
    "documents_entities.csv": "document_id,entity_id,confidence_level",
    "documents_meta.csv": "document_id,source_id,publisher_id,publish_time",
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default synthetic data, generated once for the module."""
    return generate_outbrain(tmp_path_factory.mktemp("synthetic"))


def read_tables(folder: Path) -> dict[str, pd.DataFrame]:
    """Every generated file as a DataFrame, text columns kept as written."""
    return {
        name: pd.read_csv(folder / name, dtype={"platform": str, "geo_location": str}, keep_default_na=False, na_values=[""])
        for name in GENERATED_FILES
    }


def test_files_follow_the_kaggle_schema(generated: Path) -> None:
    for name, header in HEADERS.items():
        assert (generated / name).read_text().split("\n", 1)[0] == header
    tables = read_tables(generated)
    manifest = json.loads((generated / "GENERATED.json").read_text())
    assert manifest["rows"] == {name: len(table) for name, table in tables.items()}
    assert manifest["seed"] == 0 and manifest["parameters"]["n_users"] == 600

    # Events: display ids in time order, 15 days of ms, Outbrain's platform and geo forms.
    events = tables["events.csv"]
    assert events["display_id"].tolist() == list(range(1, len(events) + 1))
    assert events["timestamp"].is_monotonic_increasing
    assert events["timestamp"].min() >= 0 and events["timestamp"].max() < 15 * 86_400_000
    assert set(events["platform"]) == {"1", "2", "3", "\\N"}
    assert 0 < (events["platform"] == "\\N").mean() < 0.02
    geo = events["geo_location"].fillna("")
    assert geo.map(lambda value: bool(re.fullmatch(r"[A-Z]{2}>[A-Z0-9]{2}>\d{3}|[A-Z]{2}(>[A-Z0-9]{2})?|--|", value))).all()
    forms = {
        "US>CA>807" if value.count(">") == 2 else "GB>H9" if ">" in value else value if value in ("", "--") else "US"
        for value in geo
    }
    assert forms == {"US>CA>807", "GB>H9", "US", "--", ""}
    assert events["uuid"].str.fullmatch(r"[0-9a-f]{14}").all()

    # Clicks: 2 to 12 ads a display in ascending ad_id, exactly one clicked, mean near Kaggle's 5.16.
    clicks = tables["clicks_train.csv"]
    per_display = clicks.groupby("display_id")
    assert per_display.size().between(2, 12).all()
    assert 4.5 < per_display.size().mean() < 6.0
    assert (per_display["clicked"].sum() == 1).all()
    assert clicks.equals(clicks.sort_values(["display_id", "ad_id"]).reset_index(drop=True))
    assert not clicks.duplicated(["display_id", "ad_id"]).any()
    assert set(clicks["display_id"]) == set(events["display_id"])

    # Documents: 1 to 3 topics each, confidence levels in (0, 1].
    topics = tables["documents_topics.csv"]
    assert topics.groupby("document_id").size().between(1, 3).all()
    for name in ("documents_topics.csv", "documents_categories.csv", "documents_entities.csv"):
        assert tables[name]["confidence_level"].between(0, 1, inclusive="right").all()
    assert tables["documents_entities.csv"]["entity_id"].str.fullmatch(r"[0-9a-f]{32}").all()
    assert set(tables["promoted_content.csv"]["document_id"]) <= set(tables["documents_meta.csv"]["document_id"])


def test_the_outbrain_loader_reads_it_without_warning(generated: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        raw = read_outbrain(generated)
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert raw.notes == []
    displays_per_user = raw.impressions.groupby("user").size()
    assert len(displays_per_user) == 600
    assert 10 <= displays_per_user.mean() <= 20
    assert raw.item_content is not None
    tokens = raw.item_content["token"].astype(str)
    for prefix in ("topic:", "category:", "entity:", "source:", "publisher:", "campaign:", "advertiser:"):
        assert tokens.str.startswith(prefix).any()


def test_same_seed_gives_identical_files(tmp_path: Path, generated: Path) -> None:
    again = generate_outbrain(tmp_path / "again", seed=0)
    other = generate_outbrain(tmp_path / "other", seed=1, n_users=50, n_ads=100, n_documents=200)
    for name in (*GENERATED_FILES, "GENERATED.json"):
        assert (again / name).read_bytes() == (generated / name).read_bytes(), name
    assert (other / "events.csv").read_bytes() != (generated / "events.csv").read_bytes()
    assert not list(again.glob(".*.tmp"))


def test_an_interrupted_run_leaves_no_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = generate_outbrain(tmp_path, n_users=20, n_ads=30, n_documents=60)
    assert (folder / "GENERATED.json").is_file()
    write_atomic = synthetic._write_atomic

    def failing_write(path: Path, text: str) -> None:
        if path.name == "documents_topics.csv":
            raise OSError("disk full")
        write_atomic(path, text)

    monkeypatch.setattr(synthetic, "_write_atomic", failing_write)
    with pytest.raises(OSError, match="disk full"):
        generate_outbrain(folder, n_users=20, n_ads=30, n_documents=60, seed=5)
    assert not (folder / "GENERATED.json").exists()


@pytest.mark.parametrize(
    ("argument", "value", "pattern"),
    [
        ("ads_per_display_mean", 13.0, r"ads_per_display_mean=13\.0 is out of range; expected a value \[2\.0, 12\.0\]"),
        ("n_ads", 1, r"n_ads=1 is out of range; expected a value >= 2"),
        ("topic_share", -0.1, r"topic_share=-0\.1 is out of range"),
        ("beta", float("nan"), r"beta=nan must be a finite number"),
    ],
)
def test_bad_arguments_are_named(tmp_path: Path, argument: str, value: float, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        generate_outbrain(tmp_path, **{argument: value})  # type: ignore[arg-type]
    assert not (tmp_path / "events.csv").exists()


def held_out_ctr(folder: Path) -> dict[str, float]:
    """CTR of three pickers on the displays of the last 30% of time, knowing only the earlier displays.

    ``topics`` picks the shown ad whose landing-page topics best match those of the user's earlier
    clicks (ties and users without history: the most clicked ad); ``popular`` picks the shown ad with
    the most earlier clicks; ``random`` is the expected hit rate of a uniform pick.
    """
    tables = read_tables(folder)
    events, clicks = tables["events.csv"], tables["clicks_train.csv"]
    ad_topics = tables["promoted_content.csv"][["ad_id", "document_id"]].merge(
        tables["documents_topics.csv"], on="document_id"
    )
    rows = clicks.merge(events[["display_id", "uuid", "timestamp"]], on="display_id")
    cut = events["timestamp"].quantile(0.7)
    train, test = rows[rows["timestamp"] < cut], rows[rows["timestamp"] >= cut]

    # What the pickers know: earlier clicks per ad, topic weights of each user's earlier clicks.
    train_clicks = train[train["clicked"] == 1]
    ad_clicks = train_clicks["ad_id"].value_counts()
    profile = (
        train_clicks.merge(ad_topics, on="ad_id").groupby(["uuid", "topic_id"])["confidence_level"].sum().rename("profile")
    )
    scored = test.merge(ad_topics, on="ad_id", how="left").merge(profile.reset_index(), on=["uuid", "topic_id"], how="left")
    scored["match"] = scored["confidence_level"].fillna(0) * scored["profile"].fillna(0)
    test = test.merge(scored.groupby(["display_id", "ad_id"])["match"].sum().reset_index(), on=["display_id", "ad_id"])
    test = test.assign(popular=test["ad_id"].map(ad_clicks).fillna(0) + 1e-9 * test["ad_id"])
    test = test.assign(topics=test["match"] + 1e-6 * test["popular"])

    ctr = {
        name: float(test.loc[test.groupby("display_id")[name].idxmax(), "clicked"].mean()) for name in ("topics", "popular")
    }
    ctr["random"] = float((1.0 / test.groupby("display_id").size()).mean())
    return ctr


def test_topics_beat_popularity_which_beats_random(generated: Path) -> None:
    """Held-out displays, picking among the ads really shown: about 0.63 for the topic picker, 0.30 for
    the popular one, 0.21 for random (seed 0; seeds 1 to 3 give 0.62-0.66, 0.25-0.28, 0.21)."""
    ctr = held_out_ctr(generated)
    assert ctr["topics"] > ctr["popular"] + 0.2
    assert ctr["popular"] > ctr["random"] + 0.05


def test_clicked_ads_share_the_users_topics_far_more_than_shown_ads(generated: Path) -> None:
    """Leave one click out: does the ad share a topic with the user's other clicked ads' main topics?"""
    tables = read_tables(generated)
    rows = tables["clicks_train.csv"].merge(tables["events.csv"][["display_id", "uuid"]], on="display_id")
    landing = tables["promoted_content.csv"].set_index("ad_id")["document_id"]
    topics = tables["documents_topics.csv"]
    main_topic = topics.loc[topics.groupby("document_id")["confidence_level"].idxmax()].set_index("document_id")["topic_id"]
    ad_topics = topics.groupby("document_id")["topic_id"].apply(frozenset)

    # Each user's main topics of clicked ads, with multiplicity, so one click can be left out.
    rows = rows.assign(main=rows["ad_id"].map(landing).map(main_topic), topics=rows["ad_id"].map(landing).map(ad_topics))
    clicked = rows[rows["clicked"] == 1]
    user_counts = clicked.groupby(["uuid", "main"]).size()
    counts = {user: group.droplevel(0).to_dict() for user, group in user_counts.groupby(level=0)}

    def shares(row: pd.Series) -> bool:
        mine = dict(counts.get(row["uuid"], {}))
        if row["clicked"] == 1:
            mine[row["main"]] -= 1
        return any(mine.get(topic, 0) > 0 for topic in row["topics"])

    share_clicked = clicked.apply(shares, axis=1).mean()
    not_clicked = rows[rows["clicked"] == 0].sample(n=5000, random_state=0)
    share_shown = not_clicked.apply(shares, axis=1).mean()
    assert share_clicked > 1.5 * share_shown
    assert share_clicked > share_shown + 0.25
