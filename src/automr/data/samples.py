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
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from numbers import Integral
from typing import overload

import numpy as np

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


CHUNK = 4096
"""Rows of a :class:`SplitSamples` made Python lists at a time where all are read."""


class SplitSamples(Sequence[Sample]):
    """A split's samples, each built when read (``samples[i]``, a slice, iteration) from its
    user's timeline and six integers: built samples hold their whole histories (~1.8 KB a
    sample at ML-1M's, so a split of millions did not fit in memory), and a seeded subset
    builds only the samples it draws. Reading a sample again builds an equal one; equal to
    any sequence of the same samples in the same order.

    ``rows`` (int64 ``[samples, 6]``): user (index into ``users`` and ``timelines``),
    timestamp, target (index into ``targets``), and the history's start, the recent items'
    start and the history's end in the user's timeline (``(items, timestamps)``)."""

    __slots__ = ("_rows", "_targets", "_timelines", "_users")

    def __init__(self, users: Sequence[str], timelines: Sequence[tuple[Sequence[str],
                                                                      Sequence[int]]],
                 targets: Sequence[str], rows: np.ndarray) -> None:
        self._users, self._timelines, self._targets = users, timelines, targets
        self._rows = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1, 6)

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> Sample: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Sample, ...]: ...
    def __getitem__(self, index: int | slice) -> Sample | tuple[Sample, ...]:
        if isinstance(index, slice):
            return tuple(map(self._sample, self._rows[index].tolist()))
        if isinstance(index, bool) or not isinstance(index, Integral):
            raise TypeError(f"sample indices are integers or slices, not "
                            f"{type(index).__name__}")
        return self._sample(self._rows[int(index)].tolist())

    def __iter__(self) -> Iterator[Sample]:
        for start in range(0, len(self._rows), CHUNK):  # a chunk's rows as lists at a time
            yield from map(self._sample, self._rows[start : start + CHUNK].tolist())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other,
                                                                      strict=True))

    __hash__ = None  # type: ignore[assignment]  # as a list's: equal to its samples

    def __repr__(self) -> str:
        return f"SplitSamples({len(self):,} samples)"

    def repeated_ids(self) -> list[str]:
        """The ids (:attr:`Sample.id`) that repeat an earlier sample's, in split order."""
        keys = self._rows[:, :3]
        if not len(keys):
            return []
        _, first = np.unique(keys, axis=0, return_index=True)
        repeated = np.setdiff1d(np.arange(len(keys)), first)
        return [self._id(self._rows[k].tolist()) for k in repeated.tolist()]

    def memory_lengths(self) -> list[int]:
        """Each sample's memory size, no sample built."""
        return (self._rows[:, 4] - self._rows[:, 3]).tolist()

    def stored_rows(self, timelines: Mapping[str, tuple[Sequence[str], Sequence[int]]],
                    ) -> Iterator[dict[str, object]] | None:
        """The rows a prepared folder stores (positions in the user's timeline), no sample
        built; None unless ``timelines`` (user -> ``(items, timestamps)``) are the ones these
        samples are read from."""
        if list(timelines) != list(self._users) or any(
                tuple(timelines[user]) != tuple(own)
                for user, own in zip(self._users, self._timelines, strict=True)):
            return None
        users, targets = self._users, self._targets
        return ({"user": users[user], "target": targets[target], "timestamp": timestamp,
                 "history_start": start, "recent_start": cut, "history_end": end}
                for chunk in range(0, len(self._rows), CHUNK)  # a chunk's rows as lists
                for user, timestamp, target, start, cut, end in
                self._rows[chunk : chunk + CHUNK].tolist())

    def _id(self, row: list[int]) -> str:
        return f"{self._users[row[0]]}@{row[1]}:{self._targets[row[2]]}"

    def _sample(self, row: list[int]) -> Sample:
        user, timestamp, target, start, cut, end = row
        items, times = self._timelines[user]
        return Sample(user=self._users[user], target=self._targets[target], timestamp=timestamp,
                      recent=tuple(items[cut:end]), recent_timestamps=tuple(times[cut:end]),
                      memory=tuple(items[start:cut]), memory_timestamps=tuple(times[start:cut]))


def build_samples(
    interactions: Sequence[Interaction], boundaries: SplitBoundaries, config: ProtocolConfig
) -> dict[str, SplitSamples]:
    """Samples per split (``"train"``, ``"valid"``, ``"test"``) from in-window interactions."""
    users: list[str] = []
    timelines: list[tuple[list[str], list[int]]] = []
    targets: dict[str, int] = {}
    keyed = {split: array("q") for split in SPLITS}  # sort key (time, user, position), row
    for rank, (user, timeline) in enumerate(user_timelines(interactions).items()):
        times = [t for t, _ in timeline]
        items = [interactions[i].item for _, i in timeline]
        users.append(user)
        timelines.append((items, times))
        for position, timestamp in enumerate(times):
            split = boundaries.split_of(timestamp)
            if split is None:
                continue
            prior = bisect.bisect_left(times, timestamp, 0, position + 1)
            if prior < config.required_history:
                continue
            first = max(0, prior - config.max_history)
            cut = max(first, prior - config.recent_k)
            target = targets.setdefault(items[position], len(targets))
            keyed[split].extend((timestamp, rank, position, rank, timestamp, target, first, cut,
                                 prior))
    out, names = {}, list(targets)
    for split, flat in keyed.items():
        rows = np.array(flat, dtype=np.int64).reshape(-1, 9)
        order = np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))
        out[split] = SplitSamples(users, timelines, names, rows[order, 3:])
        check_unique_ids(out[split], f"the {split} split")
    return out


def check_unique_ids(samples: Iterable[Sample], where: str) -> None:
    """Raise :class:`AutomrError` if two samples share :attr:`Sample.id` (``user@time:target``),
    which reports, annotations and results key samples by.

    Interactions repeating one user, item and second must be dropped before building samples;
    :func:`automr.data.prepare_dataset` does that (counted as ``same_second_repeats``).
    """
    if isinstance(samples, SplitSamples):
        repeated = samples.repeated_ids()
    else:
        seen: set[str] = set()
        repeated = []
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
