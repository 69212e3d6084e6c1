"""The whole pipeline (``automr demo`` and the step commands) on a tiny model and synthetic data."""

import json

import attrs
import pytest
from typer.testing import CliRunner

from automr.annotation.run import Annotations
from automr.cli.main import app
from automr.data import PreparedDataset
from automr.errors import AutomrError
from automr.experiments.demo import DemoConfig, run_demo
from automr.methods.registry import LM_RULES
from automr.testing.synthetic import save_tiny_model, synthetic_dataset

runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    synthetic_dataset(root)
    save_tiny_model(root / "model", num_layers=4)
    return root


def tiny_demo(workspace) -> DemoConfig:
    return DemoConfig(model=str(workspace / "model"), layer=2, train_samples=16,
                      valid_samples=4, batch_size=4, annotate_samples=12, test_samples=6,
                      num_beams=3)


def test_the_demo_runs_on_a_model_with_fused_projections_given_its_lora_targets(workspace,
                                                                               tmp_path):
    """phi3 fuses q, k and v into ``qkv_proj``: BIGRec's ``q_proj,v_proj`` name nothing there,
    so the demo tunes the modules ``--lora-targets`` names and runs every step."""
    model = save_tiny_model(tmp_path / "phi3", "phi3", num_layers=4)
    config = attrs.evolve(tiny_demo(workspace), model=str(model), lora_targets=("qkv_proj",),
                          annotate_samples=4, test_samples=3, likelihood_samples=4)
    run_demo(tmp_path / "demo", config, device="cpu", cache_dir=tmp_path / "cache",
             progress=False, dataset_dir=workspace / "prepared", say=lambda line: None)
    adapter = json.loads((tmp_path / "demo" / "bigrec" / "best" / "adapter_config.json")
                         .read_text())
    assert adapter["target_modules"] == ["qkv_proj"] and adapter["layers_to_transform"] == [2, 3]
    assert (tmp_path / "demo" / "likelihood" / "results.json").is_file()


def test_the_demo_runs_every_step_with_the_likelihood_grounder(workspace, tmp_path):
    """The likelihood grounder decodes nothing, yet the demo gave it its beams: its last step
    (one user's recommendation) refused them, after every other step had run."""
    config = attrs.evolve(tiny_demo(workspace), grounder="likelihood", annotate_samples=4,
                          test_samples=2, likelihood_samples=3)
    results = run_demo(tmp_path / "demo", config, device="cpu", cache_dir=tmp_path / "cache",
                       progress=False, dataset_dir=workspace / "prepared", say=lambda _: None)
    payload = json.loads((results / "results.json").read_text())
    assert "automr:likelihood" in payload["methods"]
    assert "retrieved from memory:" in (tmp_path / "demo" / "example" / "example.md").read_text()


def test_a_demo_stopped_before_any_step_of_its_settings_reruns_with_others(workspace,
                                                                         tmp_path):
    """A first demo with a mistyped --model stopped at the fine-tune (ML-100K prepared, no
    other step begun); the corrected command was refused as 'a demo run with other settings
    (model)' until --out changed. A run that began a step still is."""
    bad = attrs.evolve(tiny_demo(workspace), model=str(tmp_path / "no-such-model"))
    with pytest.raises(AutomrError, match="no-such-model"):
        run_demo(tmp_path / "demo", bad, device="cpu", cache_dir=tmp_path / "cache",
                 progress=False, dataset_dir=workspace / "prepared", say=lambda line: None)
    good = attrs.evolve(tiny_demo(workspace), train_samples=4, valid_samples=2)
    with pytest.raises(RuntimeError, match="stop after the fine-tune"):
        run_demo(tmp_path / "demo", good, device="cpu", cache_dir=tmp_path / "cache",
                 progress=False, dataset_dir=workspace / "prepared",
                 say=lambda line: _stop_after_finetune(line))
    assert json.loads((tmp_path / "demo" / "settings.json").read_text())["config"][
        "model"] == str(workspace / "model")
    with pytest.raises(AutomrError, match=r"other settings \(model, train_samples, "
                                          r"valid_samples\)"):
        run_demo(tmp_path / "demo", bad, device="cpu", cache_dir=tmp_path / "cache",
                 progress=False, dataset_dir=workspace / "prepared", say=lambda line: None)


def test_a_second_demo_into_a_folder_in_use_is_refused(workspace, tmp_path):
    """Two demos started into one --out: the second, with other settings, passed the settings
    check while the first had finished no step yet, wrote its own settings.json over the
    first's and ran its steps into the same folders as the first."""
    first, second = tiny_demo(workspace), attrs.evolve(tiny_demo(workspace), seed=1)
    refusals: list[str] = []

    def start_second(line: str) -> None:  # the first demo is at its first step
        try:
            run_demo(tmp_path / "demo", second, device="cpu", cache_dir=tmp_path / "cache",
                     progress=False, dataset_dir=workspace / "prepared",
                     say=_stop_at_first_step)
        except AutomrError as error:
            refusals.append(str(error))
        raise RuntimeError("stop the first demo")

    with pytest.raises(RuntimeError, match="stop the first demo"):
        run_demo(tmp_path / "demo", first, device="cpu", cache_dir=tmp_path / "cache",
                 progress=False, dataset_dir=workspace / "prepared", say=start_second)
    assert len(refusals) == 1 and "is in use by another automr command (process" in refusals[0]
    assert json.loads((tmp_path / "demo" / "settings.json").read_text())["config"]["seed"] == 0
    with pytest.raises(RuntimeError, match="stop at the first step"):  # the lock went with it
        run_demo(tmp_path / "demo", second, device="cpu", cache_dir=tmp_path / "cache",
                 progress=False, dataset_dir=workspace / "prepared", say=_stop_at_first_step)


def test_a_demo_rerun_after_its_data_or_model_changed_in_place_is_refused(workspace, tmp_path):
    """settings.json names the dataset and model folders, not what they hold: a rerun after
    either was made again in place showed every finished step as its own."""
    import shutil

    from automr.testing.tiny import tiny_config, tiny_model

    model = shutil.copytree(workspace / "model", tmp_path / "model")
    data = tmp_path / "data"
    synthetic_dataset(data)
    config = attrs.evolve(tiny_demo(workspace), model=str(model), train_samples=4,
                          valid_samples=2, annotate_samples=4, test_samples=2,
                          likelihood_samples=3)
    run_demo(tmp_path / "demo", config, device="cpu", cache_dir=tmp_path / "cache",
             progress=False, dataset_dir=data / "prepared", say=lambda line: None)
    shutil.rmtree(data)
    synthetic_dataset(data, seed=1)  # prepared again in the same folder, other interactions
    with pytest.raises(AutomrError, match=r"made with other data or another model .*another "
                                          r"dataset"):
        run_demo(tmp_path / "demo", config, device="cpu", cache_dir=tmp_path / "cache",
                 progress=False, dataset_dir=data / "prepared", say=lambda line: None)
    shutil.rmtree(data)
    synthetic_dataset(data)
    tiny_model(tiny_config("llama", 4), seed=9).save_pretrained(model)  # other weights
    with pytest.raises(AutomrError, match=r"made with other data or another model .*differs"):
        run_demo(tmp_path / "demo", config, device="cpu", cache_dir=tmp_path / "cache",
                 progress=False, dataset_dir=data / "prepared", say=lambda line: None)


def _stop_at_first_step(line: str) -> None:
    raise RuntimeError("stop at the first step")


def _stop_after_finetune(line: str) -> None:
    if line.startswith("[fine-tune BIGRec] done"):
        raise RuntimeError("stop after the fine-tune")


def test_demo_runs_every_step_and_resumes(workspace, tmp_path):
    lines: list[str] = []
    results = run_demo(tmp_path / "demo", tiny_demo(workspace), device="cpu",
                       cache_dir=tmp_path / "cache", progress=False,
                       dataset_dir=workspace / "prepared", say=lines.append)
    payload = json.loads((results / "results.json").read_text())
    assert list(payload["methods"]) == ["pop", "cooc", "bigrec:constrained",
                                        "automr:constrained", "random:constrained"]
    example = (tmp_path / "demo" / "example" / "example.md").read_text()
    assert "retrieved from memory:" in example and "actual next item ranked" in example
    retrieved = json.loads((results / "retrieved" / "automr-constrained.json").read_text())
    assert len(retrieved) == payload["samples"]
    annotations = Annotations.load(tmp_path / "demo" / "annotations")
    assert len(annotations.element) == len(annotations.header["samples"]) > 0
    assert all(len(e) > 0 for e in annotations.element)
    again: list[str] = []
    run_demo(tmp_path / "demo", tiny_demo(workspace), device="cpu", cache_dir=tmp_path / "cache",
             progress=False, dataset_dir=workspace / "prepared", say=again.append)
    assert all("already done" in line for line in again)
    other = attrs.evolve(tiny_demo(workspace), test_samples=3, seed=1)
    with pytest.raises(AutomrError, match=r"other settings \(seed, test_samples\)"):
        run_demo(tmp_path / "demo", other, device="cpu", cache_dir=tmp_path / "cache",
                 progress=False, dataset_dir=workspace / "prepared", say=again.append)
    with pytest.raises(AutomrError, match=r"other settings \(dtype\)"):
        run_demo(tmp_path / "demo", tiny_demo(workspace), device="cpu", dtype="bfloat16",
                 cache_dir=tmp_path / "cache", progress=False,
                 dataset_dir=workspace / "prepared", say=again.append)
    settings = tmp_path / "demo" / "settings.json"  # as written before the dtype was recorded
    first = json.loads(settings.read_text())
    assert first.pop("dtype") == "float32"
    settings.write_text(json.dumps(first))
    run_demo(tmp_path / "demo", tiny_demo(workspace), device="cpu", cache_dir=tmp_path / "cache",
             progress=False, dataset_dir=workspace / "prepared", say=again.append)
    marker = tmp_path / "demo" / ".done-results"  # as an automr before today's LM rules wrote
    marker.write_text(json.dumps({"seconds": 1.0}))  # it: that step runs again, no other
    ran: list[str] = []
    run_demo(tmp_path / "demo", tiny_demo(workspace), device="cpu", cache_dir=tmp_path / "cache",
             progress=False, dataset_dir=workspace / "prepared", say=ran.append)
    assert next(line for line in ran if "already done" not in line) == "[evaluate] ..."
    assert json.loads(marker.read_text())["lm_rules"] == LM_RULES
    for marker in (tmp_path / "demo").glob(".done-*"):  # each step cut after its work ended
        marker.unlink()
    again = run_demo(tmp_path / "demo", tiny_demo(workspace), device="cpu",
                     cache_dir=tmp_path / "cache", progress=False,
                     dataset_dir=workspace / "prepared", say=lambda line: None)
    assert json.loads((again / "results.json").read_text()) == payload


def test_the_demo_refuses_an_out_holding_another_artifact(workspace, tmp_path):
    """Its steps' folders would be written beside another artifact's files (here a dataset's,
    given to --out instead of --data)."""
    import shutil

    data = shutil.copytree(workspace / "prepared", tmp_path / "data")
    before = sorted(p.name for p in data.iterdir())
    with pytest.raises(AutomrError, match=r"holds other files .*new or empty folder"):
        run_demo(data, tiny_demo(workspace), device="cpu", cache_dir=tmp_path / "cache",
                 progress=False, dataset_dir=workspace / "prepared", say=lambda _: None)
    assert sorted(p.name for p in data.iterdir()) == before


@pytest.mark.parametrize("option, value", [("--combiner", "foo"), ("--encoder", "foo"),
                                           ("--test-samples", "0")])
def test_a_bad_demo_option_is_one_line_before_any_work(tmp_path, option, value):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), option, value])
    assert result.exit_code == 2, result.output
    assert f"invalid demo options: {option}" in result.output
    assert not (tmp_path / "demo").exists()  # nothing written: a corrected rerun can start


@pytest.mark.parametrize("option, value", [("--dtype", "fp16"), ("--device", "gpu")])
def test_a_bad_demo_dtype_or_device_writes_nothing(tmp_path, option, value):
    """They were checked after the run folder was made: an empty folder was left."""
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), option, value])
    assert result.exit_code == 2 and f"'{value}'" in result.output, result.output
    assert not (tmp_path / "demo").exists()


def test_step_commands_chain(workspace, tmp_path):
    data, model = str(workspace / "prepared"), str(workspace / "model")
    common = ["--device", "cpu", "--quiet"]

    def ok(*args: str) -> None:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output

    ok("finetune", "--data", data, "--out", str(tmp_path / "ft"), "--model", model,
       "--train-samples", "8", "--valid-samples", "4", "--batch-size", "4",
       "--lora-from-layer", "2", "--lora-dropout", "0", *common)
    assert json.loads((tmp_path / "ft" / "finetune.json").read_text())["config"][
        "lora_dropout"] == 0.0
    ok("memory", "build", "--data", data, "--out", str(tmp_path / "mem"), "--model", model,
       "--layer", "2", "--encoder", "window", *common)
    ok("annotate", "--data", data, "--memory", str(tmp_path / "mem"), "--finetuned",
       str(tmp_path / "ft"), "--out", str(tmp_path / "ann"), "--samples", "8", *common)
    ok("retriever", "train", "--annotations", str(tmp_path / "ann"), "--data", data,
       "--memory", str(tmp_path / "mem"), "--out", str(tmp_path / "ret"), "--quiet")
    normalized = runner.invoke(app, [
        "retriever", "train", "--annotations", str(tmp_path / "ann"), "--data", data,
        "--memory", str(tmp_path / "mem"), "--out", str(tmp_path / "ret-n"), "--normalize",
        "--quiet"])
    assert "(equal scores " in normalized.output, normalized.output
    from automr.retrievers import load_retriever

    assert load_retriever(tmp_path / "ret-n").config.normalize
    assert not load_retriever(tmp_path / "ret").config.normalize
    assert load_retriever(tmp_path / "ret").provenance["combiner"] == "concat"
    other = runner.invoke(app, [
        "evaluate", "--data", data, "--out", str(tmp_path / "other"), "--methods",
        "automr:likelihood", "--finetuned", str(tmp_path / "ft"), "--memory",
        str(tmp_path / "mem"), "--retriever", str(tmp_path / "ret"), "--combiner",
        "append-token", "--model", model, "--samples", "4", *common])
    assert other.exit_code == 2, other.output  # its labels were annotated with concat
    assert "built with combiner='concat', but 'append-token' is in use" in other.output
    ok("evaluate", "--data", data, "--out", str(tmp_path / "res"), "--methods",
       "automr:likelihood,semantic:likelihood", "--finetuned", str(tmp_path / "ft"),
       "--memory", str(tmp_path / "mem"), "--retriever", str(tmp_path / "ret"),
       "--model", model, "--samples", "4", *common)
    user = PreparedDataset.load(data).samples("test")[0].user
    shown = runner.invoke(app, ["recommend", user, "--data", data, "--finetuned",
                                str(tmp_path / "ft"), "--memory", str(tmp_path / "mem"),
                                "--retriever", str(tmp_path / "ret"), "--top", "3",
                                "--grounder", "likelihood", "--device", "cpu"])
    assert shown.exit_code == 0, shown.output
    assert "retrieved from memory:" in shown.output and " 1. " in shown.output
    from automr.experiments.recommend import latest_sample, recommend

    dataset = PreparedDataset.load(data)
    sample = latest_sample(dataset, user, "test")
    folders = (tmp_path / "ft", tmp_path / "mem", tmp_path / "ret")
    kept = recommend(data, user, *folders, top=10_000, grounder="likelihood", device="cpu")
    every = recommend(data, user, *folders, top=10_000, grounder="likelihood", device="cpu",
                      exclude_seen=False)
    assert len(every.items) == len(dataset.catalog)
    seen = set(sample.history) - {sample.target}
    assert [i for i, _ in kept.items] == [i for i, _ in every.items if i not in seen]
    assert kept.items[kept.target_rank][0] == every.items[every.target_rank][0] == sample.target
    assert every.generated is None
    l2 = recommend(data, user, *folders, top=3, grounder="l2", device="cpu")
    assert len(l2.items) == 3 and "top 3 (rank 1 = first):" in l2.describe()
    assert isinstance(l2.generated, str) and f"generated: {l2.generated}" in l2.describe()
    for top in (12, 40):  # evaluate's beams whatever --top (it took max(top, 4) beams)
        longer = recommend(data, user, *folders, top=top, grounder="l2", device="cpu")
        assert (longer.generated, longer.target_rank) == (l2.generated, l2.target_rank)
    from automr.experiments.recommend import Recommender

    once = Recommender.open(data, *folders, grounder="l2", device="cpu")  # loaded once
    names = sorted({s.user for s in dataset.samples("test")})[:3]
    for name in names:
        assert once.recommend(name, top=3, exclude_seen=False) == recommend(
            data, name, *folders, top=3, grounder="l2", device="cpu", exclude_seen=False)
    from automr.experiments.recommend import recommendations

    # users as a generator were all read by the check before loading: none was ranked (the
    # entry-point review)
    given = recommendations(data, (n for n in names[:2]), *folders, top=3, grounder="l2",
                            device="cpu", exclude_seen=False)
    assert list(given) == [once.recommend(n, top=3, exclude_seen=False) for n in names[:2]]
    folder_args = ["--data", data, "--finetuned", str(tmp_path / "ft"), "--memory",
                   str(tmp_path / "mem"), "--retriever", str(tmp_path / "ret"), "--top", "3",
                   "--grounder", "l2", "--device", "cpu"]
    both = runner.invoke(app, ["recommend", *names[:2], *folder_args])
    alone = [runner.invoke(app, ["recommend", name, *folder_args]) for name in names[:2]]
    assert both.exit_code == 0 and all(a.exit_code == 0 for a in alone), both.output
    assert both.output == "\n".join(a.output for a in alone)  # a blank line between
    late = runner.invoke(app, ["recommend", names[0], "nobody", *folder_args])
    assert late.exit_code == 2 and "user 'nobody' has no test sample" in late.output
    assert late.output.startswith("error: user 'nobody'")  # before any user was shown
    missing = runner.invoke(app, ["recommend", "nobody", "--data", data, "--finetuned",
                                  str(tmp_path / "ft"), "--memory", str(tmp_path / "mem"),
                                  "--retriever", str(tmp_path / "ret")])
    assert missing.exit_code == 2 and "has no test sample" in missing.output
    synthetic_dataset(tmp_path / "other", seed=1)  # a fine-tune evaluate refuses: recommend too
    for out, extra in (("ft-other", ["--data", str(tmp_path / "other" / "prepared")]),
                       ("ft-rella", ["--data", data, "--context", "rella"])):
        ok("finetune", *extra, "--out", str(tmp_path / out), "--model", model,
           "--train-samples", "4", "--valid-samples", "4", "--batch-size", "4", "--epochs", "1",
           "--lora-from-layer", "2", *common)
    for out, says in (("ft-other", "was tuned on another dataset than"),
                      ("ft-rella", "was fine-tuned with a rella context")):
        refused = runner.invoke(app, ["recommend", user, "--data", data, "--finetuned",
                                      str(tmp_path / out), "--memory", str(tmp_path / "mem"),
                                      "--retriever", str(tmp_path / "ret"), "--device", "cpu"])
        assert refused.exit_code == 2 and says in refused.output, refused.output


def test_a_memory_above_the_first_tuned_layer_is_refused(workspace, tmp_path):
    from automr.recommenders.runs import FinetunedRun

    data, model = str(workspace / "prepared"), str(workspace / "model")
    result = runner.invoke(app, ["finetune", "--data", data, "--out", str(tmp_path / "ft"),
                                 "--model", model, "--train-samples", "4", "--valid-samples",
                                 "4", "--batch-size", "4", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    fingerprint = json.loads((tmp_path / "ft" / "finetune.json").read_text())["model_fingerprint"]
    run = FinetunedRun.open(tmp_path / "ft")
    with pytest.raises(AutomrError, match="lora-from-layer 2"):
        run.check_memory(fingerprint, 2)
    with pytest.raises(AutomrError, match="another model"):
        run.check_memory("0" * 64, 0)
    run.check_memory(fingerprint, 0)  # all layers tuned, L = 0: fine


def test_a_memory_at_the_models_last_layer_boundary_is_refused_before_encoding(workspace,
                                                                              tmp_path):
    """At L = the layer count no layer runs above the memory: it was built (hours with the
    window encoder), then refused by every fine-tune, and the advice to fine-tune with
    --lora-from-layer L could not be followed (the tutorials review)."""
    result = runner.invoke(app, ["memory", "build", "--data", str(workspace / "prepared"),
                                 "--out", str(tmp_path / "mem"), "--model",
                                 str(workspace / "model"), "--layer", "4", "--device", "cpu",
                                 "--quiet"])
    assert result.exit_code == 2 and "one of 0..3" in result.output, result.output
    assert not (tmp_path / "mem").exists()


def test_lora_targets_choose_the_adapted_modules_and_an_unknown_one_is_named(workspace,
                                                                             tmp_path):
    data, model = str(workspace / "prepared"), str(workspace / "model")

    def finetune(out: str, targets: str):
        return runner.invoke(app, ["finetune", "--data", data, "--out", str(tmp_path / out),
                                   "--model", model, "--train-samples", "4", "--valid-samples",
                                   "4", "--batch-size", "4", "--epochs", "1",
                                   "--lora-from-layer", "2", "--lora-targets", targets,
                                   "--device", "cpu", "--quiet"])

    result = finetune("all", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "all" / "best" / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj",
                                              "gate_proj", "up_proj", "down_proj"}
    assert config["layers_to_transform"] == [2, 3]
    wrong = finetune("wrong", "q_proj,qkv_proj")
    assert wrong.exit_code == 2
    assert "LoRA target qkv_proj is not a linear module of this model's layers; they have " \
           "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj: name those to tune " \
           "with --lora-targets" in wrong.output
    assert "--lora-targets ' , ' names no module" in finetune("none", " , ").output


@pytest.mark.parametrize("change, message", [
    ({"data_fingerprint": "0" * 64}, "was tuned on another dataset"),
    ({"config": {"context": {"kind": "rella", "k": 5}}}, "was fine-tuned with a rella context"),
])
def test_annotate_refuses_a_fine_tune_evaluate_would_refuse(workspace, tmp_path, change,
                                                            message):
    """`--finetuned` naming a fine-tune of another dataset, or a ReLLa/TRSR baseline's: the
    labels would come from a model AutoMR is never evaluated with (evaluate refuses both), so
    annotate refuses it in one line before any work (it annotated silently)."""
    import shutil

    data, model = str(workspace / "prepared"), str(workspace / "model")
    common = ["--device", "cpu", "--quiet"]
    tuned = tmp_path / "ft"
    for args in (["finetune", "--data", data, "--out", str(tuned), "--model", model,
                  "--train-samples", "4", "--valid-samples", "2", "--batch-size", "4",
                  "--lora-from-layer", "2", *common],
                 ["memory", "build", "--data", data, "--out", str(tmp_path / "mem"), "--model",
                  model, "--layer", "2", "--encoder", "item", *common]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    other = tmp_path / "other-ft"
    shutil.copytree(tuned, other)
    record = json.loads((other / "finetune.json").read_text())
    for key, value in change.items():
        record[key] = {**record[key], **value} if isinstance(value, dict) else value
    (other / "finetune.json").write_text(json.dumps(record))
    result = runner.invoke(app, ["annotate", "--data", data, "--memory", str(tmp_path / "mem"),
                                 "--finetuned", str(other), "--out", str(tmp_path / "ann"),
                                 "--samples", "2", *common])
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "ann").exists()


def test_recommend_serves_a_user_the_memory_holds_nothing_of(tmp_path, writing_model):
    """A memory built before a user came (naming no dataset since an append, so any is taken)
    holds no entry for them: their sample, with no long-term history, ranked without memory
    as evaluate ranks it, then recommend failed on a raw KeyError (the cold-users review)."""
    import automr
    from automr.data import Interaction, prepare_csv
    from automr.experiments.recommend import recommend
    from automr.memory import MemoryConfig, build_memory
    from automr.memory.build import append_memory
    from automr.recommenders.finetune import FinetuneConfig, finetune
    from automr.retrievers import build_retriever
    from automr.testing.synthetic import SYNTHETIC_PROTOCOL, write_synthetic_csv

    interactions, items = write_synthetic_csv(tmp_path / "raw")
    lines = interactions.read_text().splitlines()
    last = max(int(line.split(",")[2]) for line in lines[1:])
    (tmp_path / "with-new.csv").write_text(
        "\n".join([*lines, f"new,i1,{last - 2}", f"new,i2,{last - 1}"]) + "\n")
    protocol = attrs.evolve(SYNTHETIC_PROTOCOL, min_user_interactions=2, min_history=1)
    dataset = prepare_csv(tmp_path / "with-new.csv", items, tmp_path / "data", protocol=protocol)
    before = prepare_csv(interactions, items, tmp_path / "before", protocol=protocol)
    model = str(writing_model(tmp_path / "model"))
    finetune(automr.load_model(model, device="cpu"), dataset, tmp_path / "ft", FinetuneConfig(
        max_train_samples=4, max_valid_samples=2, batch_size=4, lora_from_layer=2),
        progress=False)
    loaded = automr.load_model(model, device="cpu")
    store = build_memory(loaded, before, 2, MemoryConfig(encoder="item", store_token_states=True),
                         tmp_path / "mem", progress=False)
    append_memory(tmp_path / "mem", loaded, [Interaction("u0", "i3", last + 1)],
                  before.catalog, progress=False)
    build_retriever("mlp", store.hidden_size, seed=0).save(tmp_path / "ret")
    folders = (tmp_path / "ft", tmp_path / "mem", tmp_path / "ret")
    shown = {user: recommend(tmp_path / "data", user, *folders, top=3, grounder="likelihood",
                             device="cpu", cache_dir=tmp_path / "cache")
             for user in ("new", "u1")}
    assert shown["new"].retrieved == [] and len(shown["new"].items) == 3
    assert shown["u1"].retrieved  # the others' memory is there


def test_recommend_ranks_a_target_sharing_its_title_as_evaluate_does(tmp_path, writing_model):
    """Items sharing the target's title (Amazon editions) are ties, broken against the target
    by evaluate; recommend put the target at its place in the grounder's order (catalog order
    among the title's items), so it could show a better rank than evaluate gave the sample."""
    from automr.experiments.recommend import latest_sample, recommend
    from automr.methods.registry import Artifacts, MethodOptions, Workspace, build_method
    from automr.testing.synthetic import synthetic_dataset

    dataset = synthetic_dataset(tmp_path, titles={"i5": "Twin", "i6": "Twin", "i10": "Triple",
                                                  "i11": "Triple", "i12": "Triple"})
    writing_model(tmp_path / "model")  # its L2 texts differ per sample (and with memory)
    data, model = str(tmp_path / "prepared"), str(tmp_path / "model")
    common = ["--device", "cpu", "--quiet", "--cache-dir", str(tmp_path / "cache")]
    for args in (["finetune", "--data", data, "--out", str(tmp_path / "ft"), "--model", model,
                  "--train-samples", "8", "--valid-samples", "4", "--batch-size", "4",
                  "--lora-from-layer", "2", *common],
                 ["memory", "build", "--data", data, "--out", str(tmp_path / "mem"), "--model",
                  model, "--layer", "2", "--encoder", "window", *common],
                 ["annotate", "--data", data, "--memory", str(tmp_path / "mem"), "--finetuned",
                  str(tmp_path / "ft"), "--out", str(tmp_path / "ann"), "--samples", "8",
                  *common],
                 ["retriever", "train", "--annotations", str(tmp_path / "ann"), "--data", data,
                  "--memory", str(tmp_path / "mem"), "--out", str(tmp_path / "ret"),
                  "--quiet"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    catalog = dataset.catalog
    users = [u for u in sorted({s.user for s in dataset.samples("test")})
             if len(catalog.ids_for_title(catalog.title(latest_sample(dataset, u, "test")
                                                        .target))) > 1]
    assert users
    folders = (tmp_path / "ft", tmp_path / "mem", tmp_path / "ret")
    space = Workspace(dataset, Artifacts(finetuned=folders[0], memory=folders[1],
                                         retriever=folders[2]),
                      MethodOptions(exclude_seen=True), device="cpu", progress=False,
                      cache_dir=tmp_path / "cache")
    texts = set()
    for grounder in ("l2", "constrained", "likelihood"):
        method = build_method(f"automr:{grounder}", space)
        for user in users:
            sample = latest_sample(dataset, user, "test")
            shown = recommend(data, user, *folders, top=len(catalog), grounder=grounder,
                              device="cpu", cache_dir=tmp_path / "cache",
                              num_beams=0 if grounder == "constrained" else None)  # 0: default
            assert shown.target_rank == method.rank([sample])[0], (grounder, user)
            assert shown.items[shown.target_rank][0] == sample.target
            if grounder == "l2":
                generated = method.details()["generated"][sample.id]
                assert shown.generated == generated, user
                texts.add(generated)
    assert len(texts) == len(users) > 1  # each user's own text: whose text shows
