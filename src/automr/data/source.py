"""What a loader returns: the items and interactions of one source, before the protocol.

Every loader (MovieLens, Amazon, generic CSV) produces a :class:`SourceData`: a catalog (after
merging exact duplicates and skipping unusable items), interactions in file order (remapped to
kept ids), the raw counts *before* anything was dropped or merged, the counted skips, and a
sha256 fingerprint of every input file.
"""

from collections import Counter
from collections.abc import Iterable, Mapping

import attrs

from automr.checks import beartype
from automr.data.catalog import Catalog, MergeReport
from automr.data.records import Interaction


class SkipCounter(Counter):
    """Counts records a loader dropped on purpose, by reason (saved as ``stats["skipped"]``).

    Reasons used by the loaders:

    - ``items_empty_title``: an item whose title is empty (or a placeholder such as
      MovieLens' ``unknown``) - the recommender could never name it;
    - ``interactions_of_skipped_items``: interactions with such an item;
    - ``interactions_without_metadata`` (Amazon): reviews of an ASIN absent from the metadata;
    - ``duplicate_metadata`` (Amazon): repeated metadata lines for one ASIN (first one kept);
    - ``duplicate_interactions`` (every loader): an input row with the same user, item and
      time (in seconds) as an earlier row - an exact duplicate line, or one that differs only
      in ignored columns such as a rating (first one kept);
    - ``same_second_repeats`` (:func:`automr.data.prepare_dataset`): after merging duplicate
      items, one user with one (merged) item twice in the same second - ML-100K users who rated
      both ids of a film in one second (first one kept);
    - ``reviews_outside_window`` (Amazon): reviews outside the protocol's time window,
      dropped while streaming so a multi-GB file never sits in memory.
    """

    def as_dict(self) -> dict[str, int]:
        """The non-zero counts as ``{reason: count}``, reasons sorted."""
        return {k: int(v) for k, v in sorted(self.items()) if v}


SKIP_LABELS = {
    "items_empty_title": "items without a title",
    "interactions_of_skipped_items": "interactions with items without a title",
    "interactions_without_metadata": "reviews of items without metadata",
    "duplicate_metadata": "repeated metadata lines",
    "duplicate_interactions": "duplicate interaction rows",
    "same_second_repeats": "repeats of a user and item in one second",
    "reviews_outside_window": "reviews outside the time window",
    "empty_rows": "rows of empty fields",
}
"""What each :class:`SkipCounter` reason reads as in printed statistics and messages."""


def skip_label(reason: str) -> str:
    """The readable label of a skip ``reason`` (one not in :data:`SKIP_LABELS`: its words)."""
    return SKIP_LABELS.get(reason, reason.replace("_", " "))


@beartype
@attrs.frozen
class SourceData:
    """One loaded source, ready for the protocol (:func:`automr.data.prepare_dataset`).

    ``raw_users`` / ``raw_items`` / ``raw_interactions`` count the input as read, before
    merging, skipping and filtering (ML-100K: 943 / 1682 / 100000). ``fingerprints`` maps each
    input to its sha256, by role (``reviews``/``meta``, ``interactions``/``items``; ML-100K:
    its file names), so that two inputs of one name are both covered. ``domain`` names the
    prompt vocabulary (``"movies"``, ``"books"``) and ``kind`` the loader (``"ml-100k"``,
    ``"amazon"``, ``"csv"``).
    """

    kind: str
    domain: str
    catalog: Catalog
    interactions: tuple[Interaction, ...]
    raw_users: int
    raw_items: int
    raw_interactions: int
    merge: MergeReport = attrs.field(factory=MergeReport)
    skipped: Mapping[str, int] = attrs.field(factory=dict, converter=dict)
    fingerprints: Mapping[str, str] = attrs.field(factory=dict, converter=dict)
    options: Mapping[str, str] = attrs.field(factory=dict, converter=dict)

    def __attrs_post_init__(self) -> None:
        unknown = {i.item for i in self.interactions if i.item not in self.catalog}
        if unknown:
            raise ValueError(f"interactions refer to items missing from the catalog: "
                             f"{sorted(unknown)[:5]}")


def drop_skipped_items(
    interactions: list[Interaction], skipped_items: set[str], skips: SkipCounter
) -> list[Interaction]:
    """Interactions without those of ``skipped_items`` (counted as
    ``interactions_of_skipped_items``)."""
    if not skipped_items:
        return interactions
    kept = [i for i in interactions if i.item not in skipped_items]
    skips["interactions_of_skipped_items"] += len(interactions) - len(kept)
    return kept


def drop_repeats(
    interactions: Iterable[Interaction], skips: SkipCounter, reason: str
) -> list[Interaction]:
    """Interactions with each (user, item, timestamp) once, the first occurrence kept and the
    others counted under ``reason``. Order is preserved.

    One user cannot meaningfully interact with one item twice in the same second, and samples
    are keyed by ``user@timestamp:target`` (:attr:`Sample.id`), so such repeats are one event.
    """
    seen: set[tuple[str, str, int]] = set()
    kept = []
    for inter in interactions:
        key = (inter.user, inter.item, inter.timestamp)
        if key in seen:
            skips[reason] += 1
            continue
        seen.add(key)
        kept.append(inter)
    return kept
