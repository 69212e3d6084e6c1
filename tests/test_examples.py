"""The scripts in ``examples/`` run end to end on a tiny model and the synthetic dataset."""

import ast
import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import attrs
import pytest
import torch

import automr
from automr.evaluation import paired_bootstrap
from automr.experiments.demo import DemoConfig, demo_summary, run_demo
from automr.interfaces import Retriever
from automr.retrievers import top_k
from automr.testing.synthetic import synthetic_dataset

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NUMBER = r"-?\d+\.\d+"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"automr_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo(tmp_path_factory, writing_model) -> dict[str, Path]:
    """``automr demo``'s folders (data, bigrec, memory, annotations, retriever), tiny sizes, of
    a tiny model whose L2 texts differ per sample (and with the memory inserted)."""
    root = tmp_path_factory.mktemp("examples")
    synthetic_dataset(root)
    writing_model(root / "model")
    config = DemoConfig(model=str(root / "model"), layer=2, train_samples=16, valid_samples=4,
                        batch_size=4, annotate_samples=12, test_samples=2, num_beams=3,
                        likelihood_samples=5)
    run_demo(root / "demo", config, device="cpu", cache_dir=root / "cache", progress=False,
             dataset_dir=root / "prepared", say=lambda line: None)
    folders = {name: root / "demo" / name
               for name in ("bigrec", "memory", "annotations", "retriever")}
    return {"root": root, "data": root / "prepared", "model": root / "model",
            "cache": root / "cache", "raw": root / "raw", **folders}


def rows(output: str, name: str, columns: int) -> list[list[float]]:
    """The numbers of every printed table row that starts with ``name``."""
    pattern = re.compile(rf"^{re.escape(name)}\s+" + r"\s+".join([f"({NUMBER})"] * columns) +
                         r"\s*$", re.MULTILINE)
    return [[float(v) for v in match.groups()] for match in pattern.finditer(output)]


def test_recency_retriever_is_a_retriever_and_picks_the_newest():
    module = load_example("custom_retriever")
    retriever = module.RecencyRetriever()
    assert isinstance(retriever, Retriever)
    assert not isinstance(retriever, torch.nn.Module)  # by shape, not by inheritance
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    scores = retriever.scores(torch.randn(2, 8), torch.randn(2, 4, 8), mask)
    indices, _ = top_k(scores, mask, 1)
    assert indices[:, 0].tolist() == [2, 0]
    assert torch.isinf(scores[~mask]).all()


@pytest.mark.parametrize("grounder", ["likelihood", "constrained"])
def test_custom_retriever_is_evaluated_against_bigrec(demo, capsys, tmp_path, grounder):
    argv = ["--data", str(demo["data"]), "--finetuned", str(demo["bigrec"]),
            "--memory", str(demo["memory"]), "--samples", "3", "--grounder", grounder,
            "--num-beams", "3", "--device", "cpu", "--cache-dir", str(demo["cache"]),
            "--quiet", "--out", str(tmp_path / "eval")]
    evaluation = load_example("custom_retriever").main(argv)
    out = capsys.readouterr().out
    assert "3 test samples" in out and f"grounder {grounder}, layer 2" in out
    assert set(evaluation.reports) == {"bigrec", "automr+recency"}
    assert evaluation.reference == "bigrec"
    for name, report in evaluation.reports.items():
        assert len(report.ranks) == 3
        for interval in report.metrics.values():  # bootstrap intervals around the means
            assert 0.0 <= interval.low <= interval.mean <= interval.high <= 1.0
        cells = " | ".join(f"{iv.mean:.4f} [{iv.low:.4f}, {iv.high:.4f}]"
                           for iv in report.metrics.values())
        assert f"| {name} | {cells} |" in out  # the table printed is the evaluation's
    assert "Paired bootstrap difference vs `bigrec`" in out
    assert set(evaluation.paired()) == {"automr+recency"}
    assert "recency retrieved" in out
    saved = automr.EvaluationFolder(tmp_path / "eval")
    assert saved.report("automr+recency").ranks == evaluation.reports["automr+recency"].ranks
    assert set(saved.details("retrieved", "automr+recency")) <= {s for s in
                                                                  saved.report("bigrec").sample_ids}


def test_custom_retriever_ranks_again_into_its_out_after_another_grounder(demo, tmp_path):
    """--out reuses a method's ranks only when what decides them (model, data, grounder,
    beams; memory, retriever, combiner) is unchanged."""
    def run(grounder, out):
        return load_example("custom_retriever").main([
            "--data", str(demo["data"]), "--finetuned", str(demo["bigrec"]), "--memory",
            str(demo["memory"]), "--samples", "3", "--grounder", grounder, "--num-beams", "3",
            "--device", "cpu", "--cache-dir", str(demo["cache"]), "--quiet", "--out", str(out)])

    run("likelihood", tmp_path / "eval")
    again = run("constrained", tmp_path / "eval")
    assert again.reports == run("constrained", tmp_path / "fresh").reports
    settings = automr.EvaluationFolder(tmp_path / "eval").settings_file("bigrec")
    assert '"grounder": "constrained"' in settings.read_text()


def test_custom_retriever_uses_public_imports_only():
    tree = ast.parse((EXAMPLES / "custom_retriever.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "automr" in imported
    assert not [name for name in imported if name.startswith("automr.")]


def test_the_demo_ends_with_the_likelihood_gain_and_its_intervals(demo):
    summary = demo_summary(demo["root"] / "demo")
    assert "| cooc |" in summary  # the ranking table first
    assert "actual next item ranked" in summary  # one user's recommendation last
    assert "5 test samples" in summary
    for other in ("bigrec", "random"):
        [line] = [ln for ln in summary.splitlines() if ln.strip().startswith(f"AutoMR - {other}")]
        mean, low, high = (float(x) for x in re.findall(NUMBER, line))
        assert low <= mean <= high


def test_the_demo_summary_resamples_as_its_likelihood_step(demo, tmp_path, monkeypatch):
    """The printed intervals used seed 0 whatever seed the step's reports (and its own paired
    intervals) used: a demo with --seed 1 printed another interval than its folder held."""
    import shutil

    import automr.experiments.demo as demo_module
    from automr.evaluation import EvaluationFolder
    from automr.evaluation.likelihood import LikelihoodReport

    copy = tmp_path / "demo"
    shutil.copytree(demo["root"] / "demo", copy)
    folder = EvaluationFolder(copy / "likelihood")
    for name in ("bigrec", "automr", "random"):
        path = folder.ranks_file(f"{name}:likelihood", "loglik")
        LikelihoodReport.load(path).resampled(500, seed=1, resample="users").save(path)
    calls = []
    compare = demo_module.compare_likelihoods
    monkeypatch.setattr(demo_module, "compare_likelihoods",
                        lambda a, b, **options: calls.append(options) or compare(a, b, **options))
    demo_summary(copy)
    assert calls == [{"n_resamples": 500, "seed": 1, "resample": "users"}] * 2


def test_a_demo_grounder_its_last_step_cannot_recommend_with_is_refused_at_once():
    """l2-pop passed the config, then every step ran and the last refused it."""
    with pytest.raises(ValueError, match="grounder"):
        DemoConfig(grounder="l2-pop")


def test_annotate_interactions_synthetic(demo, capsys):
    annotated = load_example("annotate_interactions").main([
        "--model", str(demo["model"]), "--layer", "2", "--samples", "2", "--device", "cpu",
    ])
    out = capsys.readouterr().out
    assert "no --interactions given: wrote synthetic ones" in out
    assert len(annotated) == 2 and out.count("most helpful") == 2
    for row in annotated:
        assert row["memory"] > 0 and 0.0 < row["weight"] <= 1.0


def test_annotate_interactions_own_csv_kept_in_out(demo, capsys, tmp_path):
    annotated = load_example("annotate_interactions").main([
        "--interactions", str(demo["raw"] / "interactions.csv"),
        "--items", str(demo["raw"] / "items.csv"), "--model", str(demo["model"]),
        "--layer", "2", "--samples", "1", "--out", str(tmp_path / "mine"), "--device", "cpu",
        "--seed", "3",
    ])
    out = capsys.readouterr().out
    assert "synthetic" not in out
    (row,) = annotated
    assert f"user {row['user']} -> {row['target']!r}" in out
    assert f"most helpful {row['best']!r}, delta {row['delta']:+.4f}" in out
    assert (tmp_path / "mine" / "data").is_dir() and (tmp_path / "mine" / "memory").is_dir()


def test_score_retriever_compares_with_baselines(demo, capsys, tmp_path):
    score = load_example("score_retriever")
    common = ["--annotations", str(demo["annotations"]), "--data", str(demo["data"]),
              "--memory", str(demo["memory"]), "--retriever", str(demo["retriever"])]
    results = score.main(common)
    out = capsys.readouterr().out
    assert ("samples, validation (held out of training; they chose its stopping epoch); "
            "label form log, temperature 1.0") in out
    names = ("mlp (trained)", "random", "semantic", "semantic (centred)")
    assert tuple(results) == names
    for name in names:
        (values,) = rows(out, name, 2)
        kl, top1 = values
        assert kl >= -1e-4 and 0.0 <= top1 <= 1.0
        assert values == pytest.approx(list(results[name]), abs=1e-3)

    everything = score.main([*common, "--all", "--label-form", "paper",
                             "--temperature", "0.5"])
    out = capsys.readouterr().out
    assert "samples, annotated; label form paper, temperature 0.5" in out
    assert set(everything) == set(names)
    other = tmp_path / "annotations"  # another folder annotating the samples it trained on
    shutil.copytree(demo["annotations"], other)
    header = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(header, indent=3))  # another digest
    with pytest.raises(automr.AutomrError, match="were among those the retriever trained on"):
        score.main(["--annotations", str(other), *common[2:]])


def test_element_gains_sets_gains_beside_what_a_retriever_sees(demo, tmp_path):
    out = tmp_path / "gains.json"
    annotations = str(demo["annotations"])
    argv = ["--data", str(demo["data"]), "--annotations", annotations, "--other", annotations,
            "--model", str(demo["model"]), "--cache-dir", str(demo["cache"]),
            "--memory", str(demo["memory"]), "--out", str(out)]
    summary = load_example("element_gains").main(argv)
    # the same annotation twice: perfectly stable, the same best element everywhere
    assert summary["corr_gain_across_finetunes"] == pytest.approx(1.0)
    assert summary["same_best_element"] == summary["compared_samples"] == summary["samples"] > 0
    assert -1.0 <= summary["corr_gain_cos_target"] <= 1.0
    assert -1.0 <= summary["corr_gain_late_interaction"] <= 1.0
    assert 0 <= summary["late_interaction_picks_best"] <= summary["samples"]
    exported = json.loads(out.read_text())
    assert len(exported["per_sample"]) == summary["samples"]
    assert exported["commands"] == [["python", "examples/element_gains.py", *argv]]
    some = next(iter(exported["per_sample"].values()))
    assert len(some["late_interaction"]) == len(some["gain"])


def gains_export(demo: dict[str, Path], out: Path) -> Path:
    """element_gains.py's export of the demo's annotations, with themselves as ``--other``."""
    annotations = str(demo["annotations"])
    load_example("element_gains").main(
        ["--data", str(demo["data"]), "--annotations", annotations, "--other", annotations,
         "--model", str(demo["model"]), "--cache-dir", str(demo["cache"]), "--out", str(out)])
    return out


def test_gains_exports_say_which_memory_and_readers_refuse_another(demo, tmp_path):
    """The element indices of a gains export mean something only in the memory annotated:
    the export records it, and the scripts that read it refuse another memory."""
    gains = gains_export(demo, tmp_path / "gains.json")
    store = automr.MemoryStore.open(demo["memory"])
    exported = json.loads(gains.read_text())
    assert exported["memory"]["layer"] == store.layer
    assert exported["memory"]["model_fingerprint"] == store.record.model_fingerprint
    read_gains = load_example("token_scorer").read_gains
    assert read_gains(gains, store)["per_sample"] == exported["per_sample"]
    for key, value in (("layer", store.layer + 1), ("digest", "0" * 64)):
        other = tmp_path / f"other-{key}.json"
        other.write_text(json.dumps({**exported, "memory": {**exported["memory"], key: value}}))
        with pytest.raises(SystemExit, match="annotated another memory"):
            read_gains(other, store)


def test_the_gains_scripts_refuse_a_model_the_memory_was_not_built_with(demo, tmp_path):
    """element_gains.py, token_scorer.py, token_scorer_curve.py and retriever_normalize.py
    read the prompt states of --model against the memory's keys: another model with the same
    width gave other numbers with no word (and another width a raw shape error)."""
    from automr.testing.tiny import tiny_config, tiny_model, tiny_tokenizer

    other = tmp_path / "other-model"
    tiny_model(tiny_config("llama", num_layers=4), seed=1).save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    with pytest.raises(SystemExit, match="annotated a memory of another model than"):
        load_example("element_gains").main(
            ["--data", str(demo["data"]), "--annotations", str(demo["annotations"]),
             "--model", str(other), "--cache-dir", str(demo["cache"]),
             "--out", str(tmp_path / "gains.json")])
    store = automr.MemoryStore.open(demo["memory"])
    memory_model = load_example("token_scorer").memory_model
    assert memory_model(str(demo["model"]), store).fingerprint() == store.record.model_fingerprint
    with pytest.raises(automr.AutomrError, match="was built with model"):
        memory_model(str(other), store)


def test_a_scripts_input_error_is_one_line_not_a_traceback(tmp_path):
    import subprocess

    done = subprocess.run([sys.executable, str(EXAMPLES / "score_retriever.py"),
                           "--annotations", str(tmp_path / "none"), "--data", str(tmp_path),
                           "--memory", str(tmp_path), "--retriever", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr, done.stderr


def learn_and_pick(name: str, demo: dict[str, Path], tmp_path: Path,
                   *options: str) -> tuple[dict, dict, dict]:
    """Run example ``name`` learning and picking on one gains export of the demo; returns its
    summary, its export and the gains export's samples, having checked the export's command
    and samples."""
    gains = gains_export(demo, tmp_path / "gains.json")
    out = tmp_path / f"{name}.json"
    argv = ["--data", str(demo["data"]), "--memory", str(demo["memory"]), "--train", str(gains),
            "--test", str(gains), "--model", str(demo["model"]), *options, "--out", str(out)]
    summary = load_example(name).main(argv)
    exported = json.loads(out.read_text())
    per_sample = json.loads(gains.read_text())["per_sample"]
    assert exported["commands"] == [["python", f"examples/{name}.py", *argv]]
    assert set(exported["per_sample"]) == set(per_sample)
    return summary, exported, per_sample


def test_token_scorer_learns_on_one_gains_export_and_picks_on_another(demo, tmp_path):
    summary, exported, per_sample = learn_and_pick("token_scorer", demo, tmp_path,
                                                   "--epochs", "2")
    # the summary is what the picks are worth, read off the gains export
    values = []
    for sample_id, picked in exported["per_sample"].items():
        gain = per_sample[sample_id]["gain"]
        assert len(picked["scores"]) == len(gain)
        values.append(gain[picked["picked"]] - sum(gain) / len(gain))
    for key in ("test_gain", "test_gain_other"):  # --other is the same annotation
        assert summary[key]["samples"] == len(values)
        assert summary[key]["pick_minus_mean"] == pytest.approx(sum(values) / len(values),
                                                                abs=1e-4)
        assert summary[key]["low"] <= summary[key]["pick_minus_mean"] <= summary[key]["high"]
    module = load_example("token_scorer")
    assert summary["objective"] in module.CANDIDATES and 1 <= summary["epochs"] <= 2
    assert set(exported["cv_curves"]) == set(module.CANDIDATES)
    assert summary["cv_pick_minus_mean"] == max(max(c) for c in exported["cv_curves"].values())


def test_retriever_normalize_trains_both_ways_and_reads_each_pick_off_the_test_gains(
        demo, tmp_path):
    summary, exported, per_sample = learn_and_pick("retriever_normalize", demo, tmp_path,
                                                   "--seeds", "0,1")
    runs = ("raw/0", "raw/1", "normalized/0", "normalized/1")
    assert set(summary["runs"]) == set(runs)
    for run in runs:
        values = [exported["per_sample"][i][run] for i in per_sample]
        for sample_id, value in zip(per_sample, values, strict=True):
            gain = per_sample[sample_id]["gain"]  # a pick's value: one element's gain - mean
            assert any(abs(g - sum(gain) / len(gain) - value) < 1e-4 for g in gain)
        assert summary["runs"][run]["test_pick_minus_mean"]["mean"] == pytest.approx(
            sum(values) / len(values), abs=1e-4)
        end = summary["runs"][run]["end"]
        assert end["uniform_kl"] == pytest.approx(summary["runs"][run]["start"]["uniform_kl"])
    averaged = summary["seeds_averaged"]
    assert summary["normalized_minus_raw"]["mean"] == pytest.approx(
        averaged["normalized"]["mean"] - averaged["raw"]["mean"], abs=1e-9)


def test_token_scorer_curve_trains_on_nested_subsets_and_reads_each_pick_off_the_test_gains(
        demo, tmp_path, monkeypatch):
    gains = tmp_path / "gains.json"
    annotations = str(demo["annotations"])
    load_example("element_gains").main(
        ["--data", str(demo["data"]), "--annotations", annotations, "--model",
         str(demo["model"]), "--cache-dir", str(demo["cache"]), "--out", str(gains)])
    per_sample = json.loads(gains.read_text())["per_sample"]
    available = len(per_sample)
    assert available >= 6
    out = tmp_path / "curve.json"
    argv = ["--data", str(demo["data"]), "--memory", str(demo["memory"]), "--train", str(gains),
            str(gains), "--test", str(gains), "--model", str(demo["model"]), "--epochs", "2",
            "--sizes", f"{available},5", "--seeds", "0,1", "--objectives", "regression",
            "--out", str(out)]
    module = load_example("token_scorer_curve")
    result = module.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["commands"] == [["python", "examples/token_scorer_curve.py", *argv]]
    assert result["train_samples_available"] == available  # the same export twice: merged
    runs = {(r["seed"], r["train_samples"]): r for r in result["runs"]}
    assert set(runs) == {(seed, size) for seed in (0, 1) for size in (5, available)}
    assert all(r["objective"] == "regression" and 1 <= r["epochs"] <= 2 for r in runs.values())

    def value(run, sample_id):
        gain = per_sample[sample_id]["gain"]
        return gain[run["picks"][sample_id]] - sum(gain) / len(gain)

    averaged = {size: {i: (value(runs[0, size], i) + value(runs[1, size], i)) / 2
                       for i in per_sample} for size in (5, available)}
    assert [(p["train_samples"], p["key"]) for p in result["curve"]] == [
        (5, "gain"), (available, "gain")]  # no gain_other in this export
    for point in result["curve"]:
        values = averaged[point["train_samples"]]
        assert point["samples"] == len(values)
        assert point["pick_minus_mean"] == pytest.approx(sum(values.values()) / len(values))
        assert point["low"] <= point["pick_minus_mean"] <= point["high"]
    difference = result["largest_minus_smallest"]["gain"]
    assert difference["difference"] == pytest.approx(
        sum(averaged[available][i] - averaged[5][i] for i in per_sample) / available)
    # resampled in the export's order, as the per-size rows and every other table (it sorted)
    paired = paired_bootstrap(*(torch.tensor([averaged[s][i] for i in per_sample],
                                             dtype=torch.float64) for s in (available, 5)))
    assert (difference["low"], difference["high"]) == (paired.low, paired.high)
    assert result["finished"] and all(p["seeds"] == [0, 1] for p in result["curve"])
    # the same command again finds every run done and trains nothing; another command does
    monkeypatch.setattr(module.token_scorer, "fit", lambda *a, **k: pytest.fail("retrained"))
    assert module.main(argv) == result
    inputs = result["inputs"]
    assert module.finished_runs(out, ["python", "examples/token_scorer_curve.py"], inputs) == []
    # the same command on an export written again at its path trains again (it kept the runs)
    changed = json.loads(gains.read_text())
    for values in changed["per_sample"].values():
        values["gain"] = [-g for g in values["gain"]]
    gains.write_text(json.dumps(changed))
    with pytest.raises(pytest.fail.Exception, match="retrained"):
        module.main(argv)
    # subsets are nested within a seed, and a size beyond the exports is refused
    subsets = module.nested_subsets(list(per_sample), [3, 5], seed=0)
    assert set(subsets[3]) < set(subsets[5])
    with pytest.raises(SystemExit, match="asks for"):
        module.nested_subsets(list(per_sample), [available + 1], seed=0)


def test_token_scorer_curve_refuses_to_merge_one_sample_annotated_on_other_elements():
    module = load_example("token_scorer_curve")
    first = {"per_sample": {"u@1:2": {"elements": [0, 1], "gain": [0.1, 0.2]}}}
    same = {"per_sample": {"u@1:2": {"elements": [0, 1], "gain": [0.1, 0.2]},
                           "v@3:4": {"elements": [2], "gain": [0.0]}}}
    assert set(module.merge([first, same])["per_sample"]) == {"u@1:2", "v@3:4"}
    other = {"per_sample": {"u@1:2": {"elements": [0, 2], "gain": [0.1, 0.2]}}}
    with pytest.raises(SystemExit, match="different elements"):
        module.merge([first, other])


def test_oracle_ranking_inserts_each_arms_pick_and_shares_bigrecs_injection(demo, tmp_path,
                                                                             monkeypatch):
    from automr.grounding.l2 import L2Grounder

    module = load_example("oracle_ranking")
    dataset = automr.PreparedDataset.load(demo["data"])
    store = automr.FinetunedRun.open(demo["bigrec"]).open_memory(demo["memory"])
    samples = [s for s in automr.seeded_subset(dataset.samples("test"), 6, 0) if s.memory]
    assert samples
    gains = {}
    for sample in samples:  # made-up gains: the view's second element (if any) is the best
        elements = list(range(len(sample.memory)))
        gains[sample.id] = {"elements": elements, "gain": [-abs(e - 1) / 10 for e in elements]}
    path = tmp_path / "gains.json"
    path.write_text(json.dumps({"per_sample": gains}))
    out = tmp_path / "eval"
    argv = ["--data", str(demo["data"]), "--finetuned", str(demo["bigrec"]), "--memory",
            str(demo["memory"]), "--gains", str(path), "--samples", "6", "--tune-samples", "4",
            "--batch-size", "2", "--device", "cpu", "--cache-dir", str(demo["cache"]),
            "--quiet", "--out", str(out), "--export", str(tmp_path / "export.json")]
    evaluation = module.main(argv)
    names = {f"{arm}:{g}" for arm in module.ARMS for g in module.GROUNDINGS}
    assert set(evaluation.reports) == set(evaluation.likelihoods) == names
    folder = automr.EvaluationFolder(out)
    oracle = folder.details("retrieved", "oracle:l2")
    drawn = folder.details("retrieved", "random:l2")
    for sample in samples:
        _, count, start = store.request_for(sample)  # retrieved: positions in the timeline
        assert oracle[sample.id] == [start + min(1, count - 1)]
        assert drawn[sample.id][0] - start in gains[sample.id]["elements"]
    assert any(store.request_for(s)[2] > 0 for s in samples)  # views that start later
    gammas = {name: folder.details("grounding", name)["gamma"]
              for name in names if not name.endswith(":l2")}
    for g in module.GROUNDINGS[1:]:
        assert gammas[f"oracle:{g}"] == gammas[f"random:{g}"] == gammas[f"bigrec:{g}"]
    with pytest.raises(automr.AutomrError, match="no record"):  # no memory in BIGRec's arm
        folder.details("retrieved", "bigrec:l2")
    texts = {name: folder.details("generated", name) for name in names}
    for name in names:  # each arm's injections weight the arm's own generations
        assert texts[name] == texts[f"{name.partition(':')[0]}:l2"], name
    bigrec = [texts["bigrec:l2"][s.id] for s in samples]
    assert len(set(bigrec)) == len(samples)  # else whose text is whose shows nothing
    assert [texts["oracle:l2"][s.id] for s in samples] != bigrec  # the memory is inserted
    real, generated = L2Grounder.generate, []

    def counted(self, llm, input_ids, *args, **kwargs):
        generated.append(len(input_ids))
        return real(self, llm, input_ids, *args, **kwargs)

    monkeypatch.setattr(L2Grounder, "generate", counted)
    again = module.main(argv)  # resumed from the folder: the same values
    assert again.reports["oracle:l2"].ranks == evaluation.reports["oracle:l2"].ranks
    assert not generated  # nor are BIGRec's validation titles (gamma) generated again
    assert folder.details("grounding", "bigrec:l2-pop")["gamma"] == gammas["bigrec:l2-pop"]
    exported = json.loads((tmp_path / "export.json").read_text())
    assert exported["commands"] == [["python", "examples/oracle_ranking.py", *argv]]
    assert exported["grounding"]["oracle:l2-sasrec"]["gamma"] == gammas["bigrec:l2-sasrec"]
    assert set(exported["retrieved"]) == {f"{arm}:{g}" for arm in ("random", "oracle")
                                          for g in module.GROUNDINGS}


def test_each_sample_gets_its_own_pick_even_where_samples_share_their_view(monkeypatch):
    """Two samples of a user in the same second share prompt and memory view; the oracle's
    pick is each sample's own (picks keyed by view gave both the later sample's)."""
    module = load_example("oracle_ranking")
    first = automr.Sample(user="u", target="x", timestamp=5, recent=("a",),
                          recent_timestamps=(1,), memory=("b", "c", "d"),
                          memory_timestamps=(0, 0, 1))
    second = attrs.evolve(first, target="y")
    picked: list[list[list[int]]] = []

    class Retrieval:  # stands for automr.MemoryRetrieval: scores the batch when it inserts
        def __init__(self, store, retriever, combiner, k):
            self.retriever, self.retrieved = retriever, []

        def insert_for(self, samples):
            keys = torch.ones(len(samples), 3, 4)  # one view for every sample
            mask = torch.ones(len(samples), 3, dtype=torch.bool)

            def insert(state):
                scores = self.retriever.scores(torch.zeros(len(samples), 4), keys, mask)
                picked.append(top_k(scores, mask, 1)[0].tolist())

            return insert

    assert isinstance(module.PickRetriever(), Retriever)
    monkeypatch.setattr(automr, "MemoryRetrieval", Retrieval)
    retrieval = module.PickedRetrieval(None, None, {first.id: 2, second.id: 0})
    assert isinstance(retrieval, automr.Retrieval)  # what a GenerativeMethod takes
    retrieval.insert_for([first, second])(None)
    retrieval.insert_for([second])(None)
    assert picked == [[[2], [0]], [[0]]]
    picks = module.picks_by_sample([first, second], {
        first.id: {"elements": [0, 1, 2], "gain": [0.0, 0.3, 0.1]},
        second.id: {"elements": [0, 1, 2], "gain": [0.2, 0.0, 0.1]}}, "gain", 0)
    assert picks["oracle"] == {first.id: 1, second.id: 0}


class Writes:
    """Ranks nothing in particular; 'generates' the given text for each sample."""

    def __init__(self, texts: dict[str, str]) -> None:
        self.texts, self.settings = texts, {}

    def rank(self, samples):
        return [0] * len(samples)

    def details(self):
        return {"generated": self.texts}


def test_generated_titles_sorts_each_text_into_target_history_catalog_or_other(demo, tmp_path):
    from automr.data import format_target
    from automr.data.popularity import popularity

    dataset = automr.PreparedDataset.load(demo["data"])
    config, catalog = dataset.prompt_config, dataset.catalog
    samples = [s for s in dataset.samples("test") if s.memory][:4]
    a, b, c, d = samples
    unseen = next(i.id for i in catalog if i.id not in {*c.memory, *c.recent, c.target})
    texts = {a.id: format_target(catalog.title(a.target), config),
             b.id: format_target(catalog.title(b.memory[0]), config),
             c.id: format_target(catalog.title(unseen), config),
             d.id: catalog.title(d.target)}  # no quotes: not a response text
    out = tmp_path / "e"
    tuned = dataset.samples("valid")[0]  # a prior's weight is tuned on validation samples
    automr.evaluate({"bigrec:l2": Writes({**texts, tuned.id: texts[a.id]})}, samples,
                    len(catalog), out=out)
    (tmp_path / "e.json").write_text(json.dumps(automr.EvaluationFolder(out).export()))
    script = load_example("generated_titles")
    for results in (out, tmp_path / "e.json"):
        report = script.main(["--results", str(results), "--data", str(demo["data"]), "--json",
                              str(tmp_path / "g.json")])["bigrec:l2"]
        assert report["per_sample"] == {a.id: "target", b.id: "history", c.id: "catalog",
                                        d.id: "other"}
        assert report["shares"] == {"target": 0.25, "history": 0.25, "catalog": 0.25,
                                    "other": 0.25}
        assert report["distinct"] == len(set(texts.values()))
        ranks = {text: rank for text, _, rank in report["most_generated"]}
        assert ranks[texts[d.id]] is None and ranks[texts[a.id]] == 1 + sum(
            count > popularity(dataset)[catalog.ids.index(a.target)]
            for count in popularity(dataset).tolist())
    saved = json.loads((tmp_path / "g.json").read_text())
    assert saved["command"][:2] == ["python", "examples/generated_titles.py"]
    assert saved["format"] == script.FORMAT and saved["methods"]["bigrec:l2"] == report


def test_generated_titles_counts_a_title_shared_by_items_once_with_their_interactions(tmp_path):
    from automr.data import format_target, prepare_csv
    from automr.data.popularity import popularity
    from automr.testing.synthetic import SYNTHETIC_PROTOCOL, write_synthetic_csv

    interactions, items = write_synthetic_csv(tmp_path / "raw")
    lines = items.read_text().splitlines()  # i0 and i1 share a title, as in Amazon catalogs
    lines[2] = "i1," + lines[1].partition(",")[2]
    items.write_text("\n".join(lines) + "\n")
    dataset = prepare_csv(interactions, items, tmp_path / "data", protocol=SYNTHETIC_PROTOCOL)
    counts = dict(zip(dataset.catalog.ids, popularity(dataset).tolist(), strict=True))
    shared = format_target(dataset.catalog.title("i0"), dataset.prompt_config)
    sample = dataset.samples("test")[0]
    report = load_example("generated_titles").classify({sample.id: shared}, dataset, "test", 1)
    others: dict[str, float] = {}  # every other title's count
    for item in dataset.catalog:
        if item.id not in ("i0", "i1"):
            others[item.title] = others.get(item.title, 0) + counts[item.id]
    expected = 1 + sum(n > counts["i0"] + counts["i1"] for n in others.values())
    assert counts["i0"] > 0 and counts["i1"] > 0
    assert report["most_generated"] == [[shared, 1, expected]]


def test_foreign_memory_scores_each_sample_with_another_users_element(demo, tmp_path):
    from typer.testing import CliRunner

    from automr.cli.main import app

    folders = [str(demo[name]) for name in ("data", "bigrec", "memory")]
    evaluated = CliRunner().invoke(app, [
        "evaluate", "--data", folders[0], "--finetuned", folders[1], "--memory", folders[2],
        "--out", str(tmp_path / "ev"), "--methods", "bigrec:likelihood,random:likelihood",
        "--measures", "likelihood", "--samples", "12", "--device", "cpu", "--quiet"])
    assert evaluated.exit_code == 0, evaluated.output
    exported = CliRunner().invoke(app, ["export", str(tmp_path / "ev"),
                                        str(tmp_path / "ev.json")])
    assert exported.exit_code == 0, exported.output
    out = tmp_path / "foreign.json"
    argv = ["--data", folders[0], "--finetuned", folders[1], "--memory", folders[2],
            "--reference", str(tmp_path / "ev.json"), "--samples", "12", "--out", str(out)]
    summary = load_example("foreign_memory").main(argv)
    result = json.loads(out.read_text())
    assert result["commands"] == [["python", "examples/foreign_memory.py", *argv]]
    reference = json.loads((tmp_path / "ev.json").read_text())["loglik"]
    per_sample = result["per_sample"]
    assert summary["samples"] == len(per_sample) > 1
    donors = [entry["donor"] for entry in per_sample.values()]
    assert sorted(donors) == sorted(per_sample)  # each sample a donor once
    assert all(d.split("@")[0] != i.split("@")[0] for i, d in zip(per_sample, donors, strict=True))
    dataset = automr.PreparedDataset.load(folders[0])
    test = {sample.id: sample for sample in dataset.samples("test")}
    title = dataset.catalog.title
    for i, d in zip(per_sample, donors, strict=True):  # no donor element is the answer itself
        assert title(test[i].target) not in {title(item) for item in test[d].memory}
    own = [reference["random:likelihood"][i][0] - reference["bigrec:likelihood"][i][0]
           for i in per_sample]
    assert summary["own_minus_none"]["mean"] == pytest.approx(sum(own) / len(own), abs=1e-9)
    foreign = [per_sample[i]["loglik"] - reference["bigrec:likelihood"][i][0] for i in per_sample]
    assert summary["donor_minus_none"]["mean"] == pytest.approx(sum(foreign) / len(foreign),
                                                                abs=1e-9)
    # a reference of another set-up (here: append-token) was paired with the concat arm
    other = json.loads((tmp_path / "ev.json").read_text())
    other["results"]["config"]["combiner"] = "append-token"
    (tmp_path / "other.json").write_text(json.dumps(other))
    for reference, says in ((tmp_path / "other.json", "combiner 'append-token' \\(not "
                                                      "'concat'\\)"),
                            (tmp_path / "ev", "is not a file")):
        argv[argv.index("--reference") + 1] = str(reference)
        with pytest.raises(SystemExit, match=says):
            load_example("foreign_memory").main(argv)


def test_donors_never_give_a_memory_that_holds_the_answer():
    """Every sample gets another user's sample as donor, each sample a donor once, and no
    donor's memory holds the sample's true title (by title: merged items share one); where no
    donor can fit, it says so."""
    import attrs

    donors = load_example("foreign_memory").donors

    @attrs.frozen
    class Sample:
        id: str
        user: str
        target: str
        memory: tuple[str, ...]

    def title(item: str) -> str:
        return "A" if item in ("a", "b") else item  # a and b: one title

    def build(popular_target: int) -> list[Sample]:  # a or b in 3 of 4 memories
        return [Sample(f"s{i}", f"u{i // 2}", "ab"[i % 2] if i % popular_target == 0 else
                       f"t{i}", ("a", "b", f"m{i}") if i % 4 else (f"m{i}",))
                for i in range(40)]

    for seed in range(5):
        samples = build(5)  # 8 samples with title A, 10 donors without it
        pairs = donors(samples, seed, title)
        by_id = {sample.id: sample for sample in samples}
        assert sorted(d.id for d in pairs.values()) == sorted(by_id)
        for sid, donor in pairs.items():
            sample = by_id[sid]
            assert donor.user != sample.user
            assert title(sample.target) not in {title(m) for m in donor.memory}
    with pytest.raises(SystemExit, match="no donor fits"):
        donors(build(2), 0, title)  # 20 samples with title A, 10 donors without it


@pytest.mark.parametrize(("name", "more"), [("token_scorer_curve", ["--sizes", "4"]),
                                            ("retriever_normalize", [])])
def test_the_seed_examples_refuse_a_repeated_seed(name, more, capsys):
    """``--seeds 0,0`` trained seed 0 twice and averaged it as two seeds (the curve weighted
    it double, the summary said 2 seeds); refused before any file is read."""
    module = load_example(name)
    with pytest.raises(SystemExit) as stopped:
        module.main(["--data", "d", "--memory", "m", "--train", "t", "--test", "t",
                     "--out", "o", "--seeds", "0,0", *more])
    assert stopped.value.code == 2
    assert "--seeds repeats a seed: 0,0" in capsys.readouterr().err


def test_the_user_resampling_example_reads_every_export_of_a_folder(tmp_path, monkeypatch,
                                                                     capsys):
    """Its table (docs/concepts/evaluation.md#resampling-users) from two committed exports,
    one of a subset and one of the whole split; other JSON files are skipped."""
    results = Path(__file__).resolve().parents[1] / "docs" / "results"
    for name in ("automr/memory-1000.json", "bigrec/51k-vs-sasrec-test-all.json",
                 "bigrec/finetune-l15-2k.json"):
        (tmp_path / Path(name).name).write_bytes((results / name).read_bytes())
    monkeypatch.setattr(sys, "argv", ["resample_users.py", str(tmp_path)])
    load_example("resample_users").main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    kinds = [tuple(cell.strip() for cell in row.split("|")[1:3]) for row in rows[1:]]
    assert [split for split, _ in kinds] == ["subsets", "subsets", "whole split", "whole split"]
    assert all(re.fullmatch(rf"\| .+ \| \d+ (paired|single) \| {NUMBER} \({NUMBER} - {NUMBER}; "
                            rf"{NUMBER}\) \|", row) for row in rows[1:])


def test_the_gains_scripts_refuse_another_dataset_or_a_file_that_is_no_gains_export(demo,
                                                                                     tmp_path):
    """A dataset prepared otherwise (shorter histories) failed in element_gains.py and the
    token-scorer scripts with a raw IndexError; a missing file or another JSON raised
    FileNotFoundError or KeyError."""
    import attrs

    from automr.data import prepare_csv
    from automr.testing.synthetic import SYNTHETIC_PROTOCOL

    shorter = tmp_path / "shorter"
    prepare_csv(demo["raw"] / "interactions.csv", demo["raw"] / "items.csv", shorter,
                protocol=attrs.evolve(SYNTHETIC_PROTOCOL, max_history=4))
    common = ["--annotations", str(demo["annotations"]), "--model", str(demo["model"]),
              "--cache-dir", str(demo["cache"]), "--out", str(tmp_path / "gains.json")]
    with pytest.raises(SystemExit, match="does not hold as annotated"):
        load_example("element_gains").main(["--data", str(shorter), *common])
    with pytest.raises(automr.AutomrError, match="built from another dataset"):
        load_example("element_gains").main(["--data", str(shorter), *common, "--memory",
                                            str(demo["memory"])])
    scorer = load_example("token_scorer")
    store = automr.MemoryStore.open(demo["memory"])
    (tmp_path / "other.json").write_text('{"ranks": {}}')
    for path, says in ((tmp_path / "missing.json", "cannot be read"),
                       (tmp_path / "other.json", "is not an element-gains export")):
        with pytest.raises(SystemExit, match=says):
            scorer.read_gains(path, store)


def test_retriever_normalize_holds_out_one_sample_at_least_as_the_command_does():
    """round(0.2 * 2) held out none, and the untrained retriever's validation failed on an
    empty batch; `automr retriever train` holds out max(1, round(0.2 * n))."""
    from automr.retrievers import RetrievalSample

    generator = torch.Generator().manual_seed(0)
    learn = [RetrievalSample(query=torch.randn(8, generator=generator),
                             keys=torch.randn(3, 8, generator=generator),
                             targets=torch.tensor([0.2, 0.5, 0.3])) for _ in range(2)]
    retriever, run = load_example("retriever_normalize").train(learn, False, 0)
    assert retriever.config.hidden_size == 8 and run


@pytest.mark.parametrize(("name", "argv", "says"), [
    ("token_scorer_curve", ["--data", "d", "--memory", "m", "--train", "t", "--test", "t",
                            "--out", "o", "--sizes", "x"], "comma-separated whole numbers"),
    ("retriever_normalize", ["--data", "d", "--memory", "m", "--train", "t", "--test", "t",
                             "--out", "o", "--seeds", "a"], "comma-separated whole numbers"),
    ("oracle_ranking", ["--data", "d", "--finetuned", "f", "--memory", "m", "--gains", "g",
                        "--combiner", "bogus"], "invalid choice: 'bogus'"),
    ("oracle_ranking", ["--data", "d", "--finetuned", "f", "--memory", "m", "--gains",
                        "missing.json"], "--gains missing.json is not an element-gains export"),
    ("annotate_interactions", ["--recent-k", "0"], "recent_k must be >= 1"),
])
def test_a_wrong_example_option_is_one_line(name, argv, says, tmp_path, monkeypatch, capsys):
    """They failed with a raw ValueError, KeyError or FileNotFoundError traceback."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises((SystemExit, automr.AutomrError)) as raised:
        load_example(name).main(argv)
    told = str(raised.value) + capsys.readouterr().err
    assert says in told and "Traceback" not in told
