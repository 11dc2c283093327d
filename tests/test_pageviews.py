"""Tests of the page-view vectors of the streaming preparation: the strict time cut, exact values, bucketing, the env."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from gymnasium.utils.env_checker import check_env

from recsys_gym.cli import main
from recsys_gym.data.dataset import CompactDataset
from recsys_gym.data.prepare import PrepareOptions, _page_view_vectors, prepare_outbrain
from recsys_gym.data.synthetic import generate_outbrain
from recsys_gym.envs.outbrain_rec import OutbrainRecEnv
from recsys_gym.error import DataError

#: Five impressions: aaa at 100, 200, 300 and bbb at 150, 250 (context pages 200, 201, 202).
EVENTS = (
    "display_id,uuid,document_id,timestamp,platform,geo_location\n"
    "1,aaa,200,100,1,US\n"
    "2,bbb,201,150,2,US>CA\n"
    "3,aaa,201,200,1,US\n"
    "4,bbb,202,250,\\N,--\n"
    "5,aaa,200,300,1,\n"
)
CLICKS = (
    "display_id,ad_id,clicked\n"
    "1,10,1\n1,11,0\n"
    "2,11,1\n2,12,0\n"
    "3,12,1\n3,10,0\n"
    "4,10,1\n4,12,0\n"
    "5,11,1\n5,10,0\n5,13,0\n5,14,0\n"
)
#: Every ad shares advertiser 1, so the one-dimensional reduction is positive on every token of the ads.
PROMOTED = "ad_id,document_id,campaign_id,advertiser_id\n10,300,1,1\n11,301,1,1\n12,302,2,1\n13,300,2,1\n14,302,2,1\n"
#: Documents 200-202 and 300-302 have topics the ads know; 203 only topic 9 (no ad has it); 204 has no row.
TOPICS = (
    "document_id,topic_id,confidence_level\n"
    "300,1,0.9\n301,1,0.5\n301,2,0.5\n302,2,0.8\n"
    "200,1,1.0\n201,2,1.0\n202,1,0.5\n202,2,0.5\n203,9,1.0\n"
)
PAGE_VIEWS_HEADER = "uuid,document_id,timestamp,platform,geo_location,traffic_source\n"
#: What each row is for, with impressions aaa@100, aaa@200, aaa@300, bbb@150, bbb@250.
PAGE_VIEWS = PAGE_VIEWS_HEADER + (
    "aaa,200,50,1,US,1\n"  # content, before every impression of aaa
    "aaa,204,60,\\N,,2\n"  # no content row: counts, adds nothing to the mean
    "aaa,203,90,1,US,1\n"  # only an unknown topic: a zero vector, counts only
    "aaa,201,100,1,US,1\n"  # at aaa@100's own time: not before it
    "aaa,202,150,2,US,3\n"
    "bbb,200,10,1,US,1\n"
    "ccc,200,20,1,US,1\n"  # users without an impression
    "ddd,201,30,1,US,1\n"
    "aaa,200,400,1,US,1\n"  # after aaa's last impression: never used
    "bbb,200,10,1,US,1\n"  # a duplicate row
    "bbb,204,200,3,US,2\n"
)

#: log(1001): the count feature's scale.
LOG_SCALE = np.log(1001.0)


def write_raw(folder: Path, page_views: str | None = PAGE_VIEWS) -> Path:
    """The five hand-made files (page_views.csv left out when ``None``)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "events.csv": EVENTS,
        "clicks_train.csv": CLICKS,
        "promoted_content.csv": PROMOTED,
        "documents_topics.csv": TOPICS,
    }
    if page_views is not None:
        files["page_views.csv"] = page_views
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def prepare(raw: Path, out: Path, **options: object) -> CompactDataset:
    settings = {"content_dim": 2, "cf_dim": 0, "page_view_history": 3, **options}
    return prepare_outbrain(raw, out, options=PrepareOptions(**settings), progress=False)  # type: ignore[arg-type]


def test_hand_computed_vectors_in_one_dimension(tmp_path: Path) -> None:
    """With a 1-D reduction every known page is +1; the mean is over the pages with content among the last two."""
    data = prepare(write_raw(tmp_path / "raw"), tmp_path / "out", content_dim=1, page_view_history=2)
    assert list(data.user_ids) == ["aaa", "bbb"] and data.imp_time.tolist() == [100, 200, 300, 150, 250]
    assert data.manifest["page_view_feature_names"] == ["pageviews_log_count", "pageviews_content_0"]
    expected = np.array(
        [
            [np.log(4) / LOG_SCALE, 0.0],  # 50, 60, 90 before it; the last two (204, 203) have no content
            [np.log(6) / LOG_SCALE, 1.0],  # 100 and 150 (201, 202) are the last two
            [np.log(6) / LOG_SCALE, 1.0],  # the view at 400 comes after
            [np.log(2) / LOG_SCALE, 1.0],  # 10 only (its duplicate dropped); 200 is later
            [np.log(3) / LOG_SCALE, 1.0],  # 10 and 200 (204: count only)
        ]
    )
    np.testing.assert_allclose(data.imp_pageviews, expected, rtol=1e-6, atol=0)
    assert data.imp_pageviews.dtype == np.float32
    counts = data.manifest["prepare_counts"]
    assert counts["page_views.csv: rows read"] == 11
    assert counts["page views dropped: user has no impression"] == 2
    assert counts["page views dropped: at or after the user's last impression"] == 1
    assert counts["duplicate page view rows dropped"] == 1
    assert counts["page views kept"] == 7


def test_hand_computed_vectors_are_means_of_content_vectors(tmp_path: Path) -> None:
    """In two dimensions the pages read (all of them context pages here) get their context vectors."""
    data = prepare(write_raw(tmp_path / "raw"), tmp_path / "out")
    assert data.context_ids.tolist() == [200, 201, 202] and data.pageview_dim == 3
    vector = {document: data.context_features[index].astype(np.float64) for index, document in enumerate([200, 201, 202])}
    assert all(np.linalg.norm(value) > 0.99 for value in vector.values())
    expected = np.array(
        [
            [np.log(4) / LOG_SCALE, *vector[200]],  # window 200, 204, 203: only 200 has content
            [np.log(6) / LOG_SCALE, *(vector[201] + vector[202]) / 2],  # window 203, 201, 202
            [np.log(6) / LOG_SCALE, *(vector[201] + vector[202]) / 2],
            [np.log(2) / LOG_SCALE, *vector[200]],
            [np.log(3) / LOG_SCALE, *vector[200]],
        ]
    )
    np.testing.assert_allclose(data.imp_pageviews, expected, rtol=1e-6, atol=1e-7)


def test_a_page_view_at_or_after_an_impression_changes_nothing_of_it(tmp_path: Path) -> None:
    base = prepare(write_raw(tmp_path / "base"), tmp_path / "base-out")
    # Views of aaa at 200 (aaa@200's own time) and at 250 (after it, before aaa@300).
    later = prepare(write_raw(tmp_path / "later", PAGE_VIEWS + "aaa,200,200,1,US,1\naaa,200,250,1,US,1\n"), tmp_path / "l")
    assert np.array_equal(later.item_features, base.item_features)
    assert np.array_equal(later.context_features, base.context_features)
    # Rows 0, 1 (aaa@100, aaa@200) and the rows of bbb are identical to the bit; aaa@300 saw two more pages.
    assert np.array_equal(later.imp_pageviews[[0, 1, 3, 4]], base.imp_pageviews[[0, 1, 3, 4]])
    assert not np.array_equal(later.imp_pageviews[2], base.imp_pageviews[2])
    np.testing.assert_allclose(later.imp_pageviews[2, 0], np.log(8) / LOG_SCALE, rtol=1e-6)

    # A view strictly before aaa@200 does change it (and aaa@300), and nothing earlier.
    earlier = prepare(write_raw(tmp_path / "earlier", PAGE_VIEWS + "aaa,200,199,1,US,1\n"), tmp_path / "e")
    assert np.array_equal(earlier.imp_pageviews[[0, 3, 4]], base.imp_pageviews[[0, 3, 4]])
    assert not np.array_equal(earlier.imp_pageviews[1], base.imp_pageviews[1])
    assert not np.array_equal(earlier.imp_pageviews[2], base.imp_pageviews[2])


def test_many_small_buckets_give_identical_arrays(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw")
    one = prepare(raw, tmp_path / "one")
    many = prepare_outbrain(
        raw,
        tmp_path / "many",
        options=PrepareOptions(content_dim=2, cf_dim=0, page_view_history=3),
        chunk_rows=2,
        bucket_bytes=40,
        progress=False,
    )
    assert np.array_equal(one.imp_pageviews, many.imp_pageviews)
    assert one.manifest["prepare_counts"] == many.manifest["prepare_counts"]


def brute_force(data: CompactDataset, views: pd.DataFrame, history: int) -> np.ndarray:
    """The module docstring's definition, one impression at a time (every page read is a context page here)."""
    views = views.drop_duplicates(["uuid", "document_id", "timestamp"]).sort_values(["timestamp", "document_id"])
    context_row = {int(document): index for index, document in enumerate(data.context_ids)}
    by_user = dict(list(views.groupby("uuid")))
    out = np.zeros((data.n_impressions, 1 + data.context_dim))
    for row in range(data.n_impressions):
        user = data.user_ids[int(data.imp_user[row])]
        group = by_user.get(user, views.iloc[:0])
        before = group.loc[group["timestamp"] < data.imp_time[row], "document_id"].tolist()
        out[row, 0] = min(1.0, np.log1p(len(before)) / LOG_SCALE)
        window = [data.context_features[context_row[document]].astype(np.float64) for document in before[-history:]]
        window = [vector for vector in window if np.any(vector != 0)]
        if window:
            out[row, 1:] = np.mean(window, axis=0)
    return out


@pytest.fixture(scope="module")
def generated_with_views(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """The generator's files at size 0.0002 plus 6,000 page views: half of impression users, half of others, ties included."""
    folder = generate_outbrain(tmp_path_factory.mktemp("generated"), size=0.0002)
    events = pd.read_csv(folder / "events.csv")
    clicks = pd.read_csv(folder / "clicks_train.csv")
    context_pages = events.loc[events["display_id"].isin(clicks["display_id"]), "document_id"].unique()
    rng = np.random.default_rng(7)
    n = 6000
    users = np.where(
        rng.random(n) < 0.5, rng.choice(events["uuid"].unique(), n), [f"{value:014x}" for value in rng.integers(0, 1 << 50, n)]
    )
    # Half of the timestamps are copies of impression times, so equal times are common.
    times = np.where(
        rng.random(n) < 0.5,
        rng.choice(events["timestamp"].to_numpy(), n),
        rng.integers(events["timestamp"].min() - 10_000, events["timestamp"].max(), n),
    )
    views = pd.DataFrame(
        {
            "uuid": users,
            # Pages that are also context pages of training displays, whose vectors the reference below reads.
            "document_id": rng.choice(context_pages, n),
            "timestamp": times,
            "platform": rng.choice(["1", "2", "3", "\\N"], n),
            "geo_location": "US>CA>807",
            "traffic_source": rng.integers(1, 4, n),
        }
    )
    views.to_csv(folder / "page_views.csv", index=False)
    return folder, views


def test_generated_views_match_a_brute_force_reference_in_any_bucketing(
    generated_with_views: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    folder, views = generated_with_views
    one = prepare_outbrain(folder, tmp_path / "one", options=PrepareOptions(page_view_history=5), progress=False)
    many = prepare_outbrain(
        folder,
        tmp_path / "many",
        options=PrepareOptions(page_view_history=5),
        chunk_rows=500,
        bucket_bytes=8000,
        progress=False,
    )
    assert one.pageview_dim == 1 + one.context_dim == 9
    assert np.array_equal(one.imp_pageviews, many.imp_pageviews)
    np.testing.assert_allclose(one.imp_pageviews, brute_force(one, views, 5), rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(one.imp_pageviews) <= 1.0)
    counts = one.manifest["prepare_counts"]
    is_user = views["uuid"].isin(set(one.user_ids))
    assert counts["page_views.csv: rows read"] == 6000
    assert counts["page views dropped: user has no impression"] == int((~is_user).sum())


def test_absent_or_disabled_page_views_give_zero_width_and_the_same_cache(tmp_path: Path) -> None:
    without = prepare(write_raw(tmp_path / "without", page_views=None), tmp_path / "a")
    disabled = prepare(write_raw(tmp_path / "with"), tmp_path / "b", page_views=False)
    for data in (without, disabled):
        assert data.imp_pageviews.shape == (5, 0) and data.pageview_dim == 0
        assert data.manifest["page_view_feature_names"] == []
        assert not any("page view" in name or "page_views" in name for name in data.manifest["prepare_counts"])
    assert any("page_views.csv is missing" in note for note in without.manifest["notes"])
    assert any("page_views=False" in note for note in disabled.manifest["notes"])
    for name in ("imp_time", "imp_clicked", "item_features", "context_features"):
        assert np.array_equal(getattr(without, name), getattr(disabled, name)), name
    # The observation is as before: user block 2F + 1 + 4 + C.
    env = OutbrainRecEnv(dataset=without, k=1)
    assert env.user_dim == 2 * without.item_dim + 5 + without.context_dim
    assert env.observation_space.shape == (env.user_dim + 2 * without.item_dim,)
    # With page views the content features are the same too.
    used = prepare(write_raw(tmp_path / "with"), tmp_path / "c")
    assert np.array_equal(used.item_features, without.item_features)
    assert np.array_equal(used.context_features, without.context_features)


def test_a_page_view_file_with_no_kept_row_keeps_its_columns_and_says_so(tmp_path: Path) -> None:
    header_only = prepare(write_raw(tmp_path / "empty", page_views=PAGE_VIEWS.splitlines()[0] + "\n"), tmp_path / "a")
    assert header_only.imp_pageviews.shape == (5, 3) and not header_only.imp_pageviews.any()
    notes = header_only.manifest["notes"]
    assert any("no page view was kept (0 rows read): every imp_pageviews value is 0" in note for note in notes), notes
    # With page views kept, no such note.
    used = prepare(write_raw(tmp_path / "with"), tmp_path / "b")
    assert not any("no page view was kept" in note for note in used.manifest["notes"])


@pytest.mark.parametrize("obs_mode", ["flat", "dict"])
def test_the_observation_holds_the_vector_and_stays_in_its_space(tmp_path: Path, obs_mode: str) -> None:
    data = prepare(write_raw(tmp_path / "raw"), tmp_path / "out")
    env = OutbrainRecEnv(dataset=data, k=1, obs_mode=obs_mode, split="train")
    width = data.pageview_dim
    assert env.user_dim == 2 * data.item_dim + 5 + data.context_dim + width
    observation, _ = env.reset(seed=0, options={"user_index": 0})
    for row in (0, 1):  # aaa's training impressions at 100 and 200
        user = observation["user"] if obs_mode == "dict" else observation[: env.user_dim]
        assert np.array_equal(user[-width:], data.imp_pageviews[row])
        assert env.observation_space.contains(observation)
        observation, _, terminated, _, _ = env.step(0)
    assert terminated and env.observation_space.contains(observation)
    check_env(env, skip_render_check=True)


def test_bad_page_views_are_named_or_skipped(tmp_path: Path) -> None:
    misspelt = PAGE_VIEWS.replace("timestamp", "timestmp", 1)
    with pytest.raises(DataError, match=r"page_views.csv: missing column\(s\) \['timestamp'\] \(did you mean 'timestmp'"):
        prepare(write_raw(tmp_path / "a", misspelt), tmp_path / "a-out")
    truncated = PAGE_VIEWS + "aaa,200\n"
    with pytest.raises(DataError, match=r"page_views.csv: line 13 has 2 field\(s\), expected 6"):
        prepare(write_raw(tmp_path / "b", truncated), tmp_path / "b-out")
    skipped = prepare_outbrain(
        write_raw(tmp_path / "c", truncated + "bbb,,120,1,US,1\n"),
        tmp_path / "c-out",
        options=PrepareOptions(content_dim=2, cf_dim=0, page_view_history=3),
        on_bad_lines="skip",
        progress=False,
    )
    counts = skipped.manifest["prepare_counts"]
    assert counts["page_views.csv: malformed lines skipped"] == 2 and counts["page_views.csv: rows read"] == 11
    with pytest.raises(DataError, match=r"page_views.csv: line 3 column 'document_id' holds 'x'"):
        prepare(write_raw(tmp_path / "d", PAGE_VIEWS.replace("aaa,204,60", "aaa,x,60")), tmp_path / "d-out")
    with pytest.raises(ValueError, match=r"page_view_history must be an integer >= 1, got 0"):
        PrepareOptions(page_view_history=0)


def test_the_command_line_switch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = write_raw(tmp_path / "raw")
    on = ["prepare", "outbrain", "--raw", str(raw), "--out", str(tmp_path / "on"), "--quiet", "--page-view-history", "2"]
    assert main([*on, "--content-dim", "1"]) == 0
    assert "pageview_dim=2" in capsys.readouterr().out
    assert CompactDataset(tmp_path / "on").manifest["options"]["page_view_history"] == 2
    off = ["prepare", "outbrain", "--raw", str(raw), "--out", str(tmp_path / "off"), "--quiet", "--no-page-views"]
    assert main(off) == 0
    assert "pageview_dim=0" in capsys.readouterr().out


def test_far_apart_timestamps_use_ranks_and_give_the_same_vectors() -> None:
    """Timestamps too far apart for a (user, time) product in int64 are ranked first; the vectors do not change."""
    imp_user, view_user = np.array([0, 0, 1]), np.array([0, 0, 0, 1, 1])
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    has_content = np.array([True, True, True, False, True])
    near = _page_view_vectors(
        imp_user, np.array([20, 40, 30]), view_user, np.array([10, 20, 30, 5, 30]), vectors, has_content, 2
    )
    far = _page_view_vectors(
        imp_user, np.array([20, 1 << 61, 30]), view_user, np.array([10, 20, 30, -(1 << 61), 30]), vectors, has_content, 2
    )
    expected = [[np.log(2) / LOG_SCALE, 1.0, 0.0], [np.log(4) / LOG_SCALE, 0.3, 0.9], [np.log(2) / LOG_SCALE, 0.0, 0.0]]
    np.testing.assert_allclose(near, expected, rtol=1e-6)
    assert np.array_equal(near, far)
