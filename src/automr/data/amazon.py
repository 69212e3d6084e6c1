"""Amazon Reviews (McAuley lab), 2014/2018 or 2023: a reviews file and a metadata file, plain
or gzipped.

Both are JSON lines and are streamed line by line, so multi-GB files never sit in memory. The
reviews' first line tells the release (:data:`FORMATS`); the metadata must be of the same one:

- reviews: one object per line with ``reviewerID``, ``asin`` and ``unixReviewTime`` (2014 and
  2018), or ``user_id``, ``parent_asin`` and ``timestamp`` in milliseconds (2023, whose items are
  the parent ASINs, as its own benchmark splits; the time is floored to seconds). Other fields
  are ignored (2023's review ``title`` is the review's, not the item's). Reviews outside the
  time window are dropped while streaming (a regex reads the time before the full JSON parse,
  which keeps the skip cheap);
- metadata: one object per line with ``asin`` (2023: ``parent_asin``) and ``title``. Some 2014
  and 2018 metadata files hold Python-literal dicts (single quotes) instead of JSON; each line is
  tried with :mod:`json` first, then :func:`ast.literal_eval`. Titles are HTML-unescaped
  (``&amp;`` -> ``&``) and whitespace-collapsed; only the ASINs that some kept review needs
  are parsed fully. A lone surrogate escape (``\\ud83d`` without its pair: valid JSON, not
  text) becomes U+FFFD.

Skips (counted, see :class:`automr.data.source.SkipCounter`): empty titles, reviews of ASINs
with no metadata, repeated metadata lines, duplicate reviews (same reviewer, ASIN and time:
``duplicate_interactions``, as in every loader), reviews outside the window. Errors (file and
line named): a line that is not an object, a missing field, a bad time or one outside
1970 .. 2100; a file without a single non-blank line.
"""

import ast
import html
import json
import re
import sys
import warnings
from pathlib import Path

import attrs

from automr.data.catalog import Catalog, MergeReport, merge_duplicates
from automr.data.prompts import check_domain
from automr.data.reading import (
    LineSource,
    bad_input,
    checked_timestamp,
    checked_user,
    progress_bar,
    require_file,
)
from automr.data.records import Interaction, Item
from automr.data.source import SkipCounter, SourceData, drop_skipped_items
from automr.errors import AutomrError

_QUICK_DIGITS = 4_000  # int() refuses over 4,300 with a bare ValueError: the full parse names
# the line of a longer one
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_META_FIX = "Each line must be one JSON object (or Python dict) with asin and title"


def _field_value(key: str, value: str) -> re.Pattern[str]:
    """A pattern of the field ``key`` whose value matches ``value``, read off a raw line."""
    return re.compile(rf"""["']{key}["']\s*:\s*{value}(?=\s*[,}}])""")


@attrs.frozen
class ReviewFormat:
    """The fields one release of Amazon Reviews names its reviewer, item and time by."""

    release: str
    user: str
    item: str
    time: str
    time_per_second: int
    """How many of the file's time units make a second (2023's are milliseconds)."""
    extras: tuple[str, ...]
    """Metadata fields kept in ``Item.extra``."""

    @property
    def review_fix(self) -> str:
        return (f"Each line must be one JSON object with {self.user}, {self.item} and "
                f"{self.time} (Amazon Reviews {self.release} format)")

    @property
    def meta_fix(self) -> str:
        return (_META_FIX if self.item == "asin" else
                f"Each line must be one JSON object with {self.item} and title (Amazon Reviews "
                f"{self.release} metadata)")

    @property
    def quick_time(self) -> re.Pattern[str]:
        return _field_value(self.time, r"(\d+)")

    @property
    def quick_item(self) -> re.Pattern[str]:
        return _field_value(self.item, r"""(["'])([^"'\\]+)\1""")


FORMATS = (
    ReviewFormat("2018", "reviewerID", "asin", "unixReviewTime", 1, ("brand", "main_cat")),
    ReviewFormat("2023", "user_id", "parent_asin", "timestamp", 1000, ("store", "main_category")),
)
"""The releases read: 2014 and 2018 share a layout (named 2018); 2023's fields are its own."""


def _format_of(record: object) -> ReviewFormat:
    """The release a first review is in: 2023 where it names a 2023 reviewer or item field."""
    later = FORMATS[1]
    is_later = isinstance(record, dict) and (later.user in record or later.item in record)
    return later if is_later else FORMATS[0]


def load_amazon(
    reviews: Path | str,
    meta: Path | str,
    *,
    start: int | None = None,
    end: int | None = None,
    domain: str = "items",
    merge_same_title: bool = False,
    progress: bool = False,
) -> SourceData:
    """Load an Amazon Reviews category (2014, 2018 or 2023) from its reviews and metadata files.

    Only reviews timed (in Unix seconds) ``start <= time < end`` are kept (``None``: unbounded);
    the raw counts (``raw_users`` / ``raw_items`` / ``raw_interactions``) are those kept reviews,
    their reviewers and their ASINs, before any skip (exact duplicate reviews included).
    ``merge_same_title=True`` merges ASINs with identical titles (editions of one book) into
    one item; by default they stay separate and :meth:`Catalog.ids_for_title` lists them all.
    """
    check_domain(domain)
    if start is not None and end is not None and start >= end:
        raise AutomrError(f"start ({start}) must be before end ({end}): no review would be "
                          f"kept (both are Unix seconds)")
    reviews = require_file(reviews, "Amazon reviews")
    meta = require_file(meta, "Amazon metadata")
    skips = SkipCounter()
    with progress_bar(progress) as bar:
        review_lines = LineSource(reviews, progress=bar)
        review_format, interactions = _read_reviews(review_lines, start, end, skips)
        needed = {i.item for i in interactions}
        meta_lines = LineSource(meta, progress=bar)
        items, empty = _read_meta(meta_lines, review_format, needed, skips)
    raw = (len({i.user for i in interactions}), len(needed),
           len(interactions) + skips["duplicate_interactions"])
    interactions = drop_skipped_items(interactions, empty, skips)
    known = {item.id for item in items}
    kept = [i for i in interactions if i.item in known]
    skips["interactions_without_metadata"] += len(interactions) - len(kept)
    report = MergeReport()
    if merge_same_title:
        items, kept, report = merge_duplicates(items, kept)
    release = {} if review_format is FORMATS[0] else {"release": review_format.release}
    return SourceData(
        kind="amazon", domain=domain, catalog=Catalog(tuple(items)), interactions=tuple(kept),
        raw_users=raw[0], raw_items=raw[1], raw_interactions=raw[2], merge=report,
        skipped=skips.as_dict(),
        fingerprints={"reviews": review_lines.sha256, "meta": meta_lines.sha256},
        options={"reviews": str(reviews), "meta": str(meta),
                 "merge_same_title": str(merge_same_title).lower(), **release},
    )


def _text(value: object) -> object:
    """A string with each lone surrogate (a JSON ``\\ud83d`` escape without its pair: valid
    JSON, no text) as U+FFFD, which UTF-8 can write; anything else as it is."""
    return _LONE_SURROGATE.sub("\ufffd", value) if isinstance(value, str) else value


def _parse_object(line: str) -> object:
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        pass
    try:
        with warnings.catch_warnings():  # a damaged line ('1and 2') is skipped, not printed
            warnings.simplefilter("ignore", SyntaxWarning)
            return ast.literal_eval(line)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _only_match(pattern: re.Pattern[str], key: str, line: str) -> re.Match[str] | None:
    """``pattern``'s match of the field ``key`` read off the raw line before a full parse, or
    None where that read could be wrong: the key's name stands twice (once inside some text) or
    its value does not end where the pattern's does (``1.48e9``, an escape)."""
    if line.count(key) != 1:
        return None
    return pattern.search(line)


def _read_reviews(
    lines: LineSource, start: int | None, end: int | None, skips: SkipCounter
) -> tuple[ReviewFormat, list[Interaction]]:
    """The release the reviews are in (told by the first) and the kept interactions."""
    out: list[Interaction] = []
    seen: set[tuple[str, str, int]] = set()
    found: ReviewFormat | None = None

    def outside(t: int) -> bool:
        return (start is not None and t < start) or (end is not None and t >= end)

    for number, line in lines.non_blank("reviews", FORMATS[0].review_fix):
        if found is None:
            found = _format_of(_parse_object(line))
            fmt, quick_time, fix = found, found.quick_time, found.review_fix
        quick = _only_match(quick_time, fmt.time, line)
        if quick is not None and len(quick.group(1)) <= _QUICK_DIGITS and outside(
                checked_timestamp(lines.path, number,
                                  int(quick.group(1)) // fmt.time_per_second, fix)):
            skips["reviews_outside_window"] += 1
            continue
        record = _parse_object(line)
        if not isinstance(record, dict):
            raise bad_input(lines.path, number, "not a JSON object", fix)
        missing = [f for f in (fmt.user, fmt.item, fmt.time) if f not in record]
        if missing:
            raise bad_input(lines.path, number, f"missing field(s) {', '.join(missing)}", fix)
        user, asin, stamp = (_text(record[fmt.user]), _text(record[fmt.item]),
                             record[fmt.time])
        if not isinstance(user, str) or not user.strip() or not isinstance(asin, str) or \
                not asin.strip():
            raise bad_input(lines.path, number, f"{fmt.user} and {fmt.item} must be non-empty "
                            f"strings", fix)
        try:
            stamp_int = int(stamp)
            if isinstance(stamp, bool) or stamp_int != float(stamp):
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            unit = "Unix seconds" if fmt.time_per_second == 1 else "Unix milliseconds"
            raise bad_input(lines.path, number, f"{fmt.time} {stamp!r} is not {unit}",
                            fix) from None
        timestamp = checked_timestamp(lines.path, number, stamp_int // fmt.time_per_second, fix)
        if outside(timestamp):
            skips["reviews_outside_window"] += 1
            continue
        key = (sys.intern(checked_user(lines.path, number, user.strip())),
               sys.intern(asin.strip()), timestamp)
        if key in seen:
            skips["duplicate_interactions"] += 1
            continue
        seen.add(key)
        out.append(Interaction(*key))
    assert found is not None  # non_blank raised on a file without a line
    return found, out


def _read_meta(
    lines: LineSource, fmt: ReviewFormat, needed: set[str], skips: SkipCounter
) -> tuple[list[Item], set[str]]:
    items: dict[str, Item] = {}
    empty: set[str] = set()
    quick_item, fix = fmt.quick_item, fmt.meta_fix
    for number, line in lines.non_blank("metadata", fix):
        quick = _only_match(quick_item, fmt.item, line)
        if quick is not None and quick.group(2).strip() not in needed:
            continue
        record = _parse_object(line)
        if not isinstance(record, dict):
            raise bad_input(lines.path, number, "not a JSON object or Python dict", fix)
        asin = _text(record.get(fmt.item))
        if not isinstance(asin, str) or not asin.strip():
            raise bad_input(lines.path, number, f"missing or empty field {fmt.item}", fix)
        asin = asin.strip()
        if asin not in needed:
            continue
        if asin in items or asin in empty:
            skips["duplicate_metadata"] += 1
            continue
        raw_title = _text(record.get("title"))
        title = " ".join(html.unescape(raw_title).split()) if isinstance(raw_title, str) else ""
        if not title:
            empty.add(asin)
            skips["items_empty_title"] += 1
            continue
        extra = {k: _LONE_SURROGATE.sub("\ufffd", str(record[k])) for k in fmt.extras
                 if record.get(k)}
        items[asin] = Item(asin, title, extra)
    return list(items.values()), empty
