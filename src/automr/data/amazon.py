"""Amazon Reviews 2018 (McAuley lab): a reviews file and a metadata file, plain or gzipped.

Both are JSON lines and are streamed line by line, so multi-GB files never sit in memory:

- reviews: one object per line with ``reviewerID``, ``asin`` and ``unixReviewTime`` (other
  fields ignored). Reviews outside the time window are dropped while streaming (a regex reads
  the time before the full JSON parse, which keeps the skip cheap);
- metadata: one object per line with ``asin`` and ``title``. Some 2018 metadata files hold
  Python-literal dicts (single quotes) instead of JSON; each line is tried with :mod:`json`
  first, then :func:`ast.literal_eval`. Titles are HTML-unescaped (``&amp;`` -> ``&``) and
  whitespace-collapsed; only the ASINs that some kept review needs are parsed fully. A lone
  surrogate escape (``\\ud83d`` without its pair: valid JSON, not text) becomes U+FFFD.

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

_REVIEW_TIME = re.compile(r"""["']unixReviewTime["']\s*:\s*(\d+)(?=\s*[,}])""")
_QUICK_DIGITS = 4_000  # int() refuses over 4,300 with a bare ValueError: the full parse names
# the line of a longer one
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_ASIN = re.compile(r"""["']asin["']\s*:\s*(["'])([^"'\\]+)\1(?=\s*[,}])""")
_REVIEW_FIX = ("Each line must be one JSON object with reviewerID, asin and unixReviewTime "
               "(Amazon Reviews 2018 format)")
_META_FIX = "Each line must be one JSON object (or Python dict) with asin and title"


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
    """Load an Amazon Reviews 2018 category from its reviews and metadata files.

    Only reviews with ``start <= unixReviewTime < end`` are kept (``None``: unbounded); the raw
    counts (``raw_users`` / ``raw_items`` / ``raw_interactions``) are those kept reviews, their
    reviewers and their ASINs, before any skip (exact duplicate reviews included).
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
        interactions = _read_reviews(review_lines, start, end, skips)
        needed = {i.item for i in interactions}
        meta_lines = LineSource(meta, progress=bar)
        items, empty = _read_meta(meta_lines, needed, skips)
    raw = (len({i.user for i in interactions}), len(needed),
           len(interactions) + skips["duplicate_interactions"])
    interactions = drop_skipped_items(interactions, empty, skips)
    known = {item.id for item in items}
    kept = [i for i in interactions if i.item in known]
    skips["interactions_without_metadata"] += len(interactions) - len(kept)
    report = MergeReport()
    if merge_same_title:
        items, kept, report = merge_duplicates(items, kept)
    return SourceData(
        kind="amazon", domain=domain, catalog=Catalog(tuple(items)), interactions=tuple(kept),
        raw_users=raw[0], raw_items=raw[1], raw_interactions=raw[2], merge=report,
        skipped=skips.as_dict(),
        fingerprints={"reviews": review_lines.sha256, "meta": meta_lines.sha256},
        options={"reviews": str(reviews), "meta": str(meta),
                 "merge_same_title": str(merge_same_title).lower()},
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
) -> list[Interaction]:
    out: list[Interaction] = []
    seen: set[tuple[str, str, int]] = set()

    def outside(t: int) -> bool:
        return (start is not None and t < start) or (end is not None and t >= end)

    for number, line in lines.non_blank("reviews", _REVIEW_FIX):
        quick = _only_match(_REVIEW_TIME, "unixReviewTime", line)
        if quick is not None and len(quick.group(1)) <= _QUICK_DIGITS and outside(
                checked_timestamp(lines.path, number, int(quick.group(1)), _REVIEW_FIX)):
            skips["reviews_outside_window"] += 1
            continue
        record = _parse_object(line)
        if not isinstance(record, dict):
            raise bad_input(lines.path, number, "not a JSON object", _REVIEW_FIX)
        missing = [f for f in ("reviewerID", "asin", "unixReviewTime") if f not in record]
        if missing:
            raise bad_input(lines.path, number, f"missing field(s) {', '.join(missing)}",
                            _REVIEW_FIX)
        user, asin, stamp = (_text(record["reviewerID"]), _text(record["asin"]),
                             record["unixReviewTime"])
        if not isinstance(user, str) or not user.strip() or not isinstance(asin, str) or \
                not asin.strip():
            raise bad_input(lines.path, number, "reviewerID and asin must be non-empty strings",
                            _REVIEW_FIX)
        try:
            timestamp = int(stamp)
            if isinstance(stamp, bool) or timestamp != float(stamp):
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            raise bad_input(lines.path, number, f"unixReviewTime {stamp!r} is not Unix seconds",
                            _REVIEW_FIX) from None
        checked_timestamp(lines.path, number, timestamp, _REVIEW_FIX)
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
    return out


def _read_meta(
    lines: LineSource, needed: set[str], skips: SkipCounter
) -> tuple[list[Item], set[str]]:
    items: dict[str, Item] = {}
    empty: set[str] = set()
    for number, line in lines.non_blank("metadata", _META_FIX):
        quick = _only_match(_ASIN, "asin", line)
        if quick is not None and quick.group(2).strip() not in needed:
            continue
        record = _parse_object(line)
        if not isinstance(record, dict):
            raise bad_input(lines.path, number, "not a JSON object or Python dict", _META_FIX)
        asin = _text(record.get("asin"))
        if not isinstance(asin, str) or not asin.strip():
            raise bad_input(lines.path, number, "missing or empty field asin", _META_FIX)
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
        extra = {k: _LONE_SURROGATE.sub("\ufffd", str(record[k])) for k in ("brand", "main_cat")
                 if record.get(k)}
        items[asin] = Item(asin, title, extra)
    return list(items.values()), empty
