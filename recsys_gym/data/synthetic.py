"""Synthetic click logs written in the exact schema of the Kaggle Outbrain Click Prediction files.

:func:`generate_outbrain` is what ``gym.make("OutbrainRec-v0")`` reads when no data is given; its
files go through the same loader as the real ones (:func:`recsys_gym.data.outbrain.read_outbrain`).

Files written (columns in Kaggle's names and order, comma separated, one header line):

============================  =====================================================================
file                          columns and format
============================  =====================================================================
``events.csv``                ``display_id`` (1, 2, ... in time order), ``uuid`` (14 hex digits),
                              ``document_id`` (the page being read), ``timestamp`` (ms in
                              ``[0, days)``, as Kaggle's ms after 1465876799998), ``platform``
                              (``1`` desktop, ``2`` mobile, ``3`` tablet, a few ``\\N``),
                              ``geo_location`` (``US>CA>807``, ``US``, ``GB>H9``, ``--`` or empty)
``clicks_train.csv``          ``display_id, ad_id, clicked``: 2 to 12 rows per display, ads in
                              ascending ``ad_id``, exactly one ``clicked=1``
``promoted_content.csv``      ``ad_id, document_id, campaign_id, advertiser_id``; ``document_id``
                              is the ad's landing page
``documents_topics.csv``      ``document_id, topic_id, confidence_level``: 1 to 3 topics a document
``documents_categories.csv``  ``document_id, category_id, confidence_level``: 1 or 2 a document
``documents_entities.csv``    ``document_id, entity_id, confidence_level``: 0 or 1 a document,
                              entity ids of 32 hex digits as in Kaggle's file
``documents_meta.csv``        ``document_id, source_id, publisher_id, publish_time``
                              (``YYYY-MM-DD HH:MM:SS``); a few publisher ids and times are empty
``GENERATED.json``            the parameters, the seed and the row count of every file; written
                              last, so a folder without it is incomplete
============================  =====================================================================

Generative model (all draws from ``numpy.random.default_rng(seed)``):

1. **Topics and documents.** Topic ``t`` has a prevalence (a Dirichlet draw) and a home category.
   A document has 1 to 3 distinct topics: the first drawn by prevalence with confidence in
   ``[0.5, 0.95]``, the others uniformly with confidence in ``[0.05, 0.4]``. Its categories are the
   home category of its first topic (confidence ``[0.6, 0.95]``) and, for 30% of documents, one more.
2. **Ads.** Each ad lands on its own document (distinct while ``n_ads <= n_documents``) and
   belongs to a campaign of an advertiser. Its popularity is heavy-tailed (Zipf):
   ``pop(a) ∝ rank(a) ** -popularity_exponent`` over a random ranking.
3. **Users.** A user has 1 to 3 favourite topics drawn by prevalence, with preference weights
   ``pref(u, t)`` (a Dirichlet draw over them, 0 elsewhere), one usual platform and one location.
   ``affinity(u, a) = sum_t pref(u, t) * confidence(landing(a), t)``, in ``[0, 0.95]``.
4. **Displays.** A user has ``1 + Poisson(displays_per_user_mean - 1)`` displays at uniform times.
   The page read is, with probability ``context_topic_share``, a document whose first topic is one of
   the user's favourites (picked by preference), else any document. ``2 + Binomial(10, p)`` ads are
   shown (``p`` set by ``ads_per_display_mean``), drawn one at a time, repeats skipped: with
   probability ``1 - topic_share`` an ad drawn by popularity, else a favourite topic drawn by
   preference and an ad whose landing page has that topic, drawn by popularity. So the shown ads
   come mostly from the popular head and partly from the user's topics.
5. **Clicks.** Exactly one shown ad is clicked, ``a`` with probability proportional to
   ``exp(beta * affinity(u, a) + gamma * log pop(a))``.

With the defaults, on each user's later displays, picking the shown ad whose topics best match the
topics of the user's earlier clicks hits the click far more often than picking the most popular
shown ad, which in turn beats a random pick: about 0.63, 0.30 and 0.21 of the held-out displays
(``tests/test_synthetic.py`` checks the ordering). Under the paper's protocol (random negatives
from the whole catalogue) popularity is a much stronger cue, and a policy that combines it with the
user's topics beats it: at ``k = 10``, about 0.62 for the most popular candidate and 0.73 for a
hand-made score of popularity plus topic and co-click similarity to the user's history.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

#: Version of the generator; bumped whenever the same arguments would give different files.
GENERATOR_VERSION = 1

#: Files in the order they are written; ``GENERATED.json`` always comes after them.
GENERATED_FILES = (
    "events.csv",
    "clicks_train.csv",
    "promoted_content.csv",
    "documents_topics.csv",
    "documents_categories.csv",
    "documents_entities.csv",
    "documents_meta.csv",
)

_DAY_MS = 86_400_000
_US_STATES = ("CA", "TX", "NY", "FL", "IL", "PA", "OH", "MI", "GA", "WA", "SC", "WV", "MA", "AZ", "NC")
_OTHER_REGIONS = ("GB>H9", "GB>F3", "CA>ON", "CA>BC", "AU>02", "IN>16", "DE>16", "FR>A8", "PH>D9", "ZA>06")
_OTHER_COUNTRIES = ("CA", "GB", "AU", "IN", "EU", "SE", "JP")


def generate_outbrain(
    out_dir: str | os.PathLike[str],
    *,
    n_users: int = 600,
    n_ads: int = 1500,
    n_documents: int = 4000,
    n_topics: int = 40,
    n_categories: int = 20,
    displays_per_user_mean: float = 12.0,
    ads_per_display_mean: float = 5.2,
    topic_share: float = 0.6,
    context_topic_share: float = 0.5,
    beta: float = 10.0,
    gamma: float = 0.3,
    popularity_exponent: float = 1.0,
    days: float = 15.0,
    seed: int = 0,
) -> Path:
    """Write a synthetic click log in the Kaggle Outbrain schema, with learnable structure.

    The files, their columns and the generative model are described in the module docstring. The
    same arguments give byte-identical files. Every file is written under a temporary name and
    renamed into place; ``GENERATED.json`` (parameters, seed, row counts) is removed first and written
    last, so a folder without it was interrupted and must not be trusted.

    :param out_dir: the folder to write into; created if needed, files of a previous run replaced.
    :param n_users: number of users (``uuid``).
    :param n_ads: number of ads (``ad_id``), at least 2.
    :param n_documents: number of documents: landing pages of ads and pages being read.
    :param n_topics: number of topics (``topic_id``), at least 3.
    :param n_categories: number of categories (``category_id``), at least 2.
    :param displays_per_user_mean: mean number of displays per user (at least 1 each).
    :param ads_per_display_mean: mean number of ads shown per display, in ``[2, 12]`` (Kaggle: 5.16).
    :param topic_share: probability that a shown ad is drawn from the user's favourite topics rather than
        from all ads, in ``[0, 1]``; 0 draws them by popularity alone.
    :param context_topic_share: probability that the page being read is about a favourite topic.
    :param beta: weight of the user-ad topic affinity in the click logit (0: topics do not matter).
    :param gamma: weight of the ad's log popularity in the click logit.
    :param popularity_exponent: Zipf exponent of ad popularity (0: all ads equally popular).
    :param days: time span of the displays, in days (Kaggle: 15).
    :param seed: seed of ``numpy.random.default_rng``.
    :return: ``out_dir`` as a :class:`~pathlib.Path`.
    :raises ValueError: naming the argument whose value is out of range.
    """
    params = {
        "n_users": n_users,
        "n_ads": n_ads,
        "n_documents": n_documents,
        "n_topics": n_topics,
        "n_categories": n_categories,
        "displays_per_user_mean": displays_per_user_mean,
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
    rng = np.random.default_rng(seed)
    out_path = Path(out_dir).expanduser()
    out_path.mkdir(parents=True, exist_ok=True)
    (out_path / "GENERATED.json").unlink(missing_ok=True)

    # Topics, documents and their metadata.
    topic_prevalence = rng.dirichlet(np.ones(n_topics))
    topic_home_category = rng.integers(0, n_categories, size=n_topics)
    document_ids = _sparse_ids(rng, n_documents)
    doc_topics, doc_topic_confidence = _document_topics(rng, n_documents, topic_prevalence)
    tables = {
        "documents_topics.csv": _topics_table(document_ids, doc_topics, doc_topic_confidence),
        "documents_categories.csv": _categories_table(rng, document_ids, topic_home_category[doc_topics[:, 0]], n_categories),
        "documents_entities.csv": _entities_table(rng, document_ids, doc_topics[:, 0], n_topics),
        "documents_meta.csv": _meta_table(rng, document_ids),
    }

    # Ads: landing document, campaign, advertiser and a heavy-tailed popularity.
    ad_ids = _sparse_ids(rng, n_ads)
    landing = rng.choice(n_documents, size=n_ads, replace=n_ads > n_documents)
    n_campaigns = max(1, n_ads // 5)
    campaign = rng.integers(0, n_campaigns, size=n_ads)
    advertiser_of_campaign = rng.integers(0, max(1, n_ads // 20), size=n_campaigns)
    tables["promoted_content.csv"] = pd.DataFrame(
        {
            "ad_id": ad_ids,
            "document_id": document_ids[landing],
            "campaign_id": campaign + 1,
            "advertiser_id": advertiser_of_campaign[campaign] + 1,
        }
    )
    popularity = (1.0 + rng.permutation(n_ads)) ** -popularity_exponent
    popularity /= popularity.sum()
    ad_topic_confidence = np.zeros((n_ads, n_topics))
    for column in range(doc_topics.shape[1]):
        np.add.at(ad_topic_confidence, (np.arange(n_ads), doc_topics[landing, column]), doc_topic_confidence[landing, column])

    # Users: favourite topics with preference weights, usual platform, location.
    preference = _user_preferences(rng, n_users, topic_prevalence)
    uuids = _hex_ids(rng, n_users, 14)
    user_platform = rng.choice(np.array([1, 2, 3]), size=n_users, p=[0.38, 0.47, 0.15])
    user_geo = _locations(rng, n_users)

    # Displays: owner, time (display ids follow time), platform and the page being read.
    n_displays_of_user = 1 + rng.poisson(displays_per_user_mean - 1.0, size=n_users)
    display_user = np.repeat(np.arange(n_users), n_displays_of_user)
    display_time = rng.integers(0, int(days * _DAY_MS), size=len(display_user))
    order = np.lexsort((display_user, display_time))
    display_user, display_time = display_user[order], display_time[order]
    n_displays = len(display_user)
    display_platform = _display_platforms(rng, user_platform[display_user])
    context = _context_documents(rng, preference[display_user], doc_topics[:, 0], n_documents, context_topic_share)
    tables["events.csv"] = pd.DataFrame(
        {
            "display_id": np.arange(1, n_displays + 1),
            "uuid": uuids[display_user],
            "document_id": document_ids[context],
            "timestamp": display_time,
            "platform": display_platform,
            "geo_location": user_geo[display_user],
        }
    )

    # Ads shown (mostly by popularity, partly from the user's topics), then the one clicked.
    p_extra = (ads_per_display_mean - 2.0) / 10.0
    n_shown = np.minimum(2 + rng.binomial(10, p_extra, size=n_displays), n_ads)
    shown, clicked = _shown_and_clicked(
        rng, preference, ad_topic_confidence, popularity, display_user, n_shown, topic_share, beta, gamma
    )
    tables["clicks_train.csv"] = _clicks_table(ad_ids, shown, clicked, n_shown)

    # Write every file atomically, then GENERATED.json last.
    for file_name in GENERATED_FILES:
        _write_atomic(out_path / file_name, tables[file_name].to_csv(index=False, lineterminator="\n"))
    manifest = {
        "generator": "recsys_gym.data.synthetic.generate_outbrain",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "parameters": params,
        "rows": {file_name: len(tables[file_name]) for file_name in GENERATED_FILES},
        "n_displays": n_displays,
    }
    _write_atomic(out_path / "GENERATED.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out_path


def _check_params(params: dict[str, float]) -> None:
    """Raise a ValueError naming the first argument out of its range."""
    ranges = {
        "n_users": (1, None),
        "n_ads": (2, None),
        "n_documents": (1, None),
        "n_topics": (3, None),
        "n_categories": (2, None),
        "displays_per_user_mean": (1.0, None),
        "ads_per_display_mean": (2.0, 12.0),
        "topic_share": (0.0, 1.0),
        "context_topic_share": (0.0, 1.0),
        "popularity_exponent": (0.0, None),
        "days": (1e-3, None),
    }
    for name, (low, high) in ranges.items():
        value = params[name]
        if not np.isfinite(value) or value < low or (high is not None and value > high):
            allowed = f"[{low}, {high}]" if high is not None else f">= {low}"
            raise ValueError(f"{name}={value!r} is out of range; expected a value {allowed}")
    for name in ("beta", "gamma"):
        if not np.isfinite(params[name]):
            raise ValueError(f"{name}={params[name]!r} must be a finite number")


def _sparse_ids(rng: np.random.Generator, count: int) -> np.ndarray:
    """Draw ``count`` distinct ids in ``[1, 10 * count]``, sorted, so ids are not simply row numbers."""
    return np.sort(rng.choice(10 * count, size=count, replace=False)) + 1


def _hex_ids(rng: np.random.Generator, count: int, digits: int) -> np.ndarray:
    """Draw ``count`` distinct lowercase hexadecimal ids of ``digits`` digits (at most 16)."""
    while True:
        values = rng.integers(0, 16**digits, size=count, dtype=np.uint64)
        if len(np.unique(values)) == count:
            return np.array([f"{value:0{digits}x}" for value in values.tolist()], dtype=object)


def _document_topics(
    rng: np.random.Generator, n_documents: int, topic_prevalence: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(topics, confidence)``, both ``(n_documents, 3)``; unused slots repeat the first topic with confidence 0."""
    n_topics = len(topic_prevalence)
    topics = np.empty((n_documents, 3), dtype=np.int64)
    topics[:, 0] = rng.choice(n_topics, size=n_documents, p=topic_prevalence)
    # Two more distinct topics, uniformly: shift the first by distinct non-zero offsets.
    offsets = 1 + np.argsort(rng.random((n_documents, n_topics - 1)), axis=1)[:, :2]
    topics[:, 1:] = (topics[:, :1] + offsets) % n_topics
    confidence = np.empty((n_documents, 3))
    confidence[:, 0] = rng.uniform(0.5, 0.95, size=n_documents)
    confidence[:, 1:] = rng.uniform(0.05, 0.4, size=(n_documents, 2))
    n_used = rng.integers(1, 4, size=n_documents)
    unused = np.arange(3)[None, :] >= n_used[:, None]
    topics[unused] = np.broadcast_to(topics[:, :1], topics.shape)[unused]
    confidence[unused] = 0.0
    return topics, np.round(confidence, 6)


def _topics_table(document_ids: np.ndarray, topics: np.ndarray, confidence: np.ndarray) -> pd.DataFrame:
    """The rows of ``documents_topics.csv``: one per used topic slot."""
    rows, slots = np.nonzero(confidence > 0)
    return pd.DataFrame(
        {"document_id": document_ids[rows], "topic_id": topics[rows, slots] + 1, "confidence_level": confidence[rows, slots]}
    )


def _categories_table(
    rng: np.random.Generator, document_ids: np.ndarray, home_category: np.ndarray, n_categories: int
) -> pd.DataFrame:
    """The rows of ``documents_categories.csv``: the home category of the first topic, sometimes one more."""
    n_documents = len(document_ids)
    second = (home_category + rng.integers(1, n_categories, size=n_documents)) % n_categories
    has_second = rng.random(n_documents) < 0.3
    first_confidence = np.round(rng.uniform(0.6, 0.95, size=n_documents), 6)
    second_confidence = np.round(rng.uniform(0.05, 0.35, size=n_documents), 6)
    table = pd.DataFrame(
        {
            "document_id": np.concatenate([document_ids, document_ids[has_second]]),
            "category_id": 1000 + np.concatenate([home_category, second[has_second]]),
            "confidence_level": np.concatenate([first_confidence, second_confidence[has_second]]),
        }
    )
    return table.sort_values(["document_id", "confidence_level"], ascending=[True, False], kind="stable").reset_index(
        drop=True
    )


def _entities_table(
    rng: np.random.Generator, document_ids: np.ndarray, first_topic: np.ndarray, n_topics: int
) -> pd.DataFrame:
    """The rows of ``documents_entities.csv``: for 60% of documents, one of five entities of its first topic."""
    entity_names = _hex_ids(rng, 5 * n_topics, 16)
    entity_names = np.array([name + name[::-1] for name in entity_names.tolist()], dtype=object)
    n_documents = len(document_ids)
    entity = 5 * first_topic + rng.integers(0, 5, size=n_documents)
    confidence = np.round(rng.uniform(0.2, 0.9, size=n_documents), 6)
    has_entity = rng.random(n_documents) < 0.6
    return pd.DataFrame(
        {
            "document_id": document_ids[has_entity],
            "entity_id": entity_names[entity[has_entity]],
            "confidence_level": confidence[has_entity],
        }
    )


def _meta_table(rng: np.random.Generator, document_ids: np.ndarray) -> pd.DataFrame:
    """The rows of ``documents_meta.csv``: source, its publisher, publish time; a few publishers and times empty."""
    n_documents = len(document_ids)
    n_sources = max(2, n_documents // 40)
    publisher_of_source = rng.integers(1, max(2, n_sources // 3) + 1, size=n_sources)
    source = rng.integers(0, n_sources, size=n_documents)
    publisher = pd.array(publisher_of_source[source], dtype="Int64")
    publisher[rng.random(n_documents) < 0.03] = pd.NA
    days_before = rng.integers(1, 6 * 365, size=n_documents)
    published = np.datetime64("2016-06-14T00:00:00") - days_before.astype("timedelta64[D]")
    publish_time = np.char.replace(np.datetime_as_string(published, unit="s"), "T", " ").astype(object)
    publish_time[rng.random(n_documents) < 0.05] = ""
    return pd.DataFrame(
        {"document_id": document_ids, "source_id": source + 1, "publisher_id": publisher, "publish_time": publish_time}
    )


def _user_preferences(rng: np.random.Generator, n_users: int, topic_prevalence: np.ndarray) -> np.ndarray:
    """Return ``(n_users, n_topics)`` preference weights: 1 to 3 favourite topics a user, summing to 1."""
    n_topics = len(topic_prevalence)
    # Favourite topics by prevalence, without repeats: the top keys of Gumbel-perturbed log prevalence.
    keys = np.log(topic_prevalence)[None, :] + rng.gumbel(size=(n_users, n_topics))
    favourites = np.argsort(-keys, axis=1)[:, :3]
    n_favourites = rng.integers(1, 4, size=n_users)
    weights = rng.dirichlet(np.full(3, 2.0), size=n_users)
    weights[np.arange(3)[None, :] >= n_favourites[:, None]] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    preference = np.zeros((n_users, n_topics))
    np.put_along_axis(preference, favourites, weights, axis=1)
    return preference


def _locations(rng: np.random.Generator, n_users: int) -> np.ndarray:
    """Draw a ``geo_location`` per user in Kaggle's forms: ``US>CA>807``, ``US``, ``GB>H9``, ``CA``, ``--`` or empty."""
    form = rng.choice(6, size=n_users, p=[0.72, 0.06, 0.12, 0.04, 0.03, 0.03])
    state = rng.integers(0, len(_US_STATES), size=n_users)
    dma = rng.integers(500, 882, size=n_users)
    region = rng.integers(0, len(_OTHER_REGIONS), size=n_users)
    country = rng.integers(0, len(_OTHER_COUNTRIES), size=n_users)
    geo = np.empty(n_users, dtype=object)
    for user in range(n_users):
        geo[user] = (
            f"US>{_US_STATES[state[user]]}>{dma[user]}",
            "US",
            _OTHER_REGIONS[region[user]],
            _OTHER_COUNTRIES[country[user]],
            "--",
            "",
        )[form[user]]
    return geo


def _display_platforms(rng: np.random.Generator, usual: np.ndarray) -> np.ndarray:
    """Each display's ``platform``: the user's usual one, 10% of the time another, 0.5% ``\\N``."""
    platform = np.where(rng.random(len(usual)) < 0.1, rng.integers(1, 4, size=len(usual)), usual).astype(object)
    platform = np.array([str(value) for value in platform.tolist()], dtype=object)
    platform[rng.random(len(usual)) < 0.005] = "\\N"
    return platform


def _context_documents(
    rng: np.random.Generator, preference: np.ndarray, first_topic: np.ndarray, n_documents: int, share: float
) -> np.ndarray:
    """The page read in each display: with probability ``share`` one about a favourite topic, else any page."""
    n_displays, n_topics = preference.shape
    context = np.asarray(rng.integers(0, n_documents, size=n_displays))

    # Documents grouped by first topic, to draw one of a given topic.
    by_topic = np.argsort(first_topic, kind="stable")
    starts = np.searchsorted(first_topic[by_topic], np.arange(n_topics))
    counts = np.bincount(first_topic, minlength=n_topics)
    cumulative = np.cumsum(preference, axis=1)
    topic = np.minimum((cumulative < rng.random((n_displays, 1))).sum(axis=1), n_topics - 1)
    on_topic = (rng.random(n_displays) < share) & (counts[topic] > 0)
    pick = starts[topic] + np.floor(rng.random(n_displays) * np.maximum(counts[topic], 1)).astype(np.int64)
    context[on_topic] = by_topic[pick[on_topic]]
    return context


def _shown_and_clicked(
    rng: np.random.Generator,
    preference: np.ndarray,
    ad_topic_confidence: np.ndarray,
    popularity: np.ndarray,
    display_user: np.ndarray,
    n_shown: np.ndarray,
    topic_share: float,
    beta: float,
    gamma: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``shown`` (n_displays, 12; ad indices, -1 past ``n_shown``) and the clicked slot of every display."""
    n_displays, width = len(display_user), 12
    n_ads, n_topics = ad_topic_confidence.shape

    # Inverse CDFs: of popularity over all ads, and of popularity over the ads of each topic (topic t maps to [t, t + 1)).
    popularity_cdf = np.cumsum(popularity) / popularity.sum()
    topic_rows, topic_ads = np.nonzero(ad_topic_confidence.T > 0)
    topic_weights = popularity[topic_ads]
    topic_mass = np.bincount(topic_rows, weights=topic_weights, minlength=n_topics)
    topic_cdf = (
        topic_rows + (np.cumsum(topic_weights) - (np.cumsum(topic_mass) - topic_mass)[topic_rows]) / topic_mass[topic_rows]
    )
    preference_cdf = np.cumsum(preference, axis=1)

    # Displays are handled in blocks, so memory stays bounded whatever their number.
    shown = np.full((n_displays, width), -1, dtype=np.int64)
    clicked = np.zeros(n_displays, dtype=np.int64)
    log_popularity = np.log(popularity)
    block = 8192
    for start in range(0, n_displays, block):
        # Draw candidates one at a time (mostly by popularity, else by popularity within a favourite topic) and
        # keep the first n_shown distinct ones; the rare display with too few distinct draws draws more.
        rows = np.arange(start, min(start + block, n_displays))
        candidates = np.zeros((len(rows), 0), dtype=np.int64)
        attempt = 0
        while len(rows):
            draws = (len(rows), 2 * width)
            by_popularity = np.minimum(np.searchsorted(popularity_cdf, rng.random(draws), side="right"), n_ads - 1)
            user_cdf = preference_cdf[display_user[rows]][:, None, :]
            topic = np.minimum((user_cdf < rng.random((*draws, 1))).sum(axis=2), n_topics - 1)
            from_topic = (rng.random(draws) < topic_share) & (topic_mass[topic] > 0)
            if attempt >= 8:
                # Only extreme settings get here (a pool smaller than the display): draw uniformly so it ends.
                by_popularity = rng.integers(0, n_ads, size=draws)
                from_topic[:] = False
            attempt += 1
            by_topic = np.minimum(np.searchsorted(topic_cdf, topic + rng.random(draws), side="right"), len(topic_ads) - 1)
            candidates = np.hstack([candidates, np.where(from_topic, topic_ads[by_topic], by_popularity)])
            first = _first_occurrences(candidates)
            rank = np.cumsum(first, axis=1)
            enough = rank[:, -1] >= n_shown[rows]
            hit_rows, hit_columns = np.nonzero(first & (rank <= n_shown[rows][:, None]) & enough[:, None])
            shown[rows[hit_rows], rank[hit_rows, hit_columns] - 1] = candidates[hit_rows, hit_columns]
            rows, candidates = rows[~enough], candidates[~enough]

        # The click: a softmax over the shown ads of beta * affinity + gamma * log popularity.
        block_shown = shown[start : start + block]
        safe = np.maximum(block_shown, 0)
        affinity = np.einsum("dt,dst->ds", preference[display_user[start : start + block]], ad_topic_confidence[safe])
        logits = beta * affinity + gamma * log_popularity[safe] + rng.gumbel(size=block_shown.shape)
        logits[block_shown < 0] = -np.inf
        clicked[start : start + block] = np.argmax(logits, axis=1)
    return shown, clicked


def _first_occurrences(values: np.ndarray) -> np.ndarray:
    """Mask of the entries of each row that are the first occurrence of their value in the row."""
    order = np.argsort(values, axis=1, kind="stable")
    sorted_values = np.take_along_axis(values, order, axis=1)
    starts = np.ones(values.shape, dtype=bool)
    starts[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    first = np.zeros(values.shape, dtype=bool)
    np.put_along_axis(first, order, starts, axis=1)
    return first


def _clicks_table(ad_ids: np.ndarray, shown: np.ndarray, clicked: np.ndarray, n_shown: np.ndarray) -> pd.DataFrame:
    """The rows of ``clicks_train.csv``: each display's ads in ascending ``ad_id``, the clicked one marked."""
    n_displays = len(shown)
    is_clicked = np.zeros(shown.shape, dtype=np.int64)
    is_clicked[np.arange(n_displays), clicked] = 1
    rows, slots = np.nonzero(np.arange(shown.shape[1])[None, :] < n_shown[:, None])
    table = pd.DataFrame({"display_id": rows + 1, "ad_id": ad_ids[shown[rows, slots]], "clicked": is_clicked[rows, slots]})
    return table.sort_values(["display_id", "ad_id"], kind="stable").reset_index(drop=True)


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` (named after this process), then rename it into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8", newline="")
    os.replace(temporary, path)
