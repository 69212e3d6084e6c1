"""``automr rq3`` on a handcrafted dataset and evaluation folder, with ages computed by hand."""

import datetime as dt
import json

import attrs
import pytest
import torch
import typer
from typer.testing import CliRunner

from automr.cli.figures import rq3_command
from automr.data import PreparedDataset, ProtocolConfig, prepare_csv
from automr.data.protocol import to_unix
from automr.errors import AutomrError
from automr.evaluation import EvaluationFolder
from automr.evaluation.report import build_report
from automr.experiments.rq3 import locate_retrieved, timelines
from automr.experiments.rq3_report import run_rq3
from automr.memory.shards import MemoryIndex, UserEntry
from automr.methods.registry import rule_marks

DAY = 86_400
T0 = to_unix(dt.date(2017, 7, 1))
# Train: July; validation/test: the rest, halved by time (split at ~day 45.5).
TIMELINES = {
    "u0": [("a0", 0), ("a1", 2), ("a2", 5), ("a3", 10), ("a4", 20), ("a5", 40), ("a6", 60)],
    # b1 and b2 share a second; b5 and b6 too (both are samples with the same history).
    "u1": [("b0", 1), ("b1", 3), ("b2", 3), ("b3", 30), ("b4", 50), ("b5", 55), ("b6", 55)],
}
# Test samples in evaluation order (time, then user): ids and the retrieved positions.
U1_50, U1_55_B5, U1_55_B6, U0_60 = (
    f"u1@{T0 + 50 * DAY}:b4", f"u1@{T0 + 55 * DAY}:b5", f"u1@{T0 + 55 * DAY}:b6",
    f"u0@{T0 + 60 * DAY}:a6")
RETRIEVED = {U1_50: [1], U1_55_B5: [2], U1_55_B6: [1], U0_60: [1]}
REFERENCE_RANKS = {U1_50: 3, U1_55_B5: 5, U1_55_B6: 2, U0_60: 0}
runner = CliRunner()


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("rq3")
    rows = ["user,item,timestamp"] + [f"{u},{item},{T0 + day * DAY}"
                                      for u, events in TIMELINES.items() for item, day in events]
    (root / "interactions.csv").write_text("\n".join(rows) + "\n")
    items = [item for events in TIMELINES.values() for item, _ in events]
    (root / "items.csv").write_text("item,title\n" + "".join(f"{i},Title {i}\n" for i in items))
    protocol = ProtocolConfig(start=None, end=None, train_months=1, min_item_interactions=1,
                              min_user_interactions=1, max_history=20, recent_k=2)
    prepare_csv(root / "interactions.csv", root / "items.csv", root / "prepared",
                protocol=protocol)
    return root / "prepared"


def evaluation(folder, method_ranks: dict[str, int], retrieved=RETRIEVED, data=None):
    """An evaluation folder as ``automr evaluate`` writes it, with these ranks (made on the
    dataset fingerprinted ``data``, where given)."""
    ids = list(REFERENCE_RANKS)
    saved = EvaluationFolder(folder)
    for method, ranks in (("bigrec:constrained", REFERENCE_RANKS),
                          ("automr:constrained", method_ranks)):
        report = build_report(method, ids, torch.tensor([ranks[i] for i in ids]), 14,
                              n_resamples=10)
        details = {"retrieved": {i: retrieved[i] for i in ids}} if "automr" in method else {}
        made_on = {} if data is None else {"data": data}
        saved.save(report, {"split": "test"} | made_on | rule_marks(method), details)
    return folder


def test_an_evaluation_of_another_dataset_with_the_same_sample_ids_is_refused(dataset_dir,
                                                                            tmp_path):
    """Samples were matched by id only: the same interactions under another protocol (another
    recent K) or catalog have the same ids, and rq3 analysed them silently with the wrong
    histories and titles (the mismatched-artifacts review)."""
    from automr.data.fingerprint import dataset_fingerprint

    ranks = {U1_50: 0, U1_55_B5: 0, U1_55_B6: 1, U0_60: 4}
    other = evaluation(tmp_path / "other", ranks, data="0" * 64)
    with pytest.raises(AutomrError, match=r"automr:constrained in .*other was evaluated on "
                                          r"another dataset than .*prepared \(other data"):
        run_rq3(other, dataset_dir, tmp_path / "o1")
    own = evaluation(tmp_path / "own", ranks,
                     data=dataset_fingerprint(PreparedDataset.load(dataset_dir)))
    assert run_rq3(own, dataset_dir, tmp_path / "o2").counts["evaluated"] == 4
    with pytest.raises(AutomrError, match=r"bigrec:constrained in .*other was evaluated on"):
        run_rq3(own, dataset_dir, tmp_path / "o3", reference_dir=other)


def test_the_handcrafted_test_split_is_as_designed(dataset_dir):
    samples = PreparedDataset.load(dataset_dir).samples("test")
    assert [s.id for s in samples] == list(REFERENCE_RANKS)
    assert samples[1].recent == ("b3", "b4") and samples[1].memory == ("b0", "b1", "b2")
    assert samples[2].history == samples[1].history  # same second: b5 is not b6's history


def test_retrieved_positions_map_to_the_timeline(dataset_dir):
    dataset = PreparedDataset.load(dataset_dir)
    users = timelines(dataset, None)
    u0_60 = dataset.samples("test")[3]
    (element,) = locate_retrieved(u0_60, users["u0"], [1])
    assert (element.item, element.timestamp) == ("a1", T0 + 2 * DAY)
    assert (element.back, element.days, element.quantile) == (5, 58.0, 0.375)
    oldest, newest = locate_retrieved(u0_60, users["u0"], [0, 3])
    assert (oldest.back, newest.back) == (6, 3)  # 3 = the newest memory element, recent_k = 2
    with pytest.raises(AutomrError, match="outside the sample's memory"):
        locate_retrieved(u0_60, users["u0"], [4])  # a4 is in the prompt
    with pytest.raises(AutomrError, match="does not hold the history"):
        locate_retrieved(u0_60, users["u1"], [1])


def test_a_memory_index_gives_the_same_timelines(dataset_dir, tmp_path):
    dataset = PreparedDataset.load(dataset_dir)
    expected = timelines(dataset, None)
    MemoryIndex(users={u: UserEntry(list(items), list(times), [])
                       for u, (items, times) in expected.items()}, complete=True).write(tmp_path)
    got = timelines(dataset, tmp_path)
    assert {u: (list(i), list(t)) for u, (i, t) in got.items()} == \
        {u: (list(i), list(t)) for u, (i, t) in expected.items()}


def test_recall_improved_samples_and_exact_ages(dataset_dir, tmp_path):
    results = evaluation(tmp_path / "results",
                         {U1_50: 0, U1_55_B5: 0, U1_55_B6: 1, U0_60: 4})
    result = run_rq3(results, dataset_dir, tmp_path / "out", rows=8)
    assert result.criterion == "recall@1"
    assert [r.sample_id for r in result.shown] == [U1_55_B5, U1_50]  # larger gain first
    assert result.counts == {"evaluated": 4, "retrieved": 4, "recall1_improved": 2,
                             "recall1_worse": 1, "rank_improved": 3, "rank_same": 0,
                             "rank_worse": 1, "selected": 2, "shown": 2}
    ages = result.all_ages
    assert ages is not None
    # back: 3 (u1@50: end 4 - position 1), 3 (5 - 2), 4 (5 - 1), 5 (6 - 1)
    assert (ages.back_median, ages.back_mean, ages.back_max) == (3.5, 3.75, 5)
    # days: 50-3, 55-3, 55-3, 60-2
    assert (ages.days_median, ages.days_mean, ages.days_max) == (52.0, 52.25, 58.0)
    assert ages.before_recent_window == 0.75  # u1@50's b1 shares its second with prompt's b2
    assert ages.older_than_days == {"1": 1.0, "7": 1.0, "30": 1.0, "90": 0.0}
    assert ages.quantile_mean == pytest.approx((0.75 + 2.5 / 3 + 0.5 + 0.375) / 4)
    # uniform over each memory: backs (4,3), (5,4,3) twice, (6,5,4,3)
    assert ages.uniform_back_mean == pytest.approx((3.5 + 4 + 4 + 4.5) / 4)
    assert ages.uniform_days_mean == pytest.approx((48 + 2 * (54 + 52 + 52) / 3 + 55.75) / 4)
    improved = result.improved_ages
    assert improved is not None and (improved.elements, improved.back_mean) == (2, 3.0)
    assert improved.days_mean == pytest.approx((52 + 47) / 2)
    out = tmp_path / "out"
    payload = json.loads((out / "rq3.json").read_text())
    assert payload["shown"][0]["retrieved"][0]["title"] == "Title b2"
    assert "Recall@1 improved with memory (2 of 4 samples)" in (out / "rq3.md").read_text()
    for name in ("rq3-timeline.png", "rq3-timeline.svg", "rq3-ages.png", "rq3-ages.svg"):
        assert (out / name).stat().st_size > 1000


def test_likelihood_measure_selects_samples_whose_likelihood_rose(dataset_dir, tmp_path):
    """--measure likelihood: "memory helped" = the true title's log-likelihood rose, read from
    both methods' loglik/ values; the retrieved elements come from the likelihood run."""
    from automr.evaluation.likelihood import build_likelihood_report

    ids = list(REFERENCE_RANKS)
    reference = {U1_50: -10.0, U1_55_B5: -8.0, U1_55_B6: -9.0, U0_60: -7.0}
    memory = {U1_50: -9.5, U1_55_B5: -6.0, U1_55_B6: -9.0, U0_60: -7.5}
    folder = EvaluationFolder(tmp_path / "results")
    for method, values in (("bigrec:likelihood", reference), ("automr:likelihood", memory)):
        report = build_likelihood_report(method, ids, [(values[i], 3) for i in ids],
                                         n_resamples=10)
        details = {"retrieved": RETRIEVED} if "automr" in method else {}
        folder.save_likelihoods(report, {"split": "test"} | rule_marks(method), details)
    result = run_rq3(folder.path, dataset_dir, tmp_path / "out", reference="bigrec:likelihood",
                     method="automr:likelihood", measure="likelihood")
    assert result.criterion == "likelihood"
    assert [r.sample_id for r in result.shown] == [U1_55_B5, U1_50]  # +2.0, then +0.5 nats
    assert result.counts == {"evaluated": 4, "retrieved": 4, "likelihood_improved": 2,
                             "likelihood_same": 1, "likelihood_worse": 1, "selected": 2,
                             "shown": 2}
    improved = result.improved_ages
    assert improved is not None and (improved.elements, improved.back_mean) == (2, 3.0)
    payload = json.loads((tmp_path / "out" / "rq3.json").read_text())
    assert payload["measure"] == "likelihood"
    assert payload["shown"][0]["reference_nll"] == 8.0 and payload["shown"][0]["method_nll"] == 6.0
    text = (tmp_path / "out" / "rq3.md").read_text()
    assert "log-likelihood rose with memory (2 of 4 samples)" in text and "8.00 -> 6.00" in text
    with pytest.raises(AutomrError, match="no target log-likelihoods of bigrec:constrained"):
        run_rq3(folder.path, dataset_dir, tmp_path / "x", method="automr:likelihood",
                measure="likelihood")


def test_rank_improvement_is_the_stated_fallback(dataset_dir, tmp_path):
    results = evaluation(tmp_path / "results",
                         {U1_50: 1, U1_55_B5: 1, U1_55_B6: 1, U0_60: 4})
    result = run_rq3(results, dataset_dir, rows=2)  # out defaults to the results folder
    assert result.criterion == "rank"
    assert [r.sample_id for r in result.shown] == [U1_55_B5, U1_50]  # 5->1, then 3->1
    assert result.counts["selected"] == 3 and result.counts["shown"] == 2
    text = (results / "rq3.md").read_text()
    assert "no sample's Recall@1 improved with memory" in text
    assert "target rank improved instead (3 of 4)" in text
    assert (results / "rq3-timeline.svg").stat().st_size > 1000
    svg = (results / "rq3-timeline.svg").read_text()  # the title, wrapped over lines
    assert all(word in svg for word in ("Recall@1", "improved", "memory", "rank"))


def test_no_improvement_still_writes_everything(dataset_dir, tmp_path):
    results = evaluation(tmp_path / "results", {i: r + 1 for i, r in REFERENCE_RANKS.items()})
    result = run_rq3(results, dataset_dir)
    assert result.shown == () and result.improved_ages is None
    assert "no sample improved with memory (4 samples)" in (results / "rq3.md").read_text()
    assert (results / "rq3-timeline.png").stat().st_size > 1000


def test_cli_and_one_line_errors(dataset_dir, tmp_path):
    app = typer.Typer()
    app.command("rq3")(rq3_command)
    app.command("other")(lambda: None)  # keep rq3 a named sub-command
    results = evaluation(tmp_path / "results",
                         {U1_50: 0, U1_55_B5: 0, U1_55_B6: 1, U0_60: 4})
    ok = runner.invoke(app, ["rq3", "--results", str(results), "--data", str(dataset_dir),
                             "--rows", "1", "--out", str(tmp_path / "o")])
    assert ok.exit_code == 0, ok.output
    assert "# RQ3" in ok.output and (tmp_path / "o" / "rq3-ages.png").exists()
    apart = tmp_path / "reference" / "ranks"  # the rq2 layout: bigrec in its own folder
    apart.mkdir(parents=True)
    for path in (results / "ranks").glob("bigrec-*"):
        path.rename(apart / path.name)
    split = runner.invoke(app, ["rq3", "--results", str(results), "--data", str(dataset_dir),
                                "--reference-results", str(apart.parent)])
    assert split.exit_code == 0, split.output
    assert "(2 of 4 samples)" in split.output
    missing = runner.invoke(app, ["rq3", "--results", str(results), "--data", str(dataset_dir),
                                  "--reference-results", str(apart.parent),
                                  "--method", "random:constrained"])
    assert missing.exit_code == 2 and "holds no ranks of random:constrained" in missing.output
    no_reference = runner.invoke(app, ["rq3", "--results", str(results),
                                       "--data", str(dataset_dir)])
    assert no_reference.exit_code == 2
    assert "holds no ranks of bigrec:constrained" in no_reference.output
    bad = evaluation(tmp_path / "bad", {U1_50: 0, U1_55_B5: 0, U1_55_B6: 1, U0_60: 4},
                     retrieved={**RETRIEVED, U0_60: [5]})
    wrong = runner.invoke(app, ["rq3", "--results", str(bad), "--data", str(dataset_dir)])
    assert wrong.exit_code == 2 and "outside the sample's memory" in wrong.output


def test_an_export_gives_the_folders_rq3(dataset_dir, tmp_path):
    """`automr rq3 --results X.json`: an exported evaluation (docs/results/) gives what its
    folder gives, for ranks and for likelihoods; without --out it says where to write."""
    from automr.evaluation.likelihood import build_likelihood_report

    folder = evaluation(tmp_path / "results", {U1_50: 0, U1_55_B5: 0, U1_55_B6: 1, U0_60: 4})
    ids = list(REFERENCE_RANKS)
    for method, shift in (("bigrec:constrained", 0.0), ("automr:constrained", 0.5)):
        EvaluationFolder(folder).save_likelihoods(
            build_likelihood_report(method, ids, [(-5.0 - shift * (i % 3), 3)
                                                  for i, _ in enumerate(ids)], n_resamples=10),
            {"split": "test"} | rule_marks(method),
            {"retrieved": RETRIEVED} if "automr" in method else {})
    saved, both = EvaluationFolder(folder), ("bigrec:constrained", "automr:constrained")

    def table(reports):
        return {r.method: {k: attrs.asdict(v) for k, v in r.metrics.items()} for r in reports}

    (folder / "results.json").write_text(json.dumps({  # as evaluate writes it, in short
        "methods": table(saved.report(m) for m in both),
        "likelihood": table(saved.likelihoods(m) for m in both),
        "config": {"split": "test", "ks": [1, 5, 10], "n_resamples": 10, "seed": 0}}))
    exported = tmp_path / "export.json"
    exported.write_text(json.dumps(EvaluationFolder(folder).export()))
    for measure in ("ranks", "likelihood"):
        from_folder = run_rq3(folder, dataset_dir, tmp_path / f"f-{measure}", measure=measure)
        from_export = run_rq3(exported, dataset_dir, tmp_path / f"e-{measure}", measure=measure)
        dataset = PreparedDataset.load(dataset_dir)
        expected = {**from_folder.to_json(dataset), "results": str(exported)}
        assert from_export.to_json(dataset) == expected, measure
    with pytest.raises(AutomrError, match="is an exported evaluation: say where"):
        run_rq3(exported, dataset_dir)
    with pytest.raises(AutomrError, match=r"holds no ranks of random:constrained \(there: "
                                          r"bigrec:constrained, automr:constrained\)"):
        run_rq3(exported, dataset_dir, tmp_path / "x", method="random:constrained")


def test_rq3_records_its_run_where_it_writes_and_an_export_leaves_it_out(dataset_dir, tmp_path):
    """Without --out, rq3 writes its report and run record into the evaluation folder, whose
    export then listed rq3 among the commands behind the evaluation."""
    from automr.cli.main import app as automr_app

    results = evaluation(tmp_path / "results", {U1_50: 0, U1_55_B5: 0, U1_55_B6: 1, U0_60: 4})
    for out in (["--out", str(tmp_path / "o")], []):
        ran = runner.invoke(automr_app, ["rq3", "--results", str(results), "--data",
                                         str(dataset_dir), "--rows", "1", *out])
        assert ran.exit_code == 0, ran.output
    [record] = (tmp_path / "o" / "automr-runs.jsonl").read_text().splitlines()
    assert json.loads(record)["params"]["out"] == str(tmp_path / "o")
    assert json.loads((results / "automr-runs.jsonl").read_text())["command"] == "automr rq3"
    assert EvaluationFolder(results).commands() == []


def test_an_rq2_run_without_its_reference_folder_is_pointed_to_it(dataset_dir, tmp_path):
    """rq2 keeps BIGRec's ranks in OUT/bigrec: rq3 on OUT/automr-0 alone names the option."""
    run = evaluation(tmp_path / "rq2" / "automr-0", {i: 0 for i in REFERENCE_RANKS})
    EvaluationFolder(run).ranks_file("bigrec:constrained").unlink()
    (tmp_path / "rq2" / "rq2.json").write_text("{}")
    with pytest.raises(AutomrError, match=r"a run of `automr rq2`, which keeps "
                                          r"bigrec:constrained apart: give --reference-results "
                                          r".*rq2/bigrec$"):
        run_rq3(run, dataset_dir)
    # rq2 ran another grounder, or measured ranks only: that folder did not hold it either
    (tmp_path / "rq2" / "rq2.json").write_text(json.dumps(
        {"grounder": "likelihood", "config": {"measures": ["ranks"]}}))
    with pytest.raises(AutomrError, match=r"with grounder likelihood, whose methods are "
                                          r"NAME:likelihood .*not automr:constrained and "
                                          r"bigrec:constrained: give --method automr:likelihood "
                                          r"--reference bigrec:likelihood --reference-results "
                                          r".*rq2/bigrec$"):
        run_rq3(run, dataset_dir)
    with pytest.raises(AutomrError, match=r"that measured ranks, not likelihood: give --measure "
                                          r"ranks, or run rq2 again with --measure likelihood "
                                          r"--grounder likelihood$"):
        run_rq3(run, dataset_dir, measure="likelihood")
    # given the reference folder, the measure was what it lacked: it said to evaluate BIGRec
    with pytest.raises(AutomrError, match=r"that measured ranks, not likelihood: give --measure "
                                          r"ranks"):
        run_rq3(run, dataset_dir, measure="likelihood", reference_dir=run)


def test_the_uniform_ages_weigh_each_sample_by_its_retrieved_elements(dataset_dir):
    """With k > 1 a sample's memory counts once per element it retrieved: u0@60 retrieves 2
    (uniform back 4.5 each), u1@50 1 (3.5)."""
    from automr.experiments.rq3 import SampleRetrieval, summarize_ages

    dataset = PreparedDataset.load(dataset_dir)
    users = timelines(dataset, None)
    u1_50, u0_60 = dataset.samples("test")[0], dataset.samples("test")[3]
    rows = [SampleRetrieval(u0_60.id, u0_60, 1.0, 0.0, locate_retrieved(u0_60, users["u0"],
                                                                         [0, 1])),
            SampleRetrieval(u1_50.id, u1_50, 1.0, 0.0, locate_retrieved(u1_50, users["u1"],
                                                                         [1]))]
    ages = summarize_ages(rows)
    assert ages.elements == 3 and ages.back_mean == pytest.approx((6 + 5 + 3) / 3)
    assert ages.uniform_back_mean == pytest.approx((2 * 4.5 + 3.5) / 3)


def test_ties_samples_without_retrieval_and_what_the_report_and_figures_hold(
        dataset_dir, tmp_path, monkeypatch):
    """Equal gains keep evaluation order; a sample that retrieved nothing is never selected
    (u1@55:b6 improved); a target first both times is no Recall@1 loss. rq3.json and rq3.md
    give each shown sample's prompt reach (its oldest recent item: b3, 25 days before b5) and
    every sample's (back, days); the age figure's uniform outline weighs each memory by the
    elements its sample retrieved (u0@60 retrieves two), so it sums to the elements shown."""
    import matplotlib.axes

    hists = []
    original = matplotlib.axes.Axes.hist

    def spy(self, x, *args, **kwargs):
        hists.append((list(x), kwargs.get("weights")))
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "hist", spy)
    retrieved = {U1_50: [1], U1_55_B5: [2], U1_55_B6: [], U0_60: [0, 1]}
    results = evaluation(tmp_path / "results", {U1_50: 1, U1_55_B5: 3, U1_55_B6: 1, U0_60: 0},
                         retrieved=retrieved)
    result = run_rq3(results, dataset_dir, tmp_path / "out")
    assert result.criterion == "rank"
    assert [r.sample_id for r in result.shown] == [U1_50, U1_55_B5]  # both 2 ranks up
    assert result.counts == {"evaluated": 4, "retrieved": 3, "recall1_improved": 0,
                             "recall1_worse": 0, "rank_improved": 2, "rank_same": 1,
                             "rank_worse": 0, "selected": 2, "shown": 2}
    payload = json.loads((tmp_path / "out" / "rq3.json").read_text())
    assert payload["shown"][1]["recent_oldest_days"] == 25.0
    assert payload["retrieved"] == {U1_50: [[3, 47.0]], U1_55_B5: [[3, 52.0]], U1_55_B6: [],
                                    U0_60: [[6, 60.0], [5, 58.0]]}
    [row] = [line for line in (tmp_path / "out" / "rq3.md").read_text().splitlines()
             if line.startswith(f"| {U1_55_B5} |")]
    assert row.endswith("| 25 |")
    (back, _), (uniform, weights) = hists[:2]  # the interactions-back panel
    assert back == [3, 3, 6, 5]
    assert uniform == [4, 3, 5, 4, 3, 6, 5, 4, 3]
    assert weights == pytest.approx([1 / 2] * 2 + [1 / 3] * 3 + [2 / 4] * 4)
    (days, _), (_, day_weights) = hists[2:4]  # the days panel: the same weights
    assert days == [47.0, 52.0, 60.0, 58.0] and day_weights == pytest.approx(weights)


def test_an_element_exactly_d_days_back_is_not_more_than_d_days_back(dataset_dir):
    from automr.experiments.rq3 import SampleRetrieval, summarize_ages

    dataset = PreparedDataset.load(dataset_dir)
    u0_60 = dataset.samples("test")[3]
    (element,) = locate_retrieved(u0_60, timelines(dataset, None)["u0"], [1])
    elements = tuple(attrs.evolve(element, days=d) for d in (1.0, 7.0, 30.0, 90.0))
    ages = summarize_ages([SampleRetrieval(u0_60.id, u0_60, 1.0, 0.0, elements)])
    assert ages.older_than_days == {"1": 0.75, "7": 0.5, "30": 0.25, "90": 0.0}


def test_a_figure_is_not_written_through_a_link(tmp_path):
    """A received evaluation folder with rq3-ages.png linked to a user's file: `automr rq3`
    (its --out defaults to that folder) wrote the PNG over the user's file (the
    received-folders review)."""
    pytest.importorskip("matplotlib")
    from automr.experiments.plotting import new_figure, save_figure

    victim = tmp_path / "victim.txt"
    victim.write_text("user's own")
    (tmp_path / "fig.png").symlink_to(victim)
    png, svg = save_figure(new_figure(2, 2), tmp_path / "fig")
    assert victim.read_text() == "user's own" and not png.is_symlink()
    assert png.read_bytes().startswith(b"\x89PNG") and svg.read_text().startswith("<?xml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png", "fig.svg", "victim.txt"]


def test_a_title_holding_a_bar_stays_in_its_cell(tmp_path):
    """Amazon titles such as "Game 8 | Nintendo Switch" added cells to rq3's case-study rows
    (the rank column read "Nintendo Switch"), as a method name with a bar did to any results
    table (the adversarial-titles review)."""
    import bisect

    from automr.evaluation import evaluate
    from automr.experiments.rq3 import RQ3Result, SampleRetrieval, summarize_ages
    from automr.experiments.rq3_report import rq3_markdown
    from automr.testing.synthetic import synthetic_dataset

    dataset = synthetic_dataset(tmp_path, titles={f"i{k}": f"Game {k} | Nintendo Switch"
                                                  for k in range(30)})
    lines = timelines(dataset, None)
    sample = next(s for s in dataset.samples("test") if s.memory)
    end = bisect.bisect_left(lines[sample.user][1], sample.timestamp)
    shown = SampleRetrieval(sample.id, sample, 5.0, 1.0, locate_retrieved(
        sample, lines[sample.user], [end - len(sample.history)]))
    ages = summarize_ages([shown])
    counts = {"evaluated": 1, "selected": 1, "retrieved": 1, "recall1_improved": 0,
              "recall1_worse": 0, "rank_improved": 1, "rank_worse": 0, "rank_same": 0,
              "shown": 1}
    result = RQ3Result("x", "bigrec:constrained", "automr:constrained", "test", "ranks", "c",
                       "c", counts, ages, ages, (shown,), (shown,))
    case_study = [line for line in rq3_markdown(result, dataset).splitlines()
                  if line.startswith(("| sample |", f"| {sample.id}"))]

    class Fixed:
        def __init__(self) -> None:
            self.settings: dict = {}

        def rank(self, samples):
            return [0] * len(samples)

    results = evaluate({"a|b": Fixed(), "c": Fixed()}, dataset.samples("test")[:3], 30)
    tables = [line for line in results.markdown().splitlines() if line.startswith("| ")]
    for table, rows in ((case_study, 2), (tables, 5)):
        cells = {len(line.replace("\\|", "").split("|")) for line in table}
        assert len(table) == rows and len(cells) == 1, table


def test_values_an_earlier_automr_made_otherwise_are_not_analysed(dataset_dir, tmp_path):
    """rq3 pairs two methods' values as compare does: ones saved before today's LM rules
    (no ``lm_rules`` in their settings) were read as today's."""
    folder = evaluation(tmp_path / "results", {U1_50: 0, U1_55_B5: 0, U1_55_B6: 1, U0_60: 4})
    settings = EvaluationFolder(folder).settings_file("bigrec:constrained")
    settings.write_text(json.dumps({"split": "test"}))
    with pytest.raises(AutomrError, match=r"ranks of bigrec:constrained in .* were made by an "
                                          r"earlier automr"):
        run_rq3(folder, dataset_dir)


def test_only_the_measure_analysed_must_be_todays(dataset_dir, tmp_path):
    """rq3 reads one measure: an older automr's log-likelihoods beside today's ranks (an older
    `evaluate --measures ranks,likelihood`, then today's default) were refused for
    `--measure ranks`, with advice that left them as they were."""
    from automr.evaluation.likelihood import build_likelihood_report

    folder = evaluation(tmp_path / "results", {U1_50: 0, U1_55_B5: 0, U1_55_B6: 1, U0_60: 4})
    ids = list(REFERENCE_RANKS)
    for method in ("bigrec:constrained", "automr:constrained"):
        EvaluationFolder(folder).save_likelihoods(
            build_likelihood_report(method, ids, [(-5.0, 3) for _ in ids], n_resamples=10),
            {"split": "test"}, {"retrieved": RETRIEVED} if "automr" in method else {})
    assert run_rq3(folder, dataset_dir, tmp_path / "out").counts["evaluated"] == 4
    with pytest.raises(AutomrError, match=r"log-likelihoods of automr:constrained .*--methods "
                                          r"automr:constrained --measures ranks,likelihood --out"):
        run_rq3(folder, dataset_dir, tmp_path / "out", measure="likelihood")
