"""The generic format: one interactions file and one items file, CSV or TSV, with headers.

- ``interactions``: columns ``user``, ``item``, ``timestamp`` (any order, more columns
  ignored). ``timestamp`` is Unix seconds (``1500000000`` or ``1500000000.0``) or ISO 8601
  (``2017-07-14`` or ``2017-07-14T02:40:00``; no timezone means UTC). A bare integer is always
  Unix seconds: write dates with dashes (``20170714`` would be 1970-08-22).
- ``items``: columns ``item`` and ``title``; every other column is kept in ``Item.extra``.
- ``columns`` maps these names to a file's own (``{"user": "userId", "item": "movieId"}`` for
  MovieLens' ``ratings.csv`` and ``movies.csv``), for both files.

The delimiter follows the extension: ``.csv`` -> comma, ``.tsv`` / ``.tab`` -> tab, each
optionally gzipped (``.csv.gz``). Fields follow :mod:`csv` quoting (titles with commas go in
double quotes). Items with an empty title are skipped and counted with their interactions; a
row repeating an earlier row's user, item and time is dropped and counted
(``duplicate_interactions``); an interaction whose item is not in the items file, a missing
column, a repeated column name, a short row, a bad timestamp or one outside 1970 .. 2100 is an
error naming the file and line. A leading UTF-8 byte-order mark (Excel's "CSV UTF-8") is ignored.
"""

import csv
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from automr.data.catalog import Catalog, MergeReport, merge_duplicates
from automr.data.prompts import check_domain
from automr.data.reading import (
    LineSource,
    bad_input,
    checked_timestamp,
    checked_user,
    parse_timestamp,
    progress_bar,
    require_file,
)
from automr.data.records import Interaction, Item
from automr.data.source import SkipCounter, SourceData, drop_repeats, drop_skipped_items
from automr.errors import AutomrError

DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
COLUMNS = ("user", "item", "timestamp", "title")
"""The columns the format reads; a file may name them otherwise (``columns``)."""
_FIX = "See docs/data.md for the generic CSV/TSV format"


def delimiter_for(path: Path) -> str:
    """The delimiter ``path``'s extension names (``.csv``: comma; ``.tsv``, ``.tab``: tab;
    a final ``.gz`` aside); an :class:`~automr.errors.AutomrError` for any other."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if not suffixes or suffixes[-1] not in DELIMITERS:
        raise AutomrError(f"{path}: cannot tell the delimiter from the extension; name the file "
                          f"*.csv (comma) or *.tsv (tab), optionally with .gz.")
    return DELIMITERS[suffixes[-1]]


def _header_hint(header: list[str], missing: list[str], delimiter: str,
                 columns: Mapping[str, str]) -> str:
    """Why a header may lack ``missing``: one field holding another delimiter (a ``;`` file
    named .csv, a comma file named .tsv), else names of the user's own (``--column``)."""
    names = {",": "comma", "\t": "tab", ";": "semicolon"}
    if len(header) == 1:
        found = [d for d in names if d != delimiter and d in header[0]]
        if found:
            return (f"; the header reads as one column: the file looks {names[found[0]]}-"
                    f"separated, and the extension says {names[delimiter]} (*.csv: comma, "
                    f"*.tsv: tab)")
    if columns:
        return ""
    return f"; name yours with --column (e.g. --column {missing[0]}=YOUR_NAME)"


def check_columns(columns: Mapping[str, str]) -> dict[str, str]:
    """``columns`` (format name -> the file's name) checked: only :data:`COLUMNS`, each file
    column once."""
    unknown = sorted(set(columns) - set(COLUMNS))
    if unknown:
        raise AutomrError(f"columns {unknown} are not read by the CSV format; map "
                          f"{', '.join(COLUMNS)} to the files' names (e.g. user=userId)")
    named = list(columns.values())
    if any(not name for name in named) or len(set(named)) < len(named):
        raise AutomrError(f"columns {dict(columns)}: each must name a different, non-empty "
                          f"column of the files")
    return dict(columns)


def _rows(source: LineSource, required: tuple[str, ...], skips: SkipCounter,
          columns: Mapping[str, str]) -> Iterator[tuple[int, dict[str, str], int]]:
    """``(line_number, {column: value}, lines)`` per data row (``lines``: how many lines it
    spans, more than one only with a quoted line break), the ``required`` columns under the
    format's names (``columns``: format name -> the file's); header checked first. A row of
    empty fields only (``,,,``: a spreadsheet's), before the header or after it, is counted in
    ``skips`` as ``empty_rows``; a blank line is no row."""
    delimiter = delimiter_for(source.path)
    lines = iter(source)
    last = [0]  # the number of the last line read (only that: not one int per line kept)

    def text() -> Iterator[str]:
        for number, line in lines:
            last[0] = number
            yield line + "\n"

    reader = csv.reader(text(), delimiter=delimiter, strict=True)  # broken quoting: an error
    at = 1  # the line the header starts on: blank lines and empty rows before it are no header
    header: list[str] = []
    try:
        for header in reader:
            if any(h.strip() for h in header):
                break
            if header:
                skips["empty_rows"] += 1
            at = last[0] + 1
        else:
            header = []
    except csv.Error as error:
        raise bad_input(source.path, at, f"malformed CSV header ({error})", _FIX) from None
    if not header:
        raise bad_input(source.path, None, "file is empty (a header row is required)", _FIX)
    header = [h.strip() for h in header]
    missing = [columns.get(c, c) for c in required if columns.get(c, c) not in header]
    if missing:
        raise bad_input(source.path, at, f"header {header} lacks column(s) {missing}"
                        f"{_header_hint(header, missing, delimiter, columns)}", _FIX)
    repeated = sorted({h for h in header if h and header.count(h) > 1})  # unnamed: not read
    if repeated:
        raise bad_input(source.path, at, f"header {header} repeats column(s) {repeated}", _FIX)
    ours = {columns.get(c, c): c for c in required}
    if len(ours) < len(required):  # mapped onto the name another column reads unmapped
        own = next(c for c in required if c not in columns and c in columns.values())
        mapped = next(k for k, v in columns.items() if v == own)
        raise bad_input(source.path, at, f"--column {mapped}={own} reads the column {own}, "
                        f"which is also {own}'s own (unmapped) name; map {own} to another "
                        f"column too (--column {own}=YOUR_NAME)", _FIX)
    taken = sorted(c for c in header if c in required and c not in ours)
    if taken:
        raise bad_input(source.path, at, f"header {header} has column(s) {taken} beside the "
                        f"one(s) mapped to them; map only one", _FIX)
    header = [ours.get(h, h) for h in header]
    starts = last[0] + 1  # the line the next row starts on (a quoted field may span lines)
    try:
        for row in reader:
            number, starts = starts, last[0] + 1
            if not row:
                continue
            if all(not f.strip() for f in row):
                skips["empty_rows"] += 1
                continue
            if len(row) != len(header):
                raise bad_input(source.path, number, f"expected {len(header)} fields, got "
                                f"{len(row)}", _FIX)
            yield (number, {h: v.strip() for h, v in zip(header, row, strict=True) if h},
                   last[0] - number + 1)
    except csv.Error as error:
        raise bad_input(source.path, starts, f"malformed CSV in the row that starts here "
                        f"({error}; a quoted field must end with its quote, inner quotes "
                        f"doubled)", _FIX) from None


def load_csv(
    interactions: Path | str,
    items: Path | str,
    *,
    domain: str = "items",
    merge_same_title: bool = False,
    progress: bool = False,
    columns: Mapping[str, str] | None = None,
) -> SourceData:
    """Load the generic CSV/TSV format (module docstring). ``merge_same_title=True`` merges
    items with identical titles into the first one listed; ``columns`` maps the format's
    column names to the files' (``{"item": "movieId"}``)."""
    check_domain(domain)
    columns = check_columns(columns or {})
    inter_path = require_file(interactions, "interactions")
    item_path = require_file(items, "items")
    skips = SkipCounter()
    with progress_bar(progress) as bar:
        item_lines = LineSource(item_path, progress=bar)
        catalog_items: list[Item] = []
        known: set[str] = set()
        empty: set[str] = set()
        raw_items = 0
        spanning: list[int] = []  # the lines of item rows with a quoted line break
        for number, row, lines in _rows(item_lines, ("item", "title"), skips, columns):
            raw_items += 1
            if lines > 1:
                spanning.append(number)
            item_id = row.pop("item")
            title = " ".join(row.pop("title").split())
            if not item_id:
                raise bad_input(item_path, number, "empty item id", _FIX)
            if item_id in known or item_id in empty:
                raise bad_input(item_path, number, f"item id {item_id!r} listed twice", _FIX)
            if not title:
                empty.add(item_id)
                skips["items_empty_title"] += 1
                continue
            known.add(item_id)
            catalog_items.append(Item(item_id, title, row))
        inter_lines = LineSource(inter_path, progress=bar)
        records: list[Interaction] = []
        for number, row, _ in _rows(inter_lines, ("user", "item", "timestamp"), skips,
                                    columns):
            # one string per distinct id, as the Amazon loader keeps (millions of rows)
            user, item, stamp = sys.intern(row["user"]), sys.intern(row["item"]), row["timestamp"]
            if not user or not item:
                raise bad_input(inter_path, number, "empty user or item", _FIX)
            checked_user(inter_path, number, user)
            if item not in known and item not in empty:
                joined = (f" ({len(spanning)} of its rows span several lines, the first at "
                          f"line {spanning[0]}: a quote never closed joins the lines after it "
                          f"into one title)" if spanning else "")
                raise bad_input(inter_path, number, f"item {item!r} is not in {item_path.name}"
                                f"{joined}", "Add it to the items file or remove the interaction")
            try:
                timestamp = parse_timestamp(stamp)
            except ValueError:
                raise bad_input(inter_path, number, f"timestamp {stamp!r} is neither Unix "
                                f"seconds nor an ISO 8601 date/time", _FIX) from None
            records.append(Interaction(user, item,
                                       checked_timestamp(inter_path, number, timestamp, _FIX)))
    raw_users = len({r.user for r in records})
    raw_interactions = len(records)
    records = drop_repeats(records, skips, "duplicate_interactions")
    records = drop_skipped_items(records, empty, skips)
    report = MergeReport()
    if merge_same_title:
        catalog_items, records, report = merge_duplicates(catalog_items, records)
    return SourceData(
        kind="csv", domain=domain, catalog=Catalog(tuple(catalog_items)),
        interactions=tuple(records), raw_users=raw_users, raw_items=raw_items,
        raw_interactions=raw_interactions, merge=report, skipped=skips.as_dict(),
        fingerprints={"interactions": inter_lines.sha256, "items": item_lines.sha256},
        options={"interactions": str(inter_path), "items": str(item_path),
                 "merge_same_title": str(merge_same_title).lower(),
                 **({"columns": ",".join(f"{k}={v}" for k, v in sorted(columns.items()))}
                    if columns else {})},
    )
