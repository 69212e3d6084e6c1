"""``automr finetune`` and ``automr evaluate`` end to end on a tiny model and synthetic data."""

import functools
import json

import attrs
import pytest
import torch
from typer.testing import CliRunner

import automr.methods.registry
import automr.methods.sasrec
from automr.cli.main import app
from automr.data import PreparedDataset
from automr.evaluation import EvaluationFolder
from automr.evaluation.report import MetricReport
from automr.methods import MethodOptions, Workspace
from automr.recommenders.sasrec import SASRecConfig
from automr.testing.synthetic import save_tiny_model, synthetic_dataset

runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    synthetic_dataset(root)
    save_tiny_model(root / "model")
    return root


def test_finetune_then_evaluate_every_method(workspace, tmp_path):
    data, model = str(workspace / "prepared"), str(workspace / "model")
    run = tmp_path / "run"
    tuned = runner.invoke(app, ["finetune", "--data", data, "--out", str(run), "--model", model,
                                "--train-samples", "16", "--valid-samples", "4",
                                "--batch-size", "4", "--eval-every", "2", "--quiet",
                                "--device", "cpu", "--cache-dir", str(tmp_path / "cache")])
    assert tuned.exit_code == 0, tuned.output
    methods = "sasrec,base:likelihood,bigrec:l2,bigrec:constrained"
    out = tmp_path / "results"
    result = runner.invoke(app, [
        "evaluate", "--data", data, "--out", str(out), "--methods", methods,
        "--finetuned", str(run), "--model", model, "--samples", "4", "--layer", "2",
        "--num-beams", "3", "--quiet", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
    ])
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "results.json").read_text())
    assert list(payload["methods"]) == methods.split(",")
    assert payload["model"] == model and payload["finetuned"] == str(run)  # base and bigrec
    assert payload["reference"] == "bigrec:l2"
    assert payload["samples"] == 4
    assert "| sasrec |" in (out / "results.md").read_text()
    report = MetricReport.load(out / "ranks" / "bigrec-constrained.json")
    assert len(report.ranks) == 4 and all(0 <= r < 30 for r in report.ranks)
    saved = out / "ranks" / "bigrec-constrained.json"
    stamp = saved.stat().st_mtime_ns
    again = runner.invoke(app, [  # the same settings: reused, not recomputed
        "evaluate", "--data", data, "--out", str(out), "--methods", "bigrec:constrained",
        "--finetuned", str(run), "--model", model, "--samples", "4", "--layer", "2",
        "--num-beams", "3", "--quiet", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
    ])
    assert again.exit_code == 0, again.output
    assert saved.stat().st_mtime_ns == stamp
    changed = runner.invoke(app, [  # other beams: ranked again
        "evaluate", "--data", data, "--out", str(out), "--methods", "bigrec:constrained",
        "--finetuned", str(run), "--model", model, "--samples", "4", "--layer", "2",
        "--num-beams", "2", "--quiet", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
    ])
    assert changed.exit_code == 0, changed.output
    assert saved.stat().st_mtime_ns != stamp
    paired = runner.invoke(app, [  # --reference: the finished runs are paired with sasrec
        "evaluate", "--data", data, "--out", str(out), "--methods", "sasrec,bigrec:constrained",
        "--reference", "sasrec", "--finetuned", str(run), "--model", model, "--samples", "4",
        "--layer", "2", "--num-beams", "2", "--quiet", "--device", "cpu",
        "--cache-dir", str(tmp_path / "cache")])
    assert paired.exit_code == 0, paired.output
    payload = json.loads((out / "results.json").read_text())
    assert payload["reference"] == "sasrec"
    assert list(payload["paired_vs_reference"]) == ["bigrec:constrained"]
    # the artifacts as used: --model decides base:* only, not ranked here
    assert payload["finetuned"] == str(run) and payload["model"] is None
    assert "vs `sasrec`" in paired.output
    bad = runner.invoke(app, ["evaluate", "--data", data, "--out", str(out), "--methods",
                              "sasrec", "--reference", "pop", "--quiet", "--device", "cpu"])
    assert bad.exit_code == 2 and "reference 'pop' is not among" in bad.output


@pytest.fixture
def sasrec_trainings(monkeypatch) -> list[SASRecConfig]:
    """The config of every SASRec the methods train (one epoch each: quick)."""
    fit, trainings = automr.methods.sasrec.fit_sasrec, []

    def counted(sequences, valid, config, **kwargs):
        trainings.append(config)
        return fit(sequences, valid, config, **kwargs)

    monkeypatch.setattr(automr.methods.sasrec, "fit_sasrec", counted)
    monkeypatch.setattr(automr.methods.registry, "SASRecConfig",
                        functools.partial(SASRecConfig, max_epochs=1))
    return trainings


def test_a_resumed_evaluation_ranks_with_the_sasrec_its_first_shards_used(
        workspace, tmp_path, sasrec_trainings):
    """CUDA training is not bit-deterministic: a resume that trained SASRec again would rank
    its last shards with another model than its first (and tune l2-sasrec's gamma on it)."""
    dataset, folder = PreparedDataset.load(workspace / "prepared"), EvaluationFolder(tmp_path)

    def weights(seed):
        space = Workspace(dataset, options=MethodOptions(seed=seed), device="cpu",
                          progress=False, kept=folder)
        return space.sasrec().model().state_dict()

    first, again = weights(0), weights(0)
    assert [config.seed for config in sasrec_trainings] == [0]
    assert first.keys() == again.keys()
    assert all(torch.equal(first[name], again[name]) for name in first)
    weights(1)  # another training's model is kept apart
    assert [config.seed for config in sasrec_trainings] == [0, 1]
    folder.check_target()  # the models alone make an evaluation folder, resumed


def test_sasrec_trains_with_the_loss_asked_and_records_it_only_off_its_default(
        workspace, tmp_path, sasrec_trainings):
    """--sasrec-loss bce trains the paper's SASRec (no CLI option reached SASRecConfig's loss
    before); the default's settings are those of folders written before the option."""
    args = ["evaluate", "--data", str(workspace / "prepared"), "--out", str(tmp_path / "e"),
            "--methods", "sasrec", "--samples", "4", "--quiet", "--device", "cpu"]
    for loss in ("ce", "bce"):
        result = runner.invoke(app, [*args, "--sasrec-loss", loss])
        assert result.exit_code == 0, result.output
        settings = json.loads(EvaluationFolder(tmp_path / "e").settings_file("sasrec")
                              .read_text())
        assert settings.get("sasrec_loss") == (None if loss == "ce" else "bce")
    assert [config.loss for config in sasrec_trainings] == ["ce", "bce"]
    bad = runner.invoke(app, [*args, "--sasrec-loss", "bpr"])
    assert bad.exit_code == 2 and "--sasrec-loss 'bpr': choose one of bce, ce" in bad.output


def test_bad_method_is_a_one_line_error(workspace, tmp_path):
    result = runner.invoke(app, ["evaluate", "--data", str(workspace / "prepared"),
                                 "--out", str(tmp_path), "--methods", "bigrec:magic"])
    assert result.exit_code == 2
    assert "unknown method" in result.output


def test_missing_finetune_is_a_clear_error(workspace, tmp_path):
    result = runner.invoke(app, ["evaluate", "--data", str(workspace / "prepared"),
                                 "--out", str(tmp_path), "--methods", "bigrec:l2"])
    assert result.exit_code == 2
    assert "bigrec:l2 needs --finetuned RUN_DIR" in result.output  # it named no method


@pytest.mark.parametrize(("methods", "measures", "message"), [
    ("pop,cooc,pop", "ranks", "--methods names pop more than once"),
    ("pop,cooc", "likelihood", "none of pop, cooc does")])
def test_a_table_that_would_drop_a_method_is_refused(workspace, tmp_path, methods, measures,
                                                     message):
    """A repeated name was kept once, and a likelihood-only table of methods that score no
    title was written empty (exit 0)."""
    result = runner.invoke(app, ["evaluate", "--data", str(workspace / "prepared"), "--out",
                                 str(tmp_path / "out"), "--methods", methods, "--measures",
                                 measures, "--samples", "4"])
    assert result.exit_code == 2, result.output
    assert message in result.output and not (tmp_path / "out" / "results.md").exists()


def test_evaluate_prints_its_own_table_not_the_folders_results_md(workspace, tmp_path,
                                                                  monkeypatch):
    """It read results.md back after writing it: a second evaluation of other methods into
    the same folder at that moment had its table printed instead (the concurrency review)."""
    from automr.evaluation import folder as folder_module

    real = folder_module.write_text_atomic

    def another_run_writes_after(path, text):
        real(path, text)
        real(path, "| another run's table |")

    monkeypatch.setattr(folder_module, "write_text_atomic", another_run_writes_after)
    result = runner.invoke(app, ["evaluate", "--data", str(workspace / "prepared"), "--out",
                                 str(tmp_path), "--methods", "pop,cooc", "--samples", "4"])
    assert result.exit_code == 0, result.output
    assert "another run" not in result.output
    assert "4 test samples (seed 0" in result.output and "| cooc |" in result.output


def test_without_layer_a_small_model_splits_within_it(workspace, tmp_path):
    """The default layer 15 was refused for the 4-layer model though no --layer was given;
    the settings keep 15, so that folders of the default on larger models resume."""
    data, model = str(workspace / "prepared"), str(workspace / "model")
    args = ["evaluate", "--data", data, "--model", model, "--methods", "base:constrained",
            "--samples", "2", "--quiet", "--device", "cpu", "--cache-dir", str(tmp_path / "c")]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "out/ranks/base-constrained.settings.json").read_text())
    assert settings["layer"] == 15
    bad = runner.invoke(app, [*args, "--out", str(tmp_path / "bad"), "--layer", "9"])
    assert bad.exit_code == 2 and "--layer 9 is outside 0..4" in bad.output, bad.output


@pytest.mark.parametrize(("option", "value", "says"), [
    ("--num-beams", "-1", "--num-beams must be >= 0"), ("--layer", "-1", "--layer must be >= 0")])
def test_a_negative_beam_count_or_layer_is_one_line(workspace, tmp_path, option, value, says):
    result = runner.invoke(app, ["evaluate", "--data", str(workspace / "prepared"), "--out",
                                 str(tmp_path / "out"), "--methods", "base:l2", option, value])
    assert result.exit_code == 2 and says in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_out_into_another_artifact_or_a_file_is_refused(workspace, tmp_path):
    """Ranks and results were written into a prepared dataset's folder (or a traceback for a
    file)."""
    (tmp_path / "file").write_text("x")
    for out, says in ((workspace / "prepared", "is not an evaluation folder"),
                      (tmp_path / "file", "is a file")):
        result = runner.invoke(app, ["evaluate", "--data", str(workspace / "prepared"),
                                     "--out", str(out), "--methods", "pop", "--samples", "2"])
        assert result.exit_code == 2 and says in result.output, result.output
    assert not (workspace / "prepared" / "ranks").exists()


def test_a_finetune_of_another_dataset_is_refused(workspace, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "finetune.json").write_text(json.dumps({
        "model": str(workspace / "model"), "model_fingerprint": "0" * 64,
        "data_fingerprint": "1" * 64, "config": {"lora_from_layer": 0}}))
    result = runner.invoke(app, ["evaluate", "--data", str(workspace / "prepared"), "--out",
                                 str(tmp_path / "out"), "--methods", "bigrec:likelihood",
                                 "--finetuned", str(run), "--samples", "2", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert f"{run} was tuned on another dataset than" in result.output
    assert str(workspace / "prepared") in result.output


@pytest.mark.parametrize(("keywords", "says"), [
    ({"top": -5}, "--top must be an int >= 1"), ({"top": 0}, "--top must be an int >= 1"),
    ({"top": 2.5}, "--top must be an int, got 2.5"), ({"top": True}, "--top must be an int"),
    ({"k": 0}, "--k must be >= 1"), ({"num_beams": -1}, "--num-beams must be >= 0"),
    ({"grounder": "constrained-pop"}, "recommend grounds with l2, constrained, likelihood, "
                                      "not 'constrained-pop'"),
    ({"grounder": "likelihood", "num_beams": 5}, "--num-beams 5 has no use with the "
                                                "likelihood grounder"),
    ({"exclude_seen": "false"}, "exclude_seen must be a bool, not 'false'")])
def test_recommend_refuses_a_bad_count_before_any_work(keywords, says):
    """--top -5 showed 11 items, --top 0 none, --k 0 ran without memory, negative beams
    were a traceback, and beams given to the likelihood grounder were ignored;
    exclude_seen="false" ranked as True, top=True showed one item and top=2.5 was a
    traceback (the public-API and entry-point reviews)."""
    from automr.errors import AutomrError
    from automr.experiments.recommend import recommend

    with pytest.raises(AutomrError, match=says):
        recommend("no-data", "u", "no-ft", "no-memory", "no-retriever", **keywords)


@pytest.mark.parametrize(("methods", "measures"), [
    (["bigrec:likelihood"], ("ranks",)), (["bigrec:likelihood"], ("likelihood",)),
    (["sasrec", "pop"], ("ranks",))])
def test_evaluate_refuses_beams_no_method_uses_before_any_work(methods, measures):
    """--num-beams with the likelihood grounder (or measure) was taken without a word, and a
    rerun with another value scored every sample again (the values cannot change); recommend
    refused it already."""
    from automr.errors import AutomrError
    from automr.experiments.eval_config import EvalConfig
    from automr.experiments.evaluate import evaluate_methods

    with pytest.raises(AutomrError, match="--num-beams 3 has no use here: no method decodes"):
        evaluate_methods("no-data", methods, "no-out",
                         EvalConfig(num_beams=3, measures=measures))


@pytest.mark.parametrize("method", ["bigrec:l2", "bigrec:l2-pop", "automr:constrained"])
def test_evaluate_refuses_a_grounder_the_likelihood_measure_alone_never_uses(method):
    """Under --measures likelihood, bigrec:l2, bigrec:l2-pop and bigrec:likelihood gave one
    value, while a -pop grounder still tuned (and saved) a gamma: a table of grounders side by
    side read as if they mattered (the options review); rq2 refused it already."""
    from automr.errors import AutomrError
    from automr.experiments.eval_config import EvalConfig
    from automr.experiments.evaluate import evaluate_methods

    with pytest.raises(AutomrError, match=f"the grounder of {method} would only name it"):
        evaluate_methods("no-data", ["pop", "bigrec:likelihood", method], "no-out",
                         EvalConfig(measures=("likelihood",)))


@pytest.mark.parametrize("method", ["bigrec:l2-pop", "bigrec:constrained-pop",
                                    "automr:l2-sasrec"])
def test_evaluate_refuses_a_grounder_tuned_on_the_validation_samples_it_measures(method):
    """--split valid with a -pop/-sasrec grounder chose gamma on the very samples it then
    scored (200 of 200 with the defaults): optimistic numbers with no word."""
    from automr.errors import AutomrError
    from automr.experiments.eval_config import EvalConfig
    from automr.experiments.evaluate import evaluate_methods

    with pytest.raises(AutomrError, match=f"{method} tune gamma on validation samples"):
        evaluate_methods("no-data", ["pop", method], "no-out", EvalConfig(split="valid"))


def test_recommend_checks_the_memory_before_it_loads_the_model(workspace, tmp_path,
                                                             monkeypatch):
    """A missing memory folder was told only once the fine-tuned model had loaded (minutes
    for a 7B model); the run's records are checked, then the memory, then the model loads."""
    from automr.data.fingerprint import dataset_fingerprint
    from automr.errors import AutomrError
    from automr.experiments.recommend import latest_sample, recommend
    from automr.recommenders.runs import FinetunedRun

    prepared = PreparedDataset.load(workspace / "prepared")
    run = tmp_path / "run"
    run.mkdir()
    (run / "finetune.json").write_text(json.dumps({
        "model": str(workspace / "model"), "model_fingerprint": "0" * 64,
        "data_fingerprint": dataset_fingerprint(prepared), "config": {"lora_from_layer": 0}}))
    loads = []
    monkeypatch.setattr(FinetunedRun, "load", lambda *args, **kwargs: loads.append(args))
    user = prepared.samples("test")[0].user
    assert latest_sample(prepared, user, "test")
    with pytest.raises(AutomrError, match="no-memory"):
        recommend(workspace / "prepared", user, run, tmp_path / "no-memory", "no-retriever",
                  device="cpu")
    assert not loads


def test_recommend_names_the_true_item_its_rank_and_dates():
    """The output showed raw Unix times and, with the true item below the list, only a rank
    (counted from 1 where rq3 counts from 0, without saying so)."""
    from automr.data import Sample
    from automr.experiments.recommend import Recommendation

    sample = Sample(user="7", target="t", timestamp=889_000_000, recent=("a",),
                    recent_timestamps=(888_000_000,), memory=("m",),
                    memory_timestamps=(880_000_000,))
    shown = Recommendation(sample=sample, items=[("x", "X"), ("y", "Y")],
                           retrieved=[("m", "M", 880_000_000)], target_rank=56,
                           target_title="The True One")
    lines = "\n".join(shown.describe())
    assert "sample at 1998-03-04 08:26 UTC" in lines and "M [m] (1997-11-20 04:26 UTC)" in lines
    assert "889000000" not in lines and "top 2 (rank 1 = first):" in lines
    assert ("actual next item ranked 57 (1 = first; automr rq3 counts from 0), not in the top "
            "list: The True One [t]") in lines
    inside = attrs.evolve(shown, items=[("x", "X"), ("t", "The True One")], target_rank=1)
    assert inside.describe()[-2:] == [
        "  2. The True One [t]  <- the actual next item",
        "actual next item ranked 2 (1 = first; automr rq3 counts from 0): The True One [t]"]


@pytest.mark.parametrize(("user", "offered"), [
    ("99999", "940, 941, 942, 943, 1000"), ("95", "9, 10, 100, 940, 941"),
    ("nobody", "9, 10, 100, 940, 941")])
def test_recommend_offers_users_in_numeric_order(user, offered):
    """An unknown user was offered ids sorted as strings (10, 100, 1000, 9, 940)."""
    from types import SimpleNamespace

    from automr.data import Sample
    from automr.errors import AutomrError
    from automr.experiments.recommend import latest_sample

    users = ["9", "10", "100", "1000", "940", "941", "942", "943"]
    samples = [Sample(user=u, target="t", timestamp=1, recent=(), recent_timestamps=())
               for u in users]
    dataset = SimpleNamespace(samples=lambda split: samples)
    with pytest.raises(AutomrError, match=f"try one of {offered} \\(8 users have one\\)$"):
        latest_sample(dataset, user, "test")


def test_recommend_offers_the_lower_of_two_equally_near_users():
    """Users as near below as above: the lower id is offered, whatever the set's order."""
    from automr.experiments.recommend import suggested_users

    for gap in range(1, 21):
        assert suggested_users({str(50 - gap), str(50 + gap)}, "50", count=1) == [str(50 - gap)]


def test_recommend_offers_users_whose_ids_hold_digits_int_cannot_read():
    """``'①'.isdigit()`` is true and ``int('①')`` fails: a missing user of such a dataset
    got a traceback instead of the users to try (the unusual-data review)."""
    from automr.experiments.recommend import suggested_users

    assert suggested_users({"1", "2", "\u2460", "x\u00b2"}, "9") == ["1", "2", "x\u00b2", "\u2460"]
    assert suggested_users({"1", "\u0663"}, "2") == ["1", "\u0663"]  # Arabic-Indic 3: a number


def test_a_user_id_given_as_an_int_is_one_line():
    from types import SimpleNamespace

    from automr.data import Sample
    from automr.errors import AutomrError
    from automr.experiments.recommend import latest_sample

    sample = Sample(user="13", target="t", timestamp=2, recent=("a",), recent_timestamps=(1,))
    dataset = SimpleNamespace(samples=lambda split: [sample])
    with pytest.raises(AutomrError, match=r"a user id is a str.*give '13'"):
        latest_sample(dataset, 13, "test")
    from automr.experiments.recommend import recommendations

    with pytest.raises(AutomrError, match=r"not one \('47'\): give \['47'\]"):
        recommendations("no-data", "47", "no-ft", "no-memory", "no-retriever")


def test_the_evaluate_commands_defaults_are_the_eval_configs():
    """`automr evaluate` and the Python API (``EvalConfig()``) evaluate alike by default."""
    import typer

    from automr.cli.main import app
    from automr.experiments.eval_config import EvalConfig

    group = typer.main.get_command(app)
    with group.make_context("automr", [], resilient_parsing=True) as ctx:
        command = group.get_command(ctx, "evaluate")
    cli = {p.name: p.default for p in command.params}
    config = EvalConfig()
    assert (cli["split"], cli["samples"] or None, cli["seed"], cli["batch_size"]) == (
        config.split, config.max_samples, config.seed, config.batch_size)
    assert (cli["layer"], cli["num_beams"] or None, cli["exclude_seen"], cli["combiner"],
            cli["k"], cli["retrieval_seed"], cli["tune_samples"], cli["reference"]) == (
        config.layer, config.num_beams, config.exclude_seen, config.combiner, config.k,
        config.retrieval_seed, config.tune_samples, config.reference)
    assert tuple(cli["measures"].split(",")) == config.measures


def test_an_eval_config_still_gives_its_method_options():
    """``EvalConfig.method_options()`` (documented API) survived its move to a torch-free
    module: the options every method of the evaluation is built with."""
    from automr.experiments.evaluate import EvalConfig
    from automr.methods.registry import MethodOptions

    config = EvalConfig(layer=3, num_beams=2, batch_size=4, exclude_seen=True,
                        combiner="append-token", k=2, seed=5, retrieval_seed=7, tune_samples=9)
    assert config.method_options() == MethodOptions(
        layer=3, num_beams=2, batch_size=4, exclude_seen=True, combiner="append-token", k=2,
        seed=5, retrieval_seed=7, tune_samples=9)


@pytest.mark.parametrize("bad", [{"k": 0}, {"batch_size": 0}, {"tune_samples": 0},
                                 {"num_beams": 0}, {"layer": -1}, {"combiner": "glue"}])
def test_an_eval_config_refuses_counts_below_one(bad):
    from automr.experiments.eval_config import EvalConfig

    with pytest.raises(ValueError):
        EvalConfig(**bad)
