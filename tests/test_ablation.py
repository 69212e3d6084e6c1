"""``automr ablate`` on a tiny model: every cell scored from the same exact annotations."""

import json
import os
import shutil

import pytest
import torch
import typer
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from automr.annotation.run import Annotations
from automr.cli.ablate import ablate_command
from automr.errors import AutomrError
from automr.experiments.ablation import AblationConfig, run_ablation
from automr.llm.loading import load_model
from automr.recommenders.finetune import FinetuneConfig, finetune
from automr.testing.synthetic import save_tiny_model, synthetic_dataset


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    synthetic_dataset(root)
    save_tiny_model(root / "model", num_layers=4)
    finetune(load_model(str(root / "model"), device="cpu"), _dataset(root), root / "ft",
             FinetuneConfig(max_train_samples=8, max_valid_samples=4, batch_size=4,
                            lora_from_layer=2), progress=False)
    return root


def _dataset(root):
    from automr.data import PreparedDataset

    return PreparedDataset.load(root / "prepared")


CONFIG = AblationConfig(layers=(1, 2), combiners=("append-token", "concat"), train_samples=10,
                        test_samples=6, n_resamples=50)


def test_every_cell_is_scored_and_the_oracle_bounds_every_retriever(workspace, tmp_path):
    said: list[str] = []
    rows = run_ablation(workspace / "prepared", workspace / "ft", tmp_path, CONFIG,
                        device="cpu", progress=False, say=said.append)
    assert [(r.layer, r.combiner, r.retriever) for r in rows] == [
        (layer, combiner, kind) for layer in (1, 2) for combiner in ("append-token", "concat")
        for kind in ("mlp", "semantic", "random", "oracle")]
    by = {(r.cell, r.retriever): torch.tensor(r.gains) for r in rows}
    for row in rows:
        assert len(row.gains) > 0 and 0.0 <= row.best_picked <= 1.0
        assert bool((by[(row.cell, "oracle")] >= torch.tensor(row.gains) - 1e-6).all())
    # a retriever picked the best element where its gain is the oracle's (ties included)
    picked = [r for r in rows if r.retriever in ("mlp", "semantic")]
    for row in picked:
        best = torch.tensor(row.gains) == by[(row.cell, "oracle")]
        assert row.best_picked == pytest.approx(float(best.double().mean()))
    assert any(row.best_picked > 0 for row in picked)  # the check has teeth
    # random is the exact expectation: the mean over each sample's elements of the gain
    test = Annotations.load(tmp_path / "annotations-item-L2-concat-test")
    expected = [float((e - b).mean()) for b, e in zip(test.base, test.element, strict=True)]
    assert by[("item-L2-concat", "random")].tolist() == pytest.approx(expected, abs=1e-6)
    # ... and its "helped" is the chance a uniform pick helps, not whether that mean is > 0
    random_row = next(r for r in rows if (r.cell, r.retriever) == ("item-L2-concat", "random"))
    chance = sum(float(((e - b) > 0).double().mean()) for b, e in zip(
        test.base, test.element, strict=True)) / len(test.base)
    assert random_row.helped == pytest.approx(chance, abs=1e-6)
    # ... and its "picked best" the chance a uniform pick is a best element
    best_chance = sum(float((e == e.max()).double().mean()) for e in test.element) / len(
        test.base)
    assert random_row.best_picked == pytest.approx(best_chance, abs=1e-6)
    assert all(r.samples == tuple(test.header["samples"]) for r in rows)  # the same, paired
    payload = json.loads((tmp_path / "ablation.json").read_text())
    assert len(payload["rows"]) == len(rows)
    assert [p["helped"] for p in payload["rows"]] == [
        float((torch.tensor(r.gains) > 0).double().mean()) if r.retriever != "random"
        else r.helped for r in rows]
    assert "| item | 2 | concat | oracle |" in (tmp_path / "ablation.md").read_text()

    again: list[str] = []  # resumes: nothing is annotated or trained twice
    rerun = run_ablation(workspace / "prepared", workspace / "ft", tmp_path, CONFIG,
                         device="cpu", progress=False, say=again.append)
    assert not [line for line in again if line.startswith(("[annotate", "[train"))]
    assert [r.gains for r in rerun] == [r.gains for r in rows]


def test_a_rerun_with_other_settings_is_refused_not_scored_from_the_old_artifacts(
        workspace, tmp_path):
    """... naming what differs: a retriever's refusal said "(labels, temperature, seed or
    annotations)" whatever it was."""
    import attrs

    small = AblationConfig(layers=(2,), combiners=("append-token",), train_samples=6,
                           test_samples=4, n_resamples=20)
    run_ablation(workspace / "prepared", workspace / "ft", tmp_path, small, device="cpu",
                 progress=False, say=lambda line: None)
    for changed in (attrs.evolve(small, test_samples=3), attrs.evolve(small, seed=5)):
        with pytest.raises(AutomrError, match="other settings"):
            run_ablation(workspace / "prepared", workspace / "ft", tmp_path, changed,
                         device="cpu", progress=False, say=lambda line: None)
    with pytest.raises(AutomrError, match=r"retriever trained with other settings "
                                          r"\(label_form was 'log', now 'paper'\); use"):
        run_ablation(workspace / "prepared", workspace / "ft", tmp_path,
                     attrs.evolve(small, label_form="paper"), device="cpu", progress=False,
                     say=lambda line: None)

    other = retuned(workspace, tmp_path.with_name(tmp_path.name + "-ft-2"))  # same settings
    with pytest.raises(AutomrError, match="other settings"):
        run_ablation(workspace / "prepared", other, tmp_path, small, device="cpu",
                     progress=False, say=lambda line: None)
    for annotations in tmp_path.glob("annotations-*"):  # made again in place by it
        shutil.rmtree(annotations)
    with pytest.raises(AutomrError, match=r"retriever trained with other settings \(annotations "
                                          r"other than those now in .*-train\)"):
        run_ablation(workspace / "prepared", other, tmp_path, small, device="cpu",
                     progress=False, say=lambda line: None)
    for record_file in tmp_path.glob("retriever-*/training.json"):  # as older versions wrote
        record = json.loads(record_file.read_text())
        del record["annotations_digest"]
        record_file.write_text(json.dumps(record))
        os.utime(record_file, (1, 1))  # ... before the annotations were made again
    with pytest.raises(AutomrError, match="retriever trained with other settings"):
        run_ablation(workspace / "prepared", other, tmp_path, small, device="cpu",
                     progress=False, say=lambda line: None)


def retuned(workspace, folder):
    """A copy of the fine-tune whose adapter weights moved a little."""
    shutil.copytree(workspace / "ft", folder)
    adapter = folder / "best" / "adapter_model.safetensors"
    save_file({k: v + 1e-3 for k, v in load_file(adapter).items()}, adapter)
    return folder


def test_a_rerun_with_the_out_folder_typed_otherwise_reuses_everything(workspace, tmp_path,
                                                                       monkeypatch):
    small = AblationConfig(layers=(2,), combiners=("append-token",), train_samples=6,
                           test_samples=4, n_resamples=20)
    monkeypatch.chdir(tmp_path)
    first = run_ablation(workspace / "prepared", workspace / "ft", "out", small, device="cpu",
                         progress=False, say=lambda line: None)
    steps = []
    again = run_ablation(workspace / "prepared", workspace / "ft", tmp_path / "out", small,
                         device="cpu", progress=False, say=steps.append)
    assert again == first
    assert not [step for step in steps if step.startswith(("[annotate", "[train"))]


def test_bad_labels_are_refused_before_any_work():
    from automr.experiments.demo import DemoConfig

    with pytest.raises(ValueError, match="label_form"):
        AblationConfig(label_form="logarithm")
    with pytest.raises(ValueError, match="temperature"):
        AblationConfig(temperature=0.0)
    for config in (AblationConfig, DemoConfig):  # labels refuse inf, after annotating
        with pytest.raises(ValueError, match="temperature"):
            config(temperature=float("inf"))
    with pytest.raises(ValueError, match="n_resamples"):  # not after every cell is annotated
        AblationConfig(n_resamples=0)
    for grid in ({"layers": (2, 2)}, {"layers": (-1,)}, {"layers": ()},
                 {"combiners": ("concat", "concat")}, {"retrievers": ("random", "random")}):
        with pytest.raises(AutomrError, match="each named once"):  # a cell twice in the table
            AblationConfig(**grid)


def test_a_layer_below_the_tuned_layers_is_refused(workspace, tmp_path):
    with pytest.raises(AutomrError, match="lora-from-layer"):
        run_ablation(workspace / "prepared", workspace / "ft", tmp_path,
                     AblationConfig(layers=(3,), combiners=("append-token",),
                                    retrievers=("random",), test_samples=4),
                     device="cpu", progress=False, say=lambda _: None)


@pytest.mark.parametrize("change, message", [
    ({"data_fingerprint": "0" * 64}, "was tuned on another dataset"),
    ({"config": {"context": {"kind": "rella", "k": 5}}}, "was fine-tuned with a rella context"),
])
def test_a_fine_tune_annotate_would_refuse_is_refused_before_any_work(workspace, tmp_path,
                                                                      change, message):
    import json
    import shutil

    other = tmp_path / "ft"
    shutil.copytree(workspace / "ft", other)
    record = json.loads((other / "finetune.json").read_text())
    for key, value in change.items():
        record[key] = {**record[key], **value} if isinstance(value, dict) else value
    (other / "finetune.json").write_text(json.dumps(record))
    with pytest.raises(AutomrError, match=message):
        run_ablation(workspace / "prepared", other, tmp_path / "out",
                     AblationConfig(layers=(2,), combiners=("append-token",),
                                    retrievers=("random",), test_samples=4),
                     device="cpu", progress=False, say=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_cli_prints_the_table_and_rejects_bad_grids(workspace, tmp_path):
    app = typer.Typer()
    app.command()(ablate_command)
    runner = CliRunner()
    common = ["--data", str(workspace / "prepared"), "--finetuned", str(workspace / "ft"),
              "--out", str(tmp_path), "--device", "cpu", "--quiet"]
    result = runner.invoke(app, [*common, "--layers", "2", "--combiners", "prepend-token",
                                 "--retrievers", "semantic,random,oracle",
                                 "--test-samples", "4"])
    assert result.exit_code == 0, result.output
    assert "| item | 2 | prepend-token | semantic |" in result.output
    bad = runner.invoke(app, [*common, "--combiners", "sideways"])
    assert bad.exit_code == 2 and "combiners" in bad.output


def test_a_damaged_training_record_is_one_line_naming_it(tmp_path):
    """A retriever folder whose training.json was cut (a kill or a full disk while writing it,
    before it was written atomically) is named, not a JSON traceback."""
    from automr.experiments.ablation import _trained
    from automr.retrievers import RetrieverTrainingConfig

    (tmp_path / "training.json").write_text('{"annotations": "ann", "label_')
    with pytest.raises(AutomrError, match=r"training\.json is not valid JSON"):
        _trained(tmp_path, tmp_path / "ann", AblationConfig(), RetrieverTrainingConfig())


def test_damaged_demo_settings_are_one_line_naming_them(tmp_path):
    from automr.experiments.demo import _check_settings

    (tmp_path / "settings.json").write_text('{"config": {')
    (tmp_path / "bigrec").mkdir()  # a run that began a step (else its settings are replaced)
    with pytest.raises(AutomrError, match=r"settings\.json is not valid JSON"):
        _check_settings(tmp_path, {"config": {}, "dataset": "d", "dtype": "float32"})


def test_a_demo_rerun_with_its_model_folder_typed_otherwise_resumes(tmp_path, monkeypatch):
    import attrs

    from automr.experiments.demo import DemoConfig, _check_settings

    def settings(model: str) -> dict:
        return {"config": attrs.asdict(DemoConfig(model=model)), "dataset": None,
                "dtype": "float32"}

    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "demo"
    (out / "bigrec").mkdir(parents=True)  # a run that began a step
    _check_settings(out, settings("./m"))
    _check_settings(out, settings(str(tmp_path / "m")))
    with pytest.raises(AutomrError, match=r"other settings \(model\)"):
        _check_settings(out, settings("smollm2-135m"))


def test_a_memory_layer_the_fine_tune_changes_and_a_foreign_folder_are_refused_first(
        workspace, tmp_path):
    """The fine-tune's LoRA starts at layer 2: a layer-3 cell was refused only after its
    memory was built (a window memory takes hours); a folder of other files got the grid's
    folders mixed in."""
    with pytest.raises(AutomrError, match=r"--layers 3: .* changes layers 2\.\.2 below it.*"
                                          r"--layers at most 2, or .*--lora-from-layer 3"):
        run_ablation(workspace / "prepared", workspace / "ft", tmp_path / "deep",
                     AblationConfig(layers=(2, 3), combiners=("append-token",)), device="cpu",
                     progress=False, say=lambda line: None)
    assert not (tmp_path / "deep").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(AutomrError, match=r"holds other files \(notes.txt\)"):
        run_ablation(workspace / "prepared", workspace / "ft", tmp_path / "busy", CONFIG,
                     device="cpu", progress=False, say=lambda line: None)
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]


def test_a_demo_run_older_than_lora_targets_resumes_with_the_default_and_refuses_others(
        tmp_path):
    """Demo folders of versions without ``--lora-targets`` tuned BIGRec's modules: a rerun
    with the default resumes them, other modules are a change of settings."""
    import attrs

    from automr.experiments.demo import DemoConfig, _check_settings

    def settings(config: DemoConfig) -> dict:
        return {"config": attrs.asdict(config), "dataset": None, "dtype": "float32"}

    older = settings(DemoConfig())
    del older["config"]["lora_targets"]
    (tmp_path / "settings.json").write_text(json.dumps(older))
    (tmp_path / "bigrec").mkdir()  # a run that began a step
    _check_settings(tmp_path, settings(DemoConfig()))
    with pytest.raises(AutomrError, match=r"other settings \(lora_targets\)"):
        _check_settings(tmp_path, settings(DemoConfig(lora_targets=("qkv_proj",))))


def test_the_table_resamples_users_when_asked(tmp_path):
    """Every interval of ablation.json again from its per-sample gains, the users of the
    sample ids as the bootstrap's groups; samples of one user move together, so the intervals
    are not those that resample samples."""
    import attrs

    from automr.evaluation.bootstrap import bootstrap_ci, paired_bootstrap, users_of
    from automr.experiments.ablation import AblationRow, write_ablation

    samples = tuple(f"u{n % 3}@{n}:i{n}" for n in range(12))  # 3 users, 4 samples each
    gains = {"mlp": tuple(float(n % 3) - 0.1 * n for n in range(12)),
             "random": tuple(0.05 * n for n in range(12))}
    rows = [AblationRow(encoder="item", layer=1, combiner="concat", retriever=kind,
                        gains=values, best_picked=0.5, samples=samples)
            for kind, values in gains.items()]
    tables = {}
    for resample in ("samples", "users"):
        config = AblationConfig(n_resamples=200, seed=3, resample=resample)
        write_ablation(rows, tmp_path / resample, config, {})
        tables[resample] = json.loads((tmp_path / resample / "ablation.json").read_text())
        groups = users_of(samples) if resample == "users" else None
        mlp, random = (torch.tensor(gains[kind], dtype=torch.float64) for kind in gains)
        again = {"n_resamples": 200, "seed": 3, "groups": groups}
        got = tables[resample]["rows"][0]
        assert tables[resample]["config"]["resample"] == resample
        assert got["gain"] == attrs.asdict(bootstrap_ci(mlp, **again))
        assert got["vs_random"] == attrs.asdict(paired_bootstrap(mlp, random, **again))
    assert tables["users"]["rows"][0]["gain"] != tables["samples"]["rows"][0]["gain"]
    assert "intervals resample the users" in (tmp_path / "users" / "ablation.md").read_text()
    assert "resample" not in (tmp_path / "samples" / "ablation.md").read_text()
