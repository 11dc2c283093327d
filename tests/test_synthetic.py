"""Tests of :func:`recsys_gym.data.synthetic.generate_outbrain`: schema, calibrated statistics, size,
determinism, atomicity and learnable structure."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pandas as pd
import pytest

from recsys_gym.data import synthetic
from recsys_gym.data.outbrain import read_outbrain
from recsys_gym.data.synthetic import GENERATED_FILES, HEADERS, generate_outbrain

DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default synthetic data (``size=0.0005``), generated once for the module."""
    return generate_outbrain(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def tables(generated: Path) -> dict[str, pd.DataFrame]:
    """Every file of the default data as a DataFrame, text columns kept as written."""
    return read_tables(generated)


def read_tables(folder: Path) -> dict[str, pd.DataFrame]:
    """Every generated file as a DataFrame, text columns kept as written."""
    return {
        name: pd.read_csv(folder / name, dtype={"platform": str, "geo_location": str}, keep_default_na=False, na_values=[""])
        for name in GENERATED_FILES
    }


def geo_form(value: str) -> str:
    """The form of a ``geo_location`` value: ``A>B>C``, ``A>B``, or the value itself for ``US``, ``EU``, ``--``, empty."""
    if value.count(">") == 2:
        return "A>B>C"
    if ">" in value:
        return "A>B"
    return value if value in ("US", "EU", "--", "") else "country"


def test_files_follow_the_kaggle_schema(generated: Path, tables: dict[str, pd.DataFrame]) -> None:
    for name, header in HEADERS.items():
        text = (generated / name).read_text()
        assert text.split("\n", 1)[0] == header
        assert '"' not in text and "\r" not in text and text.endswith("\n")
    manifest = json.loads((generated / "GENERATED.json").read_text())
    assert manifest["rows"] == {name: len(table) for name, table in tables.items()}
    assert manifest["generator_version"] == synthetic.GENERATOR_VERSION == 2
    assert manifest["parameters"]["size"] == 0.0005 and manifest["seed"] == 0
    assert (manifest["n_users"], manifest["n_ads"], manifest["n_documents"]) == (9897, 1500, 4000)

    # Events: display ids in time order, uuids of 14 hex digits, Kaggle's platform and geo forms.
    events = tables["events.csv"]
    assert events["display_id"].tolist() == list(range(1, len(events) + 1))
    assert events["timestamp"].is_monotonic_increasing
    assert events["uuid"].str.fullmatch(r"[0-9a-f]{14}").all()
    assert set(events["platform"]) == {"1", "2", "3", "\\N"}
    geo = events["geo_location"].fillna("")
    assert geo.map(lambda value: bool(re.fullmatch(r"[A-Z]{2}>[A-Z0-9]{2}>\d{3}|[A-Z]{2}(>[A-Z0-9]{2})?|--|", value))).all()
    assert set(geo.map(geo_form)) == {"A>B>C", "A>B", "US", "EU", "country", "--", ""}
    assert geo.str.fullmatch(r"US>[A-Z]{2}").any() and geo.str.fullmatch(r"GB>[A-Z0-9]{2}").any()

    # Training displays: 2 to 12 ads in ascending ad_id, exactly one clicked; test displays have no click.
    clicks, test = tables["clicks_train.csv"], tables["clicks_test.csv"]
    per_display = clicks.groupby("display_id")
    assert per_display.size().between(2, 12).all()
    assert (per_display["clicked"].sum() == 1).all() and set(clicks["clicked"]) == {0, 1}
    for table in (clicks, test):
        assert table.equals(table.sort_values(["display_id", "ad_id"]).reset_index(drop=True))
        assert not table.duplicated(["display_id", "ad_id"]).any()
    assert test.groupby("display_id").size().between(2, 12).all()
    train_displays, test_displays = set(clicks["display_id"]), set(test["display_id"])
    assert not train_displays & test_displays and train_displays | test_displays == set(events["display_id"])
    assert len(train_displays) == manifest["n_displays"] and len(test_displays) == manifest["n_test_displays"]
    assert set(clicks["ad_id"]) | set(test["ad_id"]) <= set(tables["promoted_content.csv"]["ad_id"])

    # Documents: 1 to 10 topics, 1 or 2 categories, 0 to 3 entities; confidence levels in (0, 1].
    topics = tables["documents_topics.csv"]
    assert topics.groupby("document_id").size().between(1, 10).all()
    assert tables["documents_categories.csv"].groupby("document_id").size().between(1, 2).all()
    assert tables["documents_entities.csv"].groupby("document_id").size().between(1, 3).all()
    for name in ("documents_topics.csv", "documents_categories.csv", "documents_entities.csv"):
        assert tables[name]["confidence_level"].between(0, 1, inclusive="right").all()
    assert tables["documents_entities.csv"]["entity_id"].str.fullmatch(r"[0-9a-f]{32}").all()
    meta = tables["documents_meta.csv"]
    assert set(tables["promoted_content.csv"]["document_id"]) | set(events["document_id"]) <= set(meta["document_id"])
    assert meta["publisher_id"].isna().any() and meta["publish_time"].isna().any()
    assert meta["publish_time"].dropna().str.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d").all()


def test_statistics_match_kaggles(tables: dict[str, pd.DataFrame]) -> None:
    """Measured on the default data (about 9,900 users, 8,400 training displays), within sampling tolerances."""
    events, clicks, test = tables["events.csv"], tables["clicks_train.csv"], tables["clicks_test.csv"]

    # Ads per display: Kaggle's mean 5.16 (a standard error here of about 0.016).
    assert abs(clicks.groupby("display_id").size().mean() - 5.16) < 0.1
    assert abs(test.groupby("display_id").size().mean() - 5.16) < 0.15

    # Users: 88% seen once (standard error about 0.003), 1.168 events a user, a tail of users seen many times.
    events_per_user = events["uuid"].value_counts()
    assert abs((events_per_user == 1).mean() - 0.88) < 0.015
    assert abs(events_per_user.mean() - 1.168) < 0.03
    assert events_per_user.max() >= 8 and (events_per_user >= 5).sum() >= 10

    # Test displays: 27% of events, and every display of the last two days.
    test_displays = events["display_id"].isin(test["display_id"])
    assert abs(test_displays.mean() - 0.27) < 0.02
    assert test_displays[events["timestamp"] >= 13 * DAY_MS].all()
    assert not test_displays[events["timestamp"] < 13 * DAY_MS].all()

    # Timestamps in ms over 15 days (Kaggle: 0 to about 1.3e9), busier in the evening (UTC) than at dawn.
    assert 0 <= events["timestamp"].min() < DAY_MS / 100 and 14.9 * DAY_MS < events["timestamp"].max() < 15 * DAY_MS
    hour = (events["timestamp"] % DAY_MS) // 3_600_000
    assert (hour == 20).sum() > 2 * (hour == 8).sum()

    # 300 topics (ids 0..299) and 97 categories; confidence levels spread over (0, 1) like Kaggle's floats.
    topics, categories = tables["documents_topics.csv"], tables["documents_categories.csv"]
    assert sorted(set(topics["topic_id"])) == list(range(300))
    assert categories["category_id"].nunique() == 97 and categories["category_id"].between(1000, 2100).all()
    assert topics["confidence_level"].min() < 0.01 and topics["confidence_level"].max() > 0.9
    assert abs(len(topics) / topics["document_id"].nunique() - 3.9) < 0.1

    # Dirty values: a few \N platforms, every geo form.
    assert 0 < (events["platform"] == "\\N").mean() < 0.005

    # Heavy-tailed ad popularity: the top 1% of ads fill more than a fifth of the rows, a random 1% far less.
    shown = clicks["ad_id"].value_counts()
    assert shown.head(15).sum() > 0.2 * len(clicks)
    assert shown.sample(15, random_state=0).sum() < 0.05 * len(clicks)


def test_the_outbrain_loader_reads_it_and_skips_the_test_displays(
    generated: Path, tables: dict[str, pd.DataFrame], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        raw = read_outbrain(generated)
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    n_test = tables["clicks_test.csv"]["display_id"].nunique()
    assert raw.notes == [f"skipped {n_test} row(s) of events.csv without clicks in clicks_train.csv (e.g. test displays)"]
    assert len(raw.impressions) == tables["clicks_train.csv"]["display_id"].nunique()
    assert raw.item_content is not None
    tokens = raw.item_content["token"].astype(str)
    for prefix in ("topic:", "category:", "entity:", "source:", "publisher:", "campaign:", "advertiser:"):
        assert tokens.str.startswith(prefix).any()


def test_same_arguments_give_identical_files(tmp_path: Path, generated: Path) -> None:
    again = generate_outbrain(tmp_path / "again")
    other = generate_outbrain(tmp_path / "other", seed=1)
    for name in (*GENERATED_FILES, "GENERATED.json"):
        assert (again / name).read_bytes() == (generated / name).read_bytes(), name
    assert (other / "events.csv").read_bytes() != (generated / "events.csv").read_bytes()
    assert not list(again.glob(".*.tmp"))


def test_size_scales_the_counts(tmp_path: Path) -> None:
    """Ten times the size gives ten times the users (exactly, from Kaggle's 19,794,967) and about ten times the rows;
    the catalogue scales too, above its minimums (1,500 ads, 4,000 documents)."""
    small = generate_outbrain(tmp_path / "small", size=0.0002, seed=3)
    large = generate_outbrain(tmp_path / "large", size=0.002, seed=3)
    manifests = [json.loads((folder / "GENERATED.json").read_text()) for folder in (small, large)]
    assert [(m["n_users"], m["n_ads"], m["n_documents"]) for m in manifests] == [(3959, 1500, 4000), (39590, 1500, 5800)]
    for name in ("events.csv", "clicks_train.csv", "clicks_test.csv"):
        ratio = manifests[1]["rows"][name] / manifests[0]["rows"][name]
        assert 9.0 < ratio < 11.0, (name, ratio)
    assert 9.0 < manifests[1]["n_displays"] / manifests[0]["n_displays"] < 11.0


def test_catalogue_sizes_can_be_given(tmp_path: Path) -> None:
    folder = generate_outbrain(tmp_path, size=0.0001, n_ads=40, n_documents=90, n_topics=5, n_categories=3, test_share=0.0)
    tables = read_tables(folder)
    assert len(tables["promoted_content.csv"]) == 40 and len(tables["documents_meta.csv"]) == 90
    assert set(tables["documents_topics.csv"]["topic_id"]) <= set(range(5))
    assert tables["documents_categories.csv"]["category_id"].nunique() <= 3
    assert len(tables["clicks_test.csv"]) == 0 and (folder / "clicks_test.csv").read_text() == "display_id,ad_id\n"
    assert set(tables["clicks_train.csv"]["display_id"]) == set(tables["events.csv"]["display_id"])


def test_an_interrupted_run_leaves_no_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = generate_outbrain(tmp_path, size=0.0001)
    assert (folder / "GENERATED.json").is_file()
    before = (folder / "clicks_train.csv").read_bytes()
    write_table = synthetic._write_table

    def failing_write(handle: object, table: object) -> int:
        if getattr(handle, "name", "").startswith(str(folder / ".clicks_train.csv")):
            raise OSError("disk full")
        return write_table(handle, table)  # type: ignore[arg-type]

    monkeypatch.setattr(synthetic, "_write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        generate_outbrain(folder, size=0.0001, seed=5)
    assert not (folder / "GENERATED.json").exists()
    assert not list(folder.glob(".*.tmp"))
    assert (folder / "clicks_train.csv").read_bytes() == before


@pytest.mark.parametrize(
    ("argument", "value", "pattern"),
    [
        ("size", 0.0, r"size=0\.0 is out of range; expected a value \[1e-07, 1\.0\]"),
        ("size", 1.5, r"size=1\.5 is out of range"),
        ("ads_per_display_mean", 13.0, r"ads_per_display_mean=13\.0 is out of range; expected a value \[2\.0, 12\.0\]"),
        ("n_ads", 1, r"n_ads=1 is out of range; expected a value >= 2"),
        ("n_categories", 2000, r"n_categories=2000 is out of range; expected a value \[2, 1101\]"),
        ("topic_share", -0.1, r"topic_share=-0\.1 is out of range"),
        ("once_share", 1.0, r"once_share=1\.0 is out of range; expected a value \[0\.0, 0\.999\]"),
        ("test_share", 0.95, r"test_share=0\.95 is out of range"),
        ("events_per_user_mean", 1.05, r"events_per_user_mean=1\.05 with once_share=0\.88 gives .* 1\.42 events on average"),
        ("beta", float("nan"), r"beta=nan must be a finite number"),
    ],
)
def test_bad_arguments_are_named(tmp_path: Path, argument: str, value: float, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        generate_outbrain(tmp_path, **{argument: value})  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


def held_out_ctr(tables: dict[str, pd.DataFrame]) -> dict[str, float]:
    """CTR of three pickers among the shown ads of the displays of the last 30% of time.

    ``context`` picks the ad whose landing-page topics best match the topics of the page being read
    (ties: the most clicked ad); ``popular`` picks the ad with the most clicks in the earlier
    displays; ``random`` is the expected hit rate of a uniform pick.
    """
    events, clicks, topics = tables["events.csv"], tables["clicks_train.csv"], tables["documents_topics.csv"]
    ad_topics = tables["promoted_content.csv"][["ad_id", "document_id"]].merge(topics, on="document_id")
    rows = clicks.merge(events[["display_id", "document_id", "timestamp"]], on="display_id")
    cut = events["timestamp"].quantile(0.7)
    train, test = rows[rows["timestamp"] < cut], rows[rows["timestamp"] >= cut]

    # Score each shown ad: topic overlap with the page being read, earlier clicks.
    page_topics = topics.rename(columns={"confidence_level": "page_confidence"})
    scored = test[["display_id", "ad_id", "document_id"]].merge(ad_topics.drop(columns="document_id"), on="ad_id", how="left")
    scored = scored.merge(page_topics, on=["document_id", "topic_id"], how="left")
    scored["match"] = scored["confidence_level"].fillna(0) * scored["page_confidence"].fillna(0)
    test = test.merge(scored.groupby(["display_id", "ad_id"])["match"].sum().reset_index(), on=["display_id", "ad_id"])
    ad_clicks = train.loc[train["clicked"] == 1, "ad_id"].value_counts()
    test = test.assign(popular=test["ad_id"].map(ad_clicks).fillna(0) + 1e-9 * test["ad_id"])
    test = test.assign(context=test["match"] + 1e-6 * test["popular"])

    ctr = {
        name: float(test.loc[test.groupby("display_id")[name].idxmax(), "clicked"].mean()) for name in ("context", "popular")
    }
    ctr["random"] = float((1.0 / test.groupby("display_id").size()).mean())
    return ctr


def test_the_page_read_beats_popularity_which_beats_random(tables: dict[str, pd.DataFrame]) -> None:
    """Held-out displays, picking among the ads really shown, although 88% of users are seen once: about 0.44
    for the page picker, 0.35 for the popular one, 0.21 for random (seed 0; seeds 1 to 3 give 0.47-0.50,
    0.31-0.36, 0.21)."""
    ctr = held_out_ctr(tables)
    assert ctr["context"] > ctr["popular"] + 0.05
    assert ctr["popular"] > ctr["random"] + 0.08
    assert abs(ctr["random"] - 1 / 5.16) < 0.03


def test_clicked_ads_share_the_pages_main_topic_far_more_than_shown_ads(tables: dict[str, pd.DataFrame]) -> None:
    """Does the ad's landing page have the main topic of the page being read among its topics?"""
    topics = tables["documents_topics.csv"]
    main_topic = topics.drop_duplicates("document_id").set_index("document_id")["topic_id"]
    ad_topics = tables["promoted_content.csv"].merge(topics, on="document_id")[["ad_id", "topic_id"]]
    rows = tables["clicks_train.csv"].merge(tables["events.csv"][["display_id", "document_id"]], on="display_id")
    rows = rows.assign(topic_id=rows["document_id"].map(main_topic))
    shares = rows.merge(ad_topics.assign(shares=True), on=["ad_id", "topic_id"], how="left")["shares"].fillna(False)
    shares = shares.astype(bool).to_numpy()
    clicked = rows["clicked"].to_numpy() == 1
    share_clicked, share_shown = shares[clicked].mean(), shares[~clicked].mean()
    assert share_clicked > 1.5 * share_shown
    assert share_clicked > share_shown + 0.2
