"""``automr data ...`` through Typer's CliRunner."""

import json

import pytest
from typer.testing import CliRunner

from automr.cli.main import app

runner = CliRunner()


def test_prepare_ml_100k(tmp_path):
    out = tmp_path / "ml"
    result = runner.invoke(app, ["data", "prepare", "ml-100k", "--out", str(out)])
    assert result.exit_code == 0, result.output
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100_000)
    assert set(stats["samples"]) == {"train", "valid", "test"}
    assert stats["merged_items"] == 18
    assert {"skipped", "filtered", "memory_length", "window"} <= set(stats)
    assert "943 / 1,682 / 100,000" in result.output
    config = json.loads((out / "config.json").read_text())
    assert config["protocol"]["train_months"] == 6 and config["source"]["kind"] == "ml-100k"
    shown = runner.invoke(app, ["data", "stats", str(out)])
    assert shown.exit_code == 0 and "samples train" in shown.output
    assert "note:" not in result.output  # titles unique after merging, every split large


def test_protocol_options_reach_the_library(tmp_path):
    inter = tmp_path / "i.tsv"
    inter.write_text("user\titem\ttimestamp\n" + "".join(
        f"u{u}\tm{k % 4}\t{1577836800 + (10 * k + u) * 86400}\n"
        for u in range(2) for k in range(10)))
    items = tmp_path / "t.tsv"
    items.write_text("item\ttitle\n" + "".join(f"m{i}\tMovie {i}\n" for i in range(4)))
    out = tmp_path / "p"
    result = runner.invoke(app, [
        "data", "prepare", "csv", "--interactions", str(inter), "--items", str(items),
        "--out", str(out), "--train-months", "2", "--min-item-interactions", "1",
        "--min-user-interactions", "2", "--recent-k", "3", "--max-history", "5",
        "--single-pass-filter", "--domain", "movies"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["protocol"] == {
        "start": None, "end": None, "train_months": 2, "min_item_interactions": 1,
        "min_user_interactions": 2, "iterative_filter": False, "max_history": 5,
        "recent_k": 3, "min_history": None}
    assert config["source"]["domain"] == "movies"
    assert sum(json.loads((out / "stats.json").read_text())["samples"].values()) == 2 * 7


def test_statistics_name_what_was_skipped_in_words(tmp_path):
    """They showed the internal keys (skipped empty_rows, skipped items_empty_title)."""
    inter = tmp_path / "i.tsv"
    inter.write_text("user\titem\ttimestamp\n\t\t\n" + "".join(
        f"u{u}\tm{k % 4}\t{1577836800 + (10 * k + u) * 86400}\n"
        for u in range(2) for k in range(10)) + "u0\tm4\t1577836800\n")
    items = tmp_path / "t.tsv"
    items.write_text("item\ttitle\n" + "".join(f"m{i}\tMovie {i}\n" for i in range(4)) + "m4\t\n")
    out = tmp_path / "p"
    prepared = runner.invoke(app, [
        "data", "prepare", "csv", "--interactions", str(inter), "--items", str(items),
        "--out", str(out), "--train-months", "2", "--min-item-interactions", "1",
        "--min-user-interactions", "2", "--recent-k", "3"])
    assert prepared.exit_code == 0, prepared.output
    shown = runner.invoke(app, ["data", "stats", str(out)], terminal_width=200)
    for output in (prepared.output, shown.output):
        assert "_" not in output.replace(str(tmp_path), "")
    for label in ("skipped: rows of empty fields", "skipped: items without a title",
                  "skipped: interactions with items without a title"):
        assert label in shown.output


def test_bad_input_exits_2_with_one_line(tmp_path):
    inter = tmp_path / "i.csv"
    inter.write_text("user,item,timestamp\nu,a,1\nu,ghost,2\n")
    items = tmp_path / "t.csv"
    items.write_text("item,title\na,A\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["data", "prepare", "csv", "--interactions", str(inter),
                                 "--items", str(items), "--out", str(out)])
    assert result.exit_code == 2
    assert "i.csv line 3" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_a_mount_point_out_is_one_line_before_any_work(tmp_path, monkeypatch):
    """``--out /out``, a container's mounted volume: the dataset is written beside the folder
    and renamed into its place, which the system refuses for a mount point (EBUSY, a raw
    traceback after all the work); it is refused first, in one line."""
    import errno
    import os

    from automr.testing.synthetic import write_synthetic_csv

    interactions, items = write_synthetic_csv(tmp_path / "raw")
    out = tmp_path / "volume"
    out.mkdir()
    real_ismount, real_rename = os.path.ismount, os.rename

    def rename(source, target):  # as the system does for a mount point
        if os.path.abspath(source) == str(out):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(source), str(target))
        return real_rename(source, target)

    monkeypatch.setattr(os.path, "ismount", lambda p: str(p) == str(out) or real_ismount(p))
    monkeypatch.setattr(os, "rename", rename)
    result = runner.invoke(app, ["data", "prepare", "csv", "--interactions", str(interactions),
                                 "--items", str(items), "--out", str(out), "--train-months",
                                 "2", "--min-item-interactions", "1", "--quiet"])
    assert result.exit_code == 2, result.output
    assert f"{out} is a mount point" in result.output and str(out / "prepared") in result.output
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == [
        "raw", "volume"]


def test_bad_protocol_option_exits_2(tmp_path):
    result = runner.invoke(app, ["data", "prepare", "ml-100k", "--out", str(tmp_path / "o"),
                                 "--recent-k", "200"])
    assert result.exit_code == 2 and "invalid protocol option" in result.output
    result = runner.invoke(app, ["data", "prepare", "ml-100k", "--out", str(tmp_path / "o"),
                                 "--start", "last year"])
    assert result.exit_code == 2 and "--start" in result.output


def test_csv_columns_are_mapped_on_the_command_line(tmp_path):
    inter = tmp_path / "ratings.csv"
    inter.write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{m},5,{1577836800 + 86400 * (10 * m + u)}\n" for u in range(3) for m in range(8)))
    items = tmp_path / "movies.csv"
    items.write_text("movieId,title\n" + "".join(f"{m},Movie {m}\n" for m in range(8)))
    args = ["data", "prepare", "csv", "--interactions", str(inter), "--items", str(items),
            "--train-months", "1", "--min-user-interactions", "2", "--min-item-interactions",
            "1", "--recent-k", "2", "--quiet"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "out"), "--column",
                                 "user=userId", "--column", "item = movieId"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["source"]["options"]["columns"] == "item=movieId,user=userId"
    for bad in ("user", "user=userId,item=movieId"):
        result = runner.invoke(app, [*args, "--out", str(tmp_path / "bad"), "--column", bad])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert not (tmp_path / "bad").exists()


def test_shared_titles_and_small_splits_get_a_note(tmp_path):
    """The model names items by title, so items sharing one cannot be told apart; a split of
    a few samples cannot compare methods. Both passed without a word."""
    inter = tmp_path / "ratings.csv"
    inter.write_text("user,item,timestamp\n" + "".join(
        f"{u},{m},{1577836800 + 86400 * (10 * m + u)}\n" for u in range(3) for m in range(8)))
    items = tmp_path / "movies.csv"
    items.write_text("item,title\n" + "".join(
        f"{m},{'Twin' if m in (1, 2) else f'Movie {m}'}\n" for m in range(8)))
    args = ["data", "prepare", "csv", "--interactions", str(inter), "--items", str(items),
            "--train-months", "1", "--min-user-interactions", "2", "--min-item-interactions",
            "1", "--recent-k", "2", "--quiet"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "note: 2 items share 1 title(s) (e.g. 'Twin')" in result.output
    assert "--merge-same-title" in result.output
    assert "note: few samples (train " in result.output
    merged = runner.invoke(app, [*args, "--out", str(tmp_path / "merged"), "--merge-same-title"])
    assert merged.exit_code == 0 and "items share" not in merged.output, merged.output


def test_ml_100k_passes_its_source_cache_and_window_on(monkeypatch, tmp_path):
    """--cache-dir, --source, --start/--end (a date or auto) and --min-history reach the
    library call, over ML-100K's preset protocol."""
    import datetime as dt
    from pathlib import Path

    import attrs

    from automr.data import ProtocolConfig

    calls = []

    def prepare(out, **keywords):
        calls.append((out, keywords))
        raise KeyboardInterrupt  # stop before the statistics

    monkeypatch.setattr("automr.cli.data.prepare_movielens_100k", prepare)
    runner.invoke(app, ["data", "prepare", "ml-100k", "--out", "o", "--cache-dir", "c",
                        "--source", "s", "--start", "1997-10-01", "--end", "auto",
                        "--min-history", "2"])
    assert calls == [(Path("o"), {"cache_dir": Path("c"), "source": Path("s"), "protocol":
                                  attrs.evolve(ProtocolConfig.movielens_100k(),
                                               start=dt.date(1997, 10, 1), end=None,
                                               min_history=2)})]


def test_amazon_and_csv_pass_every_option_on(monkeypatch):
    """Each option of `data prepare amazon` and `data prepare csv` reaches the library call:
    the two input files in their order, --domain, --merge-same-title, --quiet, --column and
    the protocol options over the kind's own preset (not another kind's)."""
    import datetime as dt
    from pathlib import Path

    import attrs

    from automr.data import DATASET_KINDS

    calls = []

    def prepare(*args, **keywords):
        calls.append((args, keywords))
        raise KeyboardInterrupt  # stop before the statistics

    monkeypatch.setattr("automr.cli.data.prepare_amazon", prepare)
    monkeypatch.setattr("automr.cli.data.prepare_csv", prepare)
    runner.invoke(app, ["data", "prepare", "amazon", "--reviews", "r", "--meta", "m", "--out",
                        "o", "--domain", "games", "--merge-same-title", "--quiet",
                        "--recent-k", "4", "--start", "auto", "--end", "2017-12-01"])
    runner.invoke(app, ["data", "prepare", "amazon", "--reviews", "r", "--meta", "m", "--out",
                        "o"])
    amazon = DATASET_KINDS["amazon"].protocol
    assert calls == [
        ((Path("r"), Path("m"), Path("o")), {
            "protocol": attrs.evolve(amazon, recent_k=4, start=None, end=dt.date(2017, 12, 1)),
            "domain": "games", "merge_same_title": True, "progress": False}),
        ((Path("r"), Path("m"), Path("o")), {
            "protocol": amazon, "domain": "items", "merge_same_title": False,
            "progress": True})]
    calls.clear()
    runner.invoke(app, ["data", "prepare", "csv", "--interactions", "i", "--items", "t",
                        "--out", "o", "--domain", "books", "--merge-same-title", "--quiet",
                        "--column", "user=u", "--train-months", "3"])
    runner.invoke(app, ["data", "prepare", "csv", "--interactions", "i", "--items", "t",
                        "--out", "o"])
    csv = DATASET_KINDS["csv"].protocol
    assert calls == [
        ((Path("i"), Path("t"), Path("o")), {
            "protocol": attrs.evolve(csv, train_months=3), "domain": "books",
            "merge_same_title": True, "progress": False, "columns": {"user": "u"}}),
        ((Path("i"), Path("t"), Path("o")), {
            "protocol": csv, "domain": "items", "merge_same_title": False, "progress": True,
            "columns": {}})]


@pytest.mark.parametrize("kind", ["csv", "amazon"])
def test_an_empty_domain_is_refused_not_taken_for_the_default(tmp_path, kind):
    """``--domain ""`` (an unset shell variable) became the kind's default, items, silently."""
    files = (["--interactions", "i.csv", "--items", "t.csv"] if kind == "csv" else
             ["--reviews", "r.json.gz", "--meta", "m.json.gz"])
    result = runner.invoke(app, ["data", "prepare", kind, *files, "--out",
                                 str(tmp_path / "o"), "--domain", ""])
    assert result.exit_code == 2 and "--domain '' is unknown; use one of" in result.output, \
        result.output


def test_stats_keep_every_character_in_a_narrow_terminal(tmp_path):
    """From a 40-column terminal `automr data stats DIR > file` held "1998-03-27T11:3…": the
    dates a script read were cut (the scripting review)."""
    from automr.testing.synthetic import synthetic_dataset

    synthetic_dataset(tmp_path)
    result = runner.invoke(app, ["data", "stats", str(tmp_path / "prepared")],
                           env={"COLUMNS": "40"})
    assert result.exit_code == 0, result.output
    window = json.loads((tmp_path / "prepared" / "stats.json").read_text())["window"]
    assert "…" not in result.output
    folded = "".join(line.strip("│ ") for line in result.output.splitlines())
    assert all(stamp.replace("T", "").replace(":", "")[:10] in folded.replace("T", "")
               .replace(":", "") for stamp in window.values())


def test_the_error_line_has_no_colour_under_no_color(tmp_path):
    """NO_COLOR (no-color.org) and TERM=dumb left the error line red on a terminal."""
    for env in ({"NO_COLOR": "1"}, {"TERM": "dumb"}):
        result = runner.invoke(app, ["data", "stats", str(tmp_path / "none")], env=env,
                               color=True)
        assert result.exit_code == 2 and "error: " in result.output
        assert "\x1b[" not in result.output, result.output
    coloured = runner.invoke(app, ["data", "stats", str(tmp_path / "none")],
                             env={"NO_COLOR": "", "TERM": "xterm"}, color=True)
    assert "\x1b[31merror: " in coloured.output
