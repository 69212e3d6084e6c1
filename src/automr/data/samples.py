"""Interactions -> samples, with no leakage.

Each user's interactions are ordered by time, ties kept in input (file) order. Every
interaction whose time falls in a split's period and whose user has at least ``min_history``
interactions *strictly earlier* becomes a sample of that split:

- history = the user's interactions with a strictly earlier timestamp, the latest
  ``max_history`` of them. Interactions sharing a timestamp are never each other's history
  (ML-100K users often rate dozens of films within one second; the order inside that second is
  unknown, so neither may "see" the other);
- recent = the latest ``recent_k`` of the history (the prompt), memory = the rest.

The history may reach back into earlier splits (a test sample sees the user's training-period
interactions), never forward. Samples of a split are ordered by time, then by user (in order of
first appearance in the input), then by position in the user's timeline - an order that
:func:`timeline_order` leaves unchanged, so regrouped interactions give identical samples.

Sample ids (:attr:`Sample.id`, ``user@timestamp:target``) are unique within a split:
:func:`build_samples` refuses input that repeats one user, item and second (such a repeat is
one event; :func:`automr.data.prepare_dataset` keeps one and counts the rest).
"""

import bisect
from collections.abc import Iterable, Sequence

from automr.data.protocol import SPLITS, ProtocolConfig, SplitBoundaries
from automr.data.records import Interaction, Sample
from automr.errors import AutomrError


def user_timelines(interactions: Sequence[Interaction]) -> dict[str, list[tuple[int, int]]]:
    """user -> ``[(timestamp, input index), ...]`` sorted by time, ties in input order."""
    timelines: dict[str, list[tuple[int, int]]] = {}
    for index, inter in enumerate(interactions):
        timelines.setdefault(inter.user, []).append((inter.timestamp, index))
    for timeline in timelines.values():
        timeline.sort()
    return timelines


def timeline_order(interactions: Sequence[Interaction]) -> tuple[Interaction, ...]:
    """Interactions regrouped into user timelines: users in order of first appearance, each
    user's interactions by time, ties in input order. :func:`build_samples` gives the same
    samples, in the same order, for this order as for the input order."""
    return tuple(interactions[index] for timeline in user_timelines(interactions).values()
                 for _, index in timeline)


def build_samples(
    interactions: Sequence[Interaction], boundaries: SplitBoundaries, config: ProtocolConfig
) -> dict[str, tuple[Sample, ...]]:
    """Samples per split (``"train"``, ``"valid"``, ``"test"``) from in-window interactions."""
    keyed: dict[str, list[tuple[int, int, int, Sample]]] = {split: [] for split in SPLITS}
    for rank, (user, timeline) in enumerate(user_timelines(interactions).items()):
        times = [t for t, _ in timeline]
        items = [interactions[i].item for _, i in timeline]
        for position, (timestamp, _) in enumerate(timeline):
            split = boundaries.split_of(timestamp)
            if split is None:
                continue
            prior = bisect.bisect_left(times, timestamp, 0, position + 1)
            if prior < config.required_history:
                continue
            first = max(0, prior - config.max_history)
            cut = max(first, prior - config.recent_k)
            sample = Sample(
                user=user,
                target=items[position],
                timestamp=timestamp,
                recent=tuple(items[cut:prior]),
                recent_timestamps=tuple(times[cut:prior]),
                memory=tuple(items[first:cut]),
                memory_timestamps=tuple(times[first:cut]),
            )
            keyed[split].append((timestamp, rank, position, sample))
    out = {split: tuple(row[3] for row in sorted(rows, key=lambda r: r[:3]))
           for split, rows in keyed.items()}
    for split, samples in out.items():
        check_unique_ids(samples, f"the {split} split")
    return out


def check_unique_ids(samples: Iterable[Sample], where: str) -> None:
    """Raise :class:`AutomrError` if two samples share :attr:`Sample.id` (``user@time:target``),
    which reports, annotations and results key samples by.

    Interactions repeating one user, item and second must be dropped before building samples;
    :func:`automr.data.prepare_dataset` does that (counted as ``same_second_repeats``).
    """
    seen: set[str] = set()
    repeated: list[str] = []
    for sample in samples:
        if sample.id in seen:
            repeated.append(sample.id)
        seen.add(sample.id)
    if repeated:
        raise AutomrError(
            f"{where} has {len(repeated)} sample(s) whose id repeats another's "
            f"(e.g. {', '.join(repeated[:3])}): the input holds one user's interaction with one "
            f"item more than once in the same second. Drop the repeats first (prepare the "
            f"dataset again with `automr data prepare ...`, which keeps one of each).")
