"""The Amazon Reviews 2018 loader on small files in the real format, plain and gzipped."""

import ast
import datetime as dt
import gzip
import json
from pathlib import Path

import attrs
import pytest

from automr.cache import sha256_of
from automr.data import PreparedDataset, ProtocolConfig, load_amazon, prepare_amazon
from automr.data.protocol import to_unix
from automr.errors import AutomrError

DAY = 86_400
JAN_2017 = to_unix(dt.date(2017, 1, 1))


def review(user: str, asin: str, t: int) -> dict:
    """One line as in e.g. ``Books.json.gz`` (2018): extra fields the loader ignores."""
    return {"overall": 5.0, "verified": True, "reviewTime": "01 2, 2017", "reviewerID": user,
            "asin": asin, "style": {"Format:": " Paperback"}, "reviewerName": "R",
            "reviewText": "Loved it, \"really\".", "summary": "Great", "unixReviewTime": t}


def meta(asin: str, title: str) -> dict:
    return {"category": ["Books"], "tech1": "", "description": ["..."], "title": title,
            "also_buy": ["B000"], "brand": "Someone", "rank": "1 in Books", "main_cat": "Books",
            "price": "$9.99", "asin": asin}


def write_lines(path: Path, lines: list[str]) -> Path:
    data = "".join(line + "\n" for line in lines).encode()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def small_category(folder: Path, gz: bool) -> tuple[Path, Path]:
    """4 users x 9 reviews over 8 books across 2017, plus the edge cases the loader handles."""
    ext = ".json.gz" if gz else ".json"
    lines = []
    for u in range(4):
        for k, day in enumerate((0, 40, 80, 120, 160, 200, 240, 310, 345)):
            # 7 reviews in train (Jan-Oct), one in validation (Nov), one in test (Dec).
            lines.append(json.dumps(review(f"U{u}", f"B{(u + k) % 8}", JAN_2017 + (day + u) * DAY)))
    lines.append(json.dumps(review("U0", "B0", JAN_2017)))  # exact duplicate of U0's first
    lines.append(json.dumps(review("U9", "B1", JAN_2017 - DAY)))  # 2016: outside the window
    lines.append(json.dumps(review("U1", "NOMETA", JAN_2017 + 3 * DAY)))  # no metadata
    lines.append(json.dumps(review("U2", "EMPTY", JAN_2017 + 3 * DAY)))  # empty title
    lines.append("")  # blank lines are ignored
    reviews = write_lines(folder / f"reviews{ext}", lines)
    metas = [json.dumps(meta(f"B{i}", f"Book {i} &amp; Co")) for i in range(1, 8)]
    # A Python-literal line (some 2018 metadata files), with a title in double quotes.
    metas.append(repr(meta("B0", "Harry's Book &quot;Zero&quot;")))
    metas.append(json.dumps(meta("B3", "Book 3 again")))  # repeated asin: first one kept
    metas.append(json.dumps(meta("EMPTY", "  ")))
    metas.append(json.dumps(meta("UNUSED", "Never reviewed")))
    return reviews, write_lines(folder / f"meta{ext}", metas)


@pytest.mark.parametrize("gz", [False, True])
def test_load_small_category(tmp_path, gz):
    reviews, metas = small_category(tmp_path, gz)
    src = load_amazon(reviews, metas, start=JAN_2017, end=to_unix(dt.date(2018, 1, 1)),
                      progress=gz)
    assert src.catalog.title("B0") == 'Harry\'s Book "Zero"'
    assert src.catalog.title("B1") == "Book 1 & Co"
    assert src.catalog.title("B3") == "Book 3 & Co"
    assert "UNUSED" not in src.catalog and "EMPTY" not in src.catalog
    assert src.skipped == {
        "duplicate_interactions": 1, "duplicate_metadata": 1, "interactions_of_skipped_items": 1,
        "interactions_without_metadata": 1, "items_empty_title": 1,
        "reviews_outside_window": 1}
    assert (src.raw_users, src.raw_items, src.raw_interactions) == (4, 10, 39)
    assert len(src.interactions) == 36
    assert src.fingerprints == {"reviews": sha256_of(reviews), "meta": sha256_of(metas)}


def test_plain_and_gzipped_give_the_same_data(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = load_amazon(*small_category(tmp_path / "a", gz=False))
    zipped = load_amazon(*small_category(tmp_path / "b", gz=True))
    assert plain.catalog == zipped.catalog and plain.interactions == zipped.interactions


def test_files_starting_with_a_byte_order_mark_load_as_without(tmp_path):
    """Some editors save JSON lines with a UTF-8 byte-order mark: the first line was 'not a
    JSON object'; it is the same data as the file without the mark."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = load_amazon(*small_category(tmp_path / "a", gz=False))
    for path in small_category(tmp_path / "b", gz=False):
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    marked = load_amazon(tmp_path / "b" / "reviews.json", tmp_path / "b" / "meta.json")
    assert marked.catalog == plain.catalog and marked.interactions == plain.interactions
    assert marked.skipped == plain.skipped


def test_prepare_amazon_end_to_end(tmp_path):
    reviews, metas = small_category(tmp_path, gz=True)
    protocol = attrs.evolve(ProtocolConfig.amazon_2017(), min_user_interactions=3,
                            min_item_interactions=1, recent_k=2, max_history=5)
    out = tmp_path / "prepared"
    dataset = prepare_amazon(reviews, metas, out, protocol=protocol, domain="books")
    # Every review after a user's first two is a sample (K = 2).
    assert dataset.stats.samples == {"train": 4 * 5, "valid": 4, "test": 4}
    assert dataset.source.domain == "books"
    again = PreparedDataset.load(out)
    for split in ("train", "valid", "test"):
        assert again.samples(split) == dataset.samples(split)
    config = json.loads((out / "config.json").read_text())
    assert config["source"]["fingerprints"]["reviews"] == dataset.source.fingerprints["reviews"]
    assert config["protocol"]["start"] == "2017-01-01"


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "line 2: not a JSON object"),
    (json.dumps({"reviewerID": "U", "unixReviewTime": 1490000000}),
     "line 2: missing field.s. asin"),
    (json.dumps(review("U", "B1", 0) | {"unixReviewTime": "soon"}),
     "line 2: unixReviewTime 'soon' is not Unix seconds"),
    (json.dumps(review("", "B1", 1490000000)), "line 2: reviewerID and asin must be non-empty"),
    (json.dumps(review("team@2024:bob", "B1", 1490000000)),
     "line 2: user 'team@2024:bob' holds '@<digits>:'"),  # was the record's bare ValueError
    ("[1, 2]", "line 2: not a JSON object"),
    ("{[]: 1}", "line 2: not a JSON object"),  # a Python literal that cannot be built
    ('{"reviewerID": "U", "asin": "B1", "unixReviewTime": Infinity}',
     "line 2: unixReviewTime inf is not Unix seconds"),
    (json.dumps(review("U", "B1", 99999999999999999)),
     "line 2: timestamp 99999999999999999 is outside the accepted range"),
    (json.dumps(review("U", "B1", 1490000000000)),
     r"line 2: timestamp 1490000000000 is outside .*milliseconds\? 1490000000 s"),
    (json.dumps(review("U", "B1", 0) | {"unixReviewTime": -5}),
     "line 2: timestamp -5 is outside the accepted range"),
    # Python's int() refuses 4,300+ digits with a bare ValueError (it was read before any check)
    ('{"reviewerID": "U", "asin": "B1", "unixReviewTime": ' + "1" * 5000 + "}",
     "line 2: not a JSON object"),
])
def test_bad_review_lines(tmp_path, line, message):
    reviews = write_lines(tmp_path / "r.json.gz",
                          [json.dumps(review("U", "B1", 1490000000)), line])
    metas = write_lines(tmp_path / "m.json", [json.dumps(meta("B1", "t"))])
    out = tmp_path / "out"
    with pytest.raises(AutomrError, match=rf"r\.json\.gz {message}"):
        prepare_amazon(reviews, metas, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "r.json.gz"]


def test_a_lone_surrogate_escape_is_written_as_a_replacement_character(tmp_path):
    """``"\\ud83d"`` without its pair is valid JSON but no text UTF-8 can write: the prepared
    folder's write failed with a bare UnicodeEncodeError naming no file."""
    days = (0, 40, 80, 120, 160, 200, 240, 310, 345)  # the last two: validation and test
    lines = [json.dumps(review(user, f"B{k}", JAN_2017 + (day + u) * DAY))
             for u, user in enumerate(("U0", "U\ud83d")) for k, day in enumerate(days)]
    reviews = write_lines(tmp_path / "r.json", lines)
    metas = write_lines(tmp_path / "m.json", [json.dumps(meta(f"B{k}", f"Book {k} \ud83d"))
                                              for k in range(9)])
    assert json.loads(metas.read_text().splitlines()[0])["title"] == "Book 0 \ud83d"
    protocol = attrs.evolve(ProtocolConfig.amazon_2017(), min_user_interactions=3,
                            min_item_interactions=1, recent_k=2, max_history=5)
    dataset = prepare_amazon(reviews, metas, tmp_path / "out", protocol=protocol)
    assert dataset.catalog.title("B0") == "Book 0 \ufffd"
    assert {i.user for i in dataset.interactions} == {"U0", "U\ufffd"}
    again = PreparedDataset.load(tmp_path / "out")
    assert again.samples("train") == dataset.samples("train")


def test_bad_meta_lines(tmp_path):
    reviews = write_lines(tmp_path / "r.json", [json.dumps(review("U", "B1", 1490000000))])
    metas = write_lines(tmp_path / "m.json", [json.dumps(meta("B1", "t")), '{"title": "x"}'])
    with pytest.raises(AutomrError, match=r"m\.json line 2: missing or empty field asin"):
        load_amazon(reviews, metas)
    metas = write_lines(tmp_path / "m.json", ["{'asin': 'B1', 'title': oops}"])
    with pytest.raises(AutomrError, match=r"m\.json line 1: not a JSON object or Python dict"):
        load_amazon(reviews, metas)


def test_missing_and_corrupt_files(tmp_path):
    metas = write_lines(tmp_path / "m.json", [json.dumps(meta("B1", "t"))])
    with pytest.raises(AutomrError, match="does not exist"):
        load_amazon(tmp_path / "nope.json", metas)
    broken = tmp_path / "r.json.gz"
    data = "".join(json.dumps(review(f"U{i}", "B1", 1490000000)) + "\n" for i in range(500))
    full = gzip.compress(data.encode())
    broken.write_bytes(full[: len(full) // 2])
    with pytest.raises(AutomrError, match="could not be read"):
        load_amazon(broken, metas)


@pytest.mark.parametrize("name", ["r.json", "r.json.gz"])
def test_an_empty_file_is_named_as_empty(tmp_path, name):
    """An empty reviews file was 'no interactions left after the window and filtering ...
    Lower the thresholds or widen the window', advice that cannot help."""
    reviews = write_lines(tmp_path / name, [json.dumps(review("U", "B1", 1490000000))])
    metas = write_lines(tmp_path / "m.json", [json.dumps(meta("B1", "t"))])
    empty = write_lines(tmp_path / f"empty-{name}", ["", "  "])  # blank lines only
    with pytest.raises(AutomrError, match=rf"empty-{name}: holds no reviews \(the file is "
                                          r"empty or blank\)"):
        load_amazon(empty, metas)
    with pytest.raises(AutomrError, match=rf"empty-{name}: holds no metadata \(the file is "
                                          r"empty or blank\)"):
        load_amazon(reviews, empty)


def test_a_damaged_python_literal_line_is_skipped_without_a_warning():
    """'1and 2' made ast print '<unknown>:1: SyntaxWarning: invalid decimal literal' (seen
    under the fuzz test) while the line was skipped anyway."""
    import warnings

    from automr.data.amazon import _parse_object

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert _parse_object("1and 2") is None
        assert _parse_object("{'asin': 'B1', 'title': 'T'}") == {"asin": "B1", "title": "T"}
    assert not shown, [str(w.message) for w in shown]


def test_the_window_is_start_inclusive_end_exclusive_and_ids_are_stripped(tmp_path):
    """``start <= unixReviewTime < end``; a reviewerID or asin with surrounding spaces is the
    same id as without (so " U1 "'s review of B1 at U1's time is a duplicate)."""
    start, end = JAN_2017, JAN_2017 + 10 * DAY
    reviews = write_lines(tmp_path / "r.json", [json.dumps(review("U1", "B1", t)) for t in (
        start - 1, start, end - 1, end)] + [json.dumps(review(" U1 ", " B1 ", start))])
    metas = write_lines(tmp_path / "m.json", [json.dumps(meta("B1", "t"))])
    src = load_amazon(reviews, metas, start=start, end=end)
    assert [i.timestamp for i in src.interactions] == [start, end - 1]
    assert src.skipped == {"reviews_outside_window": 2, "duplicate_interactions": 1}


@pytest.mark.parametrize("end", [JAN_2017, JAN_2017 - DAY])
def test_a_window_that_ends_before_it_starts_is_refused_before_reading(tmp_path, end):
    """start >= end read the whole reviews file (a category's is gigabytes) to keep none of
    them; prepare_dataset then refused the empty source."""
    with pytest.raises(AutomrError, match="must be before end"):
        load_amazon(tmp_path / "missing.json", tmp_path / "missing.json", start=JAN_2017,
                    end=end)


def test_an_asin_listed_again_after_an_empty_title_stays_out(tmp_path):
    """The first metadata line of an asin decides, an empty title included: a later line with
    a title is a duplicate, and the asin's reviews are dropped with it."""
    reviews = write_lines(tmp_path / "r.json", [json.dumps(review("U1", "B1", JAN_2017)),
                                                json.dumps(review("U1", "B2", JAN_2017 + 1))])
    metas = write_lines(tmp_path / "m.json", [json.dumps(meta("B1", "t")),
                                              json.dumps(meta("B2", " ")),
                                              json.dumps(meta("B2", "a title after all"))])
    src = load_amazon(reviews, metas)
    assert "B2" not in src.catalog and [i.item for i in src.interactions] == ["B1"]
    assert src.skipped == {"items_empty_title": 1, "duplicate_metadata": 1,
                           "interactions_of_skipped_items": 1}


def test_the_quick_read_before_a_full_parse_never_drops_a_line_it_would_keep(tmp_path):
    """Lines are skipped by a field read off the raw text before the full parse; a time in
    exponent form (``1.48e9``, read as 1 = 1970) or the key's name inside a review's text or an
    item's description (before the real field) dropped a line the full parse keeps."""
    inside = JAN_2017 + 5 * DAY
    exponent = json.dumps(review("U2", "B1", 0)).replace(
        '"unixReviewTime": 0', f'"unixReviewTime": {inside / 1e9!r}e9')
    quoted = {**review("U3", "B2", inside), "reviewText": "The 'unixReviewTime': 0 field"}
    reviews = write_lines(tmp_path / "r.json", [json.dumps(review("U1", "B1", inside)), exponent,
                                                json.dumps(quoted)])
    described = {**meta("B2", "Two"), "description": ["Look it up by 'asin': 'XYZ'"]}
    metas = write_lines(tmp_path / "m.json", [json.dumps(meta("B1", "One")),
                                              json.dumps(described)])
    src = load_amazon(reviews, metas, start=JAN_2017, end=JAN_2017 + 365 * DAY)
    assert sorted((i.user, i.item, i.timestamp) for i in src.interactions) == [
        ("U1", "B1", inside), ("U2", "B1", inside), ("U3", "B2", inside)]
    assert {item.id: item.title for item in src.catalog} == {"B1": "One", "B2": "Two"}
    assert src.skipped == {}


def as_2023(line: str) -> str:
    """A 2018 review or metadata line in the 2023 release's layout (as in e.g.
    ``Books.jsonl.gz`` / ``meta_Books.jsonl.gz``): the item is the parent ASIN (the review's own
    ``asin`` a variant), the time in milliseconds (``+ 999``: a second's last), and the review's
    ``title`` its own, not the item's."""
    old = json.loads(line) if line.startswith('{"') else ast.literal_eval(line)
    if "reviewerID" in old:
        return json.dumps({
            "rating": old["overall"], "title": "Not the item's title", "text": old["reviewText"],
            "images": [], "asin": old["asin"] + "-variant", "parent_asin": old["asin"],
            "user_id": old["reviewerID"], "timestamp": old["unixReviewTime"] * 1000 + 999,
            "helpful_vote": 0, "verified_purchase": old["verified"]})
    return json.dumps({
        "main_category": old["main_cat"], "title": old["title"], "average_rating": 4.5,
        "rating_number": 10, "features": [], "description": old["description"], "price": None,
        "images": [], "videos": [], "store": old["brand"], "categories": old["category"],
        "details": {"Publisher": "P"}, "parent_asin": old["asin"], "bought_together": None})


def small_category_2023(folder: Path) -> tuple[Path, Path]:
    """:func:`small_category` in the 2023 layout, line for line."""
    paths = small_category(folder, gz=True)
    for path in paths:
        lines = gzip.decompress(path.read_bytes()).decode().splitlines()
        write_lines(path, [as_2023(line) if line else line for line in lines])
    return paths


def test_the_2023_release_loads_as_the_same_category_in_2018s_layout(tmp_path):
    """Amazon Reviews 2023 names its fields otherwise (``user_id``, ``parent_asin``, a time in
    milliseconds) and its metadata by ``parent_asin``: the same reviews load to the same
    interactions (times floored to seconds), catalog and counts, the items' store and category
    kept as their extras."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    window = {"start": JAN_2017, "end": to_unix(dt.date(2018, 1, 1))}
    old = load_amazon(*small_category(tmp_path / "a", gz=True), **window)
    new = load_amazon(*small_category_2023(tmp_path / "b"), **window)
    assert new.interactions == old.interactions
    assert [(i.id, i.title) for i in new.catalog] == [(i.id, i.title) for i in old.catalog]
    assert new.catalog["B1"].extra == {"store": "Someone", "main_category": "Books"}
    assert new.skipped == old.skipped
    assert (new.raw_users, new.raw_items, new.raw_interactions) == (
        old.raw_users, old.raw_items, old.raw_interactions)
    assert new.options["release"] == "2023" and "release" not in old.options


def test_a_2023_time_is_in_the_window_by_its_second(tmp_path):
    """Milliseconds are floored to the second before the window's test, on the quick read and
    the full parse alike: the last millisecond before the start is out, the start's first in."""
    def line(user: str, ms: int, text: str = "") -> str:
        return json.dumps({"rating": 5.0, "title": "t", "text": text, "asin": "B1",
                           "parent_asin": "B1", "user_id": user, "timestamp": ms})

    start = JAN_2017 * 1000
    quoted = "the 'timestamp': 0 field"  # the key twice: read by the full parse
    reviews = write_lines(tmp_path / "r.jsonl", [
        line("U1", start - 1), line("U2", start), line("U3", start + 999),
        line("U4", start - 1, quoted), line("U5", start, quoted)])
    metas = write_lines(tmp_path / "m.jsonl", [json.dumps({"title": "One", "parent_asin": "B1"})])
    src = load_amazon(reviews, metas, start=JAN_2017)
    assert [(i.user, i.timestamp) for i in src.interactions] == [
        ("U2", JAN_2017), ("U3", JAN_2017), ("U5", JAN_2017)]
    assert src.skipped == {"reviews_outside_window": 2}


@pytest.mark.parametrize(("reviews_line", "meta_line", "message"), [
    ({"user_id": "U", "parent_asin": "B1"}, {"parent_asin": "B1", "title": "t"},
     r"r\.jsonl line 1: missing field\(s\) timestamp\. .*user_id, parent_asin and timestamp "
     r"\(Amazon Reviews 2023 format\)"),
    ({"user_id": "U", "parent_asin": "B1", "timestamp": 1.5e12 + 0.5},
     {"parent_asin": "B1", "title": "t"},
     r"line 1: timestamp 1500000000000\.5 is not Unix milliseconds"),
    ({"user_id": "U", "parent_asin": "B1", "timestamp": 1_500_000_000_000},
     {"asin": "B1", "title": "t"},  # 2018's metadata beside 2023's reviews
     r"m\.jsonl line 1: missing or empty field parent_asin\. .*parent_asin and title "
     r"\(Amazon Reviews 2023 metadata\)"),
])
def test_bad_2023_lines_name_the_2023_fields(tmp_path, reviews_line, meta_line, message):
    reviews = write_lines(tmp_path / "r.jsonl", [json.dumps(reviews_line)])
    metas = write_lines(tmp_path / "m.jsonl", [json.dumps(meta_line)])
    with pytest.raises(AutomrError, match=message):
        load_amazon(reviews, metas)
