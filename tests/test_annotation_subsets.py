"""Annotating a seeded subset of each sample's memory elements, and training on it (eq. 6)."""

import functools
import json

import attrs
import pytest
import torch
from hypothesis import given, strategies as st

import automr
from automr.annotation import labels
from automr.annotation.run import AnnotateConfig, Annotations, annotate_dataset, retrieval_dataset
from automr.annotation.subsets import element_subset
from automr.errors import AutomrError
from automr.experiments.retriever import train_retriever
from automr.memory import MemoryConfig, MemoryStore, build_memory
from automr.retrievers import RetrieverTrainingConfig
from automr.testing.synthetic import save_tiny_model, synthetic_dataset


@given(count=st.integers(0, 40), size=st.none() | st.integers(1, 50), seed=st.integers(0, 99),
       key=st.text(max_size=8))
def test_element_subsets_are_seeded_sorted_and_of_the_asked_size(count, size, seed, key):
    chosen = element_subset(count, size, seed, key)
    assert chosen == element_subset(count, size, seed, key)
    assert chosen == sorted(set(chosen)) and all(0 <= i < count for i in chosen)
    assert len(chosen) == (count if size is None else min(size, count))


def test_element_subsets_differ_across_samples_and_seeds():
    draws = {tuple(element_subset(50, 5, seed, key)) for seed in (0, 1) for key in "abcd"}
    assert len(draws) == 8
    with pytest.raises(AutomrError, match="at least 1"):
        element_subset(5, 0, 0, "a")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("subsets")
    dataset = synthetic_dataset(root)
    loaded = automr.load_model(str(save_tiny_model(root / "model", num_layers=4)), device="cpu")
    store = build_memory(loaded, dataset, 2, MemoryConfig(encoder="item",
                                                          store_token_states=True),
                         root / "mem", progress=False)
    folders = {}
    for name, subset in (("all", None), ("three", 3)):
        folders[name] = annotate_dataset(loaded, dataset, store, root / name, AnnotateConfig(
            max_samples=8, combiner="concat", element_subset=subset, element_seed=5,
            shard_size=3), progress=False)
    return {"root": root, "dataset": dataset, "store": store, "folders": folders,
            "loaded": loaded}


def test_resuming_with_other_settings_names_them(workspace, tmp_path):
    """The refusal said "other settings" without saying which."""
    import shutil

    folder = shutil.copytree(workspace["folders"]["three"], tmp_path / "three")
    with pytest.raises(AutomrError, match=r"other settings \(config\.element_seed was 5, now 6; "
                                          r"config\.max_samples was 8, now 4; samples was "
                                          r"\d+ entries, now \d+ entries\); use another"):
        annotate_dataset(workspace["loaded"], workspace["dataset"], workspace["store"], folder,
                         AnnotateConfig(max_samples=4, combiner="concat", element_subset=3,
                                        element_seed=6, shard_size=3), progress=False)


def test_a_second_annotation_into_a_folder_in_use_is_refused(workspace, tmp_path,
                                                             monkeypatch):
    """An annotation of other settings (another element seed) started while the first had
    finished no shard took the folder over (one without shards is started over): the first
    then wrote its shards over the second's, under the second's config.json."""
    import automr.annotation.run as run

    save, refusals = run.save_safetensors, []

    def second_starts(*args, **kwargs):  # as the first writes its first shard
        if not refusals:
            refusals.append("started")
            try:
                annotate_dataset(workspace["loaded"], workspace["dataset"], workspace["store"],
                                 tmp_path / "a", AnnotateConfig(
                                     max_samples=8, combiner="concat", element_subset=3,
                                     element_seed=6, shard_size=3), progress=False)
                refusals.append("none")
            except AutomrError as error:
                refusals.append(str(error))
        return save(*args, **kwargs)

    monkeypatch.setattr(run, "save_safetensors", second_starts)
    annotate_dataset(workspace["loaded"], workspace["dataset"], workspace["store"],
                     tmp_path / "a", AnnotateConfig(max_samples=8, combiner="concat",
                                                    element_subset=3, element_seed=5,
                                                    shard_size=3), progress=False)
    assert "is in use by another automr command (process" in refusals[1]
    assert Annotations.header_of(tmp_path / "a")["config"]["element_seed"] == 5


def test_a_resumed_annotation_counts_the_samples_annotated_before(workspace, tmp_path,
                                                                  monkeypatch, capsys):
    """Its progress counted only the samples left (1/1 where 6 of 7 were done)."""
    import shutil

    folder = shutil.copytree(workspace["folders"]["three"], tmp_path / "three")
    (folder / "shard-00002.safetensors").unlink()
    monkeypatch.setenv("AUTOMR_PROGRESS_EVERY", "0")  # captured output: plain lines
    annotate_dataset(workspace["loaded"], workspace["dataset"], workspace["store"], folder,
                     AnnotateConfig(max_samples=8, combiner="concat", element_subset=3,
                                    element_seed=5, shard_size=3), progress=True)
    total = len(Annotations.header_of(folder)["samples"])
    assert capsys.readouterr().err.startswith(f"annotating: {total}/{total} (100%)")


def test_an_annotation_killed_while_writing_its_config_resumes(workspace, tmp_path,
                                                               left_by_a_killed_write):
    """SIGKILLed between writing its config's temporary file and renaming it, a run left a
    folder holding only ``.config.json.partial-HOST-PID``: the rerun refused it as "not an
    annotation folder" until it was deleted by hand."""
    out = left_by_a_killed_write(tmp_path / "killed", "config.json", '{"format": "automr.ann')
    annotate_dataset(workspace["loaded"], workspace["dataset"], workspace["store"], out,
                     AnnotateConfig(max_samples=8, combiner="concat", element_subset=3,
                                    element_seed=5, shard_size=3), progress=False)
    whole = workspace["folders"]["three"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in whole.iterdir())
    for path in whole.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(AutomrError, match="is not an annotation folder"):  # a stranger's still
        annotate_dataset(workspace["loaded"], workspace["dataset"], workspace["store"],
                         tmp_path / "other", AnnotateConfig(max_samples=8), progress=False)


def test_a_subset_annotation_holds_the_full_annotations_values_at_its_elements(workspace):
    full = Annotations.load(workspace["folders"]["all"])
    part = Annotations.load(workspace["folders"]["three"])
    assert part.header["config"]["element_subset"] == 3
    assert part.header["config"]["element_seed"] == 5
    assert part.header["samples"] == full.header["samples"]
    by_id = {s.id: s for s in workspace["dataset"].samples("train")}
    for sample_id, index, values, all_index, all_values in zip(
            part.header["samples"], part.index, part.element, full.index, full.element,
            strict=True):
        count = len(by_id[sample_id].memory)
        assert all_index.tolist() == list(range(count))
        assert index.tolist() == element_subset(count, 3, 5, sample_id)
        torch.testing.assert_close(values, all_values[index], rtol=0, atol=1e-5)
    torch.testing.assert_close(part.base, full.base)


def test_the_annotated_queries_are_the_inference_queries_of_the_prompts(workspace):
    """The retriever trains on z_t pooled from the prompt's share of one lower pass over
    [prompt, target]; at inference z_t is the prompt alone encoded as a memory key is: the
    same vectors, so the target (never seen at inference) leaks into no training query."""
    from automr.data import tokenize_sample
    from automr.memory.encoders import Backbone, LayerEncoder

    store, dataset, loaded = workspace["store"], workspace["dataset"], workspace["loaded"]
    encoder = LayerEncoder(Backbone.of(loaded), store.layer, store.record.pooling)
    by_id = {s.id: s for s in dataset.samples("train")}
    for name in ("all", "three"):
        annotations = Annotations.load(workspace["folders"][name])
        prompts = [tokenize_sample(loaded.tokenizer, by_id[i], dataset.catalog,
                                   dataset.prompt_config).prompt_ids
                   for i in annotations.header["samples"]]
        expected = torch.cat([encoder.encode_tokens([p]).keys for p in prompts])
        torch.testing.assert_close(annotations.queries, expected.float(), rtol=0, atol=1e-5)


def test_the_retrieval_dataset_holds_the_annotated_elements_only(workspace):
    dataset, store = workspace["dataset"], workspace["store"]
    part = Annotations.load(workspace["folders"]["three"])
    data = retrieval_dataset(part, dataset, store, "train")
    full = retrieval_dataset(Annotations.load(workspace["folders"]["all"]), dataset, store,
                             "train")
    assert data.metadata["element_subset"] == "3" and data.metadata["element_seed"] == "5"
    assert full.metadata["element_subset"] == "all"
    by_id = {s.id: s for s in dataset.samples("train")}  # the plain way: every memory, padded
    plain, plain_mask = store.padded_keys([store.request_for(by_id[key])
                                           for key in part.header["samples"]])
    assert torch.equal(full.keys, plain) and torch.equal(full.mask, plain_mask)
    for row, index in enumerate(part.index):
        n = len(index)
        assert data.mask[row].sum() == n and bool(data.mask[row, :n].all())
        torch.testing.assert_close(data.keys[row, :n], full.keys[row, index])
        expected = labels(float(part.base[row]), part.element[row], "log", 1.0)
        torch.testing.assert_close(data.targets[row, :n], expected)


def test_training_rows_keep_labels_below_float32s_range(workspace):
    """At a temperature 200 times sharper than the widest gain spread, the labels of the worst
    elements fall below float32's range: the rows held them as 0 and the regret of always
    picking the worst element was clamped far below its (best - worst gain) / temperature."""
    from automr.retrievers import evaluate_retriever

    part = Annotations.load(workspace["folders"]["all"])
    gains = [e.double() - float(b) for b, e in zip(part.base, part.element, strict=True)]
    temperature = max(float(g.max() - g.min()) for g in gains) / 200
    data = retrieval_dataset(part, workspace["dataset"], workspace["store"], "train", "log",
                             temperature)
    worst = torch.tensor([int(g.argmin()) for g in gains])

    class Worst:
        def scores(self, query, keys, mask):
            scores = torch.zeros(mask.shape).scatter(1, worst[:, None], 1.0)
            return scores.masked_fill(~mask, -torch.inf)

    expected = sum(float(g.max() - g.min()) for g in gains) / len(gains) / temperature
    regret = evaluate_retriever(Worst(), data).regret
    assert regret == pytest.approx(expected, rel=1e-6)


def test_a_retriever_trains_on_a_subset_annotation_and_records_it(workspace, tmp_path):
    record = train_retriever(workspace["folders"]["three"], workspace["root"] / "prepared",
                             workspace["root"] / "mem", tmp_path / "ret",
                             config=RetrieverTrainingConfig(max_epochs=3), progress=False)
    assert record["train_samples"] > 0
    saved = json.loads((tmp_path / "ret" / "config.json").read_text())
    assert saved["provenance"]["element_subset"] == "3"


def test_a_second_retriever_training_into_the_same_folder_at_once_is_refused(workspace,
                                                                             tmp_path):
    """Two `automr retriever train` into one --out at once both exited 0: the folder kept one's
    weights beside the other's training.json (its history and samples), or one died on the
    other's removed marker (the CLI-in-scripts review). It takes the folder's lock, as the
    other writers do."""
    from automr.storage import LOCK_FILE, folder_lock

    with folder_lock(tmp_path / "ret", "retriever train"), \
            pytest.raises(AutomrError, match="ret is in use by another automr command"):
        train_retriever(workspace["folders"]["three"], workspace["root"] / "prepared",
                        workspace["root"] / "mem", tmp_path / "ret",
                        config=RetrieverTrainingConfig(max_epochs=1), progress=False)
    assert not (tmp_path / "ret").exists()  # the holder made it and wrote nothing
    train_retriever(workspace["folders"]["three"], workspace["root"] / "prepared",
                    workspace["root"] / "mem", tmp_path / "ret",
                    config=RetrieverTrainingConfig(max_epochs=1), progress=False)
    assert sorted(p.name for p in (tmp_path / "ret").iterdir()) == sorted(
        [LOCK_FILE, "config.json", "retriever.safetensors", "training.json"])


def test_training_holds_the_split_not_also_the_whole_dataset(workspace, tmp_path, monkeypatch):
    """The whole retrieval dataset stayed alive beside its split while the retriever trained:
    two copies of every annotated key (about 30 GB in the paper's Book setting)."""
    import gc
    import weakref

    from automr.experiments import retriever as module

    made, alive = [], []
    build, fit = module.annotated_dataset, module.train_mlp_retriever

    def annotated(*args, **kwargs):
        annotations, full = build(*args, **kwargs)
        made.append(weakref.ref(full))
        return annotations, full

    def train(*args, **kwargs):
        gc.collect()
        alive.append(made[0]() is not None)
        return fit(*args, **kwargs)

    monkeypatch.setattr(module, "annotated_dataset", annotated)
    monkeypatch.setattr(module, "train_mlp_retriever", train)
    train_retriever(workspace["folders"]["three"], workspace["root"] / "prepared",
                    workspace["root"] / "mem", tmp_path / "ret",
                    config=RetrieverTrainingConfig(max_epochs=1), progress=False)
    assert alive == [False]


@pytest.mark.parametrize("fraction, says", [(1.0, "in \\[0, 1\\)"), (0.999, "none is left")])
def test_a_held_out_share_that_leaves_nothing_to_train_on_is_one_line(workspace, tmp_path,
                                                                       fraction, says):
    with pytest.raises(AutomrError, match=says):
        train_retriever(workspace["folders"]["three"], workspace["root"] / "prepared",
                        workspace["root"] / "mem", tmp_path / "ret", valid_fraction=fraction,
                        progress=False)
    assert not (tmp_path / "ret").exists()


def test_a_held_out_share_under_one_sample_still_holds_one_out(workspace, tmp_path):
    """--valid-fraction 0.05 of 8 samples rounded to 0: training ran every epoch with no
    validation and no early stopping, where the user asked for both."""
    record = train_retriever(workspace["folders"]["three"], workspace["root"] / "prepared",
                             workspace["root"] / "mem", tmp_path / "ret", valid_fraction=0.05,
                             config=RetrieverTrainingConfig(max_epochs=1), progress=False)
    assert record["valid_samples"] == 1 and record["valid"] is not None
    assert record["train_samples"] == len(record["annotated_samples"]) - 1


def test_shards_written_before_subsets_read_as_every_element(workspace, tmp_path):
    """Annotation folders from before the ``index`` tensor load with all elements annotated."""
    import shutil

    from safetensors.torch import load_file, save_file

    old = tmp_path / "old"
    shutil.copytree(workspace["folders"]["all"], old)
    for shard in old.glob("shard-*.safetensors"):
        tensors = load_file(shard)
        del tensors["index"]
        save_file(tensors, shard)
    header = json.loads((old / "config.json").read_text())
    for key in ("element_subset", "element_seed"):
        del header["config"][key]
    (old / "config.json").write_text(json.dumps(header))
    loaded, full = Annotations.load(old), Annotations.load(workspace["folders"]["all"])
    assert [i.tolist() for i in loaded.index] == [i.tolist() for i in full.index]
    data = retrieval_dataset(loaded, workspace["dataset"], workspace["store"], "train")
    assert data.metadata["element_subset"] == "all"


def test_retriever_scores_read_the_first_picks_gain_off_the_annotations(workspace, tmp_path):
    """Every row against the plain computation: scores of the sample's annotated keys, argmax,
    that element's annotated log-likelihood minus the prompt's."""
    from automr.experiments.retriever import score_retrievers
    from automr.retrievers import RandomRetriever, build_retriever

    store, root = workspace["store"], workspace["root"]
    mlp = build_retriever("mlp", store.hidden_size, seed=3)
    scores = score_retrievers(workspace["folders"]["three"], root / "prepared", root / "mem",
                              {"mlp": mlp}, random_seeds=[0, 1, 2], n_resamples=50)
    part = Annotations.load(workspace["folders"]["three"])
    by_id = {s.id: s for s in workspace["dataset"].samples("train")}
    assert scores.sample_ids == tuple(part.header["samples"])
    for row, sample_id in enumerate(scores.sample_ids):
        gains = part.element[row].double() - float(part.base[row])
        keys = store.view(*store.request_for(by_id[sample_id])).keys[part.index[row]]
        query = part.queries[row][None]
        mask = torch.ones(1, len(keys), dtype=torch.bool)
        assert float(scores.gains["oracle"][row]) == float(gains.max())
        assert float(scores.gains["random"][row]) == pytest.approx(float(gains.mean()))
        for name, retriever in (("mlp", mlp), ("random seed 1", RandomRetriever(seed=1))):
            pick = int(retriever.scores(query, keys[None].float(), mask)[0].argmax())
            assert float(scores.gains[name][row]) == float(gains[pick]), (name, sample_id)
    summary = scores.summary()
    assert summary["oracle"]["picked_best"] == 1.0 and summary["oracle"]["vs_random"] is None
    chance = [float((e == e.max()).double().mean()) for e in part.element]
    assert summary["random"]["picked_best"] == pytest.approx(sum(chance) / len(chance))
    helps = [float((e > b).double().mean()) for e, b in zip(part.element, part.base, strict=True)]
    assert summary["random"]["helped"] == pytest.approx(sum(helps) / len(helps))  # not mean > 0
    assert summary["mlp"]["helped"] == float((scores.gains["mlp"] > 0).double().mean())
    assert summary["mlp"]["vs_random"]["mean"] == pytest.approx(
        float((scores.gains["mlp"] - scores.gains["random"]).mean()))
    assert scores.seed_spread()["n"] == 3
    payload = scores.to_json()
    from automr.evaluation.bootstrap import bootstrap_ci, paired_bootstrap

    for name in ("mlp", "random"):  # every interval again from the per-sample gains it holds
        values = torch.tensor([payload["samples"][s][name] for s in scores.sample_ids],
                              dtype=torch.float64)
        random = torch.tensor([payload["samples"][s]["random"] for s in scores.sample_ids],
                              dtype=torch.float64)
        again = {"n_resamples": payload["n_resamples"], "seed": payload["seed"]}
        assert payload["summary"][name]["gain"] == attrs.asdict(bootstrap_ci(values, **again))
        if name == "mlp":
            assert payload["summary"][name]["vs_random"] == attrs.asdict(
                paired_bootstrap(values, random, **again))
    assert set(payload["samples"]) == set(scores.sample_ids)
    assert "| mlp |" in scores.markdown() and "over 3 seeds" in scores.markdown()


def test_a_retrievers_picked_best_counts_ties_helped_counts_only_gains_and_seeds_below():
    """The summary and table of given per-sample gains: a pick equal to the oracle's is the
    best, a zero gain did not help, and a retriever is above the seeds whose mean is below."""
    from automr.experiments.retriever import RetrieverScores

    def gains(*values):
        return torch.tensor(values, dtype=torch.float64)

    best = gains(1.0, 2.0, 0.5)
    rows = {"oracle": best, "random": gains(0.2, 0.5, 0.1), "mine": gains(1.0, 0.0, 0.5),
            "random seed 0": gains(0.0, 0.0, 0.0), "random seed 1": best}
    scores = RetrieverScores(sample_ids=("a", "b", "c"), gains=rows, best=best,
                             best_share=gains(0.5, 0.5, 0.5), helped_share=gains(1.0, 1.0, 0.5),
                             random_seeds=(0, 1), n_resamples=20)
    summary = scores.summary()
    assert summary["mine"]["picked_best"] == pytest.approx(2 / 3)
    assert summary["mine"]["helped"] == pytest.approx(2 / 3)
    assert (summary["random"]["picked_best"], summary["random"]["helped"]) == (
        pytest.approx(0.5), pytest.approx(2.5 / 3))
    assert "`mine` is above 1 of 2 seeds." in scores.markdown()


def test_retriever_scores_resample_users_when_asked(workspace):
    """Every interval again from the per-sample gains, the sample ids' users as the
    bootstrap's groups."""
    from automr.evaluation.bootstrap import bootstrap_ci, paired_bootstrap, users_of
    from automr.experiments.retriever import score_retrievers

    root = workspace["root"]
    score = functools.partial(score_retrievers, workspace["folders"]["all"], root / "prepared",
                              root / "mem", {}, random_seeds=[0, 1], n_resamples=200, seed=2)
    users, samples = score(resample="users"), score()
    payload = users.to_json()
    assert (payload["resample"], samples.to_json()["resample"]) == ("users", "samples")
    again = {"n_resamples": 200, "seed": 2, "groups": users_of(users.sample_ids)}
    seed = users.gains["random seed 1"]
    assert payload["summary"]["random seed 1"]["gain"] == attrs.asdict(bootstrap_ci(seed, **again))
    assert payload["summary"]["random seed 1"]["vs_random"] == attrs.asdict(
        paired_bootstrap(seed, users.gains["random"], **again))
    assert "intervals resample the users" in users.markdown()
    assert "resample" not in samples.markdown()
    with pytest.raises(AutomrError, match="resample must be one of samples, users, got 'user'"):
        score(resample="user")


def test_retriever_scores_of_users_with_several_samples_move_them_together():
    """Three users of four samples each: resampling users is not resampling samples."""
    from automr.evaluation.bootstrap import bootstrap_ci, users_of
    from automr.experiments.retriever import RetrieverScores

    ids = tuple(f"u{n % 3}@{n}:i{n}" for n in range(12))
    gains = torch.tensor([float(n % 3) - 0.1 * n for n in range(12)], dtype=torch.float64)
    rows = {"oracle": gains + 1, "random": gains / 2, "mine": gains}
    scores = {resample: RetrieverScores(
        sample_ids=ids, gains=rows, best=gains + 1, best_share=gains, helped_share=gains,
        random_seeds=(), n_resamples=200, resample=resample).summary()["mine"]["gain"]
        for resample in ("samples", "users")}
    assert scores["users"] == attrs.asdict(bootstrap_ci(gains, n_resamples=200,
                                                        groups=users_of(ids)))
    assert scores["users"] != scores["samples"]


def test_retriever_scores_keep_the_bootstrap_seed_asked_for(workspace):
    from automr.experiments.retriever import score_retrievers

    root = workspace["root"]
    scores = score_retrievers(workspace["folders"]["three"], root / "prepared", root / "mem",
                              {}, random_seeds=[], n_resamples=20, seed=4)
    assert (scores.seed, scores.n_resamples) == (4, 20)
    assert scores.to_json()["seed"] == 4


def test_retriever_scores_refuse_a_random_seed_given_twice(workspace):
    """`--seeds 0,0,0` drew seed 0 once and reported "over 3 seeds ... ± 0.000" and a retriever
    "above 3 of 3 seeds"; RQ2 refuses repeated seeds the same way."""
    from automr.experiments.retriever import score_retrievers

    root = workspace["root"]
    with pytest.raises(AutomrError, match="must be distinct"):
        score_retrievers(workspace["folders"]["three"], root / "prepared", root / "mem", {},
                         random_seeds=[0, 1, 0], n_resamples=20)


def test_retriever_score_cli_writes_the_table_and_per_sample_gains(workspace, tmp_path):
    from typer.testing import CliRunner

    from automr.cli.main import app
    from automr.retrievers import build_retriever

    root = workspace["root"]
    build_retriever("mlp", workspace["store"].hidden_size, seed=0).save(tmp_path / "ret")
    args = ["retriever", "score", "--annotations", str(workspace["folders"]["three"]),
            "--data", str(root / "prepared"), "--memory", str(root / "mem"),
            "--out", str(tmp_path / "scores"), "--seeds", "0-3"]
    result = CliRunner().invoke(app, [*args, "--retriever", f"mine={tmp_path / 'ret'}"])
    assert result.exit_code == 0, result.output
    assert "| mine |" in result.output and "| semantic |" in result.output
    payload = json.loads((tmp_path / "scores" / "scores.json").read_text())
    assert payload["random_seeds"] == [0, 1, 2, 3]
    assert set(next(iter(payload["samples"].values()))) >= {"oracle", "random", "mine"}
    record = json.loads((tmp_path / "scores" / "automr-runs.jsonl").read_text())
    assert record["fingerprints"]["retriever"][f"mine={tmp_path / 'ret'}"]  # the folder's JSON
    bad = CliRunner().invoke(app, [*args, "--retriever", str(tmp_path / "ret")])
    assert bad.exit_code != 0 and "NAME=FOLDER" in bad.output
    from automr.experiments.retriever import annotations_digest

    (tmp_path / "ret" / "training.json").write_text(json.dumps(
        {"annotations_digest": annotations_digest(workspace["folders"]["three"])}))
    memorised = CliRunner().invoke(app, [*args, "--retriever", f"mine={tmp_path / 'ret'}"])
    assert memorised.exit_code == 2 and "was trained on" in memorised.output
    assert "or add --training-annotations" in memorised.output
    fit = CliRunner().invoke(app, [*args, "--retriever", f"mine={tmp_path / 'ret'}",
                                   "--training-annotations"])  # asked for: how well it fits
    assert fit.exit_code == 0 and "| mine |" in fit.output, fit.output
    # keys of another layer, labels of another combiner: scored on these keys before
    store = workspace["store"]
    for key, value in (("layer", "9"), ("combiner", "append-token")):
        other = build_retriever("mlp", store.hidden_size, seed=0)
        other.provenance = {**store.record.provenance(), "combiner": "concat", key: value}
        other.save(tmp_path / key)
        refused = CliRunner().invoke(app, [*args, "--retriever", f"x={tmp_path / key}"])
        assert refused.exit_code == 2 and repr(value) in refused.output, refused.output
    # another artifact's folder as --out: scores.json was written beside its files
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "stats.json").write_text("{}")
    busy = CliRunner().invoke(app, [*args[:-4], "--out", str(tmp_path / "busy")])
    assert busy.exit_code == 2 and "holds other files (stats.json)" in busy.output
    assert not (tmp_path / "busy" / "scores.json").exists()


def test_retriever_score_refuses_samples_the_retriever_was_trained_on(workspace, tmp_path):
    """Another folder annotating the training samples (here the same samples, 3 elements
    each) is refused as the training folder itself is; a retriever that never saw them is
    scored."""
    from typer.testing import CliRunner

    from automr.cli.main import app

    root, folders = workspace["root"], workspace["folders"]
    record = train_retriever(folders["all"], root / "prepared", root / "mem", tmp_path / "ret",
                             config=RetrieverTrainingConfig(max_epochs=2), progress=False)
    assert record["annotated_samples"] == Annotations.header_of(folders["all"])["samples"]
    args = ["retriever", "score", "--annotations", str(folders["three"]), "--data",
            str(root / "prepared"), "--memory", str(root / "mem"), "--out",
            str(tmp_path / "scores"), "--retriever", f"mine={tmp_path / 'ret'}"]
    seen = CliRunner().invoke(app, args)
    assert seen.exit_code == 2, seen.output
    count = len(Annotations.header_of(folders["three"])["samples"])
    assert f"{count} of the {count} samples annotated in" in " ".join(seen.output.split())
    training = tmp_path / "ret" / "training.json"
    payload = json.loads(training.read_text())
    payload["annotated_samples"] = ["a sample of another split"]
    training.write_text(json.dumps(payload))
    unseen = CliRunner().invoke(app, args)
    assert unseen.exit_code == 0, unseen.output


class ConcatOfMyOwn:
    """A user's combiner (no registry name): the element's token states before the prompt,
    as the built-in concat, which the annotator recognises for its fast path; this one it
    does not."""

    uses_token_states = True

    def combine(self, query, memory):
        return automr.Concat().combine(query, memory)


def test_an_annotation_takes_a_combiner_object_and_records_its_class(workspace, tmp_path):
    """Only registry names were taken: a user's own combiner could not be annotated."""
    folder = annotate_dataset(workspace["loaded"], workspace["dataset"], workspace["store"],
                              tmp_path / "own", AnnotateConfig(
                                  max_samples=8, element_subset=3, element_seed=5,
                                  shard_size=3), progress=False, combiner=ConcatOfMyOwn())
    own, builtin = Annotations.load(folder), Annotations.load(workspace["folders"]["three"])
    assert own.header["config"]["combiner"] == f"{__name__}.ConcatOfMyOwn"
    assert own.header["samples"] == builtin.header["samples"]
    torch.testing.assert_close(own.base, builtin.base, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(own.element, builtin.element, strict=True):  # the plain path
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    data = retrieval_dataset(own, workspace["dataset"], workspace["store"], "train")
    assert data.metadata["combiner"] == f"{__name__}.ConcatOfMyOwn"


def test_a_built_in_combiner_object_is_recorded_by_its_registry_name(workspace, tmp_path):
    """automr.Concat() was recorded as 'automr.combiners.tokens.Concat', so a retriever trained
    on the labels was refused by `evaluate --combiner concat`, which it was trained for."""
    folder = annotate_dataset(workspace["loaded"], workspace["dataset"], workspace["store"],
                              tmp_path / "object", AnnotateConfig(
                                  max_samples=8, element_subset=3, element_seed=5,
                                  shard_size=3), progress=False, combiner=automr.Concat())
    labels = Annotations.load(folder)
    assert labels.header["config"]["combiner"] == "concat"
    data = retrieval_dataset(labels, workspace["dataset"], workspace["store"], "train")
    assert data.metadata["combiner"] == "concat"


def test_an_annotation_refuses_a_combiner_by_name_in_place_of_an_object(workspace, tmp_path):
    """combiner="concat" (a registry name, which belongs in AnnotateConfig) failed with an
    AttributeError ('str' object has no attribute 'uses_token_states')."""
    with pytest.raises(automr.AutomrError, match="the combiner is not a Combiner"):
        annotate_dataset(workspace["loaded"], workspace["dataset"], workspace["store"],
                         tmp_path / "named", AnnotateConfig(max_samples=8), progress=False,
                         combiner="concat")
    assert not (tmp_path / "named").exists()


@pytest.mark.parametrize("count", [0, -1])
def test_annotate_config_refuses_a_sample_count_below_one(count):
    """max_samples=0 chose no sample and annotate_dataset said 'no train sample among the all
    chosen has a memory element' (0 read as all); None is all."""
    with pytest.raises(ValueError, match="'max_samples' must be > 0"):
        AnnotateConfig(max_samples=count)
    assert AnnotateConfig(max_samples=None).max_samples is None


def test_a_retrieval_dataset_of_a_store_on_another_device_is_on_the_cpu(workspace,
                                                                         monkeypatch):
    """A store opened on the GPU (as the examples open it, on the model's device) put the
    keys there beside the CPU's mask and targets: a device mismatch only a GPU run showed
    (the GPU review; a store that says "meta" stands in, its keys read on the CPU)."""
    store = MemoryStore.open(workspace["store"].folder)
    monkeypatch.setattr(store, "device", torch.device("meta"))
    monkeypatch.setattr(store, "view_sample", workspace["store"].view_sample)
    data = retrieval_dataset(Annotations.load(workspace["folders"]["all"]),
                             workspace["dataset"], store, "train")
    plain = retrieval_dataset(Annotations.load(workspace["folders"]["all"]),
                              workspace["dataset"], workspace["store"], "train")
    assert data.keys.device.type == "cpu" and torch.equal(data.keys, plain.keys)


@attrs.frozen
class ScaledAppend:
    """A user's combiner with a setting: the element appended as a token, scaled."""

    scale: float
    uses_token_states = False

    def combine(self, query, memory):
        return automr.AppendToken().combine(query, attrs.evolve(memory,
                                                                hidden=memory.hidden * self.scale))


def test_a_users_combiner_of_other_settings_does_not_resume_anothers_annotation(workspace,
                                                                               tmp_path):
    """A user's combiner was recorded by its class alone: one of another scale took a folder
    annotated with scale 1 as its own and gave back its labels (the extension-points
    review). Its settings (repr, a module's weights) are recorded now."""
    config = AnnotateConfig(max_samples=2, shard_size=1)
    args = (workspace["loaded"], workspace["dataset"], workspace["store"])
    folder = annotate_dataset(*args, tmp_path / "a", config, False, ScaledAppend(1.0))
    assert Annotations.header_of(folder)["combiner_state"] == "ScaledAppend(scale=1.0)"
    annotate_dataset(*args, folder, config, False, ScaledAppend(1.0))  # resumes
    with pytest.raises(AutomrError, match=r"other settings \(combiner_state was "
                                          r"'ScaledAppend\(scale=1\.0\)', now "
                                          r"'ScaledAppend\(scale=8\.0\)'\)"):
        annotate_dataset(*args, folder, config, False, ScaledAppend(8.0))
    from automr.annotation.run import _state_of

    module = torch.nn.Linear(2, 2)  # a module's layout and weights
    assert _state_of(module).startswith("Linear(in_features=2, out_features=2, bias=True) ")
    assert _state_of(module) != _state_of(torch.nn.Linear(2, 2))
    # an object's address differs in every process: a rerun was refused (today's review)
    assert _state_of(ScaledAppend(object())) == _state_of(ScaledAppend(object()))
    module.config = ScaledAppend(2.0)  # a module's own config, not a Hugging Face one: it was
    assert _state_of(module).startswith("Linear(")  # a raw AttributeError (to_diff_dict)
