"""Arbitrary bytes and rows fed to every loader (generic CSV, GroupLens ``u.data``/``u.item``,
Amazon reviews/metadata lines): the result is either a clear :class:`AutomrError` or a valid
prepared dataset - never another exception, never a split without samples."""

import csv
import gzip
import io
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import example, given, settings, strategies as st

from automr.data import (
    SPLITS,
    PreparedDataset,
    ProtocolConfig,
    prepare_amazon,
    prepare_csv,
    prepare_movielens_100k,
)
from automr.errors import AutomrError

DAY = 86_400
BASE = 1_500_000_000  # 2017-07-14
ITEM_IDS = ["1", "2", "3", "4", "5", "6"]
USERS = ["u0", "u1", "u2"]
# Small thresholds so that plausible rows do give datasets (and the checks below run).
PROTOCOL = ProtocolConfig(start=None, end=None, train_months=1, min_item_interactions=0,
                          min_user_interactions=0, max_history=5, recent_k=1)
FUZZ = settings(max_examples=40, deadline=None)

texts = st.text(max_size=8)
users = st.one_of(st.sampled_from(USERS), texts)
items = st.one_of(st.sampled_from(ITEM_IDS), texts)
stamps = st.one_of(
    st.integers(BASE, BASE + 200 * DAY).map(str),  # plausible: ~7 months
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["-86400", "1e9", "1000000000", "99999999999999999", "1500000000.5",
                     "1500000000.0", "1500000000000", "nan", "inf", "", "2017-07-14",
                     "2017-07-14T02:40:00Z", "0001-01-01", "9999-12-31T23:59:59"]),
    texts,
)
rows = st.lists(st.tuples(users, items, stamps), max_size=40)
# Plausible logs (~4 months): most give valid datasets, so the dataset checks run too.
plausible_rows = st.lists(st.tuples(st.sampled_from(USERS), st.sampled_from(ITEM_IDS),
                                    st.integers(BASE, BASE + 120 * DAY).map(str)),
                          min_size=30, max_size=60)
logs = st.one_of(plausible_rows, rows,
                 st.tuples(plausible_rows, st.lists(st.tuples(users, items, stamps), min_size=1,
                                                    max_size=2)).map(lambda p: p[0] + p[1]))


@st.composite
def file_bytes(draw, valid: bytes) -> bytes:
    """Arbitrary bytes, or ``valid`` (a correct file) damaged: cut or one byte changed, plain
    or gzipped (a truncated or corrupt ``.gz``)."""
    kind = draw(st.sampled_from(["random", "cut", "flip", "gzip-cut", "gzip-flip"]))
    if kind == "random":
        return draw(st.binary(max_size=200))
    data = gzip.compress(valid) if kind.startswith("gzip") else valid
    if not data:
        return data
    cut = draw(st.integers(0, len(data)))
    if kind.endswith("flip"):
        data = bytearray(data)
        data[min(cut, len(data) - 1)] = draw(st.integers(0, 255))
        return bytes(data)
    return data[:cut]


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data if isinstance(data, bytes)
                     else data.encode("utf-8", errors="surrogatepass"))
    return path


def csv_text(header: list[str], body: list[tuple[str, ...]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(body)
    return buffer.getvalue()


CSV_ITEMS = csv_text(["item", "title"], [(i, f"Film {i}") for i in ITEM_IDS])
GROUPLENS_ITEMS = "".join(f"{i}|Film {i} (1995)|01-Jan-1995||http://x|0|1\n" for i in ITEM_IDS)
AMAZON_META = "".join(json.dumps({"asin": i, "title": f"Book {i}"}) + "\n" for i in ITEM_IDS)


def check(prepare: Callable[[Path], PreparedDataset]) -> PreparedDataset | None:
    """Run ``prepare(out)``: an AutomrError (nothing left at ``out``; None), or a dataset whose
    every split has samples with unique ids, saved and reloaded identically."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        try:
            dataset = prepare(out)
        except AutomrError as error:
            assert str(error)
            assert not out.exists()
            return None
        loaded = PreparedDataset.load(out)
        assert loaded.stats == dataset.stats
        for split in SPLITS:
            samples = dataset.samples(split)
            assert samples, f"{split} is empty without an error"
            ids = [s.id for s in samples]
            assert len(ids) == len(set(ids))
            assert loaded.samples(split) == samples
            assert dataset.stats.samples[split] == len(samples)
        return dataset


def _csv(inter: str | bytes, items: str | bytes = CSV_ITEMS) -> PreparedDataset | None:
    def prepare(out: Path) -> PreparedDataset:
        root = out.parent
        return prepare_csv(write(root / "i.csv", inter), write(root / "t.csv", items), out,
                           protocol=PROTOCOL)
    return check(prepare)


def _grouplens(
    data: str | bytes, item_lines: str | bytes = GROUPLENS_ITEMS
) -> PreparedDataset | None:
    def prepare(out: Path) -> PreparedDataset:
        source = out.parent / "ml"
        source.mkdir()
        write(source / "u.data", data)
        write(source / "u.item", item_lines)
        return prepare_movielens_100k(out, source=source, protocol=PROTOCOL)
    return check(prepare)


def _amazon(reviews: str | bytes, meta: str | bytes = AMAZON_META) -> PreparedDataset | None:
    def prepare(out: Path) -> PreparedDataset:
        root = out.parent
        return prepare_amazon(write(root / "r.json", reviews), write(root / "m.json", meta),
                              out, protocol=PROTOCOL)
    return check(prepare)


def _csv_rows(body: list[tuple[str, str, str]]) -> str:
    return csv_text(["user", "item", "timestamp"], body)


def _grouplens_rows(body: list[tuple[str, str, str]]) -> str:
    return "".join(f"{u}\t{i}\t4\t{t}\n" for u, i, t in body)


def _review(user: object, asin: object, stamp: object) -> str:
    return json.dumps({"reviewerID": user, "asin": asin, "unixReviewTime": stamp})


def _amazon_rows(body: list[tuple[str, str, str]]) -> str:
    lines = []
    for user, asin, stamp in body:
        try:
            value: object = int(stamp)
        except ValueError:
            value = stamp
        lines.append(_review(user, asin, value))
    return "".join(line + "\n" for line in lines)


VALID_LOG = [(u, i, str(BASE + k * 5 * DAY + n)) for k in range(40)
             for n, (u, i) in enumerate([("u0", ITEM_IDS[k % 6]), ("u1", ITEM_IDS[(k + 1) % 6])])]


@FUZZ
@given(logs)
def test_csv_rows(body):
    _csv(_csv_rows(body))


@FUZZ
@given(file_bytes(_csv_rows(VALID_LOG).encode()), file_bytes(CSV_ITEMS.encode()))
def test_csv_bytes(inter, items_file):
    _csv(inter)
    _csv(_csv_rows(VALID_LOG), items_file)


@FUZZ
@given(logs)
def test_grouplens_rows(body):
    _grouplens(_grouplens_rows(body))


@FUZZ
@given(file_bytes(_grouplens_rows(VALID_LOG).encode()),
       file_bytes(GROUPLENS_ITEMS.encode("latin-1")))
def test_grouplens_bytes(data, item_lines):
    _grouplens(data)
    _grouplens(_grouplens_rows(VALID_LOG), item_lines)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6)


@st.composite
def odd_reviews(draw) -> str:
    """A review line with fields missing or of any JSON type, or a line of arbitrary text."""
    if draw(st.booleans()):
        return draw(st.text(max_size=60)).replace("\n", " ")
    record = {"reviewerID": draw(st.one_of(users, json_values)),
              "asin": draw(st.one_of(items, json_values)),
              "unixReviewTime": draw(st.one_of(stamps.map(lambda s: int(s) if s.isdigit()
                                                          else s), json_values))}
    keep = draw(st.sets(st.sampled_from(sorted(record)), min_size=1))
    return json.dumps({k: v for k, v in record.items() if k in keep})


@FUZZ
@given(st.one_of(plausible_rows, rows),
       st.one_of(st.just([]), st.lists(odd_reviews(), min_size=1, max_size=2)))
def test_amazon_rows(body, extra):
    _amazon(_amazon_rows(body) + "".join(line + "\n" for line in extra))


DAMAGED_GZIP_META = (  # found by this test: a byte not UTF-8, then a failing checksum, which
    # finding the byte's line read into (BadGzipFile instead of the one-line error)
    b"\x1f\x8b\x08\x00\xc5\xc7\x12k\x02\xff\xabVJ,\xce\xccS\xb2RP2T\xd2QP*\xc9,\xc9I\x05\xf1"
    b"\x9c\xf2\xf3\xb3\x15\x0c\x95j\xb9\xaa\xe1\n\x8c0\x15\x18\xa1(0\xc6T`\x8c\xa2\xc0 S\x81\t"
    b"\x8a\x02SL\x05\xa6(\n\xcc0\x15\x98\x01\x15\x00\x00h\xb9\xcac\xc6\x00\x00\x00")


@FUZZ
@given(file_bytes(_amazon_rows(VALID_LOG).encode()), file_bytes(AMAZON_META.encode()),
       st.lists(st.one_of(json_values.map(json.dumps), st.text(max_size=60)), max_size=4))
@example(reviews=b"", meta=DAMAGED_GZIP_META, meta_lines=[])
def test_amazon_bytes(reviews, meta, meta_lines):
    _amazon(reviews)
    _amazon(_amazon_rows(VALID_LOG), meta)
    odd = "".join(line.replace("\n", " ") + "\n" for line in meta_lines)
    _amazon(_amazon_rows(VALID_LOG), AMAZON_META + odd)


def test_the_valid_log_gives_the_same_dataset_with_every_loader():
    # The fuzz above damages this log; undamaged, every loader prepares it.
    datasets = [_csv(_csv_rows(VALID_LOG)), _grouplens(_grouplens_rows(VALID_LOG)),
                _amazon(_amazon_rows(VALID_LOG))]
    assert all(d is not None for d in datasets)
    assert len({tuple(d.interactions) for d in datasets}) == 1
    assert len({tuple(d.stats.samples.items()) for d in datasets}) == 1
