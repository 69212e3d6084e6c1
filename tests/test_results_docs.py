"""Every exported result under docs/results/ reproduces the numbers it reports, and the
exporter round-trips an evaluation folder."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from automr.evaluation import EvaluationFolder, build_report, paired_bootstrap
from automr.evaluation.folder import EXPORT_FORMAT, exported_reports, recomputed_means
from automr.evaluation.likelihood import build_likelihood_report

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
EXPORTS = sorted(p for p in RESULTS.rglob("*.json")
                 if json.loads(p.read_text()).get("format") == EXPORT_FORMAT)


def check(exported: dict) -> None:
    results = exported["results"]
    means = recomputed_means(exported)
    for table in ("methods", "likelihood"):
        for method, metrics in results.get(table, {}).items():
            for metric, interval in metrics.items():
                assert means[method][metric] == pytest.approx(interval["mean"], abs=1e-9), (
                    method, metric)
    for method, ranks in exported["ranks"].items():
        assert len(ranks) == results["samples"], method
    for method in {*exported["ranks"], *exported["loglik"]}:  # `automr compare` can pair them
        report, likelihoods = exported_reports(exported, method)
        assert report is None or report.ranks == tuple(exported["ranks"][method].values())
        assert likelihoods is None or len(likelihoods.tokens) == results["samples"]


def test_every_committed_result_says_how_it_was_made():
    """The evidence rule: a number in the docs can be recomputed, so every JSON under
    docs/results/ names the command (or the calls) that produced it."""
    unexplained = [str(path.relative_to(RESULTS)) for path in sorted(RESULTS.rglob("*.json"))
                   if not any(json.loads(path.read_text()).get(key)
                              for key in ("commands", "command", "how"))]
    assert not unexplained


@pytest.mark.parametrize("path", EXPORTS, ids=[p.name for p in EXPORTS])
def test_committed_results_reproduce_their_tables(path):
    exported = json.loads(path.read_text())
    check(exported)
    assert exported["commands"], "every exported table says the command that made it"


def test_export_round_trips_a_folder(tmp_path):
    folder = EvaluationFolder(tmp_path)
    ids = [f"u{i}@{i}:x" for i in range(6)]
    reports = {m: build_report(m, ids, torch.tensor(r), 20, n_resamples=10)
               for m, r in {"a": [0, 3, 19, 5, 1, 2], "b": [4, 0, 0, 11, 7, 2]}.items()}
    loglik = build_likelihood_report("a", ids, [(-float(i), i + 1) for i in range(6)],
                                     n_resamples=10)
    retrieved = {i: [n] for n, i in enumerate(ids)}
    generated = {i: f"Title {n}" for n, i in enumerate(ids)}
    for name, report in reports.items():
        folder.save(report, {}, {"retrieved": retrieved} if name == "b" else
                    {"grounding": {"gamma": 28.0}, "generated": generated})
    folder.save_likelihoods(loglik, {})
    from automr.evaluation.run import Evaluation

    evaluation = Evaluation(reports, "a", {"a": loglik}, 6, 10)
    folder.write_results(evaluation.to_json({"config": {"ks": [1, 5, 10]}}),
                         evaluation.markdown())
    exported = folder.export()
    check(exported)
    assert exported["retrieved"] == {"b": retrieved}  # b's memory elements, per sample
    assert exported["grounding"] == {"a": {"gamma": 28.0}}  # what a's grounder chose
    assert exported["generated"] == {"a": generated}  # the title a generated, per sample
    assert exported["ranks"]["b"]["u3@3:x"] == 11
    assert exported["loglik"]["a"]["u2@2:x"] == [-2.0, 3]


SCORES = sorted(p for p in RESULTS.rglob("*.json")
                if json.loads(p.read_text()).get("format") == "automr.retriever-scores/1")


@pytest.mark.parametrize("path", SCORES, ids=[p.name for p in SCORES])
def test_committed_retriever_scores_reproduce_their_means(path):
    """`automr retriever score` exports: every row's mean gain and paired difference against
    random, recomputed from the per-sample gains."""
    exported = json.loads(path.read_text())
    samples = exported["samples"]
    for name, row in exported["summary"].items():
        gains = torch.tensor([s[name] for s in samples.values()], dtype=torch.float64)
        assert float(gains.mean()) == pytest.approx(row["gain"]["mean"], abs=1e-9), name
        if row["vs_random"] is not None:
            random = torch.tensor([s["random"] for s in samples.values()], dtype=torch.float64)
            assert float((gains - random).mean()) == pytest.approx(row["vs_random"]["mean"],
                                                                    abs=1e-9), name
    assert exported["commands"], "every exported table says the command that made it"


RQ2 = sorted(p for p in RESULTS.rglob("*.json")
             if json.loads(p.read_text()).get("format") == "automr.rq2/1")


@pytest.mark.parametrize("path", RQ2, ids=[p.name for p in RQ2])
def test_committed_rq2_runs_reproduce_their_means(path):
    """An RQ2 by likelihood with its per-sample values: every run's mean target
    log-likelihood, recomputed."""
    exported = json.loads(path.read_text())
    for run in exported["runs"]:
        values = exported["loglik"][f"{run['group']}:{run['source']}"]
        mean = sum(v for v, _ in values.values()) / len(values)
        assert mean == pytest.approx(run["metrics"]["target_ll"], abs=1e-9), run["folder"]
        assert len(values) == exported["samples"]
    assert exported["commands"]


GAINS = sorted(p for p in RESULTS.rglob("*.json")
               if json.loads(p.read_text()).get("format") == "automr.element-gains/1")


def _within(pairs):
    xs, ys = [], []
    for x, y in pairs:
        x, y = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
        if len(x) > 1 and float(x.std()) > 0 and float(y.std()) > 0:
            xs.append(x - x.mean())
            ys.append(y - y.mean())
    x, y = torch.cat(xs), torch.cat(ys)
    return float((x * y).sum() / (x.norm() * y.norm()))


@pytest.mark.parametrize("path", GAINS, ids=[p.name for p in GAINS])
def test_committed_element_gain_correlations_reproduce(path):
    """examples/element_gains.py exports: the within-sample correlations and best-element
    counts, recomputed from the per-sample values (rounded to 1e-5 in the file)."""
    exported = json.loads(path.read_text())
    samples, summary = exported["per_sample"].values(), exported["summary"]
    assert summary["samples"] == len(samples)
    for key, other in (("corr_gain_cos_target", "cos_target"),
                       ("corr_gain_cos_recent", "cos_recent")):
        got = _within([(s["gain"], s[other]) for s in samples])
        assert got == pytest.approx(summary[key], abs=2e-3), key
    late = [(s["gain"], s["late_interaction"]) for s in samples if "late_interaction" in s]
    if late:
        assert _within(late) == pytest.approx(summary["corr_gain_late_interaction"], abs=2e-3)
    across = [(s["gain"], s["gain_other"]) for s in samples if "gain_other" in s]
    if across:
        assert _within(across) == pytest.approx(summary["corr_gain_across_finetunes"], abs=2e-3)
    assert exported["commands"]


def test_sasrec_ties_study_reproduces_its_numbers():
    """docs/results/sasrec/ties.json: every run's metrics and its paired NDCG@5 difference to
    cooc are recomputed from the committed per-sample ranks."""
    from automr.evaluation.bootstrap import paired_bootstrap
    from automr.evaluation.metrics import ndcg_at_k, recall_at_k

    study = json.loads((RESULTS / "sasrec" / "ties.json").read_text())
    metric = {"recall": recall_at_k, "ndcg": ndcg_at_k}
    for row in study["runs"]:
        for split in ("valid", "test"):
            ranks = torch.tensor(row["ranks"][split])
            assert len(ranks) == len(study["ids"][split])
            for name, value in row[split].items():
                kind, k = name.split("@")
                assert float(metric[kind](ranks, int(k)).double().mean()) == pytest.approx(
                    value, abs=1e-6), (row["tag"], split, name)
            cooc = ndcg_at_k(torch.tensor(study["cooc_ranks"][split]), 5).double()
            diff = paired_bootstrap(ndcg_at_k(ranks, 5).double(), cooc)
            expected = row[f"{split}_ndcg@5_minus_cooc"]
            assert (diff.mean, diff.low, diff.high) == pytest.approx(
                (expected["mean"], expected["low"], expected["high"]), abs=1e-6)


SCORERS = sorted(p for p in RESULTS.rglob("*.json") if json.loads(p.read_text()).get("format")
                 in ("automr.token-scorer/1", "automr.token-scorer-curve/1"))


def _test_gains(exported: dict) -> dict:
    """The element-gains export a token-scorer export picked on (its command's ``--test``)."""
    command = exported["commands"][0]
    path = Path(__file__).resolve().parents[1] / command[command.index("--test") + 1]
    return json.loads(path.read_text())["per_sample"]


def _pick_worth(picks: dict[str, int], gains: dict, key: str) -> dict[str, float]:
    return {i: gains[i][key][p] - sum(gains[i][key]) / len(gains[i][key])
            for i, p in picks.items() if key in gains[i]}


@pytest.mark.parametrize("path", SCORERS, ids=[p.name for p in SCORERS])
def test_committed_token_scorer_picks_reproduce_their_means(path):
    """examples/token_scorer.py and token_scorer_curve.py exports: every mean pick value,
    recomputed from the picks and the test export's gains (rounded to 1e-5 there)."""
    exported = json.loads(path.read_text())
    gains = _test_gains(exported)
    if exported["format"] == "automr.token-scorer/1":
        picks = {i: s["picked"] for i, s in exported["per_sample"].items()}
        for key in ("gain", "gain_other"):
            if f"test_{key}" in exported["summary"]:
                worth = _pick_worth(picks, gains, key)
                summary = exported["summary"][f"test_{key}"]
                assert summary["samples"] == len(worth) == len(gains)
                assert sum(worth.values()) / len(worth) == pytest.approx(
                    summary["pick_minus_mean"], abs=1e-4), key
        return
    assert exported.get("finished", True), "an interrupted curve is not a result"  # (the
    # field came after the first curve, which ran to the end)
    for point in exported["curve"]:
        runs = [r for r in exported["runs"] if r["train_samples"] == point["train_samples"]]
        worth = [_pick_worth(r["picks"], gains, point["key"]) for r in runs]
        averaged = [sum(w[i] for w in worth) / len(worth) for i in worth[0]]
        assert point["samples"] == len(averaged) == len(gains)
        assert sum(averaged) / len(averaged) == pytest.approx(point["pick_minus_mean"],
                                                              abs=1e-4), point
    sizes = sorted({r["train_samples"] for r in exported["runs"]})
    for key, stated in exported["largest_minus_smallest"].items():  # in the export's order
        averaged = {}
        for size in (sizes[-1], sizes[0]):
            worth = [_pick_worth(r["picks"], gains, key) for r in exported["runs"]
                     if r["train_samples"] == size]
            averaged[size] = torch.tensor([sum(w[i] for w in worth) / len(worth)
                                           for i in gains], dtype=torch.float64)
        diff = paired_bootstrap(averaged[sizes[-1]], averaged[sizes[0]])
        assert (diff.mean, diff.low, diff.high) == pytest.approx(
            (stated["difference"], stated["low"], stated["high"]), abs=1e-4), key
    assert exported["commands"]


TITLES = sorted(p for p in RESULTS.rglob("*.json")
                if json.loads(p.read_text()).get("format") == "automr.generated-titles/1")


@pytest.mark.parametrize("path", TITLES, ids=[p.name for p in TITLES])
def test_committed_generated_titles_reproduce_from_their_export(path):
    """examples/generated_titles.py exports: the shares from the per-sample classes, the
    distinct texts and the most generated ones from the export's generated texts."""
    from collections import Counter

    saved = json.loads(path.read_text())
    exported = json.loads((path.parents[3] / saved["results"]).read_text())
    for method, numbers in saved["methods"].items():
        ranked = exported["ranks"].get(method)  # not the validation samples a prior was tuned on
        texts = {i: text for i, text in exported["generated"][method].items()
                 if ranked is None or i in ranked}
        assert set(numbers["per_sample"]) == set(texts) and numbers["samples"] == len(texts)
        classes = Counter(numbers["per_sample"].values())
        for kind, share in numbers["shares"].items():
            assert share == pytest.approx(classes[kind] / len(texts), abs=1e-12)
        assert numbers["distinct"] == len(set(texts.values()))
        counts = Counter(texts.values())
        assert all(counts[text] == n for text, n, _ in numbers["most_generated"])


DOCS = Path(__file__).resolve().parents[1] / "docs" / "results.md"


def _table(after: str, path: str, rows: list[tuple[str, str, str | None]]) -> list[tuple]:
    """The rows of one docs/results.md table: (label, the text it follows, export, method,
    the method it is paired with or None)."""
    return [(label, after, path, method, reference) for label, method, reference in rows]


INJECTION = "`docs/results/bigrec/injection-{1k,2k}-test-1000.json`"  # the 2k table's
CE = "pairings with the rows above by"
CONSTRAINED = "**BIGRec with trie-constrained decoding**"
MEMORY = "added to that evaluation folder, which reused the finished ones"
AWARE = "`aware-vs-frozen-ranks-1000.json`):"
WHOLE_SPLIT = "**The same BIGRec on the whole test split**"
TABLE_ROWS = [  # every docs/results.md table of the five ranking metrics with an export
    *_table("", "floors/test-1000.json", [
        ("pop (training-period popularity)", "pop", None),
        ("cooc (followed within 10 steps, counted)", "cooc", None),
        ("cooc - pop, paired", "cooc", "pop")]),
    *_table("", "sasrec/test-all.json", [
        ("SASRec", "sasrec", None), ("cooc - SASRec, paired", "cooc", "sasrec"),
        ("pop - SASRec, paired", "pop", "sasrec")]),
    *_table("", "bigrec/test-1000.json", [
        ("bigrec:l2-pop (gamma 28)", "bigrec:l2-pop", None),
        ("pop - bigrec:l2-pop, paired", "pop", "bigrec:l2-pop"),
        ("cooc - bigrec:l2-pop, paired", "cooc", "bigrec:l2-pop")]),
    *_table(INJECTION, "bigrec/injection-2k-test-1000.json", [
        ("bigrec:l2-sasrec, 2k fine-tune (gamma 49)", "bigrec:l2-sasrec", None),
        ("bigrec:l2-pop, 2k fine-tune (gamma 28)", "bigrec:l2-pop", None),
        ("sasrec", "sasrec", None), ("pop", "pop", None), ("cooc", "cooc", None),
        ("pop - bigrec:l2-sasrec (2k), paired", "pop", "bigrec:l2-sasrec"),
        ("sasrec - bigrec:l2-sasrec (2k), paired", "sasrec", "bigrec:l2-sasrec"),
        ("cooc - bigrec:l2-sasrec (2k), paired", "cooc", "bigrec:l2-sasrec")]),
    *_table(INJECTION, "bigrec/injection-1k-test-1000.json", [
        ("bigrec:l2-sasrec, 1k fine-tune (gamma 35)", "bigrec:l2-sasrec", None),
        ("bigrec:l2-pop, 1k fine-tune (gamma 18)", "bigrec:l2-pop", None),
        ("pop - bigrec:l2-sasrec (1k), paired", "pop", "bigrec:l2-sasrec")]),
    *_table(CE, "bigrec/injection-2k-ce-test-1000.json", [
        ("bigrec:l2-sasrec, today's SASRec (gamma 35)", "bigrec:l2-sasrec", None),
        ("sasrec, today's defaults", "sasrec", None),
        ("bigrec:l2-pop (gamma 28)", "bigrec:l2-pop", None),
        ("sasrec - bigrec:l2-sasrec, paired", "sasrec", "bigrec:l2-sasrec"),
        ("cooc - bigrec:l2-sasrec, paired", "cooc", "bigrec:l2-sasrec")]),
    *_table(CE, "bigrec/injection-ce-vs-bce-1000.json", [
        ("l2-sasrec with the earlier SASRec - with today's, paired", "bigrec:l2-sasrec-bce",
         "bigrec:l2-sasrec-ce")]),
    *_table(CONSTRAINED, "bigrec/test-1000.json", [
        ("bigrec:constrained", "bigrec:constrained", None),
        ("constrained - bigrec:l2-pop, paired", "bigrec:constrained", "bigrec:l2-pop"),
        ("base:l2-pop (the untuned LM, gamma 14)", "base:l2-pop", None),
        ("base - bigrec:l2-pop, paired", "base:l2-pop", "bigrec:l2-pop"),
        ("rella:l2-pop (ReLLa, 2,048 samples, gamma 28)", "rella:l2-pop", None),
        ("rella - bigrec:l2-pop, paired", "rella:l2-pop", "bigrec:l2-pop")]),
    *_table(CONSTRAINED, "bigrec/trsr-test-1000.json", [
        ("trsr:l2-pop (TRSR, 2,048 samples, gamma 37)", "trsr:l2-pop", None),
        ("trsr - bigrec:l2-pop, paired", "trsr:l2-pop", "bigrec:l2-pop")]),
    *_table(MEMORY, "bigrec/test-1000.json", [
        ("bigrec:l2-pop", "bigrec:l2-pop", None), ("automr:l2-pop", "automr:l2-pop", None),
        ("AutoMR - BIGRec, paired", "automr:l2-pop", "bigrec:l2-pop"),
        ("pop - BIGRec, paired", "pop", "bigrec:l2-pop")]),
    *_table(AWARE, "automr/aware-vs-frozen-ranks-1000.json", [
        ("frozen BIGRec", "frozen-bigrec", None),
        ("memory-aware BIGRec", "aware-bigrec", None),
        ("memory-aware AutoMR", "aware-automr", None),
        ("AutoMR - its BIGRec, paired", "aware-automr", "aware-bigrec"),
        ("AutoMR - frozen BIGRec, paired", "aware-automr", "frozen-bigrec"),
        ("pop - frozen BIGRec, paired", "pop", "frozen-bigrec")]),
    *_table(WHOLE_SPLIT, "bigrec/51k-vs-sasrec-test-all.json", [
        ("bigrec-51k (`bigrec:l2-pop`, gamma 5)", "bigrec-51k", None),
        ("pop - bigrec-51k, paired", "pop", "bigrec-51k"),
        ("cooc - bigrec-51k, paired", "cooc", "bigrec-51k"),
        ("sasrec - bigrec-51k, paired", "sasrec", "bigrec-51k")]),
]


@pytest.mark.parametrize(("label", "after", "path", "method", "reference"), TABLE_ROWS,
                         ids=[f"{row[2]}: {row[0]}" for row in TABLE_ROWS])
def test_the_ranking_tables_of_the_docs_read_as_their_exports_recompute(
        label, after, path, method, reference):
    """Each cell, at the precision the row prints, from the committed per-sample ranks with
    the export's bootstrap (four cells had been rounded twice: 0.04548 -> 0.0455 -> 0.046)."""
    from automr.evaluation.bootstrap import DEFAULT_RESAMPLES, bootstrap_ci, paired_bootstrap
    from automr.evaluation.metrics import per_sample_metrics

    exported = json.loads((RESULTS / path).read_text())
    config = exported["results"]["config"]  # a compare's export keeps the defaults
    kwargs = {"n_resamples": config.get("n_resamples", DEFAULT_RESAMPLES),
              "seed": config.get("seed", 0)}
    ids = list(exported["ranks"][method])

    def metrics(name: str) -> dict[str, torch.Tensor]:
        ranks = torch.tensor([exported["ranks"][name][i] for i in ids])
        return per_sample_metrics(ranks, (1, 5, 10))

    values, other = metrics(method), None if reference is None else metrics(reference)
    text = DOCS.read_text()
    row = next(line for line in text[text.index(after):].splitlines()
               if line.startswith(f"| {label} |"))
    cells = [cell.strip().replace("**", "") for cell in row.strip("|").split("|")[1:]]
    for key, cell in zip(("recall@1", "recall@5", "recall@10", "ndcg@5", "ndcg@10"), cells,
                         strict=True):
        interval = (bootstrap_ci(values[key].double(), **kwargs) if other is None else
                    paired_bootstrap(values[key].double(), other[key].double(), **kwargs))
        decimals = len(cell.split()[0].split(".")[1])
        sign = "+" if reference is not None else ""
        number = f"{{:{sign}.{decimals}f}}"
        expected = (f"{number.format(interval.mean)} [{number.format(interval.low)}, "
                    f"{number.format(interval.high)}]")
        assert cell == expected, (label, key)


TIES_ROWS = {  # docs/results.md's SASRec ties table: row label -> the study's runs, by seed
    "BCE, lr 1e-3, ties in file order (old default)": ("ni-bce", "ni-s1", "ni-s2"),
    "BCE, lr 1e-3, shuffled ties": ("sh-lib", "sh-s1", "sh-s2"),
    "CE, lr 1e-2, ties in file order": ("ni-ce", "ni-ce-s1", "ni-ce-s2"),
    "CE, lr 1e-2, shuffled ties (default)": ("sh-ce-lr1e-2", "sh-ce-s1", "sh-ce-s2"),
}


@pytest.mark.parametrize("label", TIES_ROWS)
def test_the_sasrec_ties_table_of_the_docs_reads_as_its_study(label):
    """Validation and test NDCG@5 per seed, their validation mean (from the unrounded values:
    the default's mean had been averaged from rounded ones) and the paired difference to cooc,
    at the precision printed."""
    study = json.loads((RESULTS / "sasrec" / "ties.json").read_text())
    runs = [next(r for r in study["runs"] if r["tag"] == tag) for tag in TIES_ROWS[label]]
    row = next(line for line in DOCS.read_text().splitlines()
               if line.replace("**", "").startswith(f"| {label} |"))
    cells = [cell.strip().replace("**", "") for cell in row.strip("|").split("|")[1:]]
    valid = [r["valid"]["ndcg@5"] for r in runs]
    differences = [r["test_ndcg@5_minus_cooc"] for r in runs]
    assert cells == [
        " / ".join(f"{v:.4f}" for v in valid),
        f"{sum(valid) / len(valid):.4f}",
        " / ".join(f"{r['test']['ndcg@5']:.4f}" for r in runs),
        " / ".join(f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" for d in differences),
    ]


SIZES = "| BIGRec fine-tuned on | BIGRec, nats per sample |"
SIZE_ROWS = {  # docs/results.md's random element by fine-tune size: label -> export(s)
    "32 samples": ("weak-bigrec-memory-1000.json", None),
    "2,048 samples (the table above)": ("memory-1000.json", None),
    "51,200 samples (on a GPU, [below](#on-a-gpu))": ("gpu-bigrec-memory-1000.json", None),
    "32 minus 2,048, per sample paired": ("weak-bigrec-memory-1000.json", "memory-1000.json"),
    "51,200 minus 2,048, per sample paired": ("gpu-bigrec-memory-1000.json", "memory-1000.json"),
}


@pytest.mark.parametrize("label", list(SIZE_ROWS))
def test_the_random_element_by_fine_tune_size_table_reads_as_its_exports(label):
    """BIGRec's log-likelihood and a random element's gain over it (paired per sample id, in
    the exports' order, as every other table), and the gains of two fine-tunes paired."""
    from automr.evaluation.bootstrap import bootstrap_ci, paired_bootstrap

    path, other = SIZE_ROWS[label]
    loglik = json.loads((RESULTS / "automr" / path).read_text())["loglik"]
    ids = list(loglik["random:likelihood"])

    def gains(values: dict) -> torch.Tensor:
        return torch.tensor([values["random:likelihood"][i][0] - values["bigrec:likelihood"][i][0]
                             for i in ids], dtype=torch.float64)

    def text(interval, sign: str = "+") -> str:
        return f"{interval.mean:{sign}.3f} [{interval.low:{sign}.3f}, {interval.high:{sign}.3f}]"

    page = DOCS.read_text()
    row = next(line for line in page[page.index(SIZES):].splitlines()
               if line.startswith(f"| {label} |"))
    cells = [cell.strip().replace("**", "") for cell in row.strip("|").split("|")[1:]]
    if other is None:
        plain = torch.tensor([loglik["bigrec:likelihood"][i][0] for i in ids],
                             dtype=torch.float64)
        share = float((gains(loglik) > 0).double().mean())  # 0.325 and 0.395: halves up
        helped = f"{int(100 * share + 0.5)}%"
        assert cells == [text(bootstrap_ci(plain), ""), text(bootstrap_ci(gains(loglik))),
                         helped]
    else:
        theirs = json.loads((RESULTS / "automr" / other).read_text())["loglik"]
        assert cells[1] == text(paired_bootstrap(gains(loglik), gains(theirs)))


def test_random_helped_is_the_chance_a_uniform_pick_helps():
    """The two 16-element tables' random rows: the chance that a uniform pick helps, averaged
    over the samples, from every element's gain (a sample absent from element-gains-test.json
    has one element, so random is its only pick); not the share with a positive mean gain that
    the exports' summaries hold."""
    elements = json.loads(
        (RESULTS / "automr" / "element-gains-test.json").read_text())["per_sample"]
    page = DOCS.read_text()
    for export, key, cell in (("test-annotation-1000.json", "gain", "| -0.081 [-0.105, -0.056] |"),
                              ("test-annotation-aware-1000.json", "gain_other",
                               "| +0.018 [-0.008, +0.044] |")):
        samples = json.loads((RESULTS / "automr" / export).read_text())["samples"]
        chances = []
        for sample_id, row in samples.items():
            if sample_id in elements:
                gains = elements[sample_id][key]
                assert sum(gains) / len(gains) == pytest.approx(row["random"], abs=1e-4)
                chances.append(sum(g > 0 for g in gains) / len(gains))
            else:
                assert row["oracle"] == row["random"], sample_id
                chances.append(float(row["random"] > 0))
        chance = sum(chances) / len(chances)
        row = next(line for line in page.splitlines()
                   if line.startswith(f"| random (exact expectation) {cell}"))
        assert f"| {round(100 * chance)}%\u00b9 |" in row
        assert f"{100 * chance:.2f}%" in page


def test_the_trsr_prompt_counts_of_the_docs_are_the_samples_blocks(ml100k_prepared):
    """baselines.md's and results.md's TRSR prompts (the defaults: recurrent over the 5 newest
    blocks of 5 long-term items), recounted from the prepared ML-100K. A recurrent prompt is
    fixed by its sample's blocks up to it, so a split's distinct prompts are at most its
    distinct block prefixes (equal summaries can only merge more): 13,261, once written as the
    training samples' count, fits only all three splits."""
    from automr.contexts.spec import ContextSpec
    from automr.contexts.trsr import trsr_blocks
    from automr.data.subsets import seeded_subset

    spec = ContextSpec(kind="trsr")

    def prompts(split: str, count: int) -> set:
        samples = seeded_subset(ml100k_prepared[0].samples(split), count, 0)
        return {tuple(blocks[:r]) for sample in samples
                for blocks in [trsr_blocks(sample.memory, spec.block_size, spec.max_blocks)]
                for r in range(1, len(blocks) + 1)}

    train, valid, test = (prompts(split, count)
                          for split, count in (("train", 2048), ("valid", 200), ("test", 1000)))
    assert len(train) <= 2048 * spec.max_blocks
    results = " ".join(DOCS.read_text().split())
    assert (f"they need at most {len(train):,} and all three splits at most "
            f"{len(train | valid | test):,}") in results
    assert len(train) < 13_261 <= len(train | valid | test)
    baselines = " ".join((DOCS.parent / "baselines.md").read_text().split())
    assert f"(at most {len(train):,} distinct ones)" in baselines
    assert 0.95 < 8520 / len(train) < 1.05  # 2 h 22 min over at most this many prompts:
    assert "(at least ~1 s a prompt;" in baselines  # a lower bound of a second a prompt
    assert "the test samples' 3,997 prompts" in results and len(test) >= 3997


def test_the_timestamp_tie_counts_of_the_docs_are_the_datas(ml100k_prepared):
    """results.md's "Why: timestamp ties" and the table's header, recounted from the prepared
    ML-100K: training-period transitions joining two items of the same second (76,800 had
    been written for the 76,680 transitions), test samples sharing their time with another
    of the user's, file order of tied pairs, and the 1,000 seeded samples with history older
    than the prompt's 100 items."""
    from collections import Counter, defaultdict
    from itertools import pairwise

    from automr.data.subsets import seeded_subset

    dataset = ml100k_prepared[0]
    timelines = defaultdict(list)
    for interaction in dataset.interactions:  # stable sort: ties keep the file's order
        timelines[interaction.user].append(interaction)
    for timeline in timelines.values():
        timeline.sort(key=lambda interaction: interaction.timestamp)
    pairs = [(a, b) for timeline in timelines.values() for a, b in pairwise(timeline)]
    train = [(a, b) for a, b in pairs if b.timestamp < dataset.boundaries.train_end]
    tied = sum(a.timestamp == b.timestamp for a, b in train)
    ties = [(a, b) for a, b in pairs if a.timestamp == b.timestamp]
    ascending = sum(int(a.item) < int(b.item) for a, b in ties) / len(ties)
    test = dataset.samples("test")
    times = Counter((s.user, s.timestamp) for s in test)
    shared = sum(times[s.user, s.timestamp] > 1 for s in test) / len(test)
    page = " ".join(DOCS.read_text().split())
    assert f"({tied:,} of {len(train):,}) join two items with the same timestamp" in page
    assert f"and {round(100 * shared)}% of test samples have a target" in page
    assert f"(ascending item id in {100 * ascending:.1f}% of all tied pairs)" in page
    older = [before - len(s.history) for s in seeded_subset(test, 1000, 0)
             for before in [sum(i.timestamp < s.timestamp for i in timelines[s.user])]
             if before > len(s.history)]
    mean = round(sum(older) / len(older))  # 98.6: the page had 98
    assert f"{len(older)} of the 1,000 samples have such items, {mean} on average" in page


def test_the_rq2_and_rq3_numbers_of_the_docs_read_as_their_exports():
    """results.md's RQ2 (by likelihood over 10 seeds; by the eq. 5 gain in both arms) and RQ3
    (how far back, against uniform choice) sentences, from the committed per-sample values."""
    import statistics

    from automr.evaluation.bootstrap import paired_bootstrap

    page = " ".join(DOCS.read_text().split())
    rq2 = json.loads((RESULTS / "automr" / "rq2-likelihood-1000.json").read_text())
    means = {key: statistics.fmean(v for v, _ in values.values())
             for key, values in rq2["loglik"].items()}
    seeds = [means[f"random:{s}"] for s in range(10)]
    [automr] = [m for key, m in means.items() if key.startswith("automr:")]
    spread = statistics.stdev(seeds)
    assert (f"scores {statistics.fmean(seeds):.4f} ± {spread:.4f} [{min(seeds):.4f}, "
            f"{max(seeds):.4f}] nats, AutoMR {automr:.4f}, BIGRec {means['bigrec:None']:.4f}. "
            f"AutoMR is above all 10 seeds") in page and automr > max(seeds)
    above = automr - statistics.fmean(seeds)
    assert f"by {above:.3f} nats, about {above / spread:.1f} times the seeds' spread" in page
    ids = list(rq2["loglik"]["random:0"])
    automr_key = next(key for key in rq2["loglik"] if key.startswith("automr:"))
    diff = paired_bootstrap(*(torch.tensor([rq2["loglik"][k][i][0] for i in ids],
                                           dtype=torch.float64)
                              for k in (automr_key, "random:0")))
    assert f"(+{diff.mean:.3f} [{diff.low:+.3f}, {diff.high:+.3f}], above)" in page
    assert f"it stays {means['bigrec:None'] - automr:.3f} nats below BIGRec" in page

    for export, text in (("test-annotation-1000.json", "scores {}; AutoMR (`regret`) is above "
                          "{automr-regret} of the 10 seeds"),
                         ("test-annotation-aware-1000.json", "sample and seed) {}; this arm's "
                          "retriever is above {aware-regret} of the 10 seeds, the frozen arm's "
                          "above {frozen-regret}, semantic above {semantic}")):
        samples = json.loads((RESULTS / "automr" / export).read_text())["samples"].values()
        seeds = [statistics.fmean(s[f"random seed {k}"] for s in samples) for k in range(10)]
        sign = "+" if statistics.fmean(seeds) > 0 else ""
        spread = (f"{statistics.fmean(seeds):{sign}.3f} {'±' if sign == '' else '+-'} "
                  f"{statistics.stdev(seeds):.3f} [{min(seeds):{sign}.3f}, "
                  f"{max(seeds):{sign}.3f}]")
        above = {name: sum(statistics.fmean(s[name] for s in samples) > x for x in seeds)
                 for name in next(iter(samples)) if "seed" not in name}
        assert text.replace("{}", spread).format_map(above) in page, export

    for export, numbers in (("rq3-1000.json", "memory raised it in {improved} of the {retrieved} "
                             "samples with a memory. The elements AutoMR retrieved lie as far "
                             "back as uniform choice would put them, for all samples (mean "
                             "{back:.1f} interactions back against {uniform:.1f} uniform; "
                             "{days:.1f} days against {uniform_days:.1f}; place in memory "
                             "{place:.2f}, uniform 0.5) and for the {improved} helped ones "
                             "({helped_back:.1f} against {helped_uniform:.1f})"),
                            ("rq3-aware-1000.json", "memory raised the likelihood in {improved} "
                             "of {retrieved} samples; the retrieved elements lie {back:.1f} "
                             "interactions back against {uniform:.1f} for uniform choice")):
        rq3 = json.loads((RESULTS / "automr" / export).read_text())
        elements = [e for r in rq3["retrieved"].values() for e in r]
        ages, counts = rq3["ages"], rq3["counts"]
        assert (counts["retrieved"], ages["all"]["elements"]) == (992, len(elements))
        assert page.count(numbers.format(
            improved=counts["likelihood_improved"], retrieved=counts["retrieved"],
            back=statistics.fmean(b for b, _ in elements), uniform=ages["all"]["uniform_back_mean"],
            days=statistics.fmean(d for _, d in elements),
            uniform_days=ages["all"]["uniform_days_mean"], place=ages["all"]["quantile_mean"],
            helped_back=ages["improved"]["back_mean"],
            helped_uniform=ages["improved"]["uniform_back_mean"])) == 1, export


def test_the_user_resampled_intervals_the_docs_quote_read_as_the_committed_ranks_give():
    """docs/concepts/evaluation.md and docs/results.md quote intervals that resample the
    users (cluster bootstrap, 1,000 resamples of seed 0) of the whole test split's exports."""
    from automr.evaluation.bootstrap import bootstrap_ci, paired_bootstrap, users_of
    from automr.evaluation.metrics import per_sample_metrics

    concepts = (DOCS.parent / "concepts" / "evaluation.md").read_text()
    exported = json.loads((RESULTS / "sasrec" / "test-all.json").read_text())
    ids = list(exported["ranks"]["sasrec"])
    values = {m: per_sample_metrics(torch.tensor([exported["ranks"][m][i] for i in ids]),
                                    (5, 10)) for m in ("sasrec", "cooc")}
    users = users_of(ids)
    assert (len(ids), len(set(users))) == (14_600, 238)
    sasrec = bootstrap_ci(values["sasrec"]["recall@10"].double(), groups=users)
    assert f"[{sasrec.low:.3f}, {sasrec.high:.3f}] by users" in concepts
    cooc = paired_bootstrap(values["cooc"]["ndcg@5"].double(),
                            values["sasrec"]["ndcg@5"].double(), groups=users)
    quoted = f"[{cooc.low:+.4f}, {cooc.high:+.4f}]".replace("+0.0000", "-0.0000")
    assert f"{quoted} by users" in concepts
    assert f"users instead of the samples,\n  {quoted}" in DOCS.read_text()
    study = json.loads((RESULTS / "sasrec" / "ties.json").read_text())
    test_users = users_of(study["ids"]["test"])
    cooc_ndcg = per_sample_metrics(torch.tensor(study["cooc_ranks"]["test"]), (5,))["ndcg@5"]
    for tag, where in (("sh-ce-s1", concepts), ("sh-ce-s2", DOCS.read_text())):
        run = next(r for r in study["runs"] if r["tag"] == tag)
        ndcg = per_sample_metrics(torch.tensor(run["ranks"]["test"]), (5,))["ndcg@5"]
        interval = paired_bootstrap(ndcg.double(), cooc_ndcg.double(), groups=test_users)
        assert f"[{interval.low:+.4f}, {interval.high:+.4f}]" in where, tag


REPO = Path(__file__).resolve().parents[1]
SPEEDUP = re.compile(r"(\d+\.\d+)x \[(\d+\.\d+), (\d+\.\d+)\]")  # ratio [min, max]
CITED = re.compile(r"git show ([0-9a-f]{7,40}):(\S+\.json)")  # an earlier run's file


def _number_groups(data: object) -> list[list[float]]:
    """The numbers each object of a JSON document holds itself (a ``[min, max]`` pair too)."""
    if isinstance(data, list):
        return [group for value in data for group in _number_groups(value)]
    if not isinstance(data, dict):
        return []
    own: list[float] = []
    for value in data.values():
        values = value if isinstance(value, list) and len(value) == 2 else [value]
        own += [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return [own, *(group for value in data.values() for group in _number_groups(value))]


def _stands_in(triple: tuple[str, ...], groups: list[list[float]]) -> bool:
    def rounds_to(value: float, text: str) -> bool:
        return abs(value - float(text)) <= 0.5 * 10 ** -len(text.split(".")[1]) + 1e-12

    return any(all(any(rounds_to(v, t) for v in group) for t in triple) for group in groups)


def test_every_speedup_in_the_docs_stands_in_one_committed_result():
    """Each "N.Nx [min, max]" of the docs is one object's ratio, min and max in a committed
    benchmark or result JSON, rounded once (26.3x [23.4, 29.2] was the .md's 29.15 rounded
    again); an earlier run's figure names its file at its commit (``git show REV:PATH``),
    read from the history where the clone has it."""
    groups = [group for folder in ("benchmarks/results", "docs/results")
              for path in sorted((REPO / folder).rglob("*.json"))
              for group in _number_groups(json.loads(path.read_text()))]
    pages = [REPO / "README.md", REPO / "benchmarks" / "README.md",
             *sorted((REPO / "docs").rglob("*.md"))]
    checked, missing = 0, []
    for page in pages:
        for paragraph in re.split(r"\n\s*\n", page.read_text(encoding="utf-8")):
            text = " ".join(paragraph.split())
            cited = []
            for commit, path in CITED.findall(text):
                shown = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:{path}"],
                                       capture_output=True, text=True, check=False)
                if shown.returncode != 0:  # a clone without that history: not checked
                    break
                cited += _number_groups(json.loads(shown.stdout))
            else:
                for triple in SPEEDUP.findall(text):
                    checked += 1
                    if not _stands_in(triple, groups + cited):
                        missing.append(f"{page.relative_to(REPO)}: {'x ['.join(triple[:2])}, "
                                       f"{triple[2]}]")
    assert checked >= 40 and not missing, missing


def test_the_user_resampling_table_recomputes_from_its_intervals():
    """docs/concepts/evaluation.md's width-ratio table: each row's median, percentiles and
    maximum from the intervals docs/results/resample-users.json holds both ways."""
    import statistics

    saved = json.loads((RESULTS / "resample-users.json").read_text())
    page = (REPO / "docs" / "concepts" / "evaluation.md").read_text(encoding="utf-8")
    for row in saved["table"]:
        ratios = sorted((i["users"][1] - i["users"][0]) / (i["samples"][1] - i["samples"][0])
                        for key, i in saved["intervals"].items()
                        if i["split"] == row["split"] and key.split(" ")[1] == row["kind"]
                        and i["samples"][1] > i["samples"][0])
        at = [ratios[min(len(ratios) - 1, int(q * len(ratios)))] for q in (0.1, 0.9)]
        assert (row["intervals"], row["median"], row["p10"], row["p90"], row["max"]) == (
            len(ratios), statistics.median(ratios), *at, ratios[-1])
        assert (f"| {row['intervals']} {row['kind']} | {row['median']:.2f} ({row['p10']:.2f} - "
                f"{row['p90']:.2f}; {row['max']:.2f}) |") in page
