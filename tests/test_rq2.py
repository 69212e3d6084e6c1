"""What a named method's settings hold, the random-retrieval seed and ``automr rq2``, on a tiny
model and synthetic data."""

import json
import shutil
from pathlib import Path

import attrs
import pytest
import typer
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from automr.cli.figures import parse_seeds, rq2_command
from automr.data import PreparedDataset
from automr.defaults import DEFAULT_MODEL
from automr.errors import AutomrError
from automr.evaluation import EvaluationFolder
from automr.experiments.evaluate import EvalConfig, evaluate_methods
from automr.experiments.plotting import require_matplotlib
from automr.experiments.rq2 import RQ2Result, plot_rq2, run_rq2
from automr.llm.loading import load_model
from automr.memory import MemoryConfig, MemoryRecord, build_memory
from automr.methods import Artifacts, GenerativeMethod, MethodOptions, Workspace, method_settings
from automr.recommenders.finetune import FinetuneConfig, finetune
from automr.retrievers import build_retriever
from automr.testing.synthetic import synthetic_dataset

runner = CliRunner()
CONFIG = EvalConfig(max_samples=6, batch_size=6)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, writing_model):
    """A fine-tune (LoRA from layer 2), a layer-2 memory and two untrained MLP retrievers, of
    a tiny model whose L2 texts differ per sample."""
    root = tmp_path_factory.mktemp("rq2")
    dataset = synthetic_dataset(root)
    model = writing_model(root / "model")
    finetune(load_model(str(model), device="cpu"), dataset, root / "ft",
             FinetuneConfig(max_train_samples=8, max_valid_samples=4, batch_size=4,
                            lora_from_layer=2), progress=False)
    store = build_memory(load_model(str(model), device="cpu"), dataset, 2,
                         MemoryConfig(encoder="item", store_token_states=True), root / "mem",
                         progress=False)
    for seed in (0, 1):
        build_retriever("mlp", store.hidden_size, seed=seed).save(root / f"ret-{seed}")
    return root


def evaluate_random(workspace, out, config):
    return evaluate_methods(workspace / "prepared", ["random:likelihood"], out, config,
                            Artifacts(finetuned=workspace / "ft", memory=workspace / "mem"),
                            device="cpu", progress=False).reports["random:likelihood"]


def retrieved(out):
    return json.loads((out / "retrieved" / "random-likelihood.json").read_text())


def test_retrieval_seed_enters_only_random_settings(workspace):
    dataset = PreparedDataset.load(workspace / "prepared")
    artifacts = Artifacts(finetuned=workspace / "ft", memory=workspace / "mem")

    def settings(method, **options):
        return method_settings(method, Workspace(dataset, artifacts, MethodOptions(**options)))

    assert settings("random:l2", seed=4)["retrieval_seed"] == 4  # unset: the sample seed
    assert settings("random:l2", seed=4) == settings("random:l2", seed=4, retrieval_seed=4)
    assert settings("random:l2", seed=4, retrieval_seed=1)["retrieval_seed"] == 1
    assert settings("bigrec:l2", retrieval_seed=3) == settings("bigrec:l2")  # unaffected
    assert settings("bigrec:l2")["finetuned"] == str((workspace / "ft").resolve())


def test_every_option_that_moves_ranks_enters_the_settings(workspace):
    """A resumed evaluation reuses ranks whose settings are equal: the memory's k for every
    memory kind, the injection's tuning for both priors, the split for what an injection
    takes of its L2 grounding's generations."""
    from automr.methods.registry import INJECTION_ONLY

    dataset = PreparedDataset.load(workspace / "prepared")
    artifacts = Artifacts(finetuned=workspace / "ft", memory=workspace / "mem",
                          retriever=workspace / "ret-0")

    def settings(method, **options):
        return method_settings(method, Workspace(dataset, artifacts, MethodOptions(**options)))

    for kind in ("automr", "random", "semantic"):
        assert settings(f"{kind}:l2", k=1) != settings(f"{kind}:l2", k=2)
    for injection in ("l2-pop", "l2-sasrec"):
        assert settings(f"bigrec:{injection}", tune_samples=4) != settings(
            f"bigrec:{injection}", tune_samples=5)
    assert not {"layer", "num_beams", "k", "finetuned"} & set(INJECTION_ONLY)


def test_a_method_kinds_version_enters_its_settings_from_2_on(workspace, monkeypatch):
    """A builder that comes to rank otherwise raises its kind's version, so saved ranks of the
    old one are not reused; at version 1 nothing is added (older folders stay valid)."""
    from automr.methods import registry

    space = Workspace(PreparedDataset.load(workspace / "prepared"), Artifacts())
    assert "version" not in method_settings("pop", space)
    monkeypatch.setitem(registry.METHODS, "pop",
                        attrs.evolve(registry.METHODS["pop"], version=2))
    assert method_settings("pop", space)["version"] == 2
    # an LM's values follow rules beyond its settings (title ties, tokenization, gamma ties):
    # values saved before the last change are made again (the history review)
    for method in ("bigrec:constrained", "bigrec:l2-pop", "random:l2-sasrec", "base:l2"):
        assert registry.rule_marks(method)["lm_rules"] == registry.LM_RULES == 2
    assert "lm_rules" not in registry.rule_marks("pop")
    # random retrieval drew over distinct keys from 62ca894 to 7655fa1, under version 1: a
    # folder of those commits was read back as today's draws (the compatibility review)
    assert registry.METHODS["random"].version == 2


def copies(workspace, folder, *names):
    for name in names:
        shutil.copytree(workspace / name, folder / name)
    return Artifacts(finetuned=folder / "ft", memory=folder / "mem", retriever=folder / "ret-0")


def test_settings_change_when_an_artifact_is_made_again_in_its_folder(workspace, tmp_path):
    """An evaluation folder reuses ranks whose settings are equal: what each artifact folder
    holds is part of them, not only its path, and so are the dataset and an LM's dtype."""
    dataset = PreparedDataset.load(workspace / "prepared")
    artifacts = copies(workspace, tmp_path / "a", "ft", "mem", "ret-0")

    def settings(method="automr:l2", data=dataset, **space):
        return method_settings(method, Workspace(data, space.pop("artifacts", artifacts),
                                                 **space))

    before = settings()
    elsewhere = settings(artifacts=copies(workspace, tmp_path / "b", "ft", "mem", "ret-0"))
    assert before["digests"] == elsewhere["digests"]  # the same files in another folder
    assert before["finetuned"] != elsewhere["finetuned"]

    shutil.rmtree(artifacts.retriever)  # trained again into the same folder
    shutil.copytree(workspace / "ret-1", artifacts.retriever)
    after = settings()
    assert after["digests"]["retriever"] != before["digests"]["retriever"]
    assert {k: v for k, v in after.items() if k != "digests"} == {
        k: v for k, v in before.items() if k != "digests"}

    adapter = artifacts.finetuned / "best" / "adapter_model.safetensors"
    weights = load_file(adapter)
    save_file({k: v + 1e-3 for k, v in weights.items()}, adapter)
    assert settings()["digests"]["finetuned"] != after["digests"]["finetuned"]
    assert settings("bigrec:l2")["digests"] == {"finetuned": settings()["digests"]["finetuned"]}

    config = artifacts.memory / "config.json"
    built = json.loads(config.read_text())
    config.write_text(json.dumps({**built, "pooling": {"kind": "last", "skip_first": 0}}))
    assert settings()["digests"]["memory"] != after["digests"]["memory"]

    other = synthetic_dataset(tmp_path / "other", seed=1)
    assert settings("pop", other)["data"] != settings("pop")["data"]
    assert settings("bigrec:l2")["dtype"] == "float32"
    assert settings("bigrec:l2", dtype="bfloat16")["dtype"] == "bfloat16"
    assert "dtype" not in settings("pop") and "digests" not in settings("pop")

    model = tmp_path / "model"  # a base model read from a folder: its files decide it
    shutil.copytree(workspace / "model", model)
    base = settings("base:l2", artifacts=attrs.evolve(artifacts, model=str(model)))
    weights = model / "model.safetensors"
    save_file({k: v + 1e-3 for k, v in load_file(weights).items()}, weights,
              metadata={"format": "pt"})
    moved = settings("base:l2", artifacts=attrs.evolve(artifacts, model=str(model)))
    assert base["digests"]["model"] != moved["digests"]["model"]
    embedded = settings("base:l2", artifacts=Artifacts())  # its name decides it
    assert embedded["model"] == DEFAULT_MODEL and "digests" not in embedded
    weights.unlink()  # a folder missing its weights: loading it says so, not the settings
    assert "digests" not in settings("base:l2", artifacts=attrs.evolve(artifacts,
                                                                     model=str(model)))


def test_a_retriever_trained_again_in_its_folder_is_ranked_again(workspace, tmp_path):
    """The stale-reuse bug: the same command after ``automr retriever train`` wrote a new
    retriever into the same --retriever folder read the old retriever's ranks back."""
    artifacts = copies(workspace, tmp_path, "ret-0")
    artifacts = attrs.evolve(artifacts, finetuned=workspace / "ft", memory=workspace / "mem")

    def evaluate(out):
        return evaluate_methods(workspace / "prepared", ["automr:likelihood"], out,
                                attrs.evolve(CONFIG, measures=("likelihood",)), artifacts,
                                device="cpu", progress=False)

    first = evaluate(tmp_path / "out").likelihoods["automr:likelihood"]
    shutil.rmtree(artifacts.retriever)
    hidden = MemoryRecord.read(workspace / "mem").hidden_size
    build_retriever("mlp", hidden, seed=1).save(artifacts.retriever)
    again = evaluate(tmp_path / "out").likelihoods["automr:likelihood"]
    fresh = evaluate(tmp_path / "fresh").likelihoods["automr:likelihood"]
    assert again == fresh != first


def test_an_injection_added_to_a_folder_measures_the_kept_generations(workspace, tmp_path,
                                                                        monkeypatch):
    """X:l2-pop (or -sasrec) added to a folder that holds X:l2 measures the titles X:l2
    generated there with the same settings (and an injection's validation titles) instead of
    generating them again; the ranks equal a fresh evaluation's."""
    from automr.grounding.l2 import L2Grounder

    config = attrs.evolve(CONFIG, tune_samples=4, num_beams=3)
    artifacts = Artifacts(finetuned=workspace / "ft", memory=workspace / "mem")

    def evaluate(methods, out):
        return evaluate_methods(workspace / "prepared", methods, out, config, artifacts,
                                device="cpu", progress=False).reports

    fresh = evaluate(["bigrec:l2-pop", "random:l2-pop", "bigrec:l2-sasrec"], tmp_path / "fresh")
    evaluate(["bigrec:l2", "random:l2"], tmp_path / "out")
    real, generated = L2Grounder.generate, []

    def counted(self, llm, input_ids, *args, **kwargs):
        generated.append(len(input_ids))
        return real(self, llm, input_ids, *args, **kwargs)

    monkeypatch.setattr(L2Grounder, "generate", counted)
    added = evaluate(["bigrec:l2", "bigrec:l2-pop", "random:l2", "random:l2-pop"],
                     tmp_path / "out")
    assert sum(generated) == 2 * 4  # the 4 validation samples gamma is tuned on, per model
    for method in ("bigrec:l2-pop", "random:l2-pop"):
        assert added[method].ranks == fresh[method].ranks
    folder = EvaluationFolder(tmp_path / "out")
    texts = folder.details("generated", "bigrec:l2")
    assert len(set(texts.values())) == len(texts)  # a text measured for another sample shows
    test_ids = set(added["random:l2"].sample_ids)
    kept = folder.details("retrieved", "random:l2-pop")
    assert {k: v for k, v in kept.items() if k in test_ids} == folder.details(
        "retrieved", "random:l2")
    generated.clear()
    sasrec = evaluate(["bigrec:l2-sasrec"], tmp_path / "out")  # validation titles kept too
    assert not generated and sasrec["bigrec:l2-sasrec"].ranks == fresh["bigrec:l2-sasrec"].ranks
    other = attrs.evolve(config, num_beams=2)  # other generations: not taken for these
    evaluate_methods(workspace / "prepared", ["bigrec:l2-pop"], tmp_path / "out", other,
                     artifacts, device="cpu", progress=False)
    assert sum(generated) == 4 + len(test_ids)


def test_retrieval_seed_changes_retrieval_not_samples(workspace, tmp_path):
    default = evaluate_random(workspace, tmp_path / "default", CONFIG)
    others = {s: evaluate_random(workspace, tmp_path / f"seed-{s}",
                                 attrs.evolve(CONFIG, retrieval_seed=s)) for s in (1, 2, 3)}
    picks = {s: retrieved(tmp_path / f"seed-{s}") for s in others}
    assert all(r.sample_ids == default.sample_ids for r in others.values())
    assert all(list(p) == list(retrieved(tmp_path / "default")) for p in picks.values())
    assert any(p != retrieved(tmp_path / "default") for p in picks.values())
    # retrieval_seed = seed is the old behaviour: the unset run is reused, not recomputed
    saved = tmp_path / "default" / "ranks" / "random-likelihood.json"
    stamp = saved.stat().st_mtime_ns
    evaluate_random(workspace, tmp_path / "default", attrs.evolve(CONFIG, retrieval_seed=0))
    assert saved.stat().st_mtime_ns == stamp
    settings = json.loads(saved.with_suffix(".settings.json").read_text())
    assert settings["retrieval_seed"] == 0
    assert "random retrieval seed 1" in (tmp_path / "seed-1" / "results.md").read_text()


def test_rq2_runs_the_lower_half_of_a_likelihood_batch_once_for_all_its_runs(
        workspace, tmp_path, monkeypatch):
    """Its evaluations run one after another, so the first one's passes are kept for the
    methods of those after it (``keep_for_later``)."""
    import automr.methods.generative as generative

    calls = []
    real = generative.lower_targets
    monkeypatch.setattr(generative, "lower_targets",
                        lambda *args, **kw: calls.append(1) or real(*args, **kw))
    run_rq2(workspace / "prepared", tmp_path / "rq2", finetuned=workspace / "ft",
            memory=workspace / "mem", retrievers=[workspace / "ret-0"], seeds=[0],
            grounder="likelihood", config=attrs.evolve(CONFIG, measures=("likelihood",)),
            device="cpu", progress=False, say=lambda _: None)
    assert len(calls) == 1  # bigrec's one batch of 6, read by automr and random


def test_rq2_writes_tables_and_figures_and_resumes(workspace, tmp_path, monkeypatch):
    out = tmp_path / "rq2"
    result = run_rq2(workspace / "prepared", out, finetuned=workspace / "ft",
                     memory=workspace / "mem", retrievers=[workspace / "ret-0",
                                                           workspace / "ret-1"],
                     seeds=[0, 1], grounder="likelihood", config=CONFIG, device="cpu",
                     progress=False, say=lambda _: None)
    assert [r.group for r in result.runs] == ["bigrec", "automr", "automr", "random", "random"]
    assert [r.source for r in result.group("random")] == ["0", "1"]
    assert result.metrics == ("recall@1", "recall@5", "ndcg@5", "recall@10", "ndcg@10")
    assert result.samples == 6
    for folder in ("bigrec", "automr-0", "automr-1", "random-seed-0", "random-seed-1"):
        assert (out / folder / "results.json").exists()
    payload = json.loads((out / "rq2.json").read_text())
    spread = payload["summary"]["random"]["recall@5"]
    values = [r.metrics["recall@5"] for r in result.group("random")]
    assert (spread["min"], spread["max"], spread["n"]) == (min(values), max(values), 2)
    wins = payload["automr_vs_random"]["ndcg@10"]
    assert wins["wins"] + wins["ties"] + wins["losses"] == wins["pairs"] == 4
    assert payload["dtype"] == result.dtype == "float32"  # the runs' own, not "auto"
    assert {json.loads((out / f / "ranks" / f"{m}.settings.json").read_text())["dtype"]
            for f, m in (("bigrec", "bigrec-likelihood"), ("random-seed-0", "random-likelihood"))
            } == {"float32"}
    text = (out / "rq2.md").read_text()
    assert "the model in float32." in text
    assert "| random | 2 |" in text and "| AutoMR | 2 |" in text and "NDCG@10" in text
    for name in ("rq2.png", "rq2.svg"):
        assert (out / name).stat().st_size > 1000
    svg = (out / "rq2.svg").read_bytes()
    plot_rq2(out)  # redrawn from rq2.json: the same file (marker ids are not random)
    assert (out / "rq2.svg").read_bytes() == svg
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/ranks/*.json")}
    assert len(stamps) == 10  # 5 reports + 5 settings

    def no_ranking(*args, **kwargs):
        raise AssertionError("ranked again although every run was finished")

    monkeypatch.setattr(GenerativeMethod, "rank", no_ranking)
    app = typer.Typer()
    app.command("rq2")(rq2_command)
    app.command("other")(lambda: None)
    again = runner.invoke(app, [
        "rq2", "--data", str(workspace / "prepared"), "--out", str(out), "--finetuned",
        str(workspace / "ft"), "--memory", str(workspace / "mem"), "--retriever",
        str(workspace / "ret-0"), "--retrievers", str(workspace / "ret-1"), "--seeds", "0-1",
        "--grounder", "likelihood", "--samples", "6", "--batch-size", "6", "--device", "cpu",
        "--quiet"])
    assert again.exit_code == 0, again.output
    assert "# RQ2" in again.output
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/ranks/*.json")} == stamps
    (out / "rq2.png").unlink()
    plot_rq2(out)  # re-plot from rq2.json alone
    assert (out / "rq2.png").stat().st_size > 1000
    assert RQ2Result.load(out / "rq2.json") == result


def test_rq2_by_target_likelihood(workspace, tmp_path, monkeypatch):
    """measures=("likelihood",): every run is compared by its mean target log-likelihood, the
    value of its own loglik/ file (no ranking). The runs load the fine-tune once and run the
    lower half of the batch once between them (each loaded it and ran it: 4 times here)."""
    import automr.methods.generative as generative
    from automr.recommenders.runs import FinetunedRun

    calls = {"load": 0, "lower": 0}
    load, lower = FinetunedRun.load, generative.lower_targets

    def counted(name, real):
        return lambda *args, **kw: calls.__setitem__(name, calls[name] + 1) or real(*args,
                                                                                    **kw)

    monkeypatch.setattr(FinetunedRun, "load", counted("load", load))
    monkeypatch.setattr(generative, "lower_targets", counted("lower", lower))
    out = tmp_path / "rq2-ll"
    config = attrs.evolve(CONFIG, measures=("likelihood",))
    result = run_rq2(workspace / "prepared", out, finetuned=workspace / "ft",
                     memory=workspace / "mem", retrievers=[workspace / "ret-0"],
                     seeds=[0, 1], grounder="likelihood", config=config, device="cpu",
                     progress=False, say=lambda _: None)
    assert result.metrics == ("target_ll", "target_ll_per_token")
    assert calls == {"load": 1, "lower": 1}  # 4 runs of 6 samples, one batch
    assert not list(out.glob("*/ranks/*.json"))
    for run in result.runs:
        saved = json.loads(next((Path(run.folder) / "loglik").glob("*-likelihood.json"))
                           .read_text())
        values = [s["log_likelihood"] for s in saved["samples"]]
        assert run.metrics["target_ll"] == pytest.approx(sum(values) / len(values))
    folder = out / "random-seed-0"  # the elements behind each likelihood, per sample
    retrieved = json.loads((folder / "retrieved" / "random-likelihood.loglik.json").read_text())
    scored = json.loads((folder / "loglik" / "random-likelihood.json").read_text())
    assert set(retrieved) == {s["id"] for s in scored["samples"]}
    seeds = [r.metrics["target_ll"] for r in result.group("random")]
    assert seeds[0] != seeds[1]  # other elements, other likelihoods
    assert "Target log-likelihood" in (out / "rq2.md").read_text()


def test_bad_rq2_inputs_are_one_line_errors(workspace, tmp_path):
    with pytest.raises(AutomrError, match="distinct"):
        run_rq2(workspace / "prepared", tmp_path, finetuned=workspace / "ft",
                memory=workspace / "mem", retrievers=[workspace / "ret-0"], seeds=[1, 1])
    for grounder in ("magic", "l2-pop"):  # its gamma was tuned on 200 validation samples,
        with pytest.raises(AutomrError, match=f"--grounder '{grounder}': choose one of l2, "
                                              f"constrained, likelihood$"):  # no option said
            run_rq2(workspace / "prepared", tmp_path, finetuned=workspace / "ft",
                    memory=workspace / "mem", retrievers=[workspace / "ret-0"],
                    grounder=grounder)
    # the likelihood measure decodes nothing: another grounder would only name its runs
    with pytest.raises(AutomrError, match="give grounder likelihood"):
        run_rq2(workspace / "prepared", tmp_path / "named", finetuned=workspace / "ft",
                memory=workspace / "mem", retrievers=[workspace / "ret-0"], seeds=[0],
                config=EvalConfig(measures=("likelihood",)))
    assert not (tmp_path / "named").exists()
    # a misspelt measure was told to use grounder likelihood, as if it were the likelihood one;
    # the config refuses it now, before any run
    with pytest.raises(AutomrError, match=r"^measures must be a non-empty subset of ranks, "
                                          r"likelihood, each named once; got likelihod$"):
        EvalConfig(measures=("likelihod",))
    # a mismatched artifact is refused before BIGRec's reference run (nothing written)
    with pytest.raises(AutomrError, match="retriever"):
        run_rq2(workspace / "prepared", tmp_path / "early", finetuned=workspace / "ft",
                memory=workspace / "mem", retrievers=[tmp_path / "nope"], seeds=[0])
    assert not (tmp_path / "early").exists()
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    with pytest.raises(AutomrError, match="--seeds"):
        parse_seeds("a-b")
    with pytest.raises(AutomrError, match="the range 3-1 runs backwards; write 1-3"):
        parse_seeds("3-1")


def test_rq2_refuses_a_retriever_given_twice(workspace, tmp_path, monkeypatch):
    """`--retriever R --retriever R` ranked R twice (automr-0, automr-1) and counted it as two
    retrievers in AutoMR's box and in the AutoMR-above-random pair counts."""
    import automr.experiments.rq2 as rq2

    def ran(*_args, **_kwargs):
        raise AssertionError("an evaluation ran")

    monkeypatch.setattr(rq2, "evaluate_methods", ran)
    twice = [workspace / "ret-0", workspace / "." / "ret-0"]
    with pytest.raises(AutomrError, match=r"distinct retrievers; .*ret-0 is given more than"):
        run_rq2(workspace / "prepared", tmp_path / "twice", finetuned=workspace / "ft",
                memory=workspace / "mem", retrievers=twice, seeds=[0], grounder="likelihood",
                config=CONFIG, device="cpu", progress=False, say=lambda _: None)
    assert not (tmp_path / "twice").exists()


def test_rq2_refuses_an_out_holding_another_artifact(workspace, tmp_path):
    """--out swapped with --data: its runs would be written beside the dataset's files."""
    data = shutil.copytree(workspace / "prepared", tmp_path / "data")
    before = sorted(p.name for p in data.iterdir())
    with pytest.raises(AutomrError, match=r"holds other files .*new or empty folder"):
        run_rq2(workspace / "prepared", data, finetuned=workspace / "ft",
                memory=workspace / "mem", retrievers=[workspace / "ret-0"], seeds=[0],
                grounder="likelihood", config=CONFIG, device="cpu", progress=False,
                say=lambda _: None)
    assert sorted(p.name for p in data.iterdir()) == before


def test_missing_matplotlib_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(AutomrError, match=r'pip install matplotlib \(in a checkout of automr: '
                                          r'pip install -e "\.\[plots\]"\)'):
        require_matplotlib()


def test_synthetic_test_split_has_samples_with_memory(workspace):
    samples = PreparedDataset.load(workspace / "prepared").samples("test")
    assert sum(bool(s.memory) for s in samples) >= 6


@pytest.mark.parametrize("metrics", [2, 5], ids=["likelihood", "ranks"])
def test_every_title_of_the_rq2_figure_fits_inside_it(metrics, tmp_path):
    """The committed 1,000-sample RQ2 (two likelihood metrics) and a five-metric one: the
    figure's title and each panel's title are drawn whole, not cut at the figure's edge."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from automr.experiments.rq2 import rq2_figure

    payload = json.loads((Path(__file__).resolve().parents[1] / "docs" / "results" / "automr"
                          / "rq2-likelihood-1000.json").read_text())
    if metrics == 5:  # the same runs under the five ranking metrics' names
        names = ["recall@1", "recall@5", "ndcg@5", "recall@10", "ndcg@10"]
        payload["metrics"] = names
        for run in payload["runs"]:
            run["metrics"] = dict(zip(names, [*run["metrics"].values()] * 3, strict=False))
    (tmp_path / "rq2.json").write_text(json.dumps(payload))
    figure = rq2_figure(RQ2Result.load(tmp_path / "rq2.json"))
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer, bounds = canvas.get_renderer(), figure.bbox
    titles = [figure._suptitle, *(ax.title for ax in figure.axes)]
    assert len(titles) == metrics + 1
    for title in titles:
        box = title.get_window_extent(renderer)
        assert bounds.x0 <= box.x0 and box.x1 <= bounds.x1 and box.y1 <= bounds.y1, (
            title.get_text())


def test_the_summary_and_the_automr_vs_random_counts_are_the_plain_computation():
    """Per group the mean, the *sample* standard deviation, min and max over its runs; per
    (AutoMR run, random seed) pair a win where AutoMR's value is higher."""
    from automr.experiments.rq2 import RQ2Run

    def run(group: str, value: float) -> RQ2Run:
        return RQ2Run(group=group, method=f"{group}:likelihood", folder=group, source=None,
                      metrics={"ndcg@10": value})

    result = RQ2Result(grounder="likelihood", samples=3, config={}, metrics=("ndcg@10",),
                       runs=(run("bigrec", 0.1), run("automr", 0.3), run("automr", 0.2),
                             run("random", 0.2), run("random", 0.1), run("random", 0.0)))
    payload = result.to_json()
    assert payload["summary"]["random"]["ndcg@10"] == pytest.approx(
        {"n": 3, "mean": 0.1, "std": 0.1, "min": 0.0, "max": 0.2})
    assert payload["summary"]["bigrec"]["ndcg@10"]["std"] == 0.0  # one run
    # 0.3 beats all three seeds; 0.2 beats 0.1 and 0.0 and ties 0.2
    assert payload["automr_vs_random"]["ndcg@10"] == {"wins": 5, "ties": 1, "losses": 0,
                                                      "pairs": 6}


def test_runs_with_the_same_values_on_other_samples_tie():
    """Two runs whose samples have the same ranks in another order have one NDCG mean; the
    float sum of the per-sample values differed in its last bit (32 of 200 such pairs), and
    the table said 'random higher'."""
    import torch

    from automr.evaluation.report import build_report
    from automr.experiments.rq2 import RQ2Run

    ids = [f"u{i}@{i}:x" for i in range(8)]
    ranks = {"bigrec": [9] * 8, "automr": [0, 1, 2, 3, 4, 5, 6, 7],
             "random": [0, 1, 2, 3, 4, 5, 7, 6]}
    means = {group: build_report(f"{group}:likelihood", ids, torch.tensor(values), 100,
                                 n_resamples=10).metrics["ndcg@10"].mean
             for group, values in ranks.items()}
    assert means["automr"] != means["random"]  # the case: other float sums of equal values
    runs = tuple(RQ2Run(group=group, method=f"{group}:likelihood", folder=group, source=None,
                        metrics={"ndcg@10": mean}) for group, mean in means.items())
    result = RQ2Result(grounder="likelihood", samples=8, config={}, metrics=("ndcg@10",),
                       runs=runs)
    assert result.to_json()["automr_vs_random"]["ndcg@10"] == {"wins": 0, "ties": 1,
                                                              "losses": 0, "pairs": 1}
