"""Synthetic click logs written in the exact schema of the Kaggle Outbrain Click Prediction files.

:func:`generate_outbrain` is what ``gym.make("OutbrainRec-v0")`` reads when no data is given; its
files go through the same loader as the real ones (:func:`recsys_gym.data.outbrain.read_outbrain`).
``size`` is the fraction of the real data to write: the default (0.0005) gives about 8,400 training
displays in under a second, ``size=0.1`` about 1.7 million in about a minute on two cores (420 MB
at most), in memory bounded by the catalogue (users, ads, documents) and one chunk of displays.

Files written (columns in Kaggle's names and order, comma separated, one header line, ``\\n`` line
ends, no quotes):

============================  =====================================================================
file                          columns and format
============================  =====================================================================
``events.csv``                ``display_id`` (1, 2, ... in time order), ``uuid`` (14 hex digits),
                              ``document_id`` (the page being read), ``timestamp`` (ms in
                              ``[0, days)``, as Kaggle's ms after 1465876799998), ``platform``
                              (``1`` desktop, ``2`` mobile, ``3`` tablet, a few ``\\N``),
                              ``geo_location`` (``US>CA>807``, ``US>CA``, ``GB>H9``, ``US``, ``EU``,
                              ``--`` or empty); training and test displays together
``clicks_train.csv``          ``display_id, ad_id, clicked``: the training displays, 2 to 12 rows
                              each, ads in ascending ``ad_id``, exactly one ``clicked=1``
``clicks_test.csv``           ``display_id, ad_id``: the test displays (events without a row in
                              ``clicks_train.csv``; loaders skip them), ads in ascending ``ad_id``
``promoted_content.csv``      ``ad_id, document_id, campaign_id, advertiser_id``; ``document_id``
                              is the ad's landing page, shared by about three ads
``documents_topics.csv``      ``document_id, topic_id, confidence_level``: 1 to 10 topics a document
                              (mean 3.9), ids ``0 .. n_topics - 1``
``documents_categories.csv``  ``document_id, category_id, confidence_level``: 1 or 2 a document,
                              four-digit ids in ``[1000, 2100]``
``documents_entities.csv``    ``document_id, entity_id, confidence_level``: 0 to 3 a document,
                              entity ids of 32 hex digits as in Kaggle's file
``documents_meta.csv``        ``document_id, source_id, publisher_id, publish_time``
                              (``YYYY-MM-DD HH:MM:SS``); a few publisher ids and times are empty
``GENERATED.json``            the parameters, the seed, the generator version and the row count of
                              every file; written last, so a folder without it is incomplete
============================  =====================================================================

Calibrated statistics (Kaggle's figures; ``size`` scales every count, ``tests/test_synthetic.py``
measures them):

* 87,141,731 rows in ``clicks_train.csv`` over 16,874,593 displays: one click per display, 2 to 12
  ads a display, mean 5.16 (``2 + Binomial(10, 0.316)``).
* 23,120,126 events of 19,794,967 users: 88% of users seen once, the others ``n >= 2`` times with
  probability ``∝ n ** -alpha`` (``alpha`` solved for a mean of 1.168 events a user, about 4.17; at
  most 1,000), a heavy tail. 6,245,533 events (27%) are test displays: all of the last two of the 15
  days and a random share of the earlier ones, as in Kaggle's split.
* Timestamps in ms over 15 days, with a daily cycle (busiest around 20:00 UTC, US afternoon).
* About 560,000 ads in ``promoted_content.csv`` (at least 1,500), 2.9 million documents (at least 4,000),
  300 topics, 97 categories, confidence levels in ``(0, 1]``; ad popularity is Zipf-distributed.
* Dirty values as in Kaggle's files: ``\\N`` among the platforms (0.2% here, rarer in Kaggle's),
  ``geo_location`` in every form listed above, some empty publishers and publish times.

Generative model (all draws from ``numpy.random.default_rng(seed)``, in a fixed order):

1. **Topics and documents.** Topic ``t`` has a Zipf prevalence ``∝ rank(t) ** -1`` and a home
   category. A document's main topic is drawn by prevalence (confidence in ``[0.3, 0.95]``); 0 to 9
   more distinct topics are drawn uniformly (confidence in ``[0.008, 0.15]``). Its categories are the
   home category of its main topic (confidence ``[0.6, 0.95]``) and, for 90% of documents, another
   one (``[0.02, 0.3]``). Documents have a Zipf popularity as pages to read.
2. **Ads.** Ads land on about a third as many documents; each belongs to a campaign (about 16 ads a
   campaign) of an advertiser (about 8 campaigns each). Their popularity is heavy-tailed (Zipf):
   ``pop(a) ∝ rank(a) ** -popularity_exponent`` over a random ranking.
3. **Users.** A user has 1 to 3 distinct favourite topics drawn by prevalence, with preference
   weights ``pref(u, t)`` (a Dirichlet draw over them), one usual platform and one location.
   ``affinity(u, a) = sum_t pref(u, t) * confidence(landing(a), t)``, in ``[0, 0.95]``.
4. **Displays.** The users' events are shuffled over the time line. The page read is, with
   probability ``context_topic_share``, a document whose main topic is one of the user's favourites
   (picked by preference, then by document popularity), else any document by popularity: the page
   tells the interests of a user seen once. ``2 + Binomial(10, p)`` ads are shown, drawn one at a
   time, repeats skipped: with probability ``1 - topic_share`` by popularity, else a favourite
   topic by preference and an ad of that topic by popularity times confidence.
5. **Clicks.** Exactly one shown ad of a training display is clicked, ``a`` with probability
   proportional to ``exp(beta * affinity(u, a) + gamma * log pop(a))``.

What differs from the real data: the real clicks depend on far more than topics and popularity;
real users' events cluster in sessions and their pages follow each other; the real catalogue has
more campaigns per landing page and more structure in entities, sources and publishers; ``\\N``
platforms are commoner here so that small folders hold some; below ``size`` 0.003 the catalogue
minimums give fewer displays an ad than Kaggle's 30 (the default: about 5.6); category ids are drawn, not
Kaggle's; ``page_views.csv`` is not written.

With the defaults, on the held-out last 30% of time, picking among the shown ads the one whose
landing-page topics best match the topics of the page being read hits the click about 0.44 of the
time, against 0.35 for the most clicked one and 0.21 for a random pick (``tests/test_synthetic.py``
checks the ordering), although 88% of users are seen once.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pa_compute
import pyarrow.csv as pa_csv

#: Version of the generator; bumped whenever the same arguments would give different files.
GENERATOR_VERSION = 2

#: Files in the order they are written; ``GENERATED.json`` always comes after them.
GENERATED_FILES = (
    "documents_topics.csv",
    "documents_categories.csv",
    "documents_entities.csv",
    "documents_meta.csv",
    "promoted_content.csv",
    "events.csv",
    "clicks_train.csv",
    "clicks_test.csv",
)

#: Header line of every file, in Kaggle's column names and order.
HEADERS = {
    "events.csv": "display_id,uuid,document_id,timestamp,platform,geo_location",
    "clicks_train.csv": "display_id,ad_id,clicked",
    "clicks_test.csv": "display_id,ad_id",
    "promoted_content.csv": "ad_id,document_id,campaign_id,advertiser_id",
    "documents_topics.csv": "document_id,topic_id,confidence_level",
    "documents_categories.csv": "document_id,category_id,confidence_level",
    "documents_entities.csv": "document_id,entity_id,confidence_level",
    "documents_meta.csv": "document_id,source_id,publisher_id,publish_time",
}

#: Row counts of the real Kaggle files that ``size=1`` reproduces.
KAGGLE_COUNTS = {
    "train_displays": 16_874_593,
    "test_displays": 6_245_533,
    "events": 23_120_126,
    "users": 19_794_967,
    "clicks_train_rows": 87_141_731,
    "ads": 559_583,
    "documents": 2_900_000,
}

_DAY_MS = 86_400_000
_WIDTH = 12  # the most ads a display shows
_MAX_EVENTS_PER_USER = 1000
_MAX_DOCUMENT_TOPICS = 10
_MIN_ADS = 1500
_MIN_DOCUMENTS = 4000
_UNKNOWN_PLATFORM_SHARE = 0.002
_CHUNK_DISPLAYS = 32_768
_US_STATES = ("CA", "TX", "NY", "FL", "IL", "PA", "OH", "MI", "GA", "WA", "SC", "WV", "MA", "AZ", "NC", "NJ", "VA", "IN")
_OTHER_REGIONS = ("GB>H9", "GB>F3", "CA>ON", "CA>BC", "AU>02", "IN>16", "DE>16", "FR>A8", "PH>D9", "ZA>06", "SG>00")
_COUNTRIES = ("US", "CA", "GB", "AU", "IN", "EU", "AP", "SE", "JP")
_WRITE_OPTIONS = pa_csv.WriteOptions(include_header=False, quoting_style="none")


def generate_outbrain(
    out_dir: str | os.PathLike[str],
    *,
    size: float = 0.0005,
    n_ads: int | None = None,
    n_documents: int | None = None,
    n_topics: int = 300,
    n_categories: int = 97,
    once_share: float = 0.88,
    events_per_user_mean: float = 1.168,
    test_share: float = 0.27,
    ads_per_display_mean: float = 5.16,
    topic_share: float = 0.5,
    context_topic_share: float = 0.8,
    beta: float = 10.0,
    gamma: float = 0.5,
    popularity_exponent: float = 1.0,
    days: float = 15.0,
    seed: int = 0,
) -> Path:
    """Write a synthetic click log in the Kaggle Outbrain schema, calibrated on the real data's statistics.

    The files, their columns, the calibrated statistics and the generative model are described in
    the module docstring. The same arguments give byte-identical files. Every file is written under a
    temporary name and renamed into place; ``GENERATED.json`` (parameters, seed, row counts) is removed
    first and written last, so a folder without it was interrupted and must not be trusted. Displays
    are generated and written in chunks, so memory grows with the catalogue (users, ads, documents,
    4 bytes an event) but not with the click rows.

    :param out_dir: the folder to write into; created if needed, files of a previous run replaced.
    :param size: fraction of the real data's counts (users, events, displays, ads, documents), in
        ``(0, 1]``; 0.0005 gives about 9,900 users, 11,600 events and 8,400 training displays.
    :param n_ads: number of ads (``ad_id``); ``None``: ``559,583 * size``, at least 1,500.
    :param n_documents: number of documents (landing pages and pages being read); ``None``:
        ``2,900,000 * size``, at least 4,000.
    :param n_topics: number of topics (``topic_id``), at least 3 (Kaggle: 300).
    :param n_categories: number of categories (``category_id``), in ``[2, 1101]`` (Kaggle: 97).
    :param once_share: share of users with exactly one event, in ``[0, 1)`` (Kaggle: 0.88).
    :param events_per_user_mean: mean number of events a user (Kaggle: 1.168); the users seen more than
        once must average between 2.05 and 50 events.
    :param test_share: expected share of events that are test displays (no row in ``clicks_train.csv``,
        listed in ``clicks_test.csv``), in ``[0, 0.9]`` (Kaggle: 0.27).
    :param ads_per_display_mean: mean number of ads shown per display, in ``[2, 12]`` (Kaggle: 5.16).
    :param topic_share: probability that a shown ad is drawn from the user's favourite topics rather than
        from all ads, in ``[0, 1]``; 0 draws them by popularity alone.
    :param context_topic_share: probability that the page being read is about a favourite topic, in
        ``[0, 1]``.
    :param beta: weight of the user-ad topic affinity in the click logit (0: topics do not matter).
    :param gamma: weight of the ad's log popularity in the click logit.
    :param popularity_exponent: Zipf exponent of ad popularity (0: all ads equally popular).
    :param days: time span of the events, in days (Kaggle: 15).
    :param seed: seed of ``numpy.random.default_rng``.
    :return: ``out_dir`` as a :class:`~pathlib.Path`.
    :raises ValueError: naming the argument whose value is out of range.
    """
    params: dict[str, float | None] = {
        "size": size,
        "n_ads": n_ads,
        "n_documents": n_documents,
        "n_topics": n_topics,
        "n_categories": n_categories,
        "once_share": once_share,
        "events_per_user_mean": events_per_user_mean,
        "test_share": test_share,
        "ads_per_display_mean": ads_per_display_mean,
        "topic_share": topic_share,
        "context_topic_share": context_topic_share,
        "beta": beta,
        "gamma": gamma,
        "popularity_exponent": popularity_exponent,
        "days": days,
        "seed": seed,
    }
    _check_params(params)
    n_ads = n_ads if n_ads is not None else max(_MIN_ADS, round(KAGGLE_COUNTS["ads"] * size))
    n_documents = n_documents if n_documents is not None else max(_MIN_DOCUMENTS, round(KAGGLE_COUNTS["documents"] * size))
    n_users = max(1, round(KAGGLE_COUNTS["users"] * size))
    rng = np.random.default_rng(seed)
    out_path = Path(out_dir).expanduser()
    out_path.mkdir(parents=True, exist_ok=True)
    (out_path / "GENERATED.json").unlink(missing_ok=True)
    rows: dict[str, int] = {}

    # Topics: Zipf prevalence over a random ranking, a home category each.
    topic_prevalence = (1.0 + rng.permutation(n_topics)) ** -1.0
    topic_prevalence /= topic_prevalence.sum()
    category_ids = np.sort(rng.choice(1101, size=n_categories, replace=False)) + 1000
    topic_home_category = rng.integers(0, n_categories, size=n_topics)

    # Documents: topics, categories, entities, metadata; written at once (catalogue-sized).
    document_ids = _sparse_ids(rng, n_documents)
    doc_topics, doc_confidence = _document_topics(rng, n_documents, topic_prevalence)
    rows["documents_topics.csv"] = _write_file(
        out_path, "documents_topics.csv", [_topics_table(document_ids, doc_topics, doc_confidence)]
    )
    tables = {
        "documents_categories.csv": _categories_table(rng, document_ids, topic_home_category[doc_topics[:, 0]], category_ids),
        "documents_entities.csv": _entities_table(rng, document_ids, doc_topics[:, 0], n_topics),
        "documents_meta.csv": _meta_table(rng, document_ids),
    }
    for file_name, table in tables.items():
        rows[file_name] = _write_file(out_path, file_name, [table])
    del tables
    document_popularity = (1.0 + rng.permutation(n_documents)) ** -1.0

    # Ads: landing documents (about three ads each), campaigns, advertisers, Zipf popularity.
    ad_ids = _sparse_ids(rng, n_ads)
    n_landing = min(n_documents, max(1, math.ceil(n_ads / 3)))
    landing_pages = rng.choice(n_documents, size=n_landing, replace=False)
    landing = landing_pages[np.concatenate([rng.permutation(n_landing), rng.integers(0, n_landing, size=n_ads)])[:n_ads]]
    n_campaigns = max(1, round(n_ads / 16))
    campaign = rng.integers(0, n_campaigns, size=n_ads)
    advertiser_of_campaign = rng.integers(0, max(1, round(n_campaigns / 8)), size=n_campaigns)
    promoted = pa.table(
        {
            "ad_id": ad_ids,
            "document_id": document_ids[landing],
            "campaign_id": campaign + 1,
            "advertiser_id": advertiser_of_campaign[campaign] + 1,
        }
    )
    rows["promoted_content.csv"] = _write_file(out_path, "promoted_content.csv", [promoted])
    popularity = (1.0 + rng.permutation(n_ads)) ** -popularity_exponent
    popularity /= popularity.sum()
    ad_topics, ad_confidence = doc_topics[landing].astype(np.int16), doc_confidence[landing].astype(np.float32)

    # Users: events (88% once, a power-law tail), favourite topics, usual platform, location.
    events_of_user = _events_per_user(rng, n_users, once_share, events_per_user_mean)
    favourites, favourite_cdf, favourite_weight = _user_favourites(rng, n_users, topic_prevalence)
    uuid_values = _distinct_uint64(rng, n_users, 16**14)
    user_platform = rng.choice(np.array([1, 2, 3], dtype=np.int8), size=n_users, p=[0.32, 0.52, 0.16])
    locations, location_weights = _location_catalogue(rng)
    user_location = rng.choice(len(locations), size=n_users, p=location_weights).astype(np.int16)

    # Displays: the users' events shuffled over the time line, counted per time bucket.
    display_user = rng.permutation(np.repeat(np.arange(n_users, dtype=np.int32), events_of_user))
    del events_of_user
    n_events = len(display_user)
    span = max(1, int(days * _DAY_MS))
    bucket_edges, bucket_counts = _time_buckets(rng, n_events, span)
    test_tail = min(test_share, 2.0 / 15.0)
    early_test_share = (test_share - test_tail) / (1.0 - test_tail)
    test_from = int(span * (1.0 - test_tail)) if test_tail > 0 else span

    # Samplers: documents by main topic (popularity), ads by topic (popularity x confidence), ads by popularity.
    documents_by_topic = _GroupSampler(doc_topics[:, 0], document_popularity, n_topics)
    del doc_topics, doc_confidence
    document_cdf = np.cumsum(document_popularity) / document_popularity.sum()
    used = ad_confidence > 0
    ads_by_topic = _GroupSampler(
        ad_topics[used], (popularity[:, None] * ad_confidence)[used], n_topics, members=np.nonzero(used)[0]
    )
    popularity_cdf = np.cumsum(popularity) / popularity.sum()
    log_popularity = np.log(popularity)
    p_extra = (ads_per_display_mean - 2.0) / 10.0

    # Displays in chunks of time buckets: draw, then append to the three streamed files.
    streamed = ("events.csv", "clicks_train.csv", "clicks_test.csv")
    rows.update(dict.fromkeys(streamed, 0))
    n_train = 0
    with contextlib.ExitStack() as stack:
        handles = {file_name: stack.enter_context(_atomic_file(out_path / file_name)) for file_name in streamed}
        for file_name, handle in handles.items():
            handle.write((HEADERS[file_name] + "\n").encode())
        for first_bucket, last_bucket in _chunks(bucket_counts, _CHUNK_DISPLAYS):
            # Times within the chunk's buckets, sorted, and who is reading what.
            counts = bucket_counts[first_bucket:last_bucket]
            starts, widths = bucket_edges[first_bucket:last_bucket], np.diff(bucket_edges[first_bucket : last_bucket + 1])
            first_display = int(bucket_counts[:first_bucket].sum())
            n_chunk = int(counts.sum())
            times = np.sort(
                np.repeat(starts, counts) + np.floor(rng.random(n_chunk) * np.repeat(widths, counts)).astype(np.int64)
            )
            users = display_user[first_display : first_display + n_chunk].astype(np.int64)
            display_ids = np.arange(first_display + 1, first_display + n_chunk + 1, dtype=np.int64)
            is_test = (times >= test_from) | (rng.random(n_chunk) < early_test_share)
            platform = np.where(rng.random(n_chunk) < 0.1, rng.integers(1, 4, size=n_chunk), user_platform[users])
            platform[rng.random(n_chunk) < _UNKNOWN_PLATFORM_SHARE] = 0
            user_topic = _favourite_draw(favourites[users], favourite_cdf[users], rng.random(n_chunk))
            on_topic = (rng.random(n_chunk) < context_topic_share) & (documents_by_topic.mass[user_topic] > 0)
            context = np.minimum(np.searchsorted(document_cdf, rng.random(n_chunk), side="right"), n_documents - 1)
            context[on_topic] = documents_by_topic.draw(user_topic[on_topic], rng.random(int(on_topic.sum())))
            events = pa.table(
                {
                    "display_id": display_ids,
                    "uuid": _hex_strings(uuid_values[users], 14),
                    "document_id": document_ids[context],
                    "timestamp": times,
                    "platform": pa.array(np.array(["\\N", "1", "2", "3"], dtype=object)[platform], pa.string()),
                    "geo_location": pa.array(locations[user_location[users]], pa.string()),
                }
            )
            rows["events.csv"] += _write_table(handles["events.csv"], events)

            # Ads shown (mostly by popularity, partly from the user's topics), then the click of training displays.
            n_shown = np.minimum(2 + rng.binomial(10, p_extra, size=n_chunk), n_ads)
            shown = _shown_ads(
                rng, favourites[users], favourite_cdf[users], n_shown, popularity_cdf, ads_by_topic, topic_share
            )
            affinity = _affinity(favourites[users], favourite_weight[users], ad_topics, ad_confidence, shown)
            safe = np.maximum(shown, 0)
            logits = beta * affinity + gamma * log_popularity[safe] + rng.gumbel(size=shown.shape)
            logits[shown < 0] = -np.inf
            clicked_ad = safe[np.arange(n_chunk), np.argmax(logits, axis=1)]
            ordered = np.sort(np.where(shown < 0, n_ads, shown), axis=1)
            for file_name, keep in (("clicks_train.csv", ~is_test), ("clicks_test.csv", is_test)):
                display_rows, slots = np.nonzero((ordered < n_ads) & keep[:, None])
                columns = {"display_id": display_ids[display_rows], "ad_id": ad_ids[ordered[display_rows, slots]]}
                if file_name == "clicks_train.csv":
                    columns["clicked"] = (ordered[display_rows, slots] == clicked_ad[display_rows]).astype(np.int64)
                rows[file_name] += _write_table(handles[file_name], pa.table(columns))
            n_train += int((~is_test).sum())

    # GENERATED.json last: a folder without it was interrupted.
    manifest = {
        "generator": "recsys_gym.data.synthetic.generate_outbrain",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "parameters": params,
        "rows": {file_name: rows[file_name] for file_name in GENERATED_FILES},
        "n_users": n_users,
        "n_ads": n_ads,
        "n_documents": n_documents,
        "n_displays": n_train,
        "n_test_displays": n_events - n_train,
    }
    with _atomic_file(out_path / "GENERATED.json") as handle:
        handle.write((json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return out_path


def _check_params(params: dict[str, float | None]) -> None:
    """Raise a ValueError naming the first argument out of its range."""
    ranges: dict[str, tuple[float, float | None]] = {
        "size": (1e-7, 1.0),
        "n_ads": (2, None),
        "n_documents": (1, None),
        "n_topics": (3, None),
        "n_categories": (2, 1101),
        "once_share": (0.0, 0.999),
        "events_per_user_mean": (1.0, None),
        "test_share": (0.0, 0.9),
        "ads_per_display_mean": (2.0, 12.0),
        "topic_share": (0.0, 1.0),
        "context_topic_share": (0.0, 1.0),
        "popularity_exponent": (0.0, None),
        "days": (1e-3, None),
    }
    for name, (low, high) in ranges.items():
        value = params[name]
        if value is None and name in ("n_ads", "n_documents"):
            continue
        if value is None or not np.isfinite(value) or value < low or (high is not None and value > high):
            allowed = f"[{low}, {high}]" if high is not None else f">= {low}"
            raise ValueError(f"{name}={value!r} is out of range; expected a value {allowed}")
    for name in ("beta", "gamma"):
        value = params[name]
        if value is None or not np.isfinite(value):
            raise ValueError(f"{name}={value!r} must be a finite number")
    repeat_mean = _repeat_mean(float(params["once_share"] or 0.0), float(params["events_per_user_mean"] or 1.0))
    if not 2.05 <= repeat_mean <= 50.0:
        raise ValueError(
            f"events_per_user_mean={params['events_per_user_mean']!r} with once_share={params['once_share']!r} gives the "
            f"users seen more than once {repeat_mean:.3g} events on average; expected a value in [2.05, 50]"
        )


def _repeat_mean(once_share: float, events_per_user_mean: float) -> float:
    """Mean number of events of the users seen more than once."""
    return 1.0 + (events_per_user_mean - 1.0) / (1.0 - once_share)


def _events_per_user(rng: np.random.Generator, n_users: int, once_share: float, mean: float) -> np.ndarray:
    """Events a user: 1 with probability ``once_share``, else ``n >= 2`` with probability ``∝ n ** -alpha``."""
    support = np.arange(2, _MAX_EVENTS_PER_USER + 1, dtype=np.float64)
    target = _repeat_mean(once_share, mean)

    # Solve alpha for the target mean by bisection: the tail's mean falls as alpha grows.
    low, high = 0.0, 50.0
    for _ in range(100):
        alpha = (low + high) / 2.0
        weights = support**-alpha
        if (support * weights).sum() / weights.sum() > target:
            low = alpha
        else:
            high = alpha
    tail_cdf = np.cumsum(weights) / weights.sum()
    repeat = rng.random(n_users) >= once_share
    events = np.ones(n_users, dtype=np.int64)
    events[repeat] = 2 + np.minimum(np.searchsorted(tail_cdf, rng.random(int(repeat.sum())), side="right"), len(support) - 1)
    return events


def _sparse_ids(rng: np.random.Generator, count: int) -> np.ndarray:
    """Draw ``count`` distinct ids in ``[1, 2 * count]``, sorted, so ids are not simply row numbers."""
    return np.sort(rng.choice(2 * count, size=count, replace=False)).astype(np.int64) + 1


def _distinct_uint64(rng: np.random.Generator, count: int, bound: int) -> np.ndarray:
    """Draw ``count`` distinct integers in ``[0, bound)`` (``bound <= 2 ** 64``), in random order."""
    while True:
        values = rng.integers(0, bound, size=count, dtype=np.uint64)
        if len(np.unique(values)) == count:
            return values


def _hex_strings(values: np.ndarray, digits: int) -> pa.Array:
    """Format unsigned integers as lowercase hexadecimal strings of ``digits`` digits (at most 16)."""
    shifts = np.arange(4 * (digits - 1), -1, -4, dtype=np.uint64)
    nibbles = (values.astype(np.uint64)[:, None] >> shifts) & np.uint64(15)
    characters = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[nibbles.astype(np.int64)]
    return pa.array(np.ascontiguousarray(characters).view(f"S{digits}").ravel(), pa.binary()).cast(pa.string())


def _document_topics(
    rng: np.random.Generator, n_documents: int, topic_prevalence: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(topics, confidence)``, both ``(n_documents, 10)``; unused slots hold the main topic with confidence 0."""
    n_topics = len(topic_prevalence)
    width = min(_MAX_DOCUMENT_TOPICS, n_topics)
    topics = np.empty((n_documents, width), dtype=np.int64)
    topics[:, 0] = np.minimum(
        np.searchsorted(np.cumsum(topic_prevalence), rng.random(n_documents), side="right"), n_topics - 1
    )

    # More distinct topics: shift the main one by distinct non-zero offsets, drawn again on a clash (0 if still clashing).
    offsets = np.zeros((n_documents, width - 1), dtype=np.int64)
    for slot in range(width - 1):
        candidate = rng.integers(1, n_topics, size=n_documents)
        clash = (offsets[:, :slot] == candidate[:, None]).any(axis=1)
        for _ in range(64):
            if not clash.any():
                break
            candidate[clash] = rng.integers(1, n_topics, size=int(clash.sum()))
            clash = (offsets[:, :slot] == candidate[:, None]).any(axis=1)
        offsets[:, slot] = np.where(clash, 0, candidate)
    topics[:, 1:] = (topics[:, :1] + offsets) % n_topics

    # Confidence: high for the main topic, low for the others; 1 + Binomial(9, 0.32) topics used (mean 3.9).
    confidence = np.empty((n_documents, width))
    confidence[:, 0] = rng.uniform(0.3, 0.95, size=n_documents)
    confidence[:, 1:] = rng.uniform(0.008, 0.15, size=(n_documents, width - 1))
    n_used = 1 + rng.binomial(width - 1, 2.9 / 9.0, size=n_documents)
    unused = np.arange(width)[None, :] >= n_used[:, None]
    unused[:, 1:] |= offsets == 0
    topics[unused] = np.broadcast_to(topics[:, :1], topics.shape)[unused]
    confidence[unused] = 0.0
    return topics, np.round(confidence, 6)


def _topics_table(document_ids: np.ndarray, topics: np.ndarray, confidence: np.ndarray) -> pa.Table:
    """The rows of ``documents_topics.csv``: one per used topic slot, the main topic first."""
    rows, slots = np.nonzero(confidence > 0)
    return pa.table(
        {"document_id": document_ids[rows], "topic_id": topics[rows, slots], "confidence_level": confidence[rows, slots]}
    )


def _categories_table(
    rng: np.random.Generator, document_ids: np.ndarray, home_category: np.ndarray, category_ids: np.ndarray
) -> pa.Table:
    """The rows of ``documents_categories.csv``: the home category of the main topic, usually one more."""
    n_documents, n_categories = len(document_ids), len(category_ids)
    second = (home_category + rng.integers(1, n_categories, size=n_documents)) % n_categories
    has_second = rng.random(n_documents) < 0.9
    confidence = np.round(np.stack([rng.uniform(0.6, 0.95, n_documents), rng.uniform(0.02, 0.3, n_documents)], axis=1), 6)
    categories = np.stack([home_category, second], axis=1)
    rows, slots = np.nonzero(np.stack([np.ones(n_documents, dtype=bool), has_second], axis=1))
    return pa.table(
        {
            "document_id": document_ids[rows],
            "category_id": category_ids[categories[rows, slots]],
            "confidence_level": confidence[rows, slots],
        }
    )


def _entities_table(rng: np.random.Generator, document_ids: np.ndarray, main_topic: np.ndarray, n_topics: int) -> pa.Table:
    """The rows of ``documents_entities.csv``: 0 to 3 entities a document, drawn among its main topic's entities."""
    n_documents = len(document_ids)
    per_topic = max(2, n_documents // (3 * n_topics))
    names = _hex_strings(_distinct_uint64(rng, per_topic * n_topics, 2**64), 16)
    names = pa_compute.binary_join_element_wise(names, pa_compute.utf8_reverse(names), "")
    n_entities = rng.choice(4, size=n_documents, p=[0.2, 0.25, 0.3, 0.25])
    rows = np.repeat(np.arange(n_documents), n_entities)
    entity = per_topic * main_topic[rows] + rng.integers(0, per_topic, size=len(rows))
    confidence = np.round(rng.uniform(0.1, 1.0, size=len(rows)), 6)
    return pa.table(
        {"document_id": document_ids[rows], "entity_id": names.take(pa.array(entity)), "confidence_level": confidence}
    )


def _meta_table(rng: np.random.Generator, document_ids: np.ndarray) -> pa.Table:
    """The rows of ``documents_meta.csv``: source, its publisher, publish time; a few publishers and times empty."""
    n_documents = len(document_ids)
    n_sources = max(2, n_documents // 200)
    publisher_of_source = rng.integers(1, max(2, n_sources // 10) + 1, size=n_sources)
    source = rng.integers(0, n_sources, size=n_documents)
    publisher = pa.array(publisher_of_source[source], mask=rng.random(n_documents) < 0.03)
    seconds_before = rng.integers(3600, 6 * 365 * 86_400, size=n_documents)
    published = np.datetime64("2016-06-14T00:00:00") - seconds_before.astype("timedelta64[s]")
    publish_time = np.char.replace(np.datetime_as_string(published, unit="s"), "T", " ")
    return pa.table(
        {
            "document_id": document_ids,
            "source_id": source + 1,
            "publisher_id": publisher,
            "publish_time": pa.array(publish_time, pa.string(), mask=rng.random(n_documents) < 0.05),
        }
    )


def _user_favourites(
    rng: np.random.Generator, n_users: int, topic_prevalence: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(favourites, cdf, weight)``, each ``(n_users, 3)``: 1 to 3 distinct favourite topics a user.

    Unused slots repeat the first favourite with weight 0 (their cumulative weight is 1). Users are
    drawn in blocks, so the temporary arrays stay small whatever their number.
    """
    n_topics = len(topic_prevalence)
    topic_cdf = np.cumsum(topic_prevalence)
    favourites = np.empty((n_users, 3), dtype=np.int16)
    cdf = np.empty((n_users, 3), dtype=np.float32)
    weight = np.empty((n_users, 3), dtype=np.float32)
    for start in range(0, n_users, _CHUNK_DISPLAYS):
        count = min(_CHUNK_DISPLAYS, n_users - start)

        # Eight draws by prevalence; the first three distinct ones are the candidates.
        draws = np.minimum(np.searchsorted(topic_cdf, rng.random((count, 8)), side="right"), n_topics - 1)
        first = _first_occurrences(draws)
        rank = np.cumsum(first, axis=1)
        block = np.repeat(draws[:, :1], 3, axis=1)
        available = np.ones(count, dtype=np.int64)
        for slot in (1, 2):
            has = (first & (rank == slot + 1)).any(axis=1)
            column = np.argmax(first & (rank == slot + 1), axis=1)
            block[has, slot] = draws[has, column[has]]
            available += has

        # Preference weights over 1 to 3 of them (a Dirichlet draw), and their cumulative sums.
        n_favourites = np.minimum(rng.integers(1, 4, size=count), available)
        block_weight = rng.dirichlet(np.full(3, 2.0), size=count)
        block_weight[np.arange(3)[None, :] >= n_favourites[:, None]] = 0.0
        block_weight /= block_weight.sum(axis=1, keepdims=True)
        block_cdf = np.cumsum(block_weight, axis=1)
        block_cdf[:, -1] = 1.0
        favourites[start : start + count], cdf[start : start + count] = block, block_cdf
        weight[start : start + count] = block_weight
    return favourites, cdf, weight


def _favourite_draw(favourites: np.ndarray, cdf: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """One favourite topic per row, drawn by preference; ``uniform`` has one value per row (or per draw, trailing axes)."""
    slot = (cdf.reshape(cdf.shape[0], *([1] * (uniform.ndim - 1)), 3) <= uniform[..., None]).sum(axis=-1)
    slot = np.minimum(slot, 2)
    return np.take_along_axis(favourites, slot.reshape(len(slot), -1), axis=1).reshape(uniform.shape)


def _location_catalogue(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``geo_location`` values in Kaggle's forms with their shares: ``US>CA>807`` 78%, ``US>CA`` 2%, ``GB>H9`` 15.5%,
    countries (``US``, ``EU``, ...) 4%, ``--`` 0.3%, empty 0.2%."""
    dmas = rng.integers(500, 882, size=(len(_US_STATES), 6))
    forms: list[tuple[list[str], float]] = [
        ([f"US>{state}>{dma}" for state, row in zip(_US_STATES, dmas, strict=True) for dma in row], 0.78),
        ([f"US>{state}" for state in _US_STATES], 0.02),
        (list(_OTHER_REGIONS), 0.155),
        (list(_COUNTRIES), 0.04),
        (["--"], 0.003),
        ([""], 0.002),
    ]
    values: list[str] = []
    weights: list[np.ndarray] = []
    for names, share in forms:
        zipf = (1.0 + rng.permutation(len(names))) ** -1.0
        values.extend(names)
        weights.append(share * zipf / zipf.sum())
    shares = np.concatenate(weights)
    return np.array(values, dtype=object), shares / shares.sum()


def _time_buckets(rng: np.random.Generator, n_events: int, span: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``[0, span)`` ms into one-minute buckets and count the events of each, with a daily cycle.

    :return: bucket edges (``n_buckets + 1``, ms) and event counts (``n_buckets``).
    """
    n_buckets = max(1, math.ceil(span / 60_000))
    edges = (np.arange(n_buckets + 1, dtype=np.int64) * span) // n_buckets
    hour = (edges[:-1] % _DAY_MS) / 3_600_000.0
    density = (1.0 + 0.6 * np.cos(2.0 * np.pi * (hour - 20.0) / 24.0)) * np.diff(edges)
    return edges, rng.multinomial(n_events, density / density.sum())


def _chunks(counts: np.ndarray, target: int) -> Iterator[tuple[int, int]]:
    """Runs ``[first, last)`` of consecutive buckets holding about ``target`` events each (a bucket is never split)."""
    cumulative = np.cumsum(counts)
    first = 0
    while first < len(counts):
        already = cumulative[first - 1] if first else 0
        last = int(np.searchsorted(cumulative, already + target, side="right"))
        last = min(len(counts), max(last, first + 1))
        yield first, last
        first = last


class _GroupSampler:
    """Draw members of a group with probability proportional to their weight (inverse CDF, one array per catalogue).

    :param groups: group of each (member, group) pair.
    :param weights: weight of each pair.
    :param n_groups: number of groups.
    :param members: member of each pair; ``arange`` when ``None``.
    """

    def __init__(self, groups: np.ndarray, weights: np.ndarray, n_groups: int, members: np.ndarray | None = None) -> None:
        order = np.argsort(groups, kind="stable")
        self.members = (members if members is not None else np.arange(len(groups)))[order]
        sorted_groups, sorted_weights = groups[order], weights[order]
        self.mass = np.bincount(sorted_groups, weights=sorted_weights, minlength=n_groups)
        self.starts = np.searchsorted(sorted_groups, np.arange(n_groups))
        self.ends = np.searchsorted(sorted_groups, np.arange(n_groups), side="right")
        before = np.cumsum(self.mass) - self.mass
        safe_mass = np.where(self.mass > 0, self.mass, 1.0)
        self.cdf = sorted_groups + (np.cumsum(sorted_weights) - before[sorted_groups]) / safe_mass[sorted_groups]

    def draw(self, groups: np.ndarray, uniform: np.ndarray) -> np.ndarray:
        """One member of each given group (which must have mass), for uniforms in ``[0, 1)``."""
        position = np.searchsorted(self.cdf, groups + uniform, side="right")
        position = np.clip(position, self.starts[groups], np.maximum(self.ends[groups] - 1, self.starts[groups]))
        return self.members[np.minimum(position, len(self.members) - 1)]


def _shown_ads(
    rng: np.random.Generator,
    favourites: np.ndarray,
    favourite_cdf: np.ndarray,
    n_shown: np.ndarray,
    popularity_cdf: np.ndarray,
    ads_by_topic: _GroupSampler,
    topic_share: float,
) -> np.ndarray:
    """Ads shown in each display: ``(n_displays, 12)`` ad indices, -1 past ``n_shown``."""
    n_displays, n_ads = len(n_shown), len(popularity_cdf)
    shown = np.full((n_displays, _WIDTH), -1, dtype=np.int64)

    # Draw candidates (mostly by popularity, else by popularity within a favourite topic) and keep the first
    # n_shown distinct ones; the rare display with too few distinct draws draws more.
    rows = np.arange(n_displays)
    candidates = np.zeros((n_displays, 0), dtype=np.int64)
    attempt = 0
    while len(rows):
        draws = (len(rows), 2 * _WIDTH)
        by_popularity = np.minimum(np.searchsorted(popularity_cdf, rng.random(draws), side="right"), n_ads - 1)
        topic = _favourite_draw(favourites[rows], favourite_cdf[rows], rng.random(draws))
        from_topic = (rng.random(draws) < topic_share) & (ads_by_topic.mass[topic] > 0)
        if attempt >= 8:
            # Only extreme settings get here (a pool smaller than the display): draw uniformly so it ends.
            by_popularity = rng.integers(0, n_ads, size=draws)
            from_topic[:] = False
        attempt += 1
        by_topic = by_popularity.copy()
        by_topic[from_topic] = ads_by_topic.draw(topic[from_topic], rng.random(int(from_topic.sum())))
        candidates = np.hstack([candidates, by_topic])
        first = _first_occurrences(candidates)
        rank = np.cumsum(first, axis=1)
        enough = rank[:, -1] >= n_shown[rows]
        hit_rows, hit_columns = np.nonzero(first & (rank <= n_shown[rows][:, None]) & enough[:, None])
        shown[rows[hit_rows], rank[hit_rows, hit_columns] - 1] = candidates[hit_rows, hit_columns]
        rows, candidates = rows[~enough], candidates[~enough]
    return shown


def _affinity(
    favourites: np.ndarray, weight: np.ndarray, ad_topics: np.ndarray, ad_confidence: np.ndarray, shown: np.ndarray
) -> np.ndarray:
    """``sum_t pref(u, t) * confidence(landing(a), t)`` for every shown ad, ``(n_displays, 12)``."""
    safe = np.maximum(shown, 0)
    topics, confidence = ad_topics[safe], ad_confidence[safe]
    affinity = np.zeros(shown.shape)
    for slot in range(favourites.shape[1]):
        match = topics == favourites[:, slot, None, None]
        affinity += weight[:, slot, None] * (confidence * match).sum(axis=2)
    return affinity


def _first_occurrences(values: np.ndarray) -> np.ndarray:
    """Mask of the entries of each row that are the first occurrence of their value in the row."""
    order = np.argsort(values, axis=1, kind="stable")
    sorted_values = np.take_along_axis(values, order, axis=1)
    starts = np.ones(values.shape, dtype=bool)
    starts[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    first = np.zeros(values.shape, dtype=bool)
    np.put_along_axis(first, order, starts, axis=1)
    return first


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` (named after this process) and rename it into place on success.

    On an error the temporary file is removed and ``path`` is left as it was.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            yield handle
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _write_table(handle: BinaryIO, table: pa.Table) -> int:
    """Append ``table``'s rows to an open CSV file (no header, no quotes, nulls as empty fields); return the row count."""
    pa_csv.write_csv(table, handle, _WRITE_OPTIONS)
    return table.num_rows


def _write_file(folder: Path, file_name: str, tables: list[pa.Table]) -> int:
    """Write a whole file atomically: its header line, then the rows of ``tables``; return the row count."""
    with _atomic_file(folder / file_name) as handle:
        handle.write((HEADERS[file_name] + "\n").encode())
        return sum(_write_table(handle, table) for table in tables)
