"""`automr.evaluate`'s bookkeeping with plain methods: the bootstrap it is asked for, what a
rerun may reuse, a cut save, names that would share files, and combining folders."""

import json
import re
import shutil
import threading

import pytest
import torch

from automr.data.records import Sample
from automr.errors import AutomrError
from automr.evaluation import (
    EvaluationFolder,
    build_report,
    combine_folders,
    evaluate,
    folder as folder_module,
)
from automr.evaluation.likelihood import (
    LikelihoodReport,
    build_likelihood_report,
    compare_likelihoods,
)
from automr.evaluation.report import MetricReport, compare_reports

SAMPLES = [Sample(user=f"u{i}", target="t", timestamp=100 + i, recent=("a",),
                  recent_timestamps=(1,)) for i in range(24)]


class Constant:
    """Ranks the target at ``rank + (i % 5)`` and scores it ``-(i % 7) - rank`` for sample i."""

    def __init__(self, rank: int) -> None:
        self.rank_value = rank
        self.settings = {"rank": rank}

    def rank(self, samples):
        return [self.rank_value + int(s.timestamp) % 5 for s in samples]

    def target_log_likelihoods(self, samples):
        return [(-float(int(s.timestamp) % 7) - self.rank_value, 3) for s in samples]


def test_paired_tables_use_the_resamples_and_seed_asked_for():
    methods = {"bigrec": Constant(0), "mine": Constant(2)}
    evaluation = evaluate(methods, SAMPLES, 30, n_resamples=50, seed=7,
                          measures=("ranks", "likelihood"))
    reports, likelihoods = evaluation.reports, evaluation.likelihoods
    assert evaluation.paired()["mine"] == compare_reports(
        reports["mine"], reports["bigrec"], n_resamples=50, seed=7)
    assert evaluation.paired()["mine"] != compare_reports(reports["mine"], reports["bigrec"])
    assert evaluation.paired_likelihoods()["mine"] == compare_likelihoods(
        likelihoods["mine"], likelihoods["bigrec"], n_resamples=50, seed=7)


def test_numpy_numbers_for_the_bootstrap_and_cut_offs_give_the_same_tables(tmp_path):
    """``seed=np.int64(1)``, ``n_resamples=np.int64(50)`` or ``ks=np.array([1, 5])`` passed
    the checks, then failed in the reports' type check once every method had run (the
    public-API review); combine_folders the same."""
    import numpy as np

    methods = {"bigrec": Constant(0), "mine": Constant(2)}
    plain = evaluate(methods, SAMPLES, 30, ks=(1, 5), n_resamples=50, seed=1,
                     out=tmp_path / "plain")
    numpy = evaluate(methods, SAMPLES, 30, ks=np.array([1, 5]), n_resamples=np.int64(50),
                     seed=np.int64(1), shard_size=np.int64(64))
    assert numpy.markdown() == plain.markdown()
    sources = {name: (tmp_path / "plain", name) for name in methods}
    assert (combine_folders(sources, n_resamples=np.int64(50), seed=np.int64(1)).markdown()
            == combine_folders(sources, n_resamples=50, seed=1).markdown())
    for bad in ("50", 2.5):
        with pytest.raises(AutomrError, match="n_resamples must be an int"):
            combine_folders(sources, n_resamples=bad)


def test_evaluates_arguments_of_the_wrong_type_are_wrong_type_errors():
    """docs/api/index.md: a value of the wrong type is a WrongTypeError (a TypeError too);
    evaluate's own checks raised a bare AutomrError for some (the docstring review)."""
    from automr.errors import WrongTypeError

    methods = {"bigrec": Constant(0)}
    for wrong in (dict(methods=[Constant(0)]), dict(methods={1: Constant(0)}),
                  dict(n_items="30"), dict(samples=3), dict(samples=[*SAMPLES, "u9"]),
                  dict(measures=3), dict(n_resamples="10"), dict(seed=0.5), dict(ks="5"),
                  dict(ks=(1, 2.5)), dict(n_items=True), dict(out=5), dict(reference=["x"]),
                  dict(methods={"m": object()})):
        arguments = {"methods": methods, "samples": SAMPLES, "n_items": 30, **wrong}
        with pytest.raises(WrongTypeError):
            evaluate(**arguments)
    with pytest.raises(AutomrError, match="an int >= 1") as refused:
        evaluate(methods, SAMPLES, 0)  # the right type, out of range
    assert not isinstance(refused.value, WrongTypeError)


def test_the_advice_for_missing_values_is_a_command_that_runs(tmp_path):
    """rq3's and compare's advice for a method's missing log-likelihoods was `automr evaluate
    --methods M --measures likelihood`, which evaluate refuses for a method that decodes
    (KIND:constrained), and did not say that naming M alone drops the folder's other methods
    from its table; in a folder of compare's, evaluating into it replaces what compare
    brought in (the remedies and diff reviews)."""
    methods = {"pop": Constant(0), "bigrec:constrained": Constant(1)}
    evaluate(methods, SAMPLES, 30, n_resamples=10, out=tmp_path / "e")
    folder = EvaluationFolder(tmp_path / "e")
    with pytest.raises(AutomrError, match=re.escape(
            "`automr evaluate --methods bigrec:constrained --measures ranks,likelihood --out "
            f"{tmp_path / 'e'} ...`, naming the folder's other methods and measures too")):
        folder.likelihoods("bigrec:constrained")
    with pytest.raises(AutomrError, match=re.escape(
            f"`automr evaluate --methods automr:l2 --out {tmp_path / 'e'} ...`")):
        folder.report("automr:l2")
    assert "--methods base:likelihood --measures likelihood --out" in folder.evaluate_command(
        "base:likelihood", "likelihood")
    combine_folders({name: (tmp_path / "e", name) for name in methods}, out=tmp_path / "c",
                    n_resamples=10)
    with pytest.raises(AutomrError, match=r"where the values .* are measured, then `automr "
                                          r"compare` again"):
        EvaluationFolder(tmp_path / "c").likelihoods("pop")


def test_each_paired_bootstrap_runs_once_for_the_json_and_the_tables(tmp_path, monkeypatch):
    """results.json and results.md each computed every paired difference anew (a minute per
    method at 100k samples)."""
    import automr.evaluation.run as run

    calls = []

    def counting(name):
        compare = getattr(run, name)

        def counted(*args, **kwargs):
            calls.append(name)
            return compare(*args, **kwargs)
        return counted

    for name in ("compare_reports", "compare_likelihoods"):
        monkeypatch.setattr(run, name, counting(name))
    methods = {"bigrec": Constant(0), "a": Constant(2), "b": Constant(1)}
    evaluation = evaluate(methods, SAMPLES, 30, n_resamples=20, out=tmp_path / "ev",
                          measures=("ranks", "likelihood"))
    evaluation.markdown()
    assert sorted(calls) == ["compare_likelihoods"] * 2 + ["compare_reports"] * 2
    assert set(evaluation.paired()) == set(evaluation.paired_likelihoods()) == {"a", "b"}


def test_compare_likelihoods_aligns_samples_by_id_and_divides_by_tokens():
    """A's and B's values are paired by sample id (B listed in another order), and the
    per-token value is each sample's log-likelihood over its own token count."""
    ids = [f"s{i}" for i in range(30)]
    values_a = [(-float(i % 5), 1 + i % 3) for i in range(30)]
    values_b = [(ll - 0.5, tokens) for ll, tokens in values_a]  # A better by 0.5 everywhere
    a = build_likelihood_report("a", ids, values_a, n_resamples=100)
    b = build_likelihood_report("b", ids, values_b, n_resamples=100)
    order = list(reversed(range(30)))
    b_reversed = build_likelihood_report("b", [ids[i] for i in order],
                                         [values_b[i] for i in order], n_resamples=100)
    diffs = compare_likelihoods(a, b, n_resamples=100)
    assert compare_likelihoods(a, b_reversed, n_resamples=100) == diffs
    assert (diffs["target_ll"].mean, diffs["target_ll"].low, diffs["target_ll"].high) == \
        pytest.approx((0.5, 0.5, 0.5))
    assert diffs["target_ll"].share_leq_zero == 0.0
    per_token = sum(0.5 / tokens for _, tokens in values_a) / 30
    assert diffs["target_ll_per_token"].mean == pytest.approx(per_token)
    assert a.metrics["target_ll_per_token"].mean == pytest.approx(
        sum(ll / tokens for ll, tokens in values_a) / 30)


def test_likelihood_intervals_are_the_bootstraps_asked_for():
    """compare_likelihoods is the paired bootstrap at the seed given, and resampled rebuilds
    at another confidence (same resamples and seed)."""
    from automr.evaluation.bootstrap import bootstrap_ci, paired_bootstrap

    ids = [f"s{i}" for i in range(20)]
    values_a = [(-float(i % 7), 2) for i in range(20)]
    values_b = [(-float(i % 4), 2) for i in range(20)]
    a = build_likelihood_report("a", ids, values_a, n_resamples=50, seed=3)
    b = build_likelihood_report("b", ids, values_b, n_resamples=50, seed=3)
    lls = [torch.tensor([v for v, _ in values], dtype=torch.float64)
           for values in (values_a, values_b)]
    assert compare_likelihoods(a, b, n_resamples=50, seed=7)["target_ll"] == paired_bootstrap(
        *lls, n_resamples=50, seed=7)
    narrower = a.resampled(50, 3, confidence=0.5)
    assert narrower.metrics["target_ll"] == bootstrap_ci(lls[0], n_resamples=50, seed=3,
                                                         confidence=0.5)
    assert narrower.metrics != a.metrics


def test_a_likelihood_report_refuses_a_target_of_no_token():
    with pytest.raises(AutomrError, match="no token"):
        build_likelihood_report("a", ["s0", "s1"], [(-1.0, 2), (0.0, 0)])


@pytest.mark.parametrize("value", [float("nan"), float("-inf")])
def test_a_likelihood_report_refuses_a_value_that_is_not_finite(tmp_path, value):
    """`evaluate` refuses such a value from a method; a report built directly failed in its
    interval ("low nan exceeds high nan", for -inf too), and one loaded from a file took it."""
    with pytest.raises(AutomrError, match="not a finite number"):
        build_likelihood_report("a", ["s0", "s1"], [(-1.0, 2), (value, 2)], n_resamples=10)
    build_likelihood_report("a", ["s0", "s1"], [(-1.0, 2), (-2.0, 2)],
                            n_resamples=10).save(tmp_path / "a.json")
    saved = json.loads((tmp_path / "a.json").read_text())
    saved["samples"][1]["log_likelihood"] = value
    (tmp_path / "a.json").write_text(json.dumps(saved))
    with pytest.raises(AutomrError, match="not a finite number"):
        LikelihoodReport.load(tmp_path / "a.json")


def test_likelihood_reports_of_other_samples_are_not_compared():
    """B holding a sample that A lacks is refused, not compared on A's samples only."""
    a = build_likelihood_report("a", ["s0", "s1"], [(-1.0, 2), (-2.0, 2)], n_resamples=10)
    b = build_likelihood_report("b", ["s0", "s1", "s2"], [(-1.0, 2), (-2.0, 2), (-3.0, 2)],
                                n_resamples=10)
    with pytest.raises(AutomrError, match="different samples"):
        compare_likelihoods(a, b, n_resamples=10)


def test_a_likelihood_report_refuses_a_repeated_sample_id():
    """As a metric report does: compare_likelihoods pairs by id, and with an id twice its
    paired mean was -1.667 where the two means differ by -2.0 (one of B's values paired twice,
    another never)."""
    with pytest.raises(AutomrError, match="duplicate sample ids"):
        build_likelihood_report("a", ["s0", "s1", "s1"], [(-1.0, 1), (-2.0, 1), (-9.0, 1)])


def test_a_likelihood_only_table_does_not_say_it_ranked_the_catalog():
    """The default header of results.md said 'full ranking over the catalog' where nothing
    was ranked (as `automr evaluate` already says otherwise)."""
    only = evaluate({"m": Constant(0)}, SAMPLES, 30, n_resamples=20, measures=("likelihood",))
    assert only.markdown().startswith("24 samples, target log-likelihoods, 20 bootstrap")
    both = evaluate({"m": Constant(0)}, SAMPLES, 30, n_resamples=20,
                    measures=("ranks", "likelihood"))
    assert both.markdown().startswith("24 samples, full ranking over the catalog, 20 bootstrap")


def test_a_saved_report_of_another_bootstrap_seed_is_rebuilt_from_its_ranks(tmp_path):
    evaluate({"m": Constant(1)}, SAMPLES, 30, out=tmp_path, n_resamples=40, seed=0,
             measures=("ranks", "likelihood"))
    again = evaluate({"m": Constant(1)}, SAMPLES, 30, out=tmp_path, n_resamples=40, seed=5,
                     measures=("ranks", "likelihood"))
    ids = [s.id for s in SAMPLES]
    expected = build_report("m", ids, torch.tensor(Constant(1).rank(SAMPLES)), 30,
                            n_resamples=40, seed=5)
    assert again.reports["m"] == expected
    assert EvaluationFolder(tmp_path).report("m").seed == 5
    lls = build_likelihood_report("m", ids, Constant(1).target_log_likelihoods(SAMPLES),
                                  n_resamples=40, seed=5)
    assert again.likelihoods["m"] == lls


@pytest.mark.parametrize(("kind", "edit"), [
    ("ranks", lambda data: data["samples"][0].update(rank=None)),
    ("ranks", lambda data: data["samples"][0].update(rank=1.9)),  # was read as 1
    ("ranks", lambda data: data.update(metrics=[])),
    ("loglik", lambda data: data["samples"][0].update(tokens="3")),
    ("loglik", lambda data: data.pop("metrics"))])
def test_a_hand_edited_saved_report_is_one_line_saying_to_delete_it(tmp_path, kind, edit):
    """A field of another type or missing was a raw TypeError, AttributeError or KeyError in
    the rerun (and in export and compare); a rank of 1.9 was taken as 1 (the
    damaged-artifacts review)."""
    evaluate({"m": Constant(0)}, SAMPLES, 30, out=tmp_path, n_resamples=20,
             measures=("ranks", "likelihood"))
    path = EvaluationFolder(tmp_path).ranks_file("m", kind)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(AutomrError, match=r"m\.(loglik\.)?json is damaged .*delete it and run"):
        evaluate({"m": Constant(0)}, SAMPLES, 30, out=tmp_path, n_resamples=20,
                 measures=("ranks", "likelihood"))


def cut_before_the_settings(monkeypatch) -> None:
    """Saves of the evaluation folder stop (Ctrl-C) where a method's settings would be
    written: its values (or shards) are on disk, not marked done."""
    real = folder_module.write_json_atomic

    def cut(path, data, indent=1):
        if str(path).endswith(".settings.json"):
            raise KeyboardInterrupt
        return real(path, data, indent)

    monkeypatch.setattr(folder_module, "write_json_atomic", cut)


def test_a_damaged_shard_is_computed_again(tmp_path, monkeypatch):
    """A shard file of a cut run whose values were cut short was taken (5 values for 6
    samples), one without values was a raw KeyError (the damaged-artifacts review)."""
    cut_before_the_settings(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        evaluate({"m": Constant(0)}, SAMPLES, 30, out=tmp_path, n_resamples=20, shard_size=6)
    monkeypatch.undo()
    shards = [EvaluationFolder(tmp_path).shard_file("m", n) for n in range(2)]
    short = json.loads(shards[0].read_text())
    short["values"] = short["values"][:-1]
    shards[0].write_text(json.dumps(short))
    gone = json.loads(shards[1].read_text())
    del gone["values"]
    shards[1].write_text(json.dumps(gone))
    again = evaluate({"m": Constant(0)}, SAMPLES, 30, out=tmp_path, n_resamples=20,
                     shard_size=6)
    assert list(again.reports["m"].ranks) == Constant(0).rank(SAMPLES)


def test_a_save_cut_short_is_not_taken_for_the_older_settings(tmp_path, monkeypatch):
    """Ranks of new settings written, their settings not: a rerun of the old settings must not
    read the new ranks as its own."""
    evaluate({"m": Constant(0)}, SAMPLES, 30, out=tmp_path, n_resamples=20)
    cut_before_the_settings(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        evaluate({"m": Constant(9)}, SAMPLES, 30, out=tmp_path, n_resamples=20)
    monkeypatch.undo()
    rerun = evaluate({"m": Constant(0)}, SAMPLES, 30, out=tmp_path, n_resamples=20)
    assert list(rerun.reports["m"].ranks) == Constant(0).rank(SAMPLES)


def test_two_runs_saving_one_method_at_once_take_turns(tmp_path, monkeypatch):
    """Two evaluations of one folder at once, with other settings: the second ran whole
    between the first's ranks and its settings, and the folder kept the second's ranks under
    the first's settings, which a rerun with those settings read back (the concurrency
    review). The second now waits for the first's save to end."""
    real = folder_module.write_json_atomic
    second = threading.Thread(target=evaluate, args=({"m": Constant(9)}, SAMPLES, 30),
                              kwargs={"out": tmp_path, "n_resamples": 20})

    def write(path, data, indent=1):
        if path.name.endswith(".settings.json") and data["rank"] == 0:
            second.start()  # all of it, or as far as it waits, before these settings
            second.join(timeout=3)
        return real(path, data, indent)

    monkeypatch.setattr(folder_module, "write_json_atomic", write)
    evaluate({"m": Constant(0)}, SAMPLES, 30, out=tmp_path, n_resamples=20)
    second.join()
    monkeypatch.setattr(folder_module, "write_json_atomic", real)
    rerun = evaluate({"m": Constant(0)}, SAMPLES, 30, out=tmp_path, n_resamples=20)
    assert list(rerun.reports["m"].ranks) == Constant(0).rank(SAMPLES)
    assert rerun.reused == ()  # the second's ranks stand, under its own settings


@pytest.mark.parametrize(("measure", "kind"), [("ranks", "ranks"), ("likelihood", "loglik")])
def test_a_run_cut_before_removing_its_shards_has_them_removed_by_the_rerun(
        tmp_path, monkeypatch, measure, kind):
    """Cut between saving a method's values and removing its shard files, a run left
    KIND/METHOD.shards/ behind for good: the rerun read the values back and never removed
    them (the folder's layout says they go once the values are saved)."""
    def cut(self, method, kind="ranks"):
        raise KeyboardInterrupt

    monkeypatch.setattr(EvaluationFolder, "clear_shards", cut)
    with pytest.raises(KeyboardInterrupt):
        evaluate({"m": Constant(1)}, SAMPLES, 30, out=tmp_path, n_resamples=20, shard_size=5,
                 measures=(measure,))
    shards = EvaluationFolder(tmp_path).shard_file("m", 0, kind).parent
    assert len(list(shards.iterdir())) == 5
    monkeypatch.undo()
    again = evaluate({"m": Constant(1)}, SAMPLES, 30, out=tmp_path, n_resamples=20,
                     shard_size=5, measures=(measure,))
    assert again.reused == (f"{measure}:m",)
    assert not shards.exists()


def test_names_that_would_share_files_are_refused(tmp_path):
    with pytest.raises(AutomrError, match="would share the files"):
        evaluate({"a:b": Constant(0), "a-b": Constant(3)}, SAMPLES, 30, out=tmp_path)
    evaluate({"a:b": Constant(0), "a-b": Constant(3)}, SAMPLES, 30)  # no folder: no files
    evaluate({"a:b": Constant(0)}, SAMPLES, 30, out=tmp_path / "x")
    evaluate({"a-b": Constant(3)}, SAMPLES, 30, out=tmp_path / "y")
    with pytest.raises(AutomrError, match="would share the files"):
        combine_folders({"a:b": (tmp_path / "x", "a:b"), "a-b": (tmp_path / "y", "a-b")},
                        out=tmp_path / "xy")


def test_names_that_differ_only_in_case_share_a_file_on_macos_and_are_refused(tmp_path):
    """On macOS and Windows "Pop" and "pop" are one file, ranks/pop.json: compare brought in
    cooc as "pop" over popularity's "Pop", and a later read of "Pop" gave cooc's numbers
    (the portability review). Refused by name, and a file holding another method's values is
    refused where it is read."""
    with pytest.raises(AutomrError, match="would share the files"):
        evaluate({"Pop": Constant(0), "pop": Constant(3)}, SAMPLES, 30, out=tmp_path)
    evaluate({"a": Constant(0), "b": Constant(3)}, SAMPLES, 30, out=tmp_path / "x",
             measures=("ranks", "likelihood"))
    folder = EvaluationFolder(tmp_path / "x")
    for kind, read in (("ranks", folder.report), ("loglik", folder.likelihoods)):
        shutil.copyfile(folder.ranks_file("a", kind), folder.ranks_file("b", kind))
        with pytest.raises(AutomrError, match="holds the values of 'a', not of 'b'"):
            read("b")


def test_ranks_at_different_cut_offs_are_not_combined(tmp_path):
    evaluate({"m": Constant(0)}, SAMPLES, 30, out=tmp_path / "a", ks=(1, 5, 10))
    evaluate({"m": Constant(2)}, SAMPLES, 30, out=tmp_path / "b", ks=(10, 20))
    with pytest.raises(AutomrError, match="different cut-offs"):
        combine_folders({"a": (tmp_path / "a", "m"), "b": (tmp_path / "b", "m")})


def test_an_evaluation_says_which_values_it_read_back(tmp_path):
    first = evaluate({"m": Constant(1)}, SAMPLES, 30, out=tmp_path,
                     measures=("ranks", "likelihood"))
    assert first.reused == ()
    added = evaluate({"m": Constant(1), "n": Constant(2)}, SAMPLES, 30, out=tmp_path, seed=3,
                     measures=("ranks", "likelihood"))  # another bootstrap: ranks read back
    assert added.reused == ("ranks:m", "likelihood:m")
    changed = evaluate({"m": Constant(4), "n": Constant(2)}, SAMPLES, 30, out=tmp_path,
                       measures=("ranks",))
    assert changed.reused == ("ranks:n",)


def test_a_method_without_settings_is_never_read_back(tmp_path):
    """Settings decide reuse: with none, a GenerativeMethod with another retriever or combiner
    under the same name got the first one's values back from the folder."""
    first, other = Constant(1), Constant(3)
    first.settings = other.settings = {}
    evaluate({"m": first}, SAMPLES, 30, out=tmp_path, measures=("ranks", "likelihood"))
    again = evaluate({"m": other}, SAMPLES, 30, out=tmp_path, measures=("ranks", "likelihood"))
    assert again.reports["m"].ranks == tuple(other.rank(SAMPLES))
    assert again.likelihoods["m"].log_likelihoods == tuple(
        v for v, _ in other.target_log_likelihoods(SAMPLES))
    assert EvaluationFolder(tmp_path).report("m").ranks == tuple(other.rank(SAMPLES))


class Retrieving(Constant):
    """A Constant that records, per sample, which element it retrieved (what a memory method
    reports) and a retriever version, changed between runs."""

    def __init__(self, version: int) -> None:
        super().__init__(0)
        self.settings = {"retriever": version}
        self.version = version
        self.seen: dict[str, list[int]] = {}

    def rank(self, samples):
        self.seen |= {s.id: [self.version] for s in samples}
        return super().rank(samples)

    def target_log_likelihoods(self, samples):
        self.seen |= {s.id: [self.version] for s in samples}
        return super().target_log_likelihoods(samples)

    def details(self):
        return {"retrieved": dict(self.seen)}


def test_values_read_back_are_not_saved_again_over_another_runs(tmp_path, monkeypatch):
    """A rerun that reads a method's values back and saves them summarised again (another
    bootstrap) kept the details on disk: another run that saved the method with other
    settings in between left its retrieved elements under this run's ranks (the diff
    review). Refused in one line now."""
    evaluate({"m": Retrieving(1)}, SAMPLES, 30, out=tmp_path, n_resamples=20)
    real = MetricReport.resampled

    def another_run_saves_meanwhile(self, *args, **kwargs):
        monkeypatch.setattr(MetricReport, "resampled", real)
        evaluate({"m": Retrieving(2)}, SAMPLES, 30, out=tmp_path, n_resamples=20)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MetricReport, "resampled", another_run_saves_meanwhile)
    with pytest.raises(AutomrError, match="saved by another run with other settings"):
        evaluate({"m": Retrieving(1)}, SAMPLES, 30, out=tmp_path, n_resamples=30)
    folder = EvaluationFolder(tmp_path)
    assert json.loads(folder.settings_file("m").read_text())["retriever"] == 2
    assert {tuple(v) for v in folder.details("retrieved", "m").values()} == {(2,)}


def test_the_ranks_and_the_likelihoods_keep_their_own_retrieved_elements(tmp_path):
    """A likelihood run on other samples (or settings) into the folder of a ranking run
    replaced the one retrieved/METHOD.json both shared, so what rq3 read of the ranking held
    the likelihood run's samples only."""
    evaluate({"m": Retrieving(1)}, SAMPLES, 30, out=tmp_path, n_resamples=20)
    evaluate({"m": Retrieving(2)}, SAMPLES[:3], 30, out=tmp_path, n_resamples=20,
             measures=("likelihood",))
    folder = EvaluationFolder(tmp_path)
    assert folder.details("retrieved", "m") == {s.id: [1] for s in SAMPLES}
    assert folder.details("retrieved", "m", "loglik") == {s.id: [2] for s in SAMPLES[:3]}
    combined = combine_folders({"n": (tmp_path, "m")}, out=tmp_path / "combined",
                               n_resamples=20)
    assert set(combined.reports) == set(combined.likelihoods) == {"n"}
    again = EvaluationFolder(tmp_path / "combined")
    assert again.details("retrieved", "n") == {s.id: [1] for s in SAMPLES}
    assert again.details("retrieved", "n", "loglik") == {s.id: [2] for s in SAMPLES[:3]}


def test_a_likelihood_run_of_an_older_version_keeps_its_retrieved_elements(tmp_path):
    """Folders written before the measures had their own files kept one, read for a
    likelihood measure of a method that has no ranks."""
    evaluate({"m": Retrieving(2)}, SAMPLES[:3], 30, out=tmp_path, n_resamples=20,
             measures=("likelihood",))
    folder = EvaluationFolder(tmp_path)
    (tmp_path / "retrieved" / "m.loglik.json").rename(tmp_path / "retrieved" / "m.json")
    assert folder.details("retrieved", "m", "loglik") == {s.id: [2] for s in SAMPLES[:3]}


def test_an_older_folder_with_both_measures_keeps_the_likelihoods_elements(tmp_path):
    """Older versions wrote one retrieved/METHOD.json for both measures: read as the
    likelihood measure's when both ran in one evaluation (same settings and samples), and kept
    as its own file when a new ranking run replaces it."""
    evaluate({"m": Retrieving(1)}, SAMPLES, 30, out=tmp_path, n_resamples=20,
             measures=("ranks", "likelihood"))
    (tmp_path / "retrieved" / "m.loglik.json").unlink()  # as the older version left it
    folder = EvaluationFolder(tmp_path)
    assert folder.details("retrieved", "m", "loglik") == {s.id: [1] for s in SAMPLES}
    evaluate({"m": Retrieving(3)}, SAMPLES, 30, out=tmp_path, n_resamples=20)  # ranked again
    assert folder.details("retrieved", "m") == {s.id: [3] for s in SAMPLES}
    assert folder.details("retrieved", "m", "loglik") == {s.id: [1] for s in SAMPLES}


def test_an_older_folder_whose_measures_differ_does_not_guess(tmp_path):
    """Measures saved with other settings or samples: the shared file may be either's, so
    the likelihood measure's elements are missing (evaluate it again), never the ranking's."""
    evaluate({"m": Retrieving(1)}, SAMPLES, 30, out=tmp_path, n_resamples=20)
    evaluate({"m": Retrieving(2)}, SAMPLES[:3], 30, out=tmp_path, n_resamples=20,
             measures=("likelihood",))
    (tmp_path / "retrieved" / "m.loglik.json").unlink()
    with pytest.raises(AutomrError, match="missing"):
        EvaluationFolder(tmp_path).details("retrieved", "m", "loglik")


def test_a_likelihood_only_older_folder_keeps_its_elements_when_ranked(tmp_path):
    evaluate({"m": Retrieving(2)}, SAMPLES[:3], 30, out=tmp_path, n_resamples=20,
             measures=("likelihood",))
    retrieved = tmp_path / "retrieved"
    (retrieved / "m.loglik.json").replace(retrieved / "m.json")  # as the older version left it
    evaluate({"m": Retrieving(3)}, SAMPLES, 30, out=tmp_path, n_resamples=20)
    folder = EvaluationFolder(tmp_path)
    assert folder.details("retrieved", "m") == {s.id: [3] for s in SAMPLES}
    assert folder.details("retrieved", "m", "loglik") == {s.id: [2] for s in SAMPLES[:3]}


def test_a_method_ranked_again_without_a_detail_leaves_none_of_the_older_runs(tmp_path):
    """A name ranked again by a method that retrieves nothing kept the retrieved elements of
    the run before: the export and rq3 read them as the new ranks'."""
    evaluate({"m": Retrieving(1)}, SAMPLES, 30, out=tmp_path, n_resamples=20,
             measures=("ranks", "likelihood"))
    evaluate({"m": Constant(4)}, SAMPLES, 30, out=tmp_path, n_resamples=20,
             measures=("ranks", "likelihood"))
    exported = EvaluationFolder(tmp_path).export()
    assert exported["retrieved"] == exported["retrieved_loglik"] == {}
    assert not list((tmp_path / "retrieved").iterdir())


def test_saved_values_summarised_again_keep_their_details(tmp_path):
    evaluate({"m": Retrieving(1)}, SAMPLES, 30, out=tmp_path, n_resamples=20,
             measures=("ranks", "likelihood"))
    evaluate({"m": Retrieving(1)}, SAMPLES, 30, out=tmp_path, n_resamples=30, seed=2,
             measures=("ranks", "likelihood"))
    folder = EvaluationFolder(tmp_path)
    assert folder.report("m").n_resamples == folder.likelihoods("m").n_resamples == 30
    assert folder.details("retrieved", "m") == folder.details("retrieved", "m", "loglik") \
        == {s.id: [1] for s in SAMPLES}


class TwoWays(Retrieving):
    """Retrieves element 1 when it ranks and element 2 when it scores likelihoods."""

    def target_log_likelihoods(self, samples):
        self.seen |= {s.id: [2] for s in samples}
        return Constant.target_log_likelihoods(self, samples)


def test_an_export_carries_each_measures_elements_to_compare(tmp_path):
    evaluate({"m": TwoWays(1)}, SAMPLES, 30, out=tmp_path / "a", n_resamples=20,
             measures=("ranks", "likelihood"))
    exported = EvaluationFolder(tmp_path / "a").export()
    assert exported["retrieved"]["m"] == {s.id: [1] for s in SAMPLES}
    assert exported["retrieved_loglik"]["m"] == {s.id: [2] for s in SAMPLES}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(exported))
    combine_folders({"n": (path, "m")}, out=tmp_path / "b", n_resamples=20)
    again = EvaluationFolder(tmp_path / "b")
    assert again.details("retrieved", "n") == {s.id: [1] for s in SAMPLES}
    assert again.details("retrieved", "n", "loglik") == {s.id: [2] for s in SAMPLES}
    del exported["retrieved_loglik"]  # an export from before: no likelihood elements, not
    path.write_text(json.dumps(exported))  # the ranking's in their place
    combine_folders({"n": (path, "m")}, out=tmp_path / "c", n_resamples=20)
    assert not EvaluationFolder(tmp_path / "c").details_file("retrieved", "n", "loglik").is_file()


class Generating(Constant):
    """What an L2 method records: a note when built (a gamma, the validation titles it was
    tuned on), the title it generated for each ranked sample, the element it retrieved for
    each sample of either measure; ``cut`` raises after that many likelihood batches."""

    def __init__(self, cut: int | None = None) -> None:
        super().__init__(0)
        self.cut, self.recorded = cut, {"grounding": {"gamma": 0.5},
                                        "generated": {"valid-1": "a title"}}

    def rank(self, samples):
        self.recorded["generated"].update({s.id: f"title {s.id}" for s in samples})
        self.recorded.setdefault("retrieved", {}).update({s.id: [1] for s in samples})
        return super().rank(samples)

    def target_log_likelihoods(self, samples):
        if self.cut is not None:
            if self.cut == 0:
                raise KeyboardInterrupt
            self.cut -= 1
        self.recorded.setdefault("retrieved", {}).update({s.id: [1] for s in samples})
        return super().target_log_likelihoods(samples)

    def details(self):
        return self.recorded


def test_the_likelihoods_details_are_a_single_passs_after_a_cut_and_a_resume(tmp_path):
    """A likelihood measure cut and resumed wrote only the resumed shards' elements, and the
    ranking's generated titles where a ranking had run before it in the process; it holds
    each measured sample's elements and the method's notes, never generated titles."""
    whole = tmp_path / "whole"
    evaluate({"m": Generating()}, SAMPLES, 30, out=whole, n_resamples=20, shard_size=5,
             measures=("ranks", "likelihood"))
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        evaluate({"m": Generating(cut=2)}, SAMPLES, 30, out=cut, n_resamples=20, shard_size=5,
                 measures=("ranks", "likelihood"))
    evaluate({"m": Generating()}, SAMPLES, 30, out=cut, n_resamples=20, shard_size=5,
             measures=("ranks", "likelihood"))
    for folder in (EvaluationFolder(whole), EvaluationFolder(cut)):
        assert folder.details("retrieved", "m", "loglik") == {s.id: [1] for s in SAMPLES}
        assert folder.details("grounding", "m", "loglik") == {"gamma": 0.5}
        assert not folder.details_file("generated", "m", "loglik").is_file()
        assert folder.details("generated", "m") == {"valid-1": "a title"} | {
            s.id: f"title {s.id}" for s in SAMPLES}
    for kind in ("retrieved", "grounding", "generated"):
        for measure in ("ranks", "loglik"):
            path = EvaluationFolder(whole).details_file(kind, "m", measure)
            if path.is_file():
                assert path.read_bytes() == EvaluationFolder(cut).details_file(
                    kind, "m", measure).read_bytes()


def test_a_method_evaluated_again_on_other_samples_keeps_only_their_details(tmp_path):
    """One method object evaluated on samples A, then B: B's folder held A's titles and
    elements too (taken for notes); it holds B's and the notes, as a fresh object's does."""
    first, second = SAMPLES[:12], SAMPLES[12:]
    reused = Generating()
    evaluate({"m": reused}, first, 30, out=tmp_path / "a", n_resamples=20)
    evaluate({"m": reused}, second, 30, out=tmp_path / "b", n_resamples=20,
             measures=("ranks", "likelihood"))
    evaluate({"m": Generating()}, second, 30, out=tmp_path / "fresh", n_resamples=20,
             measures=("ranks", "likelihood"))
    folder, fresh = EvaluationFolder(tmp_path / "b"), EvaluationFolder(tmp_path / "fresh")
    assert folder.details("generated", "m") == {"valid-1": "a title"} | {
        s.id: f"title {s.id}" for s in second}
    for kind, measure in (("generated", "ranks"), ("retrieved", "ranks"),
                          ("retrieved", "loglik"), ("grounding", "loglik")):
        assert folder.details(kind, "m", measure) == fresh.details(kind, "m", measure)

    class CutOnce(Generating):  # Ctrl-C in the second shard of the first evaluation
        calls = 0

        def rank(self, samples):
            self.calls += 1
            if self.calls == 2:
                raise KeyboardInterrupt
            return super().rank(samples)

    cut = CutOnce()
    with pytest.raises(KeyboardInterrupt):
        evaluate({"m": cut}, first, 30, out=tmp_path / "cut", n_resamples=20, shard_size=4)
    evaluate({"m": cut}, second, 30, out=tmp_path / "after", n_resamples=20)
    assert EvaluationFolder(tmp_path / "after").details("generated", "m") == folder.details(
        "generated", "m")


def test_ranking_again_beside_saved_likelihoods_copies_no_generated_titles(tmp_path):
    """Ranking a method again (other settings) beside likelihoods saved with its old ranks
    took the old titles for an older folder's shared file: generated/m.loglik.json appeared,
    though the likelihood measure generates nothing."""
    evaluate({"m": Generating()}, SAMPLES, 30, out=tmp_path, n_resamples=20,
             measures=("ranks", "likelihood"))
    again = Generating()
    again.settings = {"rank": 0, "num_beams": 2}
    evaluate({"m": again}, SAMPLES, 30, out=tmp_path, n_resamples=20, measures=("ranks",))
    folder = EvaluationFolder(tmp_path)
    assert not folder.details_file("generated", "m", "loglik").is_file()
    assert folder.details("retrieved", "m", "loglik") == {s.id: [1] for s in SAMPLES}


def test_a_compare_of_measures_on_other_samples_says_each_count_and_unpaired(tmp_path):
    """Ranks of one source on 4 samples beside log-likelihoods of two others on 8: the table
    said "4 samples" over both and dropped the likelihood pairing without a word."""
    ids4, ids8 = [f"u{i}@{i}:x" for i in range(4)], [f"v{i}@{i}:y" for i in range(8)]
    EvaluationFolder(tmp_path / "a").save(build_report("pop", ids4, torch.tensor([0, 3, 9, 1]),
                                                       30), {})
    b = EvaluationFolder(tmp_path / "b")
    for m in ("bigrec", "automr"):
        b.save_likelihoods(build_likelihood_report(m, ids8, [(-float(i), 3) for i in range(8)]),
                           {})
    combined = combine_folders({"pop": (tmp_path / "a", "pop"), "bigrec": (tmp_path / "b",
                                "bigrec"), "automr": (tmp_path / "b", "automr")},
                               out=tmp_path / "out", n_resamples=20)
    text = combined.markdown()
    assert text.startswith("4 samples") and "higher is better; 8 samples)" in text
    assert "No paired differences: the reference `pop` has no values here" in text


class Returns:
    """A method whose rank() returns ``ranks`` as given (a custom method gone slightly off)."""

    def __init__(self, ranks, settings=None) -> None:
        self.ranks, self.settings = ranks, settings or {}

    def rank(self, samples):
        return self.ranks


@pytest.mark.parametrize(("ranks", "message"), [
    ([1.7, 2.2, 0.9, 3.5], r"the rank 1\.7: ranks are ints in \[0, 30\] \(0 = first, 30 = a miss"),
    ([1, 2, 31, 3], r"the rank 31"), ([1, 2, 3], r"ranked 3 of 4 samples"),
    ([True, 1, 2, 3], r"the rank True"), (None, r"m's rank\(\) returned NoneType"),
    (torch.tensor(3), r"m's rank\(\) returned Tensor, not a sequence of ranks"),
    ({30, 3, 0, 12}, r"m's rank\(\) returned a set: it returns a list of ranks in the order"),
    ({0: 7, 1: 3, 2: 0, 3: 12}, r"returned a dict: it returns a list of ranks in the order")])
def test_ranks_that_are_not_places_in_the_catalog_are_refused(ranks, message):
    """Float ranks (mid-ranks for ties) were cut to their floor in the table, silently; a
    0-dim tensor (``ranks[:, None].squeeze()`` of a one-sample shard) was a raw TypeError; a
    set was read in its own order and a dict as its keys (ranks 0, 1, 2, 3), silently."""
    samples = SAMPLES[:1] if isinstance(ranks, torch.Tensor) else SAMPLES[:4]
    with pytest.raises(AutomrError, match=message):
        evaluate({"m": Returns(ranks)}, samples, 30, n_resamples=20)


@pytest.mark.parametrize("value", [float("-inf"), float("nan"), float("inf")])
def test_a_log_likelihood_that_is_not_finite_is_refused_naming_the_method(value, tmp_path):
    """-inf or NaN came out after every shard as 'interval low nan exceeds high nan', naming
    no method; +inf gave a mean of inf outside its own interval."""

    class Scores(Constant):
        def target_log_likelihoods(self, samples):
            return [(value if i == 2 else v, n)
                    for i, (v, n) in enumerate(super().target_log_likelihoods(samples))]

    with pytest.raises(AutomrError, match=r"m returned the log-likelihood (-?inf|nan) .*finite"):
        evaluate({"m": Scores(0)}, SAMPLES[:4], 30, measures=("likelihood",),
                 n_resamples=20, out=tmp_path)
    assert not list(tmp_path.glob("loglik/*.shards/*.json"))  # nothing saved to resume from


def test_log_likelihoods_that_are_no_sequence_are_refused_naming_the_method():
    """A target_log_likelihoods that forgot its return stopped evaluate with TypeError:
    'NoneType' object is not iterable, as rank() no longer does."""

    class Forgetful(Constant):
        def target_log_likelihoods(self, samples):
            super().target_log_likelihoods(samples)

    with pytest.raises(AutomrError, match=r"m's target_log_likelihoods\(\) returned NoneType"):
        evaluate({"m": Forgetful(0)}, SAMPLES[:4], 30, measures=("likelihood",),
                 n_resamples=20)


def test_a_positive_log_likelihood_a_loss_is_refused_but_not_a_rounding_above_zero(tmp_path):
    """A method that returns its loss (the negative log-likelihood) had every comparison's
    sign flipped without a word."""

    class Loss(Constant):
        def target_log_likelihoods(self, samples):
            return [(-v, n) for v, n in super().target_log_likelihoods(samples)]

    with pytest.raises(AutomrError, match=r"m returned the log-likelihood [1-9]\.0 .*a loss"):
        evaluate({"m": Loss(0)}, SAMPLES[:4], 30, measures=("likelihood",), n_resamples=20,
                 out=tmp_path)

    class Rounded(Constant):
        def target_log_likelihoods(self, samples):
            return [(1e-6, n) for _, n in super().target_log_likelihoods(samples)]

    evaluate({"m": Rounded(0)}, SAMPLES[:4], 30, measures=("likelihood",), n_resamples=20)


def test_a_miss_is_the_catalogs_size_as_rank_in_list_gives_it():
    """A top-20 list method's miss (rank_in_list's n_items) was refused as out of range."""
    from automr.evaluation import rank_in_list

    ranks = [rank_in_list([5, 7], target, 30) for target in (7, 9, 5, 9)]
    assert ranks == [1, 30, 0, 30]
    report = evaluate({"m": Returns(ranks)}, SAMPLES[:4], 30, n_resamples=20).reports["m"]
    assert report.ranks == (1, 30, 0, 30) and report.metrics["recall@5"].mean == 0.5


def test_what_is_not_a_method_is_one_line_before_any_ranking():
    class NoSettings:
        def rank(self, samples):
            raise AssertionError("ranked")

    for method in (NoSettings(), Returns([0, 0, 0, 0], settings="v1")):
        with pytest.raises(AutomrError, match=r"m is not a Method: it needs rank\(samples\) "
                                              r"and settings, a dict"):
            evaluate({"bigrec": Constant(0), "m": method}, SAMPLES[:4], 30)

    class Ranks:  # its settings a class attribute: the class passed as a Method
        settings = {"a": 1}  # noqa: RUF012 (what a user writes)

        def rank(self, samples):
            raise AssertionError("ranked")

    for method in (Returns, Ranks):  # the class failed at rank() with a raw TypeError
        with pytest.raises(AutomrError, match=rf"m is the class {method.__name__}, not an "
                                              rf"instance of it: pass {method.__name__}\(...\)"):
            evaluate({"bigrec": Constant(0), "m": method}, SAMPLES[:4], 30)
    with pytest.raises(AutomrError, match=r"n_items is .* \(e\.g\. len\(dataset\.catalog\)\); "
                                          r"got a list$"):
        evaluate({"m": Constant(0)}, SAMPLES, list(range(10_000)))
    for name in (1, ("bigrec", 1)):  # failed with AttributeError: no attribute 'startswith'
        with pytest.raises(AutomrError, match=f"str names .*got the name {re.escape(repr(name))}$"):
            evaluate({name: Constant(0)}, SAMPLES, 30)
    single = evaluate({"m": Constant(0)}, SAMPLES, 30, measures="ranks")
    assert single.reports["m"] == evaluate({"m": Constant(0)}, SAMPLES, 30).reports["m"]


@pytest.mark.parametrize(("given", "refused"), [
    ({"ks": (1.0, 5)}, "cut-offs K must be positive integers"),
    ({"ks": (True, 5)}, "cut-offs K must be positive integers"),
    ({"seed": True}, "seed .* must be an int"), ({"seed": 1.5}, "seed .* must be an int"),
    ({"samples": "abc"}, "takes Samples .* got a str"),
    ({"samples": None}, r"takes an iterable of Samples .* got a NoneType"),
    ({"ks": 5}, r"cut-offs K are a sequence of positive integers \(e\.g\. \(5, 10\)\), got 5"),
    ({"measures": None}, r"measures are a tuple among ranks, likelihood; got None"),
    ({"samples": [*SAMPLES[:2], 3]}, "takes Samples .* got a int")])
def test_a_cut_off_seed_or_sample_of_a_wrong_type_is_refused_before_any_ranking(given,
                                                                                refused):
    """ks=(1.0, 5) and seed=True (or 1.5) were refused only once every method had ranked every
    sample (a TypeCheckError of build_report; a RuntimeError of torch.manual_seed); ks=(True,
    5) gave a 'recall@True' column; a str of samples failed with AttributeError ('str' object
    has no attribute 'id'); samples=None, ks=5 and measures=None with a raw TypeError."""

    class Refuses(Constant):
        def rank(self, samples):
            raise AssertionError("ranked")

    arguments = {"samples": SAMPLES, **given}
    with pytest.raises(AutomrError, match=refused):
        evaluate({"m": Refuses(0)}, arguments.pop("samples"), 30, **arguments)


@pytest.mark.parametrize(("given", "refused"), [
    ({"header": 3}, "header .* must be a str, got a int"),
    ({"record": [1]}, r"record is not a JSON dict \(a list, not a dict\)"),
    ({"record": {"path": object()}}, "record is not a JSON dict .*not JSON serializable")])
def test_a_header_or_record_that_cannot_be_written_is_refused_before_any_ranking(
        tmp_path, given, refused):
    """Each failed once every method had ranked every sample, when results.md or
    results.json was written: TypeError ('sequence item 0: expected str instance, int found';
    'Object of type object is not JSON serializable') or AttributeError ('list' object has no
    attribute 'get')."""

    class Refuses(Constant):
        def rank(self, samples):
            raise AssertionError("ranked")

    with pytest.raises(AutomrError, match=refused):
        evaluate({"m": Refuses(0)}, SAMPLES[:4], 30, out=tmp_path / "out", **given)
    evaluate({"m": Constant(0)}, SAMPLES[:4], 30, n_resamples=10, **given)  # no folder: unused


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "my/method", "a\\b", "", " ",
                                  ".hidden"])
def test_a_method_name_that_is_not_a_file_name_is_refused(tmp_path, name):
    """'../escape' wrote its ranks outside the folder, '/tmp/abs' anywhere."""
    out = tmp_path / "deep" / "out"
    with pytest.raises(AutomrError, match="cannot name the files of an evaluation folder"):
        evaluate({name: Constant(0)}, SAMPLES, 30, out=out)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    evaluate({name: Constant(0)}, SAMPLES, 30)  # no folder: any name


def test_integer_ranks_of_numpy_or_torch_are_taken(tmp_path):
    import numpy as np

    for ranks in (np.array([1, 2, 0, 3]), torch.tensor([1, 2, 0, 3])):
        result = evaluate({"m": Returns(ranks)}, SAMPLES[:4], 30, out=tmp_path,
                          n_resamples=20)
        assert result.reports["m"].ranks == (1, 2, 0, 3)


class Counted(Returns):
    """Returns, counting the samples it was asked to rank."""

    ranked = 0

    def rank(self, samples):
        Counted.ranked += len(samples)
        return super().rank(samples)


def test_settings_that_cannot_be_saved_are_refused_before_any_ranking():
    method = Returns([0, 0, 0, 0], settings={"dtype": torch.float32})
    with pytest.raises(AutomrError, match="the settings of m are not JSON"):
        evaluate({"m": method}, SAMPLES[:4], 30, n_resamples=20)
    Counted.ranked = 0  # a second method's settings: refused before the first one ranks
    with pytest.raises(AutomrError, match="the settings of n are not JSON"):
        evaluate({"m": Counted([0, 0, 0, 0]), "n": method}, SAMPLES[:4], 30, n_resamples=20)
    assert Counted.ranked == 0


@pytest.mark.parametrize("settings", [{1: "x"}, {"grid": {1: "x", "b": 2}}])
def test_settings_that_json_cannot_sort_are_refused_before_any_ranking(tmp_path, settings):
    """An int key among the settings' names (or among a nested dict's strings) passed the
    check and then failed in json's sort_keys with a bare TypeError ('<' not supported
    between instances of 'str' and 'int'); a nested dict of int keys alone is fine (below)."""
    Counted.ranked = 0
    with pytest.raises(AutomrError, match="the settings of m are not JSON"):
        evaluate({"m": Counted([0, 0, 0, 0], settings=settings)}, SAMPLES[:4], 30,
                 n_resamples=20, out=tmp_path)
    assert Counted.ranked == 0


@pytest.mark.parametrize("key", ["method", "samples", "n_items"])
def test_settings_holding_a_key_the_evaluation_adds_are_refused(tmp_path, key):
    """A method's own ``method`` (its variant, say) was replaced by the evaluation's name, so
    two variants saved under one name had equal settings: the second read the first's ranks
    back as its own."""
    Counted.ranked = 0
    with pytest.raises(AutomrError, match=f"the settings of m hold '{key}', a key the "
                                          f"evaluation adds itself"):
        evaluate({"m": Counted([0, 0, 0, 0], settings={key: "cosine"})}, SAMPLES[:4], 30,
                 n_resamples=20, out=tmp_path)
    assert Counted.ranked == 0


@pytest.mark.parametrize(("keywords", "says"), [
    ({"ks": ()}, "cut-offs"), ({"ks": (0, 5)}, "cut-offs"), ({"ks": (5, 5)}, "distinct"),
    ({"n_resamples": 0}, "n_resamples"), ({"shard_size": 0}, "shard_size")])
def test_bad_bootstrap_or_shard_arguments_are_refused_before_any_ranking(tmp_path, keywords,
                                                                        says):
    Counted.ranked = 0
    with pytest.raises(AutomrError, match=says):
        evaluate({"m": Counted([0, 0, 0, 0])}, SAMPLES[:4], 30, out=tmp_path, **keywords)
    assert Counted.ranked == 0


def test_the_api_takes_named_methods_a_catalog_size_and_any_iterable_of_samples():
    """A list of methods failed on 'startswith', n_items=0 blamed the method, and an iterator
    of samples was read up before the ranking."""
    with pytest.raises(AutomrError, match=r"dict \{name: method\}"):
        evaluate([Constant(0)], SAMPLES, 30)
    with pytest.raises(AutomrError, match="n_items"):
        evaluate({"m": Constant(0)}, SAMPLES, 0)
    assert (evaluate({"m": Constant(1)}, iter(SAMPLES), 30).reports
            == evaluate({"m": Constant(1)}, SAMPLES, 30).reports)


def test_an_out_of_another_artifact_or_a_file_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "config.json").write_text("{}")
    (tmp_path / "file").write_text("x")
    with pytest.raises(AutomrError, match=r"config\.json.*not an evaluation folder"):
        evaluate({"m": Constant(1)}, SAMPLES, 30, out=tmp_path / "data")
    with pytest.raises(AutomrError, match="is a file"):
        evaluate({"m": Constant(1)}, SAMPLES, 30, out=tmp_path / "file")
    ranked = []  # a folder inside a file: refused after a whole shard ranked, in a traceback
    counting = Constant(1)
    counting.rank = lambda samples: ranked.extend(samples) or Constant(1).rank(samples)
    with pytest.raises(AutomrError, match=f"cannot use {tmp_path / 'file' / 'x'}: "
                                          f"{tmp_path / 'file'} is a file, not a folder"):
        evaluate({"m": counting}, SAMPLES, 30, out=tmp_path / "file" / "x", shard_size=4)
    assert ranked == []
    assert not (tmp_path / "data" / "ranks").exists()
    evaluate({"m": Constant(1)}, SAMPLES, 30, out=tmp_path / "eval")
    evaluate({"m": Constant(1)}, SAMPLES, 30, out=tmp_path / "eval")  # its own: resumed


def test_an_out_holding_only_run_records_or_hidden_files_is_evaluated_into(tmp_path):
    """What a command leaves beside its outputs (its run record) and a file browser's hidden
    files are not another artifact's: the folder is still new to an evaluation."""
    out = tmp_path / "ev"
    out.mkdir()
    (out / "automr-runs.jsonl").write_text(json.dumps({"argv": ["automr", "x"]}) + "\n")
    (out / ".DS_Store").write_text("")
    EvaluationFolder(out).check_target()
    evaluate({"m": Constant(1)}, SAMPLES, 30, out=out)
    assert EvaluationFolder(out).ranks_file("m").is_file()


def test_a_damaged_ranks_file_says_to_delete_it(tmp_path):
    """It said to make it again with `automr evaluate`, the command that had just failed."""
    evaluate({"m": Constant(1)}, SAMPLES, 30, out=tmp_path)
    EvaluationFolder(tmp_path).ranks_file("m").write_text("{cut")
    with pytest.raises(AutomrError, match=r"ranks/m\.json is not valid JSON.*delete it") as error:
        evaluate({"m": Constant(1)}, SAMPLES, 30, out=tmp_path)
    assert "make it again" not in str(error.value)
    EvaluationFolder(tmp_path).ranks_file("m").unlink()  # as it says: then the rerun works
    evaluate({"m": Constant(1)}, SAMPLES, 30, out=tmp_path)


def test_settings_that_json_writes_otherwise_still_reuse_the_saved_values(tmp_path):
    """Settings are compared as their JSON is read back: a tuple (a grid) is read back a
    list and an int key a string, so the settings a rerun gives must go through JSON too, or
    no rerun would ever reuse the values it saved."""
    method = Constant(1)
    method.settings = {"rank": 1, "grid": (0.1, 0.5), "per_layer": {2: "x"}}
    measures = ("ranks", "likelihood")
    evaluate({"m": method}, SAMPLES, 30, out=tmp_path, measures=measures)
    again = evaluate({"m": method}, SAMPLES, 30, out=tmp_path, measures=measures)
    assert again.reused == ("ranks:m", "likelihood:m")


def test_an_exported_evaluation_gives_each_measures_details_as_its_folder_does(tmp_path):
    """Read from its export, a method measured by likelihood alone has no ranking's details
    (its folder has none either), and one measured both ways keeps each measure's."""
    from automr.evaluation.folder import ExportedEvaluation

    sources = {}
    for method, measures in (("both", ("ranks", "likelihood")), ("ll", ("likelihood",))):
        evaluate({method: TwoWays(1)}, SAMPLES, 30, out=tmp_path / method, n_resamples=20,
                 measures=measures)
        folder = EvaluationFolder(tmp_path / method)
        path = tmp_path / f"{method}.json"
        path.write_text(json.dumps(folder.export()))
        sources[method] = folder, ExportedEvaluation.open(path)
    for method, measure in (("both", "ranks"), ("both", "loglik"), ("ll", "loglik")):
        folder, exported = sources[method]
        assert exported.details("retrieved", method, measure) == folder.details(
            "retrieved", method, measure)
    for source in sources["ll"]:
        with pytest.raises(AutomrError, match="no record of the retrieved of ll"):
            source.details("retrieved", "ll", "ranks")


def test_an_export_without_its_bootstrap_is_read_with_the_evaluations_defaults(tmp_path):
    """An export whose results.json records no cut-offs or bootstrap (written before they
    were recorded) was made with evaluate's defaults: K = 1, 5, 10, 1000 resamples of seed 0;
    it is read back with them."""
    from automr.evaluation.folder import ExportedEvaluation

    made = evaluate({"m": Constant(1)}, SAMPLES, 30, out=tmp_path / "a",
                    measures=("ranks", "likelihood"))
    exported = EvaluationFolder(tmp_path / "a").export()
    for key in ("ks", "n_resamples", "seed"):
        del exported["results"]["config"][key]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(exported))
    again = ExportedEvaluation.open(path)
    assert again.report("m") == made.reports["m"]
    assert again.likelihoods("m") == made.likelihoods["m"]


@pytest.mark.parametrize("value", [torch.tensor(2), {2}])
def test_details_that_are_not_json_are_refused_in_one_line(tmp_path, value):
    """A method's details() holding a tensor (or a set) stopped evaluate, with or without a
    folder, with json's TypeError: Object of type Tensor is not JSON serializable."""

    class Tensors(Retrieving):
        def details(self):
            return {"retrieved": {s_id: value for s_id in self.seen}}

    for out in (None, tmp_path):
        with pytest.raises(AutomrError,
                           match=r"the details of m are not JSON \(Object of type (Tensor|set)"):
            evaluate({"m": Tensors(1)}, SAMPLES, 30, out=out, n_resamples=20)


@pytest.mark.parametrize(("details", "refused"), [
    ({"retrieved": [1, 2]}, r"the details of m of kind 'retrieved' are a list: details\(\) "
                            r"maps each kind to \{sample id: value\}"),
    ([("retrieved", {})], r"the details\(\) of m returned a list: it maps each kind")])
def test_details_that_are_no_mapping_of_sample_ids_are_refused_in_one_line(details, refused):
    """A kind mapped to a list (not ``{sample id: value}``) failed with a raw AttributeError
    ('list' object has no attribute 'items')."""

    class Listed(Constant):
        def details(self):
            return details

    with pytest.raises(AutomrError, match=refused):
        evaluate({"m": Listed(1)}, SAMPLES, 30, n_resamples=20)


@pytest.mark.parametrize("kind", ["ranks", "loglik", "models", "a/b", "..", ""])
def test_details_of_a_kind_that_cannot_name_its_folder_are_refused(tmp_path, kind):
    """Kind ``ranks`` was written over the ranks it was saved beside (ranks/m.json held the
    details: the folder read back as damaged on every rerun); a path kind wrote elsewhere."""

    class Named(Retrieving):
        def details(self):
            return {kind: {s_id: 0 for s_id in self.seen}}

    for out in (None, tmp_path):
        with pytest.raises(AutomrError, match=f"the details of m have kind {kind!r}, which "
                                              f"cannot name their folder"):
            evaluate({"m": Named(1)}, SAMPLES, 30, out=out, n_resamples=20)
    assert not (tmp_path / "ranks" / "m.json").exists()


def test_resampling_users_draws_whole_users_and_is_recorded(tmp_path):
    """resample="users": every interval and paired difference resamples the users (3 of them,
    8 samples each) with all their samples; it is saved with the reports and in the results'
    config, so an export reads the same numbers back, and a folder saved resampling samples is
    summarised again, not reused as it was."""
    from automr.evaluation.bootstrap import bootstrap_ci, paired_bootstrap, users_of
    from automr.evaluation.folder import ExportedEvaluation
    from automr.evaluation.metrics import per_sample_metrics

    samples = [Sample(user=f"u{i % 3}", target="t", timestamp=100 + i, recent=("a",),
                      recent_timestamps=(1,)) for i in range(24)]
    methods = {"bigrec": Constant(0), "mine": Constant(2)}
    evaluate(methods, samples, 30, out=tmp_path / "e", n_resamples=50,
             measures=("ranks", "likelihood"))
    made = evaluate(methods, samples, 30, out=tmp_path / "e", n_resamples=50,
                    measures=("ranks", "likelihood"), resample="users")
    users = users_of([s.id for s in samples])
    assert users == tuple(f"u{i % 3}" for i in range(24))
    ranks = {m: per_sample_metrics(torch.tensor(methods[m].rank(samples)), (1, 5, 10))
             for m in methods}
    assert made.reports["mine"].metrics["ndcg@5"] == bootstrap_ci(
        ranks["mine"]["ndcg@5"].double(), n_resamples=50, groups=users)
    assert made.paired()["mine"]["ndcg@5"] == paired_bootstrap(
        ranks["mine"]["ndcg@5"].double(), ranks["bigrec"]["ndcg@5"].double(), n_resamples=50,
        groups=users)
    assert made.paired()["mine"] != evaluate(methods, samples, 30, n_resamples=50).paired()["mine"]
    folder = EvaluationFolder(tmp_path / "e")
    assert folder.report("mine").resample == folder.likelihoods("mine").resample == "users"
    assert json.loads((tmp_path / "e" / "results.json").read_text())["config"]["resample"] == (
        "users")
    assert "bootstrap resamples of the users" in made.markdown()
    path = tmp_path / "e.json"
    path.write_text(json.dumps(folder.export()))
    assert ExportedEvaluation.open(path).report("mine") == made.reports["mine"]
    assert ExportedEvaluation.open(path).likelihoods("mine") == made.likelihoods["mine"]
    with pytest.raises(AutomrError, match="resample must be one of samples, users, got 'items'"):
        evaluate(methods, samples, 30, resample="items")
