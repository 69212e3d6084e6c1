"""`automr compare` / `combine_folders`: methods of two evaluation folders paired by sample id,
against the plain per-sample differences."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from automr.cli.main import app
from automr.data.records import Sample
from automr.errors import AutomrError
from automr.evaluation import EvaluationFolder, build_report, combine_folders
from automr.evaluation.folder import open_evaluation, recomputed_means
from automr.evaluation.likelihood import build_likelihood_report

IDS = [f"u{i}@{i}:x" for i in range(8)]


class Spread:
    """Ranks each sample's target at ``(3 * timestamp + offset) % 30``; ``cut``: interrupted."""

    def __init__(self, offset: int, cut: bool = False) -> None:
        self.offset, self.cut, self.settings = offset, cut, {"offset": offset}

    def rank(self, samples):
        if self.cut:
            raise KeyboardInterrupt
        return [(3 * int(s.timestamp) + self.offset) % 30 for s in samples]


def spread_samples(count: int) -> list[Sample]:
    """``count`` one-item samples of users u0.. at times 1.., target ``t``."""
    return [Sample(user=f"u{i}", target="t", timestamp=i + 1, recent=("a",),
                   recent_timestamps=(0,)) for i in range(count)]


def evaluated(path, method, ranks, lls, ids=IDS, retrieved=None, settings=None):
    folder = EvaluationFolder(path)
    details = {} if retrieved is None else {"retrieved": retrieved}
    folder.save(build_report(method, ids, torch.tensor(ranks), 30, n_resamples=50),
                settings or {}, details)
    folder.save_likelihoods(build_likelihood_report(
        method, ids, [(v, 3) for v in lls], n_resamples=50), settings or {}, details)
    return path


def test_folders_are_paired_by_sample_id_and_written_as_one_evaluation(tmp_path):
    a = evaluated(tmp_path / "a", "bigrec:x", [0, 3, 29, 5, 1, 2, 8, 4],
                  [-1.0, -2.0, -3.5, -4.0, -2.5, -1.5, -6.0, -3.0])
    # the same samples saved in another order, under another method name
    order = [3, 1, 0, 7, 2, 6, 5, 4]
    b_ranks, b_lls = [4, 0, 0, 11, 7, 2, 1, 0], [-0.5, -2.5, -3.0, -3.0, -2.0, -1.0, -5.0, -3.5]
    b = evaluated(tmp_path / "b", "automr:x", [b_ranks[i] for i in order],
                  [b_lls[i] for i in order], ids=[IDS[i] for i in order],
                  retrieved={IDS[i]: [i] for i in order})
    out = tmp_path / "ab"
    result = CliRunner().invoke(app, ["compare", "--out", str(out), "--method",
                                      f"frozen={a}/bigrec:x", "--method",
                                      f"aware={b}/automr:x"])
    assert result.exit_code == 0, result.output
    assert "| aware |" in result.output and "vs `frozen`" in result.output
    exported = EvaluationFolder(out).export()
    payload = exported["results"]
    plain = torch.tensor(b_lls, dtype=torch.float64) - torch.tensor(
        [-1.0, -2.0, -3.5, -4.0, -2.5, -1.5, -6.0, -3.0], dtype=torch.float64)
    got = payload["likelihood_paired_vs_reference"]["aware"]["target_ll"]["mean"]
    assert got == pytest.approx(float(plain.mean()), abs=1e-12)
    hits_b = sum(r < 5 for r in b_ranks) / 8
    hits_a = sum(r < 5 for r in [0, 3, 29, 5, 1, 2, 8, 4]) / 8
    assert payload["paired_vs_reference"]["aware"]["recall@5"]["mean"] == pytest.approx(
        hits_b - hits_a)
    means = recomputed_means(exported)  # the export recomputes its own table
    assert means["aware"]["recall@5"] == pytest.approx(payload["methods"]["aware"]["recall@5"]
                                                       ["mean"])
    assert exported["retrieved"] == {"aware": {IDS[i]: [i] for i in order}}
    assert exported["commands"][0][:2] == ["automr", "compare"]
    settings = json.loads(EvaluationFolder(out).settings_file("aware").read_text())
    assert (out / settings.pop("folder")).resolve() == b.resolve()
    assert settings == {"method": "automr:x", "relative_to": "this folder"}


def test_a_name_compared_again_from_a_source_without_memory_drops_the_older_elements(
        tmp_path):
    """Comparing into the same --out again, a name brought in from a memory method, then from
    one without memory, kept the first one's retrieved elements under the name."""
    memory = evaluated(tmp_path / "a", "automr:l2", [0] * 8, [-1.0] * 8,
                       retrieved={i: [3] for i in IDS})
    plain = evaluated(tmp_path / "b", "bigrec:l2", [1] * 8, [-2.0] * 8)
    out = tmp_path / "out"
    combine_folders({"ref": (plain, "bigrec:l2"), "x": (memory, "automr:l2")}, out=out)
    assert EvaluationFolder(out).export()["retrieved"]["x"] == {i: [3] for i in IDS}
    combine_folders({"ref": (plain, "bigrec:l2"), "x": (plain, "bigrec:l2")}, out=out)
    exported = EvaluationFolder(out).export()
    assert exported["retrieved"] == exported["retrieved_loglik"] == {}


def test_a_combination_written_again_keeps_nothing_of_the_earlier_one(tmp_path):
    """Combining into the same --out again, a name now from a source with ranks only kept the
    earlier source's log-likelihoods (and settings) under it, and a name left out stayed:
    read back, the name paired one source's ranks with another's log-likelihoods."""
    both = evaluated(tmp_path / "a", "m", [0] * 8, [-1.0] * 8)
    ranks_only = tmp_path / "b"
    EvaluationFolder(ranks_only).save(build_report("n", IDS, torch.tensor([7] * 8), 30,
                                                   n_resamples=50), {})
    out = tmp_path / "out"
    combine_folders({"x": (both, "m"), "gone": (both, "m")}, out=out)
    evaluation = combine_folders({"x": (ranks_only, "n")}, out=out)
    assert list(evaluation.likelihoods) == []
    again = combine_folders({"x": (out, "x")})
    assert again.reports["x"].ranks == (7,) * 8 and again.likelihoods == {}
    folder = EvaluationFolder(out)
    assert not folder.ranks_file("x", "loglik").exists()
    assert not folder.settings_file("x", "loglik").exists()
    assert not folder.ranks_file("gone").exists() and not folder.settings_file("gone").exists()
    exported = folder.export()
    assert list(exported["ranks"]) == ["x"] and exported["loglik"] == {}


def test_a_combination_summarised_again_in_place_keeps_its_sources(tmp_path):
    """A combination given as its own source (to resample users, say) recorded itself as its
    methods' source: its split, commands and export went round in a circle."""
    a = evaluated(tmp_path / "a", "m", [0, 3, 29, 5, 1, 2, 8, 4], [-1.0] * 8)
    b = evaluated(tmp_path / "b", "m", [4, 0, 0, 11, 7, 2, 1, 0], [-2.0] * 8)
    out = tmp_path / "ab"
    combine_folders({"A": (a, "m"), "B": (b, "m")}, out=out)
    folder = EvaluationFolder(out)
    recorded = {m: json.loads(folder.settings_file(m).read_text()) for m in ("A", "B")}
    evaluation = combine_folders({"A": (out, "A"), "B": (out, "B")}, out=out,
                                 resample="users")
    assert evaluation.resample == "users"
    assert {m: json.loads(folder.settings_file(m).read_text()) for m in ("A", "B")} == recorded
    assert folder.source(recorded["A"]) == (out / recorded["A"]["folder"], "m")
    assert (out / recorded["A"]["folder"]).resolve() == a.resolve()
    assert folder.split("A") == "test"
    assert folder.export()["results"]["config"]["resample"] == "users"


def test_a_compare_folder_reads_its_sources_from_any_working_directory(tmp_path, monkeypatch):
    """Sources named relative to where `automr compare` ran were read against the current
    directory: exported elsewhere, their commands were left out without a word."""
    monkeypatch.chdir(tmp_path)
    evaluated(Path("a"), "m", [0] * 8, [-1.0] * 8)
    evaluated(Path("a"), "n", [1] * 8, [-2.0] * 8)
    (Path("a") / "automr-runs.jsonl").write_text(json.dumps({"argv": ["automr", "evaluate",
                                                                      "a"]}) + "\n")
    combine_folders({"x": (Path("a"), "m"), "y": (Path("a"), "n")}, out=Path("out"),
                    n_resamples=20)
    here = EvaluationFolder(tmp_path / "out").commands()
    assert ["automr", "evaluate", "a"] in here
    monkeypatch.chdir(tmp_path / "a")
    assert EvaluationFolder(tmp_path / "out").commands() == here
    shutil.rmtree(tmp_path / "a")
    with pytest.raises(AutomrError, match=r"the source of m .* is missing"):
        EvaluationFolder(tmp_path / "out").commands()


def test_different_samples_or_a_missing_method_are_refused(tmp_path):
    a = evaluated(tmp_path / "a", "m", [0] * 8, [-1.0] * 8)
    c = evaluated(tmp_path / "c", "m", [0] * 7, [-1.0] * 7, ids=IDS[:7])
    with pytest.raises(AutomrError, match="different samples"):
        combine_folders({"a": (a, "m"), "c": (c, "m")})
    other = EvaluationFolder(tmp_path / "n")  # the same samples ranked among 40 items
    other.save(build_report("m", IDS, torch.zeros(8, dtype=torch.long), 40, n_resamples=50), {})
    with pytest.raises(AutomrError, match="catalogs of different sizes"):
        combine_folders({"a": (a, "m"), "n": (tmp_path / "n", "m")})
    with pytest.raises(AutomrError, match=r"neither ranks nor .* of other \(there: m\)"):
        combine_folders({"a": (a, "m"), "x": (a, "other")})
    (a / "ranks" / "damaged.json").write_text("{not json")  # another method's, not asked for
    with pytest.raises(AutomrError, match=r"neither ranks nor .* of other \(there: m\)"):
        combine_folders({"a": (a, "m"), "x": (a, "other")})
    (a / "ranks" / "damaged.json").unlink()
    with pytest.raises(AutomrError, match="reference"):
        combine_folders({"a": (a, "m")}, reference="b")
    # a folder without its method: TypeError ('cannot unpack non-iterable PosixPath object'),
    # ValueError ('too many values to unpack (expected 2)'); a name 1: a beartype violation
    for sources in ({"a": a}, {"a": str(a)}, {1: (a, "m")}):
        with pytest.raises(AutomrError, match=r"takes \{name: \(folder, method\)\}"):
            combine_folders(sources)
    bad = CliRunner().invoke(app, ["compare", "--out", str(tmp_path / "o"), "--method",
                                   f"{a}/m"])
    assert bad.exit_code != 0 and "NAME=FOLDER/METHOD" in bad.output


def test_open_evaluation_refuses_a_path_that_does_not_exist(tmp_path):
    """It gave an empty EvaluationFolder whose split() answered 'test' for any method."""
    with pytest.raises(AutomrError, match="does not exist"):
        open_evaluation(tmp_path / "nowhere")


def test_open_evaluation_refuses_a_folder_that_is_not_an_evaluation(tmp_path):
    """A prepared dataset's folder (or an empty one) gave an EvaluationFolder whose split()
    answered 'test' for any method and whose report() advised evaluating into that folder."""
    from automr.testing.synthetic import synthetic_dataset

    synthetic_dataset(tmp_path / "data")
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "data" / "prepared", tmp_path / "empty"):
        with pytest.raises(AutomrError, match="is not an evaluation folder"):
            open_evaluation(folder)


def test_an_exported_evaluation_is_a_source_like_its_folder(tmp_path):
    """A committed export (docs/results/*.json) pairs exactly as the folder it came from:
    the same ranks, log-likelihoods, retrieved elements, intervals and paired differences."""
    a = evaluated(tmp_path / "a", "bigrec:x", [0, 3, 29, 5, 1, 2, 8, 4],
                  [-1.0, -2.0, -3.5, -4.0, -2.5, -1.5, -6.0, -3.0],
                  retrieved={i: [n] for n, i in enumerate(IDS)})
    b = evaluated(tmp_path / "b", "automr:x", [4, 0, 0, 11, 7, 2, 1, 0],
                  [-0.5, -2.5, -3.0, -3.0, -2.0, -1.0, -5.0, -3.5])
    made_a = ["automr", "evaluate", "--out", str(a)]
    (a / "automr-runs.jsonl").write_text(json.dumps({"argv": made_a}) + "\n")
    combine_folders({"bigrec:x": (a, "bigrec:x")}, out=tmp_path / "a-table", n_resamples=50)
    exported = tmp_path / "results" / "a-table.json"
    result = CliRunner().invoke(app, ["export", str(tmp_path / "a-table"), str(exported)])
    assert result.exit_code == 0, result.output
    assert json.loads(exported.read_text()) == EvaluationFolder(tmp_path / "a-table").export()
    from_folder = combine_folders({"ref": (a, "bigrec:x"), "new": (b, "automr:x")},
                                  out=tmp_path / "f", n_resamples=50)
    from_export = combine_folders({"ref": (exported, "bigrec:x"), "new": (b, "automr:x")},
                                  out=tmp_path / "e", n_resamples=50)
    assert from_export.reports["ref"].ranks == from_folder.reports["ref"].ranks
    assert from_export.likelihoods["ref"] == from_folder.likelihoods["ref"]
    assert from_export.paired() == from_folder.paired()
    assert from_export.paired_likelihoods() == from_folder.paired_likelihoods()
    assert (EvaluationFolder(tmp_path / "e").export()["retrieved"]
            == {"ref": {i: [n] for n, i in enumerate(IDS)}})
    # the commands behind a source come along, through a folder or an export, each once
    assert EvaluationFolder(tmp_path / "a-table").commands() == [made_a]
    assert EvaluationFolder(tmp_path / "e").commands() == [made_a]
    older = tmp_path / "older.json"  # exports from before retrieved elements were kept
    older.write_text(json.dumps({k: v for k, v in json.loads(exported.read_text()).items()
                                 if k not in ("retrieved", "retrieved_loglik")}))
    from_older = combine_folders({"ref": (older, "bigrec:x"), "new": (b, "automr:x")},
                                 out=tmp_path / "o", n_resamples=50)
    assert from_older.paired() == from_folder.paired()
    with pytest.raises(AutomrError, match=r"neither ranks nor .* \(there: bigrec:x\)"):
        combine_folders({"x": (exported, "other")})
    missing = CliRunner().invoke(app, ["export", str(tmp_path / "f" / "ranks"),
                                       str(tmp_path / "x.json")])
    assert missing.exit_code != 0 and "results.json is missing" in missing.output
    not_export = tmp_path / "other.json"
    not_export.write_text("{}")
    with pytest.raises(AutomrError, match=r"other\.json has format None, expected "
                                          r"'automr\.results-export/.*another kind of file"):
        combine_folders({"x": (not_export, "bigrec:x")})


def test_a_compared_method_keeps_the_split_of_its_source(tmp_path):
    """rq3 and friends ask a folder which split a method ranked; `automr compare` folders
    answer with their source's, whether a folder or an export, and so do their exports."""
    from automr.evaluation import evaluate

    class First:
        def __init__(self) -> None:
            self.settings: dict = {}

        def rank(self, samples):
            return [0] * len(samples)

    samples = spread_samples(4)
    evaluate({"m": First()}, samples, 10, out=tmp_path / "a",
             record={"config": {"split": "valid"}})
    (tmp_path / "a.json").write_text(json.dumps(EvaluationFolder(tmp_path / "a").export()))
    combine_folders({"x": (tmp_path / "a", "m"), "y": (tmp_path / "a.json", "m")},
                    out=tmp_path / "c")
    compared = EvaluationFolder(tmp_path / "c")
    assert compared.split("x") == compared.split("y") == "valid"
    (tmp_path / "c.json").write_text(json.dumps(compared.export()))  # its export too: it said
    assert open_evaluation(tmp_path / "c.json").split("x") == "valid"  # test, then refused


def test_ranks_made_with_and_without_the_history_are_not_paired(tmp_path):
    """`compare` paired pop ranked with --exclude-seen against pop ranked without: one method
    differed from itself, "significantly" (-0.017 recall@10, the ties review). SASRec, which
    always excludes, still sits beside a method that keeps the history, as in one evaluation."""
    from automr.evaluation import evaluate

    class Fixed:
        def __init__(self, exclude_seen: bool | None) -> None:
            self.settings = {} if exclude_seen is None else {"exclude_seen": exclude_seen}

        def rank(self, samples):
            return [1] * len(samples)

    samples = spread_samples(4)
    for name, rule in (("kept", False), ("excluded", True)):
        evaluate({"pop": Fixed(rule), "sasrec": Fixed(None)}, samples, 10, out=tmp_path / name,
                 record={"config": {"exclude_seen": rule}})
    (tmp_path / "excluded.json").write_text(json.dumps(
        EvaluationFolder(tmp_path / "excluded").export()))
    for excluded in (tmp_path / "excluded", tmp_path / "excluded.json"):
        with pytest.raises(AutomrError, match=r"with and without --exclude-seen \(the history "
                                              r"a: kept, b: excluded\)"):
            combine_folders({"a": (tmp_path / "kept", "pop"), "b": (excluded, "pop")})
    combine_folders({"a": (tmp_path / "kept", "pop"), "b": (tmp_path / "excluded", "sasrec")},
                    out=tmp_path / "c")
    (tmp_path / "c.json").write_text(json.dumps(EvaluationFolder(tmp_path / "c").export()))
    for combined in (tmp_path / "c", tmp_path / "c.json"):  # through it, and its export
        with pytest.raises(AutomrError, match="with and without --exclude-seen"):
            combine_folders({"a": (combined, "a"), "b": (tmp_path / "excluded", "pop")})
    combine_folders({"a": (tmp_path / "c.json", "b"), "b": (tmp_path / "kept", "pop")})


def test_a_source_with_no_relative_path_is_recorded_whole(tmp_path, monkeypatch):
    """On Windows a source on another drive has no path relative to --out: os.path.relpath
    raised a raw ValueError (the portability review); its absolute path is recorded."""
    import automr.evaluation.folder as folder_module

    source = evaluated(tmp_path / "a", "m", [0] * 8, [-1.0] * 8)

    def no_relative(path, start):
        raise ValueError("path is on mount 'D:', start on mount 'C:'")

    monkeypatch.setattr(folder_module.os.path, "relpath", no_relative)
    combine_folders({"x": (source, "m")}, out=tmp_path / "c")
    compared = EvaluationFolder(tmp_path / "c")
    settings = json.loads(compared.settings_file("x").read_text())
    assert settings == {"folder": source.resolve().as_posix(), "method": "m"}
    assert compared.chain("x")[-1] == (source.resolve(), "m")


def test_every_interval_of_a_combined_table_comes_from_its_bootstrap(tmp_path):
    """Sources saved with other resamples or seeds are summarised again from their values,
    so one table never mixes intervals of different bootstraps."""
    ranks, lls = [0, 3, 29, 5, 1, 2, 8, 4], [-1.0, -2.0, -3.5, -4.0, -2.5, -1.5, -6.0, -3.0]
    a = evaluated(tmp_path / "a", "m", ranks, lls)  # 50 resamples, seed 0
    combined = combine_folders({"a": (a, "m")}, n_resamples=70, seed=3)
    expected = build_report("a", IDS, torch.tensor(ranks), 30, n_resamples=70, seed=3)
    assert combined.reports["a"] == expected
    assert combined.likelihoods["a"] == build_likelihood_report(
        "a", IDS, [(v, 3) for v in lls], n_resamples=70, seed=3)
    same = combine_folders({"a": (a, "m")}, n_resamples=50, seed=0)
    assert same.reports["a"].metrics == EvaluationFolder(a).report("m").metrics


def test_a_source_summarised_at_another_confidence_is_bootstrapped_at_the_tables(tmp_path):
    """A report saved with 90% intervals (the API's build_report(confidence=0.9)) and the
    bootstrap compare uses (1000 resamples of seed 0) went into the table as it was, whose
    header says 95%: its intervals narrower than every other method's."""
    ranks, lls = [0, 3, 7, 12, 1, 30, 2, 5], [-float(i) for i in range(8)]
    folder = EvaluationFolder(tmp_path / "a")
    folder.save(build_report("m", IDS, torch.tensor(ranks), 30, confidence=0.9), {})
    combined = combine_folders({"m": (tmp_path / "a", "m")})  # ndcg@10 was [0.222, 0.582]
    assert combined.reports["m"].metrics == build_report("m", IDS, torch.tensor(ranks),
                                                         30).metrics  # [0.196, 0.615]
    folder.save_likelihoods(build_likelihood_report("m", IDS, [(v, 3) for v in lls],
                                                    confidence=0.9), {})
    combined = combine_folders({"m": (tmp_path / "a", "m")})
    assert combined.likelihoods["m"].metrics == build_likelihood_report(
        "m", IDS, [(v, 3) for v in lls]).metrics


def test_compare_seeds_its_bootstrap(tmp_path):
    a = evaluated(tmp_path / "a", "m", [0, 3, 29, 5, 1, 2, 8, 4], [-1.0] * 8)
    result = CliRunner().invoke(app, ["compare", "--out", str(tmp_path / "o"), "--method",
                                      f"x={a}/m", "--seed", "4"])
    assert result.exit_code == 0, result.output
    saved = EvaluationFolder(tmp_path / "o").report("x")
    assert saved.seed == 4
    assert saved == build_report("x", IDS, torch.tensor([0, 3, 29, 5, 1, 2, 8, 4]), 30, seed=4)


def test_the_table_is_not_written_into_another_artifact_or_onto_a_file(tmp_path):
    a = evaluated(tmp_path / "a", "bigrec:x", [0, 3, 29, 5, 1, 2, 8, 4],
                  [-1.0, -2.0, -3.5, -4.0, -2.5, -1.5, -6.0, -3.0])
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "config.json").write_text("{}")
    (tmp_path / "file").write_text("x")
    with pytest.raises(AutomrError, match="not an evaluation folder"):
        combine_folders({"x": (a, "bigrec:x")}, out=tmp_path / "memory", n_resamples=50)
    with pytest.raises(AutomrError, match="is a file"):
        combine_folders({"x": (a, "bigrec:x")}, out=tmp_path / "file", n_resamples=50)
    assert sorted(p.name for p in (tmp_path / "memory").iterdir()) == ["config.json"]
    for _ in range(2):  # its own table folder: written again
        combine_folders({"x": (a, "bigrec:x")}, out=tmp_path / "table", n_resamples=50)


def test_compare_refuses_an_evaluation_as_its_out_and_names_a_missing_source(tmp_path):
    """Into an `automr evaluate` folder, compare replaced its results: its methods were gone
    from its table and export. A compare folder is rewritten; a source path that does not
    exist was 'holds neither ranks nor target log-likelihoods'."""
    a = evaluated(tmp_path / "a", "bigrec:x", [0, 3, 29, 5, 1, 2, 8, 4], [-1.0] * 8)
    sources = {"x": (a, "bigrec:x")}
    with pytest.raises(AutomrError, match="holds an evaluation; its results would be replaced"):
        combine_folders(sources, out=a)
    assert not (a / "results.json").exists()
    combine_folders(sources, out=tmp_path / "c")
    combine_folders({**sources, "y": (a, "bigrec:x")}, out=tmp_path / "c")  # its own: rewritten
    assert "| y |" in (tmp_path / "c" / "results.md").read_text()
    for missing in (tmp_path / "nope", tmp_path / "nope.json"):
        with pytest.raises(AutomrError, match=f"{missing} does not exist"):
            combine_folders({"x": (missing, "bigrec:x")})
    with pytest.raises(AutomrError, match=r"a is an evaluation: name one of its methods, "
                                          r"x=.*a/METHOD \(there: bigrec:x\)"):
        combine_folders({"x": (tmp_path, "a")})  # --method x=FOLDER, read as FOLDER's parent/a


def test_evaluate_refuses_a_folder_compare_wrote(tmp_path):
    """The other way round: `automr evaluate --out` into a compare folder measured its
    brought-in methods again there and replaced their links to the folders measured."""
    from automr.evaluation import evaluate

    samples = spread_samples(8)
    source = tmp_path / "a"
    evaluate({"m": Spread(0)}, samples, 30, out=source, n_resamples=20)
    compared = tmp_path / "c"
    combine_folders({"x": (source, "m")}, out=compared, n_resamples=20)
    settings = EvaluationFolder(compared).settings_file("x")
    before = settings.read_text()
    for methods in ({"x": Spread(1)}, {"new": Spread(1)}):
        with pytest.raises(AutomrError, match=r"c is a comparison written by `automr compare`.*"
                                              r"then run `automr compare` again"):
            evaluate(methods, samples, 30, out=compared, n_resamples=20)
    assert settings.read_text() == before and not EvaluationFolder(compared).ranks_file(
        "new").exists()
    assert EvaluationFolder(compared).is_combination()
    assert not EvaluationFolder(source).is_combination()
    evaluate({"m": Spread(0), "n": Spread(1)}, samples, 30, out=source, n_resamples=20)
    # a caller's record with a key named like compare's is no combination (the diff review)
    for _ in range(2):
        evaluate({"m": Spread(0)}, samples, 30, out=tmp_path / "r", n_resamples=20,
                 record={"sources": {"data": "MovieLens-100K"}})


def test_an_export_of_an_api_evaluation_keeps_its_cut_offs_and_bootstrap(tmp_path):
    """`automr.evaluate` called without a record wrote no cut-offs or bootstrap into
    results.json, so its export was read back at K = 1, 5, 10 with 1000 resamples of seed 0:
    other cut-offs were refused ('metrics do not match'), other resamples passed for 1000."""
    import attrs

    from automr.evaluation import evaluate
    from automr.evaluation.folder import ExportedEvaluation

    samples = spread_samples(12)
    for ks, n_resamples, seed in (((1, 20), 40, 3), ((1, 5, 10), 40, 3)):
        out = tmp_path / f"a{len(ks)}"
        made = evaluate({"m": Spread(0)}, samples, 30, out=out, ks=ks, n_resamples=n_resamples,
                        seed=seed).reports["m"]
        exported = out.with_suffix(".json")
        exported.write_text(json.dumps(EvaluationFolder(out).export()))
        assert ExportedEvaluation.open(exported).report("m") == made
        assert recomputed_means(json.loads(exported.read_text()))["m"] == {
            k: iv.mean for k, iv in made.metrics.items()}
        same = combine_folders({"x": (exported, "m")}, n_resamples=n_resamples, seed=seed)
        assert same.reports["x"] == attrs.evolve(made, method="x")
        other = combine_folders({"x": (exported, "m")})  # 1000 resamples of seed 0
        assert other.reports["x"] == build_report("x", made.sample_ids, made.rank_tensor(), 30,
                                                  ks=ks)


def test_an_export_refuses_a_table_older_than_its_values(tmp_path):
    """A rerun into the folder on other samples, cut after its first method, left results.json
    of the run before: the export held a table (recall@10 0.5 on 12 samples) that its
    per-sample ranks (16 samples, 0.3125) contradicted."""
    from automr.evaluation import evaluate

    samples = spread_samples(20)
    evaluate({"a": Spread(0), "b": Spread(1)}, samples[:12], 30, out=tmp_path, n_resamples=30)
    exported = EvaluationFolder(tmp_path).export()
    assert recomputed_means(exported)["a"]["recall@10"] == 0.5
    with pytest.raises(KeyboardInterrupt):
        evaluate({"a": Spread(0), "b": Spread(1, cut=True)}, samples[4:], 30, out=tmp_path,
                 n_resamples=30)
    with pytest.raises(AutomrError, match=r"results\.json does not hold the table of the "
                                          r"values now saved in .*a\.json.*run that evaluation "
                                          r"again to its end"):
        EvaluationFolder(tmp_path).export()
    evaluate({"a": Spread(0), "b": Spread(1)}, samples[4:], 30, out=tmp_path, n_resamples=30)
    exported = EvaluationFolder(tmp_path).export()
    assert recomputed_means(exported)["a"] == {
        k: v["mean"] for k, v in exported["results"]["methods"]["a"].items()}


def test_compare_refuses_a_finished_evaluation_as_its_out(tmp_path):
    """An `automr evaluate` folder with its tables written (results.json, with its config) is
    refused as well as one cut before them: only a combination's own results.json (it
    records its sources) lets compare write its tables there."""
    from automr.evaluation import evaluate

    samples = spread_samples(8)
    out = tmp_path / "ev"
    evaluate({"m": Spread(0)}, samples, 30, out=out, n_resamples=20)
    before = (out / "results.json").read_text()
    assert "config" in json.loads(before)
    with pytest.raises(AutomrError, match="holds an evaluation; its results would be replaced"):
        combine_folders({"x": (out, "m")}, out=out, n_resamples=20)
    assert (out / "results.json").read_text() == before


def test_compare_resamples_users_when_asked_and_records_it(tmp_path):
    """--resample users: the combined intervals resample the users of the sample ids (two
    users here), the saved reports and results.json say so."""
    ids = [f"u{i % 2}@{i}:x" for i in range(8)]
    ranks, lls = [0, 3, 29, 5, 1, 2, 8, 4], [-1.0, -2.0, -3.5, -4.0, -2.5, -1.5, -6.0, -3.0]
    a = evaluated(tmp_path / "a", "m", ranks, lls, ids=ids)
    result = CliRunner().invoke(app, ["compare", "--out", str(tmp_path / "o"), "--method",
                                      f"x={a}/m", "--resample", "users"])
    assert result.exit_code == 0, result.output
    saved = EvaluationFolder(tmp_path / "o")
    assert saved.report("x") == build_report("x", ids, torch.tensor(ranks), 30,
                                             resample="users")
    assert saved.report("x").metrics != build_report("x", ids, torch.tensor(ranks), 30).metrics
    assert saved.likelihoods("x") == build_likelihood_report(
        "x", ids, [(v, 3) for v in lls], resample="users")
    config = json.loads((tmp_path / "o" / "results.json").read_text())["config"]
    assert config["resample"] == "users"
    result = CliRunner().invoke(app, ["compare", "--out", str(tmp_path / "p"), "--method",
                                      f"x={a}/m", "--resample", "items"])
    assert result.exit_code != 0 and "resample must be one of samples, users" in result.output


def test_the_runs_of_an_rq2_list_the_rq2_command_behind_them(tmp_path):
    """rq2 and demo record their run in their --out, above the evaluation folders they make:
    the export of OUT/automr-0 (or a demo's OUT/results) said '0 command(s)' (not the commands
    that made it, as export promises); a folder of another name there is not one of them.
    Records of other commands in the folder above are not behind it; an rq3 report is not."""
    from automr.storage import RUNS_FILE

    rq2, demo = ["automr", "rq2", "--out", "o"], ["automr", "demo", "--out", "o"]
    for run in ("automr-0", "random-seed-3", "results", "automr-extra"):
        (tmp_path / "o" / run).mkdir(parents=True)
    (tmp_path / "o" / RUNS_FILE).write_text(
        json.dumps({"command": "automr rq2", "argv": rq2}) + "\n"
        + json.dumps({"command": "automr demo", "argv": demo}) + "\n"
        + json.dumps({"command": "automr evaluate", "argv": ["automr", "evaluate"]}) + "\n")
    (tmp_path / "o" / "automr-0" / RUNS_FILE).write_text(
        json.dumps({"command": "automr rq3", "argv": ["automr", "rq3"]}) + "\n")
    assert EvaluationFolder(tmp_path / "o" / "automr-0").commands() == [rq2]
    assert EvaluationFolder(tmp_path / "o" / "random-seed-3").commands() == [rq2]
    assert EvaluationFolder(tmp_path / "o" / "results").commands() == [demo]  # the demo's too
    assert EvaluationFolder(tmp_path / "o" / "automr-extra").commands() == []  # rq2 made none
    assert EvaluationFolder(tmp_path / "o").commands() == [rq2, demo, ["automr", "evaluate"]]


def test_compare_removes_only_the_files_it_globbed_not_those_a_saved_name_points_to(tmp_path):
    """A received combination folder whose saved ``method`` named a path outside it
    (``/abs/x``) made `automr compare --out` into it delete x.json and x.settings.json there
    (the security review)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("results.json", "results.settings.json"):
        (mine / name).write_text("{}")
    a = evaluated(tmp_path / "a", "m", [0] * 8, [-1.0] * 8)
    out = tmp_path / "received"
    combine_folders({"x": (a, "m")}, out=out, n_resamples=20)
    (out / "ranks" / "y.json").write_text(json.dumps({"method": str(mine / "results")}))
    combine_folders({"x": (a, "m")}, out=out, n_resamples=20)
    assert sorted(p.name for p in mine.iterdir()) == ["results.json", "results.settings.json"]


def test_sources_that_lead_back_to_one_another_are_refused_in_one_line(tmp_path):
    """compare --out A y=E/m, --out B x=A/y, then --out A y=B/x recorded A/y and B/x as each
    other's sources: a raw OSError (a path 100 KB long), and A could not be exported again
    (the security review)."""
    e = evaluated(tmp_path / "e", "m", [0, 3, 29, 5, 1, 2, 8, 4], [-1.0] * 8)
    a, b = tmp_path / "a", tmp_path / "b"
    combine_folders({"y": (e, "m")}, out=a, n_resamples=20)
    combine_folders({"x": (a, "y")}, out=b, n_resamples=20)
    with pytest.raises(AutomrError, match=r"brought in from .*a/y itself.* measured, .*e/m"):
        combine_folders({"y": (b, "x")}, out=a, n_resamples=20)
    assert EvaluationFolder(a).export()["ranks"]["y"] == dict(zip(
        IDS, [0, 3, 29, 5, 1, 2, 8, 4], strict=True))
    # folders that bring in each other's other methods are no cycle: each is read once
    combine_folders({"y": (e, "m"), "z": (b, "x")}, out=a, n_resamples=20)
    assert EvaluationFolder(a).split("z") == "test"
    assert EvaluationFolder(a).commands() == EvaluationFolder(b).commands()
    # a cycle written by hand is one line where the sources are followed
    settings = EvaluationFolder(b).settings_file("x")
    record = json.loads(settings.read_text())
    record.update(folder="../a", method="z")
    settings.write_text(json.dumps(record))
    with pytest.raises(AutomrError, match="lead back to one another"):
        EvaluationFolder(a).split("z")


def test_a_values_folder_that_is_a_link_is_not_written_through(tmp_path):
    """A received combination folder whose ranks/ linked elsewhere had `compare` write (and
    overwrite) NAME.json there (the security review)."""
    a = evaluated(tmp_path / "a", "m", [0] * 8, [-1.0] * 8)
    out = tmp_path / "received"
    combine_folders({"x": (a, "m")}, out=out, n_resamples=20)
    mine = tmp_path / "mine"
    shutil.move(out / "ranks", mine)
    (mine / "x.json").write_text("mine")
    (out / "ranks").symlink_to(mine)
    with pytest.raises(AutomrError, match=r"ranks is a link: .* follows no link"):
        combine_folders({"x": (a, "m")}, out=out, n_resamples=20)
    assert (mine / "x.json").read_text() == "mine"


def test_an_older_folders_details_are_not_copied_through_a_link(tmp_path):
    """A received folder (the older layout: one details file for both measures) whose
    retrieved/m.loglik.json linked to a missing path: evaluate's migration copy wrote the
    sender's file there, outside the folder (the received-folders review)."""
    folder = tmp_path / "received"
    (folder / "loglik").mkdir(parents=True)
    (folder / "retrieved").mkdir()
    (folder / "loglik" / "m.json").write_text("{}")
    (folder / "retrieved" / "m.json").write_text('{"u0@1:x": [1]}')
    outside = tmp_path / "home" / "planted.sh"
    outside.parent.mkdir()
    (folder / "retrieved" / "m.loglik.json").symlink_to(outside)
    EvaluationFolder(folder).save(build_report("m", IDS, torch.zeros(8, dtype=torch.long), 30,
                                               n_resamples=20), {},
                                  {"retrieved": {i: [0] for i in IDS}})
    assert not outside.exists()
    assert json.loads((folder / "retrieved" / "m.loglik.json").read_text()) == {"u0@1:x": [1]}


@pytest.mark.parametrize("linked", ["ranks", "ranks/m.shards", "models"])
def test_shards_and_models_are_not_written_through_a_link(tmp_path, linked):
    """A received folder whose ranks/ or ranks/METHOD.shards linked to a user's folder had the
    cut run's shards written (over the user's shard-00000.json) there before any check; a
    linked models/ took the SASRec the methods train (the received-folders review)."""
    folder = EvaluationFolder(tmp_path / "received")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "shard-00000.json").write_text('{"my": "data"}')
    (folder.path / linked).parent.mkdir(parents=True)
    (folder.path / linked).symlink_to(mine)
    with pytest.raises(AutomrError, match=r"is a link: .* follows no link"):
        if linked == "models":
            folder.model_dir("sasrec", {"seed": 0})
        else:
            folder.save_shard("m", 0, {"samples": ["a"]}, [1], {})
    if linked != "models":
        with pytest.raises(AutomrError, match="is a link"):
            folder.clear_shards("m")
    assert sorted(p.name for p in mine.iterdir()) == ["shard-00000.json"]
    assert (mine / "shard-00000.json").read_text() == '{"my": "data"}'


def test_compare_removes_nothing_through_a_linked_values_folder(tmp_path):
    """A received combination folder whose ranks/ linked to the user's evaluation: compare
    removed every method's ranks there before the link check refused the save (the diff
    review)."""
    mine = evaluated(tmp_path / "mine", "pop", [0] * 8, [-1.0] * 8)
    out = tmp_path / "received"
    combine_folders({"x": (mine, "pop")}, out=out, n_resamples=20)
    shutil.rmtree(out / "ranks")
    (out / "ranks").symlink_to(mine / "ranks")
    before = sorted(p.name for p in (mine / "ranks").iterdir())
    with pytest.raises(AutomrError, match="ranks is a link"):
        combine_folders({"A": (mine, "pop")}, out=out, n_resamples=20)
    assert sorted(p.name for p in (mine / "ranks").iterdir()) == before


def test_values_an_earlier_automr_made_otherwise_are_not_paired_with_todays(tmp_path):
    """Random retrieval draws otherwise since its kind's version 2, and an LM's values follow
    rules beyond its settings (LM_RULES: a tuned gamma breaks exact ties by the smallest since
    aa61fef, ...): `evaluate` makes such values saved before again, but compare paired them
    with today's (random:l2 differed from itself, recall@10 0.500 vs 0.625)."""
    from automr.methods.registry import rule_marks

    ranks, lls = [0, 3, 29, 5, 1, 2, 8, 4], [-1.0, -2.0, -3.5, -4.0, -2.5, -1.5, -6.0, -3.0]
    today = {method: rule_marks(method) for method in ("random:l2", "bigrec:l2-pop", "sasrec")}
    for method, marks in today.items():
        evaluated(tmp_path / "old", method, ranks, lls)
        evaluated(tmp_path / "new", method, ranks, lls, settings=marks)
    # SASRec trained with BCE on each user's last items under the same settings before its
    # version 2 (the old-artifacts review: compare paired them, recall@1 +0.667 from itself)
    assert today["sasrec"] == {"version": 2}
    # an export kept no settings: what compare refuses in the folder went through it
    from automr.evaluation import evaluate

    for folder, marks in (("old-e", {}), ("new-e", today["sasrec"])):
        method = Spread(0)
        method.settings |= marks
        evaluate({"sasrec": method}, spread_samples(8), 30, out=tmp_path / folder,
                 n_resamples=20)
    runner = CliRunner()
    refused = runner.invoke(app, ["export", str(tmp_path / "old-e"), str(tmp_path / "o.json")])
    assert refused.exit_code != 0 and "made by an earlier automr" in refused.output
    assert not (tmp_path / "o.json").exists()
    exported = runner.invoke(app, ["export", str(tmp_path / "new-e"), str(tmp_path / "n.json")])
    assert exported.exit_code == 0, exported.output

    def compare(first: str, second: str):
        return CliRunner().invoke(app, ["compare", "--out", str(tmp_path / "o"), "--method",
                                        f"a={first}", "--method", f"b={second}"])

    for method in today:
        refused = compare(f"{tmp_path / 'new'}/{method}", f"{tmp_path / 'old'}/{method}")
        assert refused.exit_code != 0
        assert f"ranks of {method} in {(tmp_path / 'old').resolve()} were made by an earlier " \
               f"automr" in " ".join(refused.output.split())
    paired = compare(f"{tmp_path / 'new'}/random:l2", f"{tmp_path / 'new'}/bigrec:l2-pop")
    assert paired.exit_code == 0, paired.output


def test_log_likelihoods_brought_in_are_followed_to_where_they_were_made(tmp_path):
    """A method brought in with log-likelihoods only was followed through its ranks (none):
    older values behind such a folder were paired, and today's refused."""
    from automr.methods.registry import rule_marks

    def loglik_only(path, settings):
        EvaluationFolder(path).save_likelihoods(build_likelihood_report(
            "bigrec:l2", IDS, [(-1.0 - i, 3) for i in range(8)], n_resamples=50), settings, {})
        return path

    def compare(out, *sources):
        return CliRunner().invoke(app, ["compare", "--out", str(out), *[
            arg for i, source in enumerate(sources) for arg in ("--method", f"m{i}={source}")]])

    old = loglik_only(tmp_path / "old", {})
    new = loglik_only(tmp_path / "new", rule_marks("bigrec:l2"))
    for name, source in (("via-old", old), ("via-new", new)):  # the API checks no rules
        combine_folders({"m0": (source, "bigrec:l2"), "m1": (new, "bigrec:l2")},
                        out=tmp_path / name)
    refused = compare(tmp_path / "o1", f"{tmp_path / 'via-old'}/m0", f"{new}/bigrec:l2")
    assert refused.exit_code != 0 and "made by an earlier automr" in refused.output
    paired = compare(tmp_path / "o2", f"{tmp_path / 'via-new'}/m0", f"{new}/bigrec:l2")
    assert paired.exit_code == 0, paired.output


def test_a_method_brought_in_with_log_likelihoods_only_keeps_its_split_and_source(tmp_path):
    """Its split was read through its ranks (none): a validation-split source was recorded as
    test; and a combination that would make it its own source was accepted."""
    def loglik_only(path):
        EvaluationFolder(path).save_likelihoods(build_likelihood_report(
            "bigrec:l2", IDS, [(-1.0 - i, 3) for i in range(8)], n_resamples=20), {}, {})
        (path / "results.json").write_text(json.dumps({"config": {"split": "valid"}}))
        return path

    source = loglik_only(tmp_path / "s")
    combine_folders({"m": (source, "bigrec:l2")}, out=tmp_path / "a")
    assert EvaluationFolder(tmp_path / "a").split("m") == "valid"
    assert EvaluationFolder(tmp_path / "a").export()["results"]["config"]["split"] == "valid"
    combine_folders({"x": (tmp_path / "a", "m")}, out=tmp_path / "b")
    with pytest.raises(AutomrError, match=r"was brought in from .*a/m itself"):
        combine_folders({"m": (tmp_path / "b", "x")}, out=tmp_path / "a")
