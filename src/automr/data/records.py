"""The records every data step passes along: items, interactions and samples.

All ids are strings (MovieLens ids such as ``"246"``, Amazon ASINs such as ``"0002007770"``)
and all times are integer Unix seconds (UTC). Records are immutable and validated on creation,
so a sample that leaks the future cannot exist.
"""

import re
from collections.abc import Mapping

import attrs

from automr.checks import beartype


def _non_empty(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if not value or value != value.strip():
        raise ValueError(f"{attribute.name} must be a non-empty string without outer spaces, "
                         f"got {value!r}")


ID_SEPARATOR = re.compile(r"@-?\d+:")
"""What ends the user in a :attr:`Sample.id` (``user@timestamp:target``): a user id may not
hold it, or the id would name another user (``team@2024:bob`` is read as ``team``)."""


def _user_id(instance: object, attribute: attrs.Attribute, value: str) -> None:
    _non_empty(instance, attribute, value)
    if ID_SEPARATOR.search(value):
        raise ValueError(f"{attribute.name} {value!r} holds '@<digits>:', which sample ids "
                         f"(user@timestamp:target) use to end the user")


def _sorted_ascending(name: str, values: tuple[int, ...]) -> None:
    if list(values) != sorted(values):
        raise ValueError(f"{name} must be sorted oldest -> newest, got {values}")


@beartype
@attrs.frozen
class Item:
    """One catalog item.

    ``title`` is the *display* title: the exact text the recommender reads in prompts and
    generates as a response (for MovieLens ``"Toy Story (1995)"``). ``extra`` keeps whatever
    else the source gave (MovieLens: ``year``, ``genres`` joined by ``|``; merged duplicates:
    ``merged_ids``), as strings so it round-trips through JSON unchanged.
    """

    id: str = attrs.field(validator=_non_empty)
    title: str = attrs.field(validator=_non_empty)
    extra: Mapping[str, str] = attrs.field(
        factory=dict, converter=dict,
        validator=attrs.validators.deep_mapping(attrs.validators.instance_of(str),
                                                attrs.validators.instance_of(str)))


@beartype
@attrs.frozen
class Interaction:
    """User ``user`` interacted with (rated, reviewed) item ``item`` at Unix time ``timestamp``."""

    user: str = attrs.field(validator=_user_id)
    item: str = attrs.field(validator=_non_empty)
    timestamp: int


@beartype
@attrs.frozen
class Sample:
    """One next-item prediction: what ``user`` did at ``timestamp`` (``target``), given the past.

    The past is the user's interactions *strictly before* ``timestamp`` (capped to the latest
    ``max_history`` by the protocol), split in two, both ordered oldest -> newest:

    - ``recent``: the latest K items, the short-term history written into the prompt;
    - ``memory``: the older ones with their times (``memory_timestamps``), the long-term
      history AutoMR retrieves from.

    Validation guarantees ``memory`` is older than ``recent`` and both are older than the
    target, so no sample can contain its own future.
    """

    user: str = attrs.field(validator=_user_id)
    target: str = attrs.field(validator=_non_empty)
    timestamp: int
    recent: tuple[str, ...]
    recent_timestamps: tuple[int, ...]
    memory: tuple[str, ...] = ()
    memory_timestamps: tuple[int, ...] = ()

    def __attrs_post_init__(self) -> None:
        if len(self.recent) != len(self.recent_timestamps):
            raise ValueError("recent and recent_timestamps must have the same length")
        if len(self.memory) != len(self.memory_timestamps):
            raise ValueError("memory and memory_timestamps must have the same length")
        if not self.recent and self.memory:
            raise ValueError("a sample with memory must also have recent items")
        times = self.memory_timestamps + self.recent_timestamps
        _sorted_ascending("memory_timestamps + recent_timestamps", times)
        if times and times[-1] >= self.timestamp:
            raise ValueError(f"history time {times[-1]} is not strictly before the sample's "
                             f"time {self.timestamp} (that would leak the future)")

    @property
    def id(self) -> str:
        """``user@timestamp:target``: what reports, annotations and results key samples by."""
        return f"{self.user}@{self.timestamp}:{self.target}"

    @property
    def history(self) -> tuple[str, ...]:
        """All history items, oldest -> newest: ``memory + recent``."""
        return self.memory + self.recent

    @property
    def history_timestamps(self) -> tuple[int, ...]:
        """The times of :attr:`history`'s items (Unix seconds, ascending):
        ``memory_timestamps + recent_timestamps``."""
        return self.memory_timestamps + self.recent_timestamps
