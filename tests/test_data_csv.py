"""The generic CSV/TSV format, the skip/error policy, and the prepared folder's round trip."""

import datetime as dt
import gzip
import json
from pathlib import Path

import attrs
import pytest

from automr.data import PreparedDataset, ProtocolConfig, load_csv, prepare_csv
from automr.data.prepared import PreparedDataset as _PD
from automr.errors import AutomrError

PROTOCOL = ProtocolConfig(start=None, end=None, train_months=2, min_item_interactions=1,
                          min_user_interactions=2, recent_k=2, max_history=4)


def write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def small_csv(folder: Path, ext: str = ".csv") -> tuple[Path, Path]:
    sep = "," if ext.startswith(".csv") else "\t"
    rows = ["timestamp,user,item,rating".replace(",", sep)]
    # 3 users, one interaction every 10 days from 2020-01-01 (ISO and Unix seconds mixed).
    for u in range(3):
        for k in range(10):
            day = 10 * k + u
            stamp = "2020-01-01T00:00:00" if day == 0 else str(1577836800 + day * 86400)
            rows.append(sep.join([stamp, f"user{u}", f"m{(k + u) % 6}", "5"]))
    rows.append(sep.join(["1577836800", "user0", "gone", "1"]))
    items = [sep.join(["item", "title", "genre"])]
    items += [sep.join([f"m{i}", f'"Movie, number {i}"' if sep == "," else f"Movie {i}",
                        "Drama"]) for i in range(6)]
    items.append(sep.join(["gone", "", "Drama"]))
    return (write(folder / f"inter{ext}", "\n".join(rows) + "\n"),
            write(folder / f"items{ext}", "\n".join(items) + "\n"))


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".csv.gz"])
def test_load_csv(tmp_path, ext):
    inter, items = small_csv(tmp_path, ext)
    src = load_csv(inter, items)
    assert (src.raw_users, src.raw_items, src.raw_interactions) == (3, 7, 31)
    assert src.skipped == {"items_empty_title": 1, "interactions_of_skipped_items": 1}
    assert len(src.catalog) == 6 and len(src.interactions) == 30
    assert src.catalog["m1"].extra == {"genre": "Drama"}
    if ext != ".tsv":
        assert src.catalog.title("m1") == "Movie, number 1"
    assert src.interactions[0].timestamp == 1577836800


def test_an_unknown_domain_or_a_protocol_dict_is_refused_before_reading(tmp_path):
    """load_csv(..., domain="movie") (or load_amazon's, or a SourceData's) was kept, and the
    prepared dataset was prompted with the items vocabulary ('interacted with the following
    items') without a word; prepare_dataset(source, {...}) failed with AttributeError: 'dict'
    object has no attribute 'start'."""
    from automr.data import load_amazon, prepare_dataset

    inter, items = small_csv(tmp_path)
    with pytest.raises(AutomrError, match="unknown prompt domain 'movie'; use one of books"):
        load_csv(tmp_path / "missing.csv", items, domain="movie")  # before any file is read
    with pytest.raises(AutomrError, match="unknown prompt domain 'movie'"):
        load_amazon(tmp_path / "missing.json", tmp_path / "missing.json", domain="movie")
    source = load_csv(inter, items, domain="movies")
    with pytest.raises(AutomrError, match="unknown prompt domain 'movie'"):
        prepare_dataset(attrs.evolve(source, domain="movie"), ProtocolConfig(start=None,
                                                                            end=None))
    with pytest.raises(AutomrError, match=r"takes a SourceData .* got a SourceData and a dict"):
        prepare_dataset(source, {"train_months": 2})


def test_prepare_csv_round_trip(tmp_path):
    inter, items = small_csv(tmp_path)
    out = tmp_path / "prepared"
    dataset = prepare_csv(inter, items, out, protocol=PROTOCOL)
    assert {p.name for p in out.iterdir()} == {
        "config.json", "stats.json", "items.jsonl", "interactions.jsonl", "samples"}
    stats = json.loads((out / "stats.json").read_text())
    assert {"users", "items", "interactions", "samples", "skipped", "merged_items",
            "filtered", "memory_length", "window"} <= set(stats)
    assert stats["samples"] == {split: len(dataset.samples(split))
                                for split in ("train", "valid", "test")}
    assert sum(stats["samples"].values()) == 3 * (10 - 2)
    loaded = PreparedDataset.load(out)
    assert loaded == attrs.evolve(dataset, path=out)
    train, valid, test = (len(loaded.samples(s)) for s in ("train", "valid", "test"))
    assert repr(loaded) == (f"PreparedDataset({out}: csv, 6 items, 30 interactions, samples "
                            f"train {train}, valid {valid}, test {test})")  # not every row
    for split in ("train", "valid", "test"):
        assert loaded.samples(split) == dataset.samples(split)
    # Memory holds the history beyond the recent 2, capped at 4 in all.
    assert max(len(s.memory) for s in loaded.samples("test")) == 2
    # Preparing again over a prepared folder replaces it.
    prepare_csv(inter, items, out, protocol=PROTOCOL)
    assert PreparedDataset.load(out).stats == dataset.stats


def test_merge_same_title(tmp_path):
    inter = write(tmp_path / "i.csv", "user,item,timestamp\nu,a,1\nu,b,2\n")
    items = write(tmp_path / "t.csv", "item,title\na,Same\nb,Same\n")
    src = load_csv(inter, items, merge_same_title=True)
    assert src.catalog.ids == ("a",) and [i.item for i in src.interactions] == ["a", "a"]
    assert src.merge.merged_items == 1 and src.merge.remapped_interactions == 1
    assert load_csv(inter, items).catalog.ids_for_title("Same") == ("a", "b")


def test_unnamed_trailing_columns_of_a_spreadsheet_export_are_not_read(tmp_path):
    """A sheet saved with two formatted empty columns has the header ``item,title,,``: it was
    refused as repeating the column ''; columns without a name are extra columns, not read."""
    inter = write(tmp_path / "i.csv", "user,item,timestamp,,\nu,a,1,,\nu,b,2,,x\n")
    items = write(tmp_path / "t.csv", "item,title,genre,,\na,A,g,,\nb,B,h,,z\n")
    src = load_csv(inter, items)
    assert [(i.id, i.title, i.extra) for i in src.catalog.items] == [
        ("a", "A", {"genre": "g"}), ("b", "B", {"genre": "h"})]
    assert [(i.user, i.item, i.timestamp) for i in src.interactions] == [("u", "a", 1),
                                                                          ("u", "b", 2)]


@pytest.mark.parametrize(("inter_text", "items_text", "message"), [
    ("user,item,timestamp\nu,a,1\nu,zzz,2\n", "item,title\na,A\n",
     r"i\.csv line 3: item 'zzz' is not in t\.csv"),
    ("user,item,timestamp\nu,a,1\nu,a,next week\n", "item,title\na,A\n",
     r"i\.csv line 3: timestamp 'next week' is neither"),
    ("user,item,timestamp\nu,a\n", "item,title\na,A\n", r"i\.csv line 2: expected 3 fields"),
    ("user,item,when\nu,a,1\n", "item,title\na,A\n", r"i\.csv line 1: header .* lacks"),
    ("user,item,timestamp\nu,a,1\n", "item,name\na,A\n", r"t\.csv line 1: header .* lacks"),
    ("user,item,timestamp\nu,a,1\n", "item,title,title\na,A,B\n",
     r"t\.csv line 1: header .* repeats column\(s\) \['title'\]\. See docs"),
    ("user,item,timestamp,user\nu,a,1,v\n", "item,title\na,A\n",
     r"i\.csv line 1: header .* repeats column\(s\) \['user'\]\. See docs"),
    ("user,item,timestamp\nu,a,1\n", "item,title\na,A\na,B\n", r"t\.csv line 3: item id 'a' "
                                                                r"listed twice"),
    ("user,item,timestamp\nu,a,1\n", "item,title\na, \na,B\n", r"t\.csv line 3: item id 'a' "
                                                               r"listed twice"),  # empty first
    ("user,item,timestamp\n,a,1\n", "item,title\na,A\n", r"i\.csv line 2: empty user"),
    ("user,item,timestamp\nu,a,1\nteam@2024:bob,a,2\n", "item,title\na,A\n",
     r"i\.csv line 3: user 'team@2024:bob' holds '@<digits>:'"),  # the sample id's separator
    ("", "item,title\na,A\n", r"i\.csv: file is empty"),
    ('user,item,timestamp\nu,"a,1\n', "item,title\na,A\n", r"i\.csv line 2: malformed"),
    ("user,item,timestamp\nu,a,1\n", 'item,title\na,"Sabrina (1954)\n',
     r"t\.csv line 2: malformed"),
    ("user,item,timestamp\nu,a,1\nu,b,2\n", 'item,title\na,"Heroes\nb,B\n',
     r"t\.csv line 2: malformed"),  # an open quote does not take the next rows as its title
    ("user,item,timestamp\nu,a,1\n", 'item,title\na,"Weird Al" Live\n',
     r"t\.csv line 2: malformed"),
    ('"user,item,timestamp\nu,a,1\n', "item,title\na,A\n", r"i\.csv line 1: malformed"),
])
def test_bad_csv_input(tmp_path, inter_text, items_text, message):
    inter = write(tmp_path / "i.csv", inter_text)
    items = write(tmp_path / "t.csv", items_text)
    out = tmp_path / "out"
    with pytest.raises(AutomrError, match=message):
        prepare_csv(inter, items, out, protocol=PROTOCOL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.csv", "t.csv"]


@pytest.mark.parametrize("ext", [".csv", ".csv.gz"])
def test_byte_order_mark_is_ignored(tmp_path, ext):
    # Excel's "CSV UTF-8" export starts each file with U+FEFF: it must not stick to the header.
    inter, items = small_csv(tmp_path, ext)
    marked = tmp_path / "marked"
    marked.mkdir()
    for path in (inter, items):
        data = gzip.decompress(path.read_bytes()) if ext.endswith(".gz") else path.read_bytes()
        write(marked / path.name, "\ufeff" + data.decode())
    plain, src = load_csv(inter, items), load_csv(marked / inter.name, marked / items.name)
    assert attrs.evolve(src, fingerprints=plain.fingerprints, options=plain.options) == plain
    assert src.fingerprints != plain.fingerprints  # the raw bytes differ


def test_byte_order_mark_before_a_quoted_header(tmp_path):
    inter = write(tmp_path / "i.csv", '\ufeff"user","item","timestamp"\nu,a,1500000000\n')
    items = write(tmp_path / "t.csv", '\ufeff"item","title"\na,A\n')
    assert [i.item for i in load_csv(inter, items).interactions] == ["a"]


def test_unknown_extension(tmp_path):
    inter = write(tmp_path / "i.txt", "user,item,timestamp\n")
    items = write(tmp_path / "t.csv", "item,title\n")
    with pytest.raises(AutomrError, match="delimiter"):
        load_csv(inter, items)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    inter, items = small_csv(tmp_path)
    out = tmp_path / "out"

    def broken_save(self, folder):
        (folder / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(_PD, "save", broken_save)
    with pytest.raises(OSError):
        prepare_csv(inter, items, out, protocol=PROTOCOL)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inter.csv", "items.csv"]


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    inter, items = small_csv(tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(AutomrError, match="not a prepared dataset"):
        prepare_csv(inter, items, out, protocol=PROTOCOL)
    assert (out / "thesis.tex").read_text() == "precious"


def test_load_errors(tmp_path):
    with pytest.raises(AutomrError, match="not a prepared dataset"):
        PreparedDataset.load(tmp_path)
    inter, items = small_csv(tmp_path)
    out = tmp_path / "p"
    prepare_csv(inter, items, out, protocol=PROTOCOL)
    (out / "samples" / "test.jsonl").write_text('{"user": "user0"}\n')
    with pytest.raises(AutomrError, match="damaged"):
        PreparedDataset.load(out).samples("test")
    with pytest.raises(AutomrError, match="unknown split"):
        PreparedDataset.load(out).samples("dev")


def test_empty_after_filtering_is_a_user_error(tmp_path):
    inter, items = small_csv(tmp_path)
    with pytest.raises(AutomrError, match="no interactions left"):
        prepare_csv(inter, items, None,
                    protocol=attrs.evolve(PROTOCOL, min_user_interactions=1000))


def test_a_window_that_misses_the_data_names_the_datas_times(tmp_path):
    inter, items = small_csv(tmp_path)  # 2020-01-01 .. 2020-04-01
    window = attrs.evolve(PROTOCOL, start=dt.date(2016, 1, 1), end=dt.date(2016, 6, 1))
    with pytest.raises(AutomrError, match=r"none of the 30 loaded interactions lies in the "
                                          r"window 2016-01-01T00:00:00Z .. 2016-06-01T00:00:00Z: "
                                          r"they lie in 2020-01-01T.* .. 2020-04-0.*--start/--end"):
        prepare_csv(inter, items, None, protocol=window)


def test_duplicate_rows_are_dropped_and_counted(tmp_path):
    # Item "rare" has 2 rows that are one interaction (a repeated line, and the same second
    # spelt as a float with another rating): with a 2-interaction item threshold it must go.
    rows = ["user,item,timestamp,rating"]
    rows += [f"u{u},m{k % 3},{1577836800 + (10 * k + u) * 86400},5" for u in range(3)
             for k in range(10)]
    rows += ["u0,rare,1577836801,5", "u0,rare,1577836801,5", "u0,rare,1577836801.0,3"]
    inter = write(tmp_path / "i.csv", "\n".join(rows) + "\n")
    items = write(tmp_path / "t.csv", "item,title\nm0,A\nm1,B\nm2,C\nrare,R\n")
    src = load_csv(inter, items)
    assert src.raw_interactions == 33 and len(src.interactions) == 31
    assert src.skipped == {"duplicate_interactions": 2}
    dataset = prepare_csv(inter, items, tmp_path / "out",
                          protocol=attrs.evolve(PROTOCOL, min_item_interactions=2))
    assert "rare" not in dataset.catalog
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["skipped"] == {"duplicate_interactions": 2}
    assert stats["interactions"] == 33 and stats["loaded"]["interactions"] == 31


def test_same_second_repeat_of_a_merged_item_is_one_interaction(tmp_path):
    # u0 rated both ids of one title ("Same": a and b) in one second (test period); merged, they
    # are one item, so they are one event: one interaction, one sample, counted in stats.json.
    rows = ["user,item,timestamp"]
    rows += [f"u{u},m{k % 4},{1577836800 + (10 * k + u) * 86400}" for u in range(3)
             for k in range(10)]
    both = 1577836800 + 95 * 86400
    rows += [f"u0,a,{both}", f"u0,b,{both}", f"u1,b,{both + 9 * 86400}"]
    inter = write(tmp_path / "i.csv", "\n".join(rows) + "\n")
    items = write(tmp_path / "t.csv",
                  "item,title\nm0,A\nm1,B\nm2,C\nm3,D\na,Same\nb,Same\n")
    out = tmp_path / "out"
    dataset = prepare_csv(inter, items, out, protocol=PROTOCOL, merge_same_title=True)
    assert dataset.stats.skipped == {"same_second_repeats": 1}
    assert dataset.stats.merged_items == 1 and dataset.stats.remapped_interactions == 2
    assert dataset.stats.loaded.interactions == 32
    assert [(i.user, i.timestamp) for i in dataset.interactions if i.item == "a"] == [
        ("u0", both), ("u1", both + 9 * 86400)]
    for split in ("train", "valid", "test"):
        ids = [s.id for s in PreparedDataset.load(out).samples(split)]
        assert len(ids) == len(set(ids))
    assert f"u0@{both}:a" in [s.id for s in dataset.samples("test")]
    assert json.loads((out / "stats.json").read_text())["skipped"] == {"same_second_repeats": 1}


def test_repeated_sample_ids_in_a_folder_are_refused(tmp_path):
    inter, items = small_csv(tmp_path)
    out = tmp_path / "p"
    prepare_csv(inter, items, out, protocol=PROTOCOL)
    path = out / "samples" / "test.jsonl"
    first = path.read_text().splitlines()[0]
    path.write_text(path.read_text() + first + "\n")
    with pytest.raises(AutomrError, match=r"test\.jsonl has 1 sample\(s\) whose id repeats"):
        PreparedDataset.load(out).samples("test")


def test_a_sample_whose_memory_starts_after_its_recent_items_is_refused(tmp_path):
    """history_start past recent_start read as an empty memory, silently."""
    inter, items = small_csv(tmp_path)
    out = tmp_path / "p"
    prepare_csv(inter, items, out, protocol=PROTOCOL)
    path = out / "samples" / "test.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["history_start"] = rows[0]["recent_start"] + 1
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(AutomrError, match=r"test\.jsonl is damaged .*out of range"):
        PreparedDataset.load(out).samples("test")


@pytest.mark.parametrize(("stamp", "message"), [
    ("99999999999999999", r"i\.csv line 3: timestamp 99999999999999999 is outside the accepted "
                          r"range 1970-01-01 \.\. 2100-01-01"),
    ("-86400", r"i\.csv line 3: timestamp -86400 is outside"),
    ("1500000000000", r"i\.csv line 3: .*\(milliseconds\? 1500000000 s would be 2017-07-14"),
    ("0001-01-01", r"i\.csv line 3: timestamp -62135596800 is outside"),
    ("9999-12-31", r"i\.csv line 3: timestamp 253402214400 is outside"),
])
def test_out_of_range_timestamps_name_file_and_line(tmp_path, stamp, message):
    inter = write(tmp_path / "i.csv", f"user,item,timestamp\nu,a,1500000000\nu,a,{stamp}\n")
    items = write(tmp_path / "t.csv", "item,title\na,A\n")
    with pytest.raises(AutomrError, match=message):
        prepare_csv(inter, items, tmp_path / "out", protocol=PROTOCOL)
    assert not (tmp_path / "out").exists()


def test_one_outlier_timestamp_is_an_error_not_empty_splits(tmp_path):
    # 2017 data plus one row at 1e9 (2001-09-09): the automatic window would start in
    # September 2001, train and validation would hold nothing.
    inter, items = small_csv(tmp_path)
    with inter.open("a") as f:
        f.write("1000000000,user1,m1,5\n")
    with pytest.raises(AutomrError) as caught:
        prepare_csv(inter, items, tmp_path / "out", protocol=PROTOCOL)
    message = str(caught.value)
    assert message.startswith("the train and valid splits would be empty: samples train / "
                              "valid / test 0 / 0 / ")
    assert "Window 2001-09-01T00:00:00Z .. 2020-04-02T00:00:01Z" in message
    assert "earliest times are 2001-09-09T01:46:40Z, 2020-01-01T00:00:00Z" in message
    assert "all but the 1 earliest and 1 latest lie in 2020-01-01T00:00:00Z .. " in message
    assert "--start/--end" in message and "start and end derived from the data" in message
    assert not (tmp_path / "out").exists()
    # The fix the message names works.
    fixed = attrs.evolve(PROTOCOL, start=dt.date(2020, 1, 1))
    dataset = prepare_csv(inter, items, tmp_path / "out", protocol=fixed)
    assert all(dataset.stats.samples[s] > 0 for s in ("train", "valid", "test"))
    assert dataset.stats.outside_window == 1


def test_a_folder_with_an_empty_split_is_refused(tmp_path):
    inter, items = small_csv(tmp_path)
    out = tmp_path / "p"
    prepare_csv(inter, items, out, protocol=PROTOCOL)
    stats = json.loads((out / "stats.json").read_text())
    stats["samples"]["valid"] = 0
    (out / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(AutomrError, match=r"has an empty split .* 0 / .*--start/--end"):
        PreparedDataset.load(out)


def test_the_fingerprint_covers_both_inputs_whatever_they_are_called(tmp_path):
    """Two inputs of one name (a/data.csv, b/data.csv) are both in the fingerprint; the same
    data under other names has the same one."""
    from automr import dataset_fingerprint

    inter, items = small_csv(tmp_path)

    def prepared(name: str, interactions: str) -> PreparedDataset:
        (tmp_path / name / "a").mkdir(parents=True)
        (tmp_path / name / "b").mkdir()
        write(tmp_path / name / "a" / "data.csv", interactions)
        write(tmp_path / name / "b" / "data.csv", items.read_text())
        return prepare_csv(tmp_path / name / "a" / "data.csv", tmp_path / name / "b" / "data.csv",
                           tmp_path / name / "out", protocol=PROTOCOL)

    same = prepare_csv(inter, items, tmp_path / "out", protocol=PROTOCOL)
    renamed = prepared("renamed", inter.read_text())
    assert dataset_fingerprint(renamed) == dataset_fingerprint(same)
    later = inter.read_text().replace("1577836800,user0,gone", "1577836801,user0,gone")
    other = prepared("other", later)  # a dropped interaction moved by a second
    assert len(other.interactions) == len(same.interactions)
    assert [i.id for i in other.catalog] == [i.id for i in same.catalog]
    assert dataset_fingerprint(other) != dataset_fingerprint(same)


def test_the_fingerprint_covers_the_column_mapping(tmp_path):
    """One log with two time columns read with --column timestamp=created, then =updated:
    other timelines from the same files, catalog, count and split times, so another
    fingerprint (a memory or fine-tune of one was accepted for the other)."""
    from automr import dataset_fingerprint

    rows = ["user,item,created,updated"]
    for u in range(3):
        for k in range(10):
            day = 10 * k + u
            created = 1577836800 + day * 86400
            rows.append(f"user{u},m{(k + u) % 6},{created},{created + (k % 3) * 3 * 86400}")
    inter = write(tmp_path / "log.csv", "\n".join(rows) + "\n")
    items = write(tmp_path / "items.csv", "item,title\n" + "".join(f"m{i},M{i}\n"
                                                                   for i in range(6)))
    fixed = attrs.evolve(PROTOCOL, start=dt.date(2020, 1, 1), end=dt.date(2020, 5, 1))
    created, updated = (prepare_csv(inter, items, None, protocol=fixed,
                                    columns={"timestamp": column})
                        for column in ("created", "updated"))
    assert created.interactions != updated.interactions
    assert created.catalog == updated.catalog and created.boundaries == updated.boundaries
    assert len(created.interactions) == len(updated.interactions)
    assert dataset_fingerprint(created) != dataset_fingerprint(updated)


def test_a_fraction_of_a_second_is_dropped_in_both_forms():
    from automr.data.reading import parse_timestamp

    assert parse_timestamp("1500000000.9") == parse_timestamp("1500000000") == parse_timestamp(
        "2017-07-14T02:40:00.9Z")
    for text in ("nan", "inf", "1500000000,5"):
        with pytest.raises(ValueError):
            parse_timestamp(text)


def test_a_fraction_just_under_a_second_is_dropped_not_rounded_up():
    """Read through a float, 1500000000.99999999 (nanosecond exports) became 1500000001."""
    from automr.data.reading import parse_timestamp, parse_unix_seconds

    assert parse_timestamp("1500000000.999999999") == parse_timestamp(
        "2017-07-14T02:40:00.999999999Z") == 1500000000
    assert parse_unix_seconds("881250949.0") == parse_unix_seconds("8.81250949e8") == 881250949
    for text in ("881250949.99999999", "nan", "inf", "1e", ""):
        with pytest.raises(ValueError):
            parse_unix_seconds(text)


def test_a_number_of_seconds_of_10_000_digits_or_more_is_not_expanded(tmp_path):
    """A cell such as 1e9999999 was expanded to a ten-million-digit second count (most of an
    hour on one line of a file) to be refused as out of range; from 10,000 digits on it is not
    read as seconds at all, and the line is refused at once (fewer digits are read and refused
    with their size, as below)."""
    from automr.data.reading import parse_timestamp, parse_unix_seconds

    for text in ("1e10000", "-1e10000", "1e9999999"):
        for parse in (parse_unix_seconds, parse_timestamp):
            with pytest.raises(ValueError):
                parse(text)
    assert parse_unix_seconds("1e9999") == 10**9999 and parse_timestamp("0e99999") == 0
    inter = write(tmp_path / "i.csv", "user,item,timestamp\nu,a,1\nu,b,1e9999999\n")
    items = write(tmp_path / "t.csv", "item,title\na,A\nb,B\n")
    with pytest.raises(AutomrError, match=r"i\.csv line 3: timestamp '1e9999999' is neither"):
        load_csv(inter, items)


def test_an_iso_fraction_of_a_second_is_dropped_before_1970_too():
    """Dropped, not truncated toward zero: 0.5 s before 1970 is second -1 in both forms. The
    ISO fraction is cut from the text, which also keeps it readable on Python 3.10 (whose
    ``fromisoformat`` takes 3 or 6 digits only, and refused ``00.9``)."""
    from automr.data.reading import parse_timestamp

    assert parse_timestamp("1969-12-31T23:59:59.5Z") == parse_timestamp("-0.5") == -1
    assert parse_timestamp("2017-07-14T02:40:00.1234567+00:00") == 1500000000


def test_quotes_in_a_tsv_follow_csv_quoting(tmp_path):
    inter = write(tmp_path / "i.tsv", "user\titem\ttimestamp\nu\ta\t1\nu\tb\t2\n")
    items = write(tmp_path / "t.tsv", 'item\ttitle\na\t"""Weird Al"" Live"\nb\tB\n')
    assert load_csv(inter, items).catalog.title("a") == '"Weird Al" Live'
    write(items, 'item\ttitle\na\t"Weird Al" Live\nb\tB\n')
    with pytest.raises(AutomrError, match=r"t\.tsv line 2: malformed"):
        load_csv(inter, items)


def test_nothing_left_says_what_the_loader_skipped(tmp_path):
    inter = write(tmp_path / "i.csv", "user,item,timestamp\nu,a,1577836800\nu,b,1577923200\n")
    items = write(tmp_path / "t.csv", "item,title\na,\nb,\n")  # no title: skipped, counted
    protocol = attrs.evolve(PROTOCOL, start=dt.date(2020, 1, 1), end=dt.date(2021, 1, 1))
    for window in (protocol, PROTOCOL):  # a window from the data said only "source is empty"
        with pytest.raises(AutomrError, match=r"no interaction after loading; the loader "
                                              r"skipped 2 interactions with items without a "
                                              r"title, 2 items without a title; check"):
            prepare_csv(inter, items, tmp_path / "out", protocol=window)
    write(items, "item,title\na,A\nb,\n")  # one left in the window, then filtered out
    with pytest.raises(AutomrError, match=r"1 in the window.*before it, the loader skipped 1 "
                                          r"interactions with items without a title, 1 items "
                                          r"without a title\.$"):
        prepare_csv(inter, items, tmp_path / "out", protocol=protocol)


def test_a_prepared_folder_without_its_stats_is_one_line(tmp_path):
    inter, items = small_csv(tmp_path)
    prepare_csv(inter, items, tmp_path / "prepared", protocol=PROTOCOL)
    (tmp_path / "prepared" / "stats.json").unlink()
    with pytest.raises(AutomrError, match="damaged prepared dataset"):
        PreparedDataset.load(tmp_path / "prepared")


def test_a_row_of_empty_fields_is_counted_not_dropped_silently(tmp_path):
    """',,,' (a spreadsheet's empty row) was skipped with no count; a blank line is no row."""
    inter = write(tmp_path / "i.csv", "user,item,timestamp\nu,a,1577836800\n,,,\n\n"
                                      "u,b,1577923200\n")
    items = write(tmp_path / "t.csv", "item,title\na,A\n,\nb,B\n")
    data = load_csv(inter, items)
    assert data.raw_interactions == 2 and data.skipped["empty_rows"] == 2


def test_blank_lines_before_the_header_are_no_row(tmp_path):
    """A blank first line made the header [], refused as lacking every column (at line 1)."""
    inter = write(tmp_path / "i.csv", "\n\r\nuser,item,timestamp\nu,a,1577836800\n")
    items = write(tmp_path / "t.csv", "\ufeff\nitem,title\na,A\n")
    assert [(i.user, i.item) for i in load_csv(inter, items).interactions] == [("u", "a")]
    write(tmp_path / "t.csv", "\n\nitem,name\na,A\n")
    with pytest.raises(AutomrError, match=r"t\.csv line 3: header \['item', 'name'\] lacks"):
        load_csv(inter, items)
    write(tmp_path / "t.csv", "\n\n")
    with pytest.raises(AutomrError, match=r"t\.csv: file is empty"):
        load_csv(inter, items)


def test_a_row_of_empty_fields_before_the_header_is_counted_as_after_it(tmp_path):
    """A spreadsheet's empty first row (',,') was read as a header repeating column ''."""
    inter = write(tmp_path / "i.csv", ",,\n \nuser,item,timestamp\nu,a,1577836800\n")
    items = write(tmp_path / "t.csv", "item,title\na,A\n")
    data = load_csv(inter, items)
    assert [(i.user, i.item) for i in data.interactions] == [("u", "a")]
    assert data.skipped == {"empty_rows": 2}
    write(tmp_path / "i.csv", ",,\n,,\n")
    with pytest.raises(AutomrError, match=r"i\.csv: file is empty"):
        load_csv(inter, items)


def test_a_byte_that_is_not_utf8_is_named_with_its_line(tmp_path):
    """The message gave the byte's place in a decoded chunk (2533) and no line."""
    rows = ["item,title", *(f"i{n},Title {n}" for n in range(3000))]
    rows[2501] = "i2500,Caf\xe9 Society"
    items = tmp_path / "t.csv"
    items.write_bytes(("\n".join(rows) + "\n").encode("latin1"))
    inter = write(tmp_path / "i.csv", "user,item,timestamp\nu,i1,1577836800\n")
    with pytest.raises(AutomrError, match=r"t\.csv line 2502: not valid utf-8 text \(byte "
                                          r"b'\\xe9', the line's byte 10\)"):
        load_csv(inter, items)
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress(items.read_bytes()))
    with pytest.raises(AutomrError, match=r"line 2502: not valid utf-8"):
        load_csv(inter, tmp_path / "t.csv.gz")


def test_an_unclosed_quote_that_swallows_items_is_named_where_they_go_missing(tmp_path):
    """'"Hello' on item 2 joins items 3 and 4 into its title (CSV quoting); the interaction
    with item 3 then said only that it is not in the items file."""
    items = write(tmp_path / "t.tsv", 'item\ttitle\n1\tA\n2\t"Hello\n3\tC\n4\tWorld"\n5\tE\n')
    inter = write(tmp_path / "i.csv", "user,item,timestamp\nu,1,1577836800\nu,3,1577923200\n")
    with pytest.raises(AutomrError, match=r"i\.csv line 3: item '3' is not in t\.tsv \(1 of its "
                                          r"rows span several lines, the first at line 3: a "
                                          r"quote never closed"):
        load_csv(inter, items)


def movielens_named(folder: Path) -> tuple[Path, Path]:
    """small_csv's files with MovieLens' column names (ratings.csv, movies.csv)."""
    (folder / "plain").mkdir()
    inter, items = small_csv(folder / "plain")
    ratings = inter.read_text().replace("timestamp,user,item,", "when,userId,movieId,", 1)
    movies = items.read_text().replace("item,title,", "movieId,name,", 1)
    return write(folder / "ratings.csv", ratings), write(folder / "movies.csv", movies)


def test_columns_map_the_formats_names_to_the_files(tmp_path):
    ratings, movies = movielens_named(tmp_path)
    mapped = load_csv(ratings, movies, columns={"user": "userId", "item": "movieId",
                                                "timestamp": "when", "title": "name"})
    plain = load_csv(tmp_path / "plain" / "inter.csv", tmp_path / "plain" / "items.csv")
    assert mapped.interactions == plain.interactions and mapped.catalog == plain.catalog
    assert mapped.skipped == plain.skipped and mapped.catalog["m1"].extra == {"genre": "Drama"}
    assert mapped.options["columns"] == "item=movieId,timestamp=when,title=name,user=userId"
    assert "columns" not in plain.options


def test_a_column_mapping_is_checked_and_a_missing_column_names_the_files_name(tmp_path):
    ratings, movies = movielens_named(tmp_path)
    with pytest.raises(AutomrError, match=r"movies\.csv line 1: header \['movieId', 'name', "
                                          r"'genre'\] lacks column\(s\) \['item', 'title'\]; "
                                          r"name yours with --column \(e\.g\. --column "
                                          r"item=YOUR_NAME\)"):
        load_csv(ratings, movies)
    items = write(tmp_path / "items.csv", "item,title\nm1,A\n")
    semicolons = write(tmp_path / "semi.csv", "user;item;timestamp\nu1;m1;1\n")
    with pytest.raises(AutomrError, match=r"reads as one column: the file looks semicolon-"
                                          r"separated, and the extension says comma"):
        load_csv(semicolons, items)
    commas = write(tmp_path / "commas.tsv", "user,item,timestamp\nu1,m1,1\n")
    with pytest.raises(AutomrError, match=r"looks comma-separated, and the extension says tab"):
        load_csv(commas, items)
    with pytest.raises(AutomrError, match=r"lacks column\(s\) \['item'\]\. See"):
        load_csv(ratings, movies, columns={"title": "name"})
    with pytest.raises(AutomrError, match=r"lacks column\(s\) \['userid'\]"):
        load_csv(ratings, movies, columns={"user": "userid", "item": "movieId",
                                           "timestamp": "when", "title": "name"})
    with pytest.raises(AutomrError, match=r"columns \['rating'\] are not read"):
        load_csv(ratings, movies, columns={"rating": "x"})
    with pytest.raises(AutomrError, match="each must name a different"):
        load_csv(ratings, movies, columns={"user": "movieId", "item": "movieId"})
    both = write(tmp_path / "both.csv", "item,movieId,title\na,a,A\n")
    with pytest.raises(AutomrError, match=r"has column\(s\) \['item'\] beside the one\(s\) "
                                          r"mapped to them"):
        load_csv(ratings, both, columns={"item": "movieId"})
    # mapped onto the name another column reads unmapped: the last of the two won, and the
    # other was lost from the row (a raw KeyError)
    forgot = write(tmp_path / "forgot.csv", "item,product,timestamp\nu1,m1,1500000000\n")
    with pytest.raises(AutomrError, match=r"forgot\.csv line 1: --column user=item reads the "
                                          r"column item, which is also item's own \(unmapped\) "
                                          r"name; map item to another column too"):
        load_csv(forgot, items, columns={"user": "item"})
    with pytest.raises(AutomrError, match=r"--column item=title reads the column title"):
        load_csv(write(tmp_path / "u.csv", "user,title,timestamp\nu1,m1,1\n"),
                 write(tmp_path / "named.csv", "title,name\nm1,A\n"), columns={"item": "title"})


def test_a_timestamp_of_thousands_of_digits_is_refused_in_one_line(tmp_path):
    """Python prints no int past 4,300 digits: the message shows its size instead."""
    inter = write(tmp_path / "i.csv", f"user,item,timestamp\nu,a,{'9' * 5000}\nu,b,1577923200\n")
    items = write(tmp_path / "t.csv", "item,title\na,A\nb,B\n")
    with pytest.raises(AutomrError, match=r"i\.csv line 2: timestamp ~10\^500[0-1] is outside"):
        load_csv(inter, items)


@pytest.mark.parametrize("file, old, new", [
    ("interactions.jsonl", r'"timestamp":(\d+)', r'"timestamp":"\1"'),
    ("items.jsonl", r'"id":"([^"]+)"', r'"id":7'),
    ("config.json", r'"train_months": 2', r'"train_months": "2"'),
    ("samples/test.jsonl", r'"timestamp":(\d+)', r'"timestamp":"\1"'),
])
def test_a_value_of_the_wrong_type_in_a_prepared_folder_is_one_line(tmp_path, file, old, new):
    """A value of the wrong type (an id or time rewritten as another type, say by a script)
    went past the damaged-folder check as a multi-line beartype traceback."""
    import re

    inter, items = small_csv(tmp_path)
    out = tmp_path / "prepared"
    prepare_csv(inter, items, out, protocol=PROTOCOL)
    text = (out / file).read_text(encoding="utf-8")
    (out / file).write_text(re.sub(old, new, text, count=1), encoding="utf-8")
    with pytest.raises(AutomrError, match="damaged") as caught:
        PreparedDataset.load(out).samples("test")
    assert "\n" not in str(caught.value)


def test_a_folder_prepared_from_a_non_ascii_path_loads_under_any_locale(tmp_path):
    """config.json is written as UTF-8 (the input paths in it may be `café/...`) but was read
    in the locale's encoding: under an ASCII locale the folder was 'not a prepared dataset'."""
    import os
    import subprocess
    import sys

    folder = tmp_path / "café"
    folder.mkdir()
    inter, items = small_csv(folder)
    out = tmp_path / "prepared"
    prepare_csv(inter, items, out, protocol=PROTOCOL)
    env = {**os.environ, "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    env.pop("LANG", None)
    script = ("from automr.data import PreparedDataset; "
              f"PreparedDataset.load({str(out)!r}).samples('test')")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, encoding="utf-8")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ["t.tsv", "t.tsv.gz"])
def test_a_utf16_file_is_named_as_such_not_sent_through_latin1(tmp_path, name):
    """Excel's "Unicode Text" (UTF-16, tab-separated) failed as 'not valid utf-8 (byte
    b'\\xff')' with the advice `iconv -f latin1`, which turns it into NUL-laced text."""
    text = "item\ttitle\ni1\tCafé Society\n".encode("utf-16")
    items = tmp_path / name
    items.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    inter = write(tmp_path / "i.tsv", "user\titem\ttimestamp\nu\ti1\t1577836800\n")
    with pytest.raises(AutomrError, match=r"is UTF-16 text .*iconv -f utf-16 -t utf-8"):
        load_csv(inter, items)


def test_the_fingerprint_covers_titles_and_split_times(tmp_path):
    """A dataset made in memory (a SourceData without file hashes) is told apart by what its
    fingerprint says it covers: the catalog's titles (the prompts) and the split times."""
    from automr import dataset_fingerprint
    from automr.data import Catalog

    dataset = prepare_csv(*small_csv(tmp_path), None, protocol=PROTOCOL)
    dataset = attrs.evolve(dataset, source=attrs.evolve(dataset.source, fingerprints={}))
    first, *rest = dataset.catalog
    retitled = attrs.evolve(dataset, catalog=Catalog((attrs.evolve(first, title="Other"),
                                                      *rest)))
    bounds = dataset.boundaries
    later = attrs.evolve(dataset, boundaries=attrs.evolve(bounds, valid_end=bounds.valid_end + 1))
    assert len({dataset_fingerprint(d) for d in (dataset, retitled, later)}) == 3


def test_another_artifacts_folder_is_neither_replaced_nor_loaded_as_a_dataset(tmp_path):
    """Any config.json with a format passed for a prepared dataset's: prepare replaced
    (deleted) a memory's folder given as --out."""
    other = tmp_path / "memory"
    other.mkdir()
    (other / "config.json").write_text('{"format": "automr.memory/1"}')
    with pytest.raises(AutomrError, match="is not a prepared dataset; refusing to replace"):
        prepare_csv(*small_csv(tmp_path), other, protocol=PROTOCOL)
    assert [p.name for p in other.iterdir()] == ["config.json"]
    with pytest.raises(AutomrError, match="is not a prepared dataset"):
        PreparedDataset.load(other)


def test_the_fingerprint_of_a_folder_is_refused(tmp_path):
    """dataset_fingerprint("runs/data") failed with AttributeError: 'PosixPath' object has no
    attribute 'source'."""
    from automr import dataset_fingerprint

    inter, items = small_csv(tmp_path)
    dataset = prepare_csv(inter, items, tmp_path / "out", protocol=PROTOCOL)
    for folder in (dataset.path, str(dataset.path)):
        with pytest.raises(AutomrError, match=r"takes a PreparedDataset .*not a (PosixPath|str)$"):
            dataset_fingerprint(folder)
    assert dataset_fingerprint(dataset) == dataset_fingerprint(PreparedDataset.load(dataset.path))


def test_a_folders_fingerprint_read_without_its_interactions_is_the_loaded_datasets(tmp_path):
    """A run record's fingerprint of --data loaded the whole dataset again (minutes and GiBs
    at ML-32M's size, after the command's work; the scale review). folder_fingerprint reads
    the catalog and stats.json's count where the source's file hashes stand for the
    interactions; it equals the loaded dataset's, a column mapping and a dataset built in
    Python (no file hashes: its interactions are read) included."""
    from automr.data.fingerprint import dataset_fingerprint, folder_fingerprint
    from automr.data.prepare import prepare_dataset
    from automr.testing.synthetic import synthetic_dataset

    inter, items = small_csv(tmp_path)
    made = [prepare_csv(inter, items, tmp_path / "csv", protocol=PROTOCOL),
            prepare_csv(inter, items, tmp_path / "mapped", protocol=PROTOCOL,
                        columns={"user": "user"}),
            synthetic_dataset(tmp_path / "synthetic")]
    in_python = attrs.evolve(load_csv(inter, items), fingerprints={})  # rows of the user's own
    made.append(prepare_dataset(in_python, PROTOCOL, tmp_path / "python"))
    for dataset in made:
        assert dataset.path is not None
        loaded = PreparedDataset.load(dataset.path)
        assert folder_fingerprint(dataset.path) == dataset_fingerprint(loaded), dataset.path
        assert folder_fingerprint(str(dataset.path)) == dataset_fingerprint(dataset)
    assert not made[-1].source.fingerprints
    assert len({folder_fingerprint(d.path) for d in made}) == len(made)
