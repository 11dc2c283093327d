"""The common form every data source is read into before it is compacted and cached.

A loader (Outbrain's Kaggle files, a generic interaction log, the synthetic generator) reads its
files into a :class:`RawLog`: a handful of pandas tables keyed by the source's own raw ids. The
builder in :mod:`recsys_gym.data.dataset` then encodes the ids, splits by time, computes item
features from the training split and writes the compact cache that the environment maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from recsys_gym.error import DataError

#: Columns of :attr:`RawLog.impressions` and their meaning.
IMPRESSION_COLUMNS = {
    "impression_id": "unique id of the impression (Outbrain: ``display_id``)",
    "user": "raw user id (Outbrain: ``uuid``)",
    "timestamp": "time of the impression, integer, any unit, larger is later",
    "context": "raw id of the context the user was in (Outbrain: the page ``document_id``); -1 when unknown",
    "platform": "0 unknown, 1 desktop, 2 mobile, 3 tablet (Outbrain's codes)",
    "clicked_item": "raw id of the item that was clicked",
}

#: Columns of :attr:`RawLog.shown`: one row per item shown in an impression, the clicked one included.
SHOWN_COLUMNS = ("impression_id", "item")

#: Columns of :attr:`RawLog.item_content` and :attr:`RawLog.context_content`.
CONTENT_COLUMNS = ("key", "token", "weight")


@dataclass
class RawLog:
    """Logged impressions in one common form, keyed by the source's raw ids.

    :param impressions: one row per impression, with the columns of :data:`IMPRESSION_COLUMNS`.
        Exactly one clicked item per impression.
    :param shown: one row per (impression, item shown) with the columns of :data:`SHOWN_COLUMNS`,
        the clicked item included. ``None`` when the source logs only what was clicked (MovieLens):
        then every impression showed its clicked item alone.
    :param item_content: optional long table ``key`` (raw item id), ``token`` (a string such as
        ``"topic:12"`` or ``"genre:Comedy"``) and ``weight`` (a confidence in ``(0, 1]``). These are
        catalogue metadata, not interactions, so using all of them is no leakage.
    :param context_content: optional table of the same form for context ids (Outbrain: the topics of
        the page being read).
    :param other_user_items: optional table ``user``, ``item`` of interactions that are not clicks
        (a low rating, an ad shown but not clicked). They never become impressions; they only keep
        such items out of the user's random negatives, as the One-Plus-k protocol requires.
    :param name: a short name of the source, used in cache paths and logs.
    :param notes: what the loader had to degrade or skip, for the logs and the cache manifest.
    """

    impressions: pd.DataFrame
    shown: pd.DataFrame | None = None
    item_content: pd.DataFrame | None = None
    context_content: pd.DataFrame | None = None
    other_user_items: pd.DataFrame | None = None
    name: str = "log"
    notes: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """Check the tables' columns and basic invariants.

        :raises DataError: naming the table and the column or value at fault.
        """
        missing = [column for column in IMPRESSION_COLUMNS if column not in self.impressions.columns]
        if missing:
            raise DataError(
                f"RawLog.impressions of {self.name!r} lacks the columns {missing}; expected {list(IMPRESSION_COLUMNS)}"
            )
        if len(self.impressions) == 0:
            raise DataError(f"RawLog.impressions of {self.name!r} is empty: there is no impression to build episodes from")
        if self.impressions["impression_id"].duplicated().any():
            duplicate = self.impressions.loc[self.impressions["impression_id"].duplicated(), "impression_id"].iloc[0]
            raise DataError(f"RawLog.impressions of {self.name!r} has impression_id {duplicate!r} more than once")
        if not pd.api.types.is_numeric_dtype(self.impressions["timestamp"]):
            raise DataError(
                f"RawLog.impressions['timestamp'] of {self.name!r} must be numeric, "
                f"got dtype {self.impressions['timestamp'].dtype}"
            )
        for table_name, table, columns in (
            ("shown", self.shown, SHOWN_COLUMNS),
            ("item_content", self.item_content, CONTENT_COLUMNS),
            ("context_content", self.context_content, CONTENT_COLUMNS),
            ("other_user_items", self.other_user_items, ("user", "item")),
        ):
            if table is None:
                continue
            lacking = [column for column in columns if column not in table.columns]
            if lacking:
                raise DataError(f"RawLog.{table_name} of {self.name!r} lacks the columns {lacking}; expected {list(columns)}")
