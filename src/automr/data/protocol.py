"""The paper's protocol (§5.1), every number configurable: time window, k-core filtering,
history caps and the temporal train / validation / test split.

Times are Unix seconds; calendar arithmetic is in UTC. A window ``[start, end)`` is split at
``train_end = start + train_months calendar months``; the rest ``[train_end, end)`` is halved
*by time* at its midpoint ``valid_end`` into validation ``[train_end, valid_end)`` and test
``[valid_end, end)``. So for Amazon 2017: train Jan 1 - Nov 1, validation Nov 1 - Dec 1 12:00,
test Dec 1 12:00 - Jan 1 2018.
"""

import calendar
import datetime as dt
import math
from collections import Counter
from collections.abc import Sequence

import attrs

from automr.checks import beartype, int_field
from automr.data.records import Interaction
from automr.errors import AutomrError

SPLITS = ("train", "valid", "test")


def _at_least(minimum: int):
    def check(instance: object, attribute: attrs.Attribute, value: int) -> None:
        if value < minimum:
            raise ValueError(f"{attribute.name} must be >= {minimum}, got {value}")
    return check


def _whole_day(value: dt.date | str | None) -> dt.date | None:
    """A window bound is a UTC day: a ``date``, or its ISO text (``"2017-01-01"``, as the CLI
    takes it); a midnight ``datetime`` is taken as its date; one with a time of day or another
    timezone is refused (it would be cut to the day silently)."""
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"a window bound is a date YYYY-MM-DD, got {value!r}") from None
    if not isinstance(value, dt.datetime):
        return value
    if value.time() != dt.time(0) or value.utcoffset() not in (None, dt.timedelta(0)):
        raise ValueError(f"a window bound is a whole UTC day (a datetime.date), got {value}")
    return value.date()


@beartype
@attrs.frozen
class ProtocolConfig:
    """How interactions become samples. Defaults are the paper's (Amazon 2017); see
    :meth:`amazon_2017` and :meth:`movielens_100k` for the two presets.

    - ``start`` / ``end``: the time window ``[start, end)`` (UTC dates). ``start=None`` is the
      first day of the month of the earliest interaction; ``end=None`` is one second after the
      latest interaction.
    - ``train_months``: calendar months from ``start`` that form the training period; the rest
      of the window is halved by time into validation and test.
    - ``min_item_interactions`` / ``min_user_interactions``: drop items with fewer interactions
      (paper: 5) and users with fewer (paper: 20), counted inside the window.
      ``iterative_filter=True`` repeats both until nothing changes (a k-core fixed point:
      every kept item and user then meets its threshold); ``False`` applies each once, items
      first, as a literal reading of the paper.
    - ``max_history``: a sample's history is the user's latest ``max_history`` interactions
      strictly before the sample's time (paper: 100).
    - ``recent_k``: the latest K of those form the prompt (paper: 10); the older ones are the
      memory.
    - ``min_history``: an interaction becomes a sample only if the user has at least this many
      strictly earlier interactions (``None``: ``recent_k``, so every prompt has K items); it
      may exceed ``max_history`` (users with a longer past, their history still capped).
    """

    start: dt.date | None = attrs.field(default=dt.date(2017, 1, 1), converter=_whole_day)
    end: dt.date | None = attrs.field(default=dt.date(2018, 1, 1), converter=_whole_day)
    train_months: int = int_field(_at_least(1), default=10)
    min_item_interactions: int = int_field(_at_least(0), default=5)
    min_user_interactions: int = int_field(_at_least(0), default=20)
    iterative_filter: bool = True
    max_history: int = int_field(_at_least(1), default=100)
    recent_k: int = int_field(_at_least(1), default=10)
    min_history: int | None = int_field(_at_least(1), default=None, optional=True)

    def __attrs_post_init__(self) -> None:
        if self.recent_k > self.max_history:
            raise ValueError(f"recent_k ({self.recent_k}) exceeds max_history "
                             f"({self.max_history})")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"end {self.end} must be after start {self.start}")

    @property
    def required_history(self) -> int:
        """The effective ``min_history`` (``recent_k`` when unset)."""
        return self.recent_k if self.min_history is None else self.min_history

    @classmethod
    def amazon_2017(cls) -> "ProtocolConfig":
        """The paper: reviews of 2017, first 10 months train, the last two halved."""
        return cls()

    @classmethod
    def movielens_100k(cls) -> "ProtocolConfig":
        """ML-100K (Sep 20 1997 - Apr 22 1998): the whole range from Sep 1 1997, the first 6
        calendar months (to Mar 1 1998) train, the remaining ~7.6 weeks halved by time.
        6 of ~7.7 months (78%) is the closest whole-month match to the paper's 10 of 12 (83%)."""
        return cls(start=None, end=None, train_months=6)

    def to_json(self) -> dict[str, object]:
        """The fields as a dict, dates as ISO strings (``YYYY-MM-DD``)."""
        return attrs.asdict(self, value_serializer=lambda _i, _a, v: v.isoformat()
                            if isinstance(v, dt.date) else v)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> "ProtocolConfig":
        """The config of a :meth:`to_json` dict (``start``/``end`` parsed from ISO dates)."""
        values = dict(data)
        for key in ("start", "end"):
            if values.get(key) is not None:
                values[key] = dt.date.fromisoformat(str(values[key]))
        return cls(**values)  # type: ignore[arg-type]


def add_months(day: dt.date, months: int) -> dt.date:
    """``day`` moved by whole calendar months (Jan 31 + 1 month -> Feb 28/29)."""
    index = day.year * 12 + (day.month - 1) + months
    year, month = index // 12, index % 12 + 1
    return dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def to_unix(day: dt.date) -> int:
    """Unix seconds of ``day``'s midnight UTC."""
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp())


def to_iso(seconds: int) -> str:
    """Unix ``seconds`` as an ISO 8601 UTC time ending in ``Z`` (``1998-03-01T00:00:00Z``)."""
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat().replace("+00:00", "Z")


MIN_TIMESTAMP = 0
"""The earliest accepted interaction time: 1970-01-01 UTC (Unix seconds)."""
MAX_TIMESTAMP = 4_102_444_800
"""The first rejected interaction time: 2100-01-01 UTC. Times outside
``[MIN_TIMESTAMP, MAX_TIMESTAMP)`` are damaged values (a truncated line, milliseconds instead of
seconds) and are refused by every loader, naming the file and line."""


def timestamp_problem(seconds: int) -> str | None:
    """Why ``seconds`` is not an acceptable interaction time, or None if it is."""
    if MIN_TIMESTAMP <= seconds < MAX_TIMESTAMP:
        return None
    hint = ""
    if MAX_TIMESTAMP <= seconds < MAX_TIMESTAMP * 1000:
        hint = f" (milliseconds? {seconds // 1000} s would be {to_iso(seconds // 1000)})"
    shown = seconds if abs(seconds) < 10**30 else (  # str() refuses past 4,300 digits
        f"{'-' if seconds < 0 else ''}~10^{int(abs(seconds).bit_length() * math.log10(2))}")
    return (f"timestamp {shown} is outside the accepted range 1970-01-01 .. 2100-01-01 UTC "
            f"(Unix seconds {MIN_TIMESTAMP} .. {MAX_TIMESTAMP - 1}){hint}")


@beartype
@attrs.frozen
class SplitBoundaries:
    """The resolved window, Unix seconds: train ``[start, train_end)``, validation
    ``[train_end, valid_end)``, test ``[valid_end, end)``."""

    start: int
    train_end: int
    valid_end: int
    end: int

    def __attrs_post_init__(self) -> None:
        if not self.start < self.train_end < self.valid_end < self.end:
            raise AutomrError(
                f"the time split is empty somewhere: window {to_iso(self.start)} .. "
                f"{to_iso(self.end)}, train ends {to_iso(self.train_end)}, validation ends "
                f"{to_iso(self.valid_end)}. Choose fewer --train-months or a longer window.")

    def split_of(self, timestamp: int) -> str | None:
        """``"train"``, ``"valid"``, ``"test"``, or None outside the window."""
        if timestamp < self.start or timestamp >= self.end:
            return None
        if timestamp < self.train_end:
            return "train"
        return "valid" if timestamp < self.valid_end else "test"

    def to_json(self) -> dict[str, str]:
        """The four boundaries as :func:`to_iso` strings."""
        return {"start": to_iso(self.start), "train_end": to_iso(self.train_end),
                "valid_end": to_iso(self.valid_end), "end": to_iso(self.end)}


def resolve_boundaries(
    config: ProtocolConfig, interactions: Sequence[Interaction]
) -> SplitBoundaries:
    """Turn the config's window into concrete split times (data-driven where it says None)."""
    if (config.start is None or config.end is None) and not interactions:
        raise AutomrError("no interactions to derive the time window from; the source is "
                          "empty after loading. Check the input files.")
    bad = next((i for i in interactions if timestamp_problem(i.timestamp)), None)
    if bad is not None:
        raise AutomrError(f"interaction of user {bad.user!r} with item {bad.item!r}: "
                          f"{timestamp_problem(bad.timestamp)}. Fix or remove it in the input.")
    if config.start is not None:
        start_day = config.start
    else:
        first = dt.datetime.fromtimestamp(min(i.timestamp for i in interactions), dt.timezone.utc)
        start_day = dt.date(first.year, first.month, 1)
    start = to_unix(start_day)
    end = to_unix(config.end) if config.end is not None else \
        max(i.timestamp for i in interactions) + 1
    if end <= start:  # one bound given, the other from data that lie beyond it
        times = [i.timestamp for i in interactions]
        raise AutomrError(
            f"the window would start {start_day} and end {to_iso(end)}: the data run from "
            f"{to_iso(min(times))} to {to_iso(max(times))}, so choose a --start or --end "
            f"inside them.")
    try:
        train_end = to_unix(add_months(start_day, config.train_months))
    except (ValueError, OverflowError):  # past the year 9999: beyond any window
        train_end = None
    if train_end is None or not start < train_end < end:
        fixes = [fix for fix, possible in (("fewer --train-months", config.train_months > 1),
                                           ("a later --end", config.end is not None)) if possible]
        hint = (" The window lies in 1970: are the timestamps dates written as numbers "
                "(20170714 is read as 20,170,714 seconds)? Write them 2017-07-14."
                if start_day.year == 1970 else "")
        fix = ("" if hint else f" Use {' or '.join(fixes)}." if fixes else
               " The data are too short for one training month and a period after it.")
        raise AutomrError(
            f"{config.train_months} training months from {start_day} leave nothing for "
            f"validation and test (window ends {to_iso(end)}).{hint}{fix}")
    return SplitBoundaries(start, train_end, train_end + (end - train_end) // 2, end)


@beartype
@attrs.frozen
class FilterResult:
    """Interactions that survived the k-core filter, and how many rounds it took."""

    interactions: tuple[Interaction, ...]
    rounds: int


def kcore_filter(
    interactions: Sequence[Interaction], min_item: int, min_user: int, iterative: bool = True
) -> FilterResult:
    """Drop items with < ``min_item`` and users with < ``min_user`` interactions.

    Each round removes low-count items, then low-count users. ``iterative=True`` repeats until a
    round removes nothing (fixed point: all remaining items have >= ``min_item`` and all users
    >= ``min_user`` interactions, possibly nothing remains); ``False`` runs one round. Repeated
    interactions with the same item each count. Order is preserved.
    """
    current = tuple(interactions)
    rounds = 0
    while True:
        rounds += 1
        items = Counter(i.item for i in current)
        kept = tuple(i for i in current if items[i.item] >= min_item)
        users = Counter(i.user for i in kept)
        kept = tuple(i for i in kept if users[i.user] >= min_user)
        changed = len(kept) != len(current)
        current = kept
        if not iterative or not changed:
            return FilterResult(current, rounds)
