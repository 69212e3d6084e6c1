"""Target log-likelihood as a measure: exact against the annotator and the likelihood grounder,
saved and paired by ``evaluate``, resumed from the folder."""

import json

import attrs
import pytest
import torch

import automr
from automr.annotation.run import element_tokens
from automr.data import tokenize_sample
from automr.errors import AutomrError
from automr.evaluation.likelihood import LikelihoodReport
from automr.grounding import LikelihoodGrounder, dataset_targets
from automr.llm import HFSplitLLM
from automr.memory import MemoryConfig, build_memory
from automr.methods.generative import KeptLikelihoods, left_padded_prompts
from automr.recommenders.finetune import FinetuneConfig, finetune
from automr.testing.synthetic import synthetic_dataset


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, writing_model):
    root = tmp_path_factory.mktemp("likelihood")
    dataset = synthetic_dataset(root)
    model = writing_model(root / "model")  # its replies, so its L2 rows, differ per sample
    finetune(automr.load_model(str(model), device="cpu"), dataset, root / "ft",
             FinetuneConfig(max_train_samples=8, max_valid_samples=4, batch_size=4,
                            lora_from_layer=2), progress=False)
    run = automr.FinetunedRun.open(root / "ft")
    build_memory(automr.load_model(str(model), device="cpu"), dataset, 2,
                 MemoryConfig(encoder="item", store_token_states=True), root / "mem",
                 progress=False)
    loaded = run.load(device="cpu")
    return {"root": root, "dataset": dataset, "run": run, "loaded": loaded,
            "store": run.open_memory(root / "mem")}


def test_bigrec_target_likelihood_is_the_likelihood_grounders_score(workspace):
    dataset, loaded = workspace["dataset"], workspace["loaded"]
    samples = dataset.samples("test")[:3]
    grounder = LikelihoodGrounder(dataset_targets(loaded, dataset))
    method = automr.GenerativeMethod(loaded, dataset, grounder, layer=2, batch_size=2)
    ids, mask = left_padded_prompts(loaded, dataset, samples)
    with torch.no_grad():
        scores = grounder.scores(HFSplitLLM(loaded.model), ids, mask, 2)
    index = {item: i for i, item in enumerate(dataset.catalog.ids)}
    values = method.target_log_likelihoods(samples)
    for row, (sample, (value, tokens)) in enumerate(zip(samples, values, strict=True)):
        assert value == pytest.approx(float(scores[row, index[sample.target]]), abs=1e-4)
        example = tokenize_sample(loaded.tokenizer, sample, dataset.catalog,
                                  dataset.prompt_config)
        assert tokens == len(example.input_ids) - len(example.prompt_ids)


def likelihood_spy(monkeypatch) -> list[str]:
    """The ids of the samples whose likelihoods are computed from now on, in order."""
    computed: list[str] = []
    batch = automr.GenerativeMethod._likelihood_batch

    def spy(self, llm, chunk, *args):
        computed.extend(s.id for s in chunk)
        return batch(self, llm, chunk, *args)

    monkeypatch.setattr(automr.GenerativeMethod, "_likelihood_batch", spy)
    return computed


def test_target_likelihoods_are_kept_per_sample(workspace, monkeypatch):
    """Asking again (in any order, with new samples among them) computes only the new ones and
    returns what one call over all of them gives."""
    dataset, loaded = workspace["dataset"], workspace["loaded"]
    samples = dataset.samples("test")[:4]
    grounder = LikelihoodGrounder(dataset_targets(loaded, dataset))
    method = automr.GenerativeMethod(loaded, dataset, grounder, layer=2, batch_size=2)
    first = method.target_log_likelihoods(samples[:2])
    computed = likelihood_spy(monkeypatch)
    again = method.target_log_likelihoods(samples[::-1])
    assert computed == [s.id for s in samples[:1:-1]]
    assert again[::-1][:2] == first
    fresh = automr.GenerativeMethod(loaded, dataset, grounder, layer=2, batch_size=2)
    for (value, tokens), (other, count) in zip(again[::-1], fresh.target_log_likelihoods(
            samples), strict=True):
        assert value == pytest.approx(other, abs=1e-4) and tokens == count


def test_grounders_of_one_model_and_retrieval_share_its_likelihoods(workspace, monkeypatch):
    """Grounding does not change a target's likelihood: a second grounder of the same model
    (and memory retrieval) computed every sample's again."""
    from automr.methods import Artifacts, MethodOptions, Workspace, build_method

    root, dataset = workspace["root"], workspace["dataset"]
    space = Workspace(dataset, Artifacts(finetuned=root / "ft", memory=root / "mem"),
                      MethodOptions(layer=2, num_beams=2), device="cpu",
                      cache_dir=root / "cache", progress=False)
    computed = likelihood_spy(monkeypatch)
    samples = dataset.samples("test")[:3]
    values = {name: build_method(name, space).target_log_likelihoods(samples) for name in (
        "bigrec:l2", "bigrec:constrained", "bigrec:likelihood", "random:l2",
        "random:constrained", "base:l2", "base:constrained")}
    assert sorted(computed) == sorted([s.id for s in samples] * 3)  # bigrec, random, base
    assert values["bigrec:constrained"] == values["bigrec:l2"] == values["bigrec:likelihood"]
    assert values["random:constrained"] == values["random:l2"] != values["bigrec:l2"]
    assert values["base:constrained"] == values["base:l2"] != values["bigrec:l2"]


def test_a_method_evolved_with_other_inputs_computes_its_own_likelihoods(workspace,
                                                                      monkeypatch):
    """``attrs.evolve`` passes the method's kept likelihoods on: one evolved with a retrieval
    (or another context or model) returned BIGRec's values, so AutoMR minus BIGRec was exactly
    0 and nothing was retrieved. Another grounder still shares them."""
    dataset, loaded, store = workspace["dataset"], workspace["loaded"], workspace["store"]
    samples = [s for s in dataset.samples("test") if s.memory][:3]
    bigrec = automr.GenerativeMethod(loaded, dataset, LikelihoodGrounder(
        dataset_targets(loaded, dataset)), layer=2, batch_size=2)
    plain = bigrec.target_log_likelihoods(samples)

    def retrieval():
        return automr.MemoryRetrieval(store, automr.RandomRetriever(seed=1),
                                      automr.AppendToken())

    evolved = attrs.evolve(bigrec, retrieval=retrieval())
    alone = automr.GenerativeMethod(loaded, dataset, bigrec.grounder, layer=2, batch_size=2,
                                    retrieval=retrieval())
    assert evolved.target_log_likelihoods(samples) == alone.target_log_likelihoods(samples)
    assert evolved.target_log_likelihoods(samples) != plain
    assert len(evolved.details()["retrieved"]) == len(samples)
    shared = attrs.evolve(bigrec, grounder=LikelihoodGrounder(dataset_targets(loaded, dataset)))
    computed = likelihood_spy(monkeypatch)
    assert shared.target_log_likelihoods(samples) == plain and not computed


def test_methods_of_one_model_run_the_lower_half_of_a_batch_once(workspace, monkeypatch):
    """BIGRec and AutoMR with any retriever share the lower half (it never sees memory): the
    registry's methods of one model run it once per batch, and score exactly what methods that
    keep nothing score; the same batch of another model, layer or batch size is not reused."""
    import automr.methods.generative as generative
    from automr.methods import Artifacts, MethodOptions, Workspace, build_method

    root, dataset = workspace["root"], workspace["dataset"]
    space = Workspace(dataset, Artifacts(finetuned=root / "ft", memory=root / "mem"),
                      MethodOptions(layer=2, batch_size=2), device="cpu",
                      cache_dir=root / "cache", progress=False)
    lowered = []
    real = generative.lower_targets
    monkeypatch.setattr(generative, "lower_targets",
                        lambda *args, **kw: lowered.append(args[3]) or real(*args, **kw))
    samples = [s for s in dataset.samples("test") if s.memory][:3]
    names = ("bigrec:likelihood", "random:likelihood", "semantic:likelihood",
             "base:likelihood")
    built = {name: build_method(name, space).method for name in names}
    values = {name: method.target_log_likelihoods(samples) for name, method in built.items()}
    assert lowered == [2, 2, 2, 2]  # two batches of the tuned model, two of the base model
    assert space.shared.lowered.reused == 4  # random's and semantic's batches
    assert values["random:likelihood"] != values["bigrec:likelihood"]  # memory went in
    for name, method in built.items():  # the same method keeping nothing
        alone = attrs.evolve(method, likelihoods=KeptLikelihoods(), lowered=None)
        assert alone.target_log_likelihoods(samples) == values[name], name
    assert len(lowered) == 4 + 2 * len(names)
    reused = space.shared.lowered.reused
    attrs.evolve(built["random:likelihood"], likelihoods=KeptLikelihoods(), batch_size=3
                 ).target_log_likelihoods(samples)  # another batch: not the kept ones
    attrs.evolve(built["random:likelihood"], layer=1, retrieval=None
                 ).target_log_likelihoods(samples)  # another layer
    assert space.shared.lowered.reused == reused


def test_a_lower_pass_is_kept_only_while_another_method_of_its_model_has_not_read_it(
        workspace):
    """``--measures likelihood`` with one method of a model kept every batch's lower half (up
    to 2 GiB) that no other method would read (the memory-flatness review: 772 vs 621 MB on
    3,000 samples of a 100k-item catalog); the last method to read a pass frees it."""
    from automr.methods import Artifacts, MethodOptions, Workspace, build_method

    root, dataset = workspace["root"], workspace["dataset"]
    samples = [s for s in dataset.samples("test") if s.memory][:3]

    def space():
        return Workspace(dataset, Artifacts(finetuned=root / "ft", memory=root / "mem"),
                         MethodOptions(layer=2, batch_size=2), device="cpu",
                         cache_dir=root / "cache", progress=False)

    alone = space()
    build_method("base:likelihood", alone).method.target_log_likelihoods(samples)
    build_method("base:l2", alone)  # another grounder sharing its values is no other reader
    build_method("base:likelihood", alone).method.target_log_likelihoods(samples)
    assert alone.shared.lowered._kept == {} and alone.shared.lowered._bytes == 0
    several = space()
    built = [build_method(name, several).method
             for name in ("bigrec:likelihood", "random:likelihood", "semantic:likelihood")]
    kept = several.shared.lowered
    built[0].target_log_likelihoods(samples)
    assert len(kept._kept) == 2 and kept._bytes > 0  # two batches, for the two others
    built[1].target_log_likelihoods(samples)
    assert len(kept._kept) == 2 and kept.reused == 2
    built[2].target_log_likelihoods(samples)
    assert kept._kept == {} and kept._bytes == 0 and kept.reused == 4


def test_an_evaluation_runs_the_lower_half_once_for_its_methods_of_one_model(
        workspace, tmp_path, monkeypatch):
    """evaluate builds each method as it first runs, so a method became a reader only once
    the ones before it had finished: BIGRec kept nothing, and random's passes waited for no
    one (the diff review: 6 lower halves where 3 ran before). An evaluation keeps passes for
    the methods after where two of one model score with other memory, and none otherwise."""
    import automr.methods.generative as generative
    from automr.experiments.eval_config import EvalConfig
    from automr.experiments.evaluate import evaluate_methods
    from automr.grounding.likelihood import LoweredBatches
    from automr.methods import Artifacts
    from automr.methods.registry import lower_halves_shared

    root = workspace["root"]
    calls, kept = [], []
    real, put = generative.lower_targets, LoweredBatches.put
    monkeypatch.setattr(generative, "lower_targets",
                        lambda *args, **kw: calls.append(1) or real(*args, **kw))
    monkeypatch.setattr(LoweredBatches, "put",
                        lambda self, *args, **kw: kept.append(self) or put(self, *args, **kw))
    config = EvalConfig(max_samples=4, batch_size=2, layer=2, measures=("likelihood",),
                        n_resamples=20)
    artifacts = Artifacts(finetuned=root / "ft", memory=root / "mem", model=str(root / "model"))
    evaluate_methods(root / "prepared", ["bigrec:likelihood", "random:likelihood"],
                     tmp_path / "two", config, artifacts, device="cpu",
                     cache_dir=root / "cache", progress=False)
    assert len(calls) == 2  # two batches, for both
    calls.clear()
    evaluate_methods(root / "prepared", ["base:likelihood"], tmp_path / "one", config,
                     artifacts, device="cpu", cache_dir=root / "cache", progress=False)
    assert len(calls) == 2 and kept[-1]._kept == {} and kept[-1]._bytes == 0
    assert lower_halves_shared(["pop", "bigrec:l2", "automr:likelihood"])
    assert lower_halves_shared(["rella:l2", "trsr:l2", "base:l2", "bigrec:l2"]) is False
    assert lower_halves_shared(["random:l2", "random:likelihood", "sasrec"]) is False


def test_lower_passes_wait_for_readers_of_their_model_and_layer_with_other_inputs():
    import gc

    from automr.grounding.likelihood import LoweredBatches, lower_targets
    from automr.testing.tiny import tiny_config, tiny_model

    model = tiny_model(tiny_config(num_layers=2), seed=0)
    ids, targets = torch.tensor([[3, 4, 5]]), [[6]]
    pass_ = lower_targets(HFSplitLLM(model), ids, torch.ones_like(ids), 1, targets)

    class Reader:
        pass

    first, same, other_layer = Reader(), Reader(), Reader()
    kept = LoweredBatches()
    kept.expect(first, model, 1, "bigrec")
    kept.expect(same, model, 1, "bigrec")  # the same values: one reader
    kept.expect(other_layer, model, 0, "automr")
    kept.put(model, 1, ("a",), ids, targets, pass_, reader=first)
    assert kept._kept == {}
    later = Reader()
    kept.expect(later, model, 1, "automr")
    kept.put(model, 1, ("a",), ids, targets, pass_, reader=first)
    assert kept.get(model, 1, ("a",), ids, targets, reader=same) is not None
    assert kept.get(model, 1, ("a",), ids, targets, reader=later) is not None
    assert kept._kept == {} and kept._bytes == 0  # every reader has read it
    kept.put(model, 1, ("a",), ids, targets, pass_, reader=first)
    del later
    gc.collect()  # a reader that is gone is waited for no longer
    assert kept.get(model, 1, ("a",), ids, targets, reader=same) is not None
    assert kept._kept == {}
    for_later = LoweredBatches(keep_for_later=True)  # no reader yet: kept for those to come
    for_later.put(model, 1, ("a",), ids, targets, pass_)
    for _ in range(2):
        assert for_later.get(model, 1, ("a",), ids, targets) is not None


def test_a_workspace_refuses_an_artifact_made_again_in_its_folder(workspace, tmp_path):
    """A notebook's Workspace kept the memory and retriever it loaded first: methods built
    after a retriever was trained again into the same folder ranked with the old one and
    saved the new one's digest in their settings (the long-lived process review)."""
    import shutil

    from automr.methods import Artifacts, MethodOptions, Workspace, build_method

    root, dataset = workspace["root"], workspace["dataset"]
    memory = shutil.copytree(root / "mem", tmp_path / "mem")
    space = Workspace(dataset, Artifacts(finetuned=root / "ft", memory=memory),
                      MethodOptions(layer=2), device="cpu", cache_dir=root / "cache",
                      progress=False)
    build_method("random:likelihood", space)
    build_method("random:l2", space)  # the same folder as it was: taken
    config = memory / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()), indent=1))  # made again
    with pytest.raises(AutomrError, match="was made again since these methods first read it"):
        build_method("random:likelihood", space)
    fresh = Workspace(dataset, space.artifacts, space.options, device="cpu",
                      cache_dir=root / "cache", progress=False)
    build_method("random:likelihood", fresh)


def test_a_kept_lower_pass_is_taken_for_the_same_tokens_only(workspace):
    from automr.grounding.likelihood import LoweredBatches, lower_targets

    llm = HFSplitLLM(workspace["loaded"].model)
    ids, mask = left_padded_prompts(workspace["loaded"], workspace["dataset"],
                                    workspace["dataset"].samples("test")[:2])
    targets = [[5, 6], [7]]
    lowered = lower_targets(llm, ids, mask, 2, targets)
    model = workspace["loaded"].model
    kept = LoweredBatches(keep_for_later=True)
    kept.put(model, 2, ("a", "b"), ids, targets, lowered)
    assert kept.get(model, 2, ("a", "b"), ids, [[5, 6], [8]]) is None
    assert kept.get(model, 2, ("a", "b"), ids.flip(1), targets) is None
    assert kept.get(model, 1, ("a", "b"), ids, targets) is None
    assert kept.get(model, 2, ("b", "a"), ids, targets) is None
    assert kept.reused == 0
    again = kept.get(model, 2, ("a", "b"), ids, targets)
    assert again is not None and kept.reused == 1
    assert torch.equal(again.targets.hidden, lowered.targets.hidden)
    before = lowered.rest.hidden.clone()
    lowered.rest.hidden.add_(1)  # a model writing into its input changes no kept pass
    again.rest.hidden.add_(1)
    third = kept.get(model, 2, ("a", "b"), ids, targets)
    assert third is not None and torch.equal(third.rest.hidden, before)
    nothing = LoweredBatches(max_bytes=lowered.nbytes() - 1, keep_for_later=True)
    nothing.put(model, 2, ("a", "b"), ids, targets, lowered)
    assert nothing.get(model, 2, ("a", "b"), ids, targets) is None


def test_a_kept_lower_pass_is_not_taken_for_another_model_at_the_same_address(monkeypatch):
    """The key holds the model's id, which a model loaded after another is freed may get: the
    pass keeps a weak reference to its model, and another model of that id misses (every id
    made equal here, as a freed model's address given again would)."""
    import automr.grounding.likelihood as likelihood
    from automr.testing.tiny import tiny_config, tiny_model

    monkeypatch.setattr(likelihood, "id", lambda _: 1, raising=False)
    ids, targets = torch.tensor([[3, 4, 5]]), [[6]]
    kept = likelihood.LoweredBatches(keep_for_later=True)
    first, second = (tiny_model(tiny_config(num_layers=2), seed=seed) for seed in (0, 1))
    kept.put(first, 1, ("a",), ids, targets, likelihood.lower_targets(
        HFSplitLLM(first), ids, torch.ones_like(ids), 1, targets))
    assert kept.get(second, 1, ("a",), ids, targets) is None
    assert kept.get(first, 1, ("a",), ids, targets) is not None


def test_kept_lower_passes_follow_their_models_weights_and_leave_with_the_model():
    """A pass was taken again after the caller trained its model (stale states), and the
    passes of models that were gone stayed, up to 2 GiB (the long-lived process review)."""
    import gc

    import automr.grounding.likelihood as likelihood
    from automr.testing.tiny import tiny_config, tiny_model

    ids, targets = torch.tensor([[3, 4, 5]]), [[6]]
    kept = likelihood.LoweredBatches(keep_for_later=True)

    def put(model):
        kept.put(model, 1, ("a",), ids, targets, likelihood.lower_targets(
            HFSplitLLM(model), ids, torch.ones_like(ids), 1, targets))

    model = tiny_model(tiny_config(num_layers=2), seed=0)
    put(model)
    assert kept.get(model, 1, ("a",), ids, targets) is not None
    with torch.no_grad():
        next(model.parameters()).mul_(2.0)  # a caller's training step
    assert kept.get(model, 1, ("a",), ids, targets) is None
    put(model)  # the pass of the weights as they are now takes the old one's place
    assert kept.get(model, 1, ("a",), ids, targets) is not None
    one = kept._bytes
    for seed in (1, 2, 3):
        other = tiny_model(tiny_config(num_layers=2), seed=seed)
        put(other)
        del other
        gc.collect()
    put(model)
    assert kept._bytes == one and len(kept._kept) == 1


def test_a_grounder_sharing_likelihoods_still_names_what_was_retrieved(workspace, tmp_path):
    """The second grounder of a retrieval took its likelihoods from the first and ran nothing,
    so its ``retrieved/METHOD.loglik.json`` was never written (the first's was): now it holds
    the elements the likelihoods were computed with."""
    from typer.testing import CliRunner

    from automr.cli.main import app

    root = workspace["root"]
    result = CliRunner().invoke(app, [
        "evaluate", "--data", str(root / "prepared"), "--out", str(tmp_path), "--methods",
        "random:l2,random:constrained", "--measures", "ranks,likelihood", "--finetuned",
        str(root / "ft"), "--memory", str(root / "mem"), "--samples", "3", "--layer", "2",
        "--quiet", "--device", "cpu", "--cache-dir", str(root / "cache")])
    assert result.exit_code == 0, result.output
    first, second = (json.loads((tmp_path / "retrieved" / f"random-{g}.loglik.json")
                                .read_text()) for g in ("l2", "constrained"))
    assert len(first) == 3 and second == first


@pytest.mark.parametrize("copies", [0, 2])
def test_a_retrieval_that_records_another_count_of_entries_is_refused(workspace, copies):
    """A user's Retrieval that appended nothing to ``retrieved`` (or each entry twice) failed
    with a raw ValueError from zip."""
    dataset, loaded, store = workspace["dataset"], workspace["loaded"], workspace["store"]
    inner = automr.MemoryRetrieval(store, automr.RandomRetriever(seed=1), automr.AppendToken())

    class Miscounted:
        def __init__(self) -> None:
            self.store, self.retrieved = store, []

        def insert_for(self, samples):
            insert = inner.insert_for(samples)

            def joined(state):
                out = insert(state)
                self.retrieved += inner.retrieved[-len(samples):] * copies
                return out
            return joined

    method = automr.GenerativeMethod(loaded, dataset, LikelihoodGrounder(
        dataset_targets(loaded, dataset)), layer=2, retrieval=Miscounted(), batch_size=2)
    samples = [s for s in dataset.samples("test") if s.memory][:2]
    with pytest.raises(AutomrError, match=rf"Miscounted added {2 * copies} entries to "
                                          rf"retrieved for a batch of 2 samples: one per"):
        method.target_log_likelihoods(samples)


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_retrieving_no_element_is_refused(workspace, k):
    """k=0 inserted nothing (the method was BIGRec under AutoMR's name); k=-1 failed only at
    the first batch."""
    with pytest.raises(AutomrError, match=r"k must be an int >= 1"):
        automr.MemoryRetrieval(workspace["store"], automr.RandomRetriever(seed=1),
                               automr.AppendToken(), k=k)


def test_with_memory_it_is_the_annotators_value_of_the_retrieved_element(workspace):
    dataset, loaded, store = workspace["dataset"], workspace["loaded"], workspace["store"]
    samples = [s for s in dataset.samples("test") if s.memory][:3]
    retrieval = automr.MemoryRetrieval(store, automr.RandomRetriever(seed=1),
                                       automr.AppendToken())
    method = automr.GenerativeMethod(loaded, dataset, LikelihoodGrounder(
        dataset_targets(loaded, dataset)), layer=2, retrieval=retrieval)
    values = method.target_log_likelihoods(samples)
    retrieved = method.details()["retrieved"]
    annotator = automr.UpperAnnotator(HFSplitLLM(loaded.model), 2, automr.AppendToken())
    for sample, (value, _) in zip(samples, values, strict=True):
        example = tokenize_sample(loaded.tokenizer, sample, dataset.catalog,
                                  dataset.prompt_config)
        result = annotator.annotate(torch.tensor(example.prompt_ids),
                                    torch.tensor(example.input_ids[len(example.prompt_ids):]),
                                    element_tokens(store, sample, False))
        _, _, start = store.request_for(sample)
        [position] = retrieved[sample.id]
        assert value == pytest.approx(float(result.with_element[position - start]), abs=1e-4)


def test_evaluate_measures_likelihood_pairs_and_resumes(workspace, tmp_path):
    root = workspace["root"]
    args = ["evaluate", "--data", str(root / "prepared"), "--out", str(tmp_path), "--methods",
            "pop,bigrec:likelihood,random:likelihood", "--finetuned", str(root / "ft"),
            "--memory", str(root / "mem"), "--model", str(root / "model"), "--samples", "5",
            "--measures", "likelihood", "--quiet", "--device", "cpu"]
    from typer.testing import CliRunner

    from automr.cli.main import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["methods"] == {}  # no ranking asked for
    assert set(payload["likelihood"]) == {"bigrec:likelihood", "random:likelihood"}  # LM only
    diff = payload["likelihood_paired_vs_reference"]["random:likelihood"]["target_ll"]
    bigrec = LikelihoodReport.load(tmp_path / "loglik" / "bigrec-likelihood.json")
    other = LikelihoodReport.load(tmp_path / "loglik" / "random-likelihood.json")
    assert len(bigrec.sample_ids) == 5
    mean = sum(a - b for a, b in zip(other.log_likelihoods, bigrec.log_likelihoods,
                                     strict=True)) / 5
    assert diff["mean"] == pytest.approx(mean, abs=1e-6)
    assert "Target log-likelihood" in result.output
    stamp = (tmp_path / "loglik" / "bigrec-likelihood.json").stat().st_mtime_ns
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert (tmp_path / "loglik" / "bigrec-likelihood.json").stat().st_mtime_ns == stamp


def evaluate_tuned(root, out, methods: str, samples: int = 4) -> None:
    """``automr evaluate`` of ``methods`` with the tiny fine-tune, gamma tuned on 4 samples."""
    from typer.testing import CliRunner

    from automr.cli.main import app

    result = CliRunner().invoke(app, [
        "evaluate", "--data", str(root / "prepared"), "--out", str(out), "--methods", methods,
        "--finetuned", str(root / "ft"), "--model", str(root / "model"), "--samples",
        str(samples), "--tune-samples", "4", "--num-beams", "2", "--layer", "2", "--quiet",
        "--device", "cpu", "--cache-dir", str(root / "cache")])
    assert result.exit_code == 0, result.output


def test_a_resumed_evaluation_ranks_with_the_gamma_its_saved_ranks_were_made_with(
        workspace, tmp_path, monkeypatch):
    """In bfloat16 the tuned gamma depends on the batch size: a run cut after a shard and
    resumed with another --batch-size (which resume allows) tuned again and ranked its last
    shards with another gamma than its first, saving only the second (the invariance
    review: 64 of 176 samples); constrained-pop added beside a saved l2-pop tuned its own
    (the resume review). A resume takes the saved gamma, and tunes nothing."""
    import automr.experiments.evaluate as evaluate_module
    import automr.methods.registry as registry
    from automr.evaluation import EvaluationFolder
    from automr.experiments.eval_config import EvalConfig
    from automr.experiments.evaluate import evaluate_methods
    from automr.methods import Artifacts

    root = workspace["root"]
    real = evaluate_module.evaluate
    monkeypatch.setattr(evaluate_module, "evaluate",
                        lambda *args, **kw: real(*args, **{**kw, "shard_size": 2}))
    methods = ["bigrec:l2-pop", "bigrec:constrained-pop"]
    common = dict(
        config=EvalConfig(max_samples=6, tune_samples=4, num_beams=2, layer=2, batch_size=2,
                          n_resamples=20),
        artifacts=Artifacts(finetuned=root / "ft", model=str(root / "model")), device="cpu",
        cache_dir=root / "cache", progress=False)

    def run(names=methods, **kw):
        return evaluate_methods(root / "prepared", names, **kw, **common)

    whole = run(out_dir=tmp_path / "whole")
    save = EvaluationFolder.save_shard

    def cut_after_the_first_shard_of_constrained_pop(self, method, number, *args, **kw):
        save(self, method, number, *args, **kw)
        if method == "bigrec:constrained-pop":
            raise KeyboardInterrupt

    monkeypatch.setattr(EvaluationFolder, "save_shard",
                        cut_after_the_first_shard_of_constrained_pop)
    with pytest.raises(KeyboardInterrupt):
        run(out_dir=tmp_path / "cut")
    monkeypatch.setattr(EvaluationFolder, "save_shard", save)
    run(methods[:1], out_dir=tmp_path / "added")

    def tuned_again(*args, **kw):
        raise AssertionError("gamma tuned again on a resume")

    monkeypatch.setattr(registry, "best_gamma", tuned_again)
    resumed = run(out_dir=tmp_path / "cut")  # l2-pop's finished ranks, constrained-pop's shard
    added = run(out_dir=tmp_path / "added")  # constrained-pop takes l2-pop's gamma
    for method in methods:
        assert resumed.reports[method].ranks == added.reports[method].ranks \
            == whole.reports[method].ranks
        notes = [EvaluationFolder(tmp_path / folder).details("grounding", method)
                 for folder in ("whole", "cut", "added")]
        assert notes[0] == notes[1] == notes[2] and "gamma" in notes[0]
    common["config"] = attrs.evolve(common["config"], tune_samples=3)
    with pytest.raises(AssertionError, match="tuned again"):  # other settings: not theirs
        run(methods[1:], out_dir=tmp_path / "added")


def test_popularity_grounders_choose_gamma_on_validation(workspace, tmp_path):
    root = workspace["root"]
    evaluate_tuned(root, tmp_path, "bigrec:l2-pop,bigrec:constrained-pop", samples=3)
    for name in ("bigrec-l2-pop", "bigrec-constrained-pop"):
        tuned = json.loads((tmp_path / "grounding" / f"{name}.json").read_text())
        assert tuned["tuned_on_valid_samples"] == 4
        assert tuned["gamma"] in {float(g) for g in tuned["valid_ndcg@5"]}
        settings = json.loads((tmp_path / "ranks" / f"{name}.settings.json").read_text())
        assert settings["tune_samples"] == 4
    constrained = json.loads((tmp_path / "grounding" / "bigrec-constrained-pop.json")
                             .read_text())  # l2-pop's gamma and values, and it says so
    l2 = json.loads((tmp_path / "grounding" / "bigrec-l2-pop.json").read_text())
    assert constrained["tuned_with"] == "l2-pop"
    assert (constrained["gamma"], constrained["valid_ndcg@5"]) == (l2["gamma"],
                                                                   l2["valid_ndcg@5"])


def test_l2_injections_rank_by_the_weighted_distances(workspace, tmp_path):
    """``bigrec:l2-pop`` / ``bigrec:l2-sasrec`` = BIGRec's L2 distances weighted by popularity /
    SASRec's per-sample scores with the gamma each chose on validation, recomputed from parts."""
    from automr.data.popularity import popularity
    from automr.evaluation.metrics import ranks_from_scores
    from automr.grounding.prior import adjusted_distances, min_max
    from automr.methods import Artifacts, MethodOptions, Workspace

    root, dataset = workspace["root"], workspace["dataset"]
    evaluate_tuned(root, tmp_path, "bigrec:l2-sasrec,bigrec:l2-pop,sasrec")
    settings = json.loads((tmp_path / "ranks" / "bigrec-l2-sasrec.settings.json").read_text())
    assert settings["sasrec"]["seed"] == 0 and settings["tune_samples"] == 4

    space = Workspace(dataset, Artifacts(model=str(root / "model"), finetuned=root / "ft"),
                      MethodOptions(layer=2, num_beams=2), device="cpu",
                      cache_dir=root / "cache", progress=False)
    plain = space.generative("l2", space.run("finetuned"), "plain")
    samples = automr.seeded_subset(dataset.samples("test"), 4, 0)
    index = {item: i for i, item in enumerate(dataset.catalog.ids)}
    targets = torch.tensor([index[s.target] for s in samples])
    priors = {"sasrec": space.sasrec().scores(samples), "pop": popularity(dataset)[None]}
    distances = plain.distances(samples)
    assert len({tuple(row) for row in distances.tolist()}) == len(samples)  # whose row shows
    for prior, scores in priors.items():
        method = f"bigrec:l2-{prior}"
        tuned = json.loads((tmp_path / "grounding" / f"bigrec-l2-{prior}.json").read_text())
        assert tuned["prior"] == prior and tuned["tuned_on_valid_samples"] == 4
        weighted = adjusted_distances(distances, min_max(scores.float()), tuned["gamma"])
        saved = automr.EvaluationFolder(tmp_path).report(method)
        by_id = dict(zip(saved.sample_ids, saved.ranks, strict=True))
        assert [by_id[s.id] for s in samples] == ranks_from_scores(-weighted, targets).tolist()


def test_plain_l2_shares_the_injections_generations_and_ranks_as_its_grounder(workspace,
                                                                              tmp_path):
    """``bigrec:l2`` beside its injections is the one plain L2 method they weight (nothing is
    generated twice), its ranks are the L2 grounder's own ranking of the same batch, and the
    folder keeps the title it generated for each sample."""
    from automr.methods import Artifacts, MethodOptions, Workspace

    root, dataset = workspace["root"], workspace["dataset"]
    space = Workspace(dataset, Artifacts(model=str(root / "model"), finetuned=root / "ft"),
                      MethodOptions(layer=2, num_beams=2, tune_samples=4), device="cpu",
                      cache_dir=root / "cache", progress=False)
    run = space.run("finetuned")
    plain = space.generative("l2", run, "bigrec:l2")
    assert space.generative("l2-pop", run, "bigrec:l2-pop").plain is plain

    evaluate_tuned(root, tmp_path, "bigrec:l2-pop,bigrec:l2")
    samples = automr.seeded_subset(dataset.samples("test"), 4, 0)
    index = {item: i for i, item in enumerate(dataset.catalog.ids)}
    ids, mask = left_padded_prompts(plain.loaded, dataset, samples)
    llm = HFSplitLLM(plain.loaded.model)
    rankings = plain.grounder.rank(llm, ids, mask, 2).tolist()
    folder = automr.EvaluationFolder(tmp_path)
    saved = folder.report("bigrec:l2")
    by_id = dict(zip(saved.sample_ids, saved.ranks, strict=True))
    assert [by_id[s.id] for s in samples] == [
        ranking.index(index[s.target]) for s, ranking in zip(samples, rankings, strict=True)]
    texts = plain.grounder.generate(llm, ids, mask, 2)
    assert len(set(texts)) == len(samples)  # a text given to another sample shows
    for method in ("bigrec:l2", "bigrec:l2-pop"):
        generated = folder.details("generated", method)
        assert [generated[s.id] for s in samples] == texts


def test_l2_distances_keep_an_embedding_per_sample_not_a_catalog_row(workspace, monkeypatch):
    """An L2 method keeps each generated text's embedding (hidden-sized: a catalog of 100k
    items made a 385 KiB row per sample), and its distances are the grounder's own from the
    generated texts, over any subset and order of the samples, generating nothing again."""
    from automr.grounding.catalog import build_grounder

    dataset, loaded = workspace["dataset"], workspace["loaded"]
    grounder = build_grounder("l2", loaded, dataset, workspace["run"].base_fingerprint,
                              num_beams=2, cache_dir=workspace["root"] / "cache",
                              progress=False)
    method = automr.GenerativeMethod(loaded, dataset, grounder, layer=2, batch_size=2)
    samples = dataset.samples("test")[:5]
    first = method.distances(samples)
    generated = method.details()["generated"]
    texts = [generated[s.id] for s in samples]  # embedded in the method's batches of 2
    assert len(set(texts)) == len(samples)  # a row given to another sample shows
    expected = torch.cat([grounder.distances_to(texts[i : i + 2]) for i in range(0, 5, 2)])
    assert torch.equal(first, expected)
    hidden = loaded.model.config.hidden_size
    assert all(v.shape == (hidden,) for v in method._embeddings.values())
    assert len(method._embeddings) == len(samples)

    def no_generation(*args, **kwargs):
        raise AssertionError("generated again")

    monkeypatch.setattr(type(grounder), "generate", no_generation)
    again = method.distances(samples[::-1][:3])
    assert torch.equal(again, expected.flip(0)[:3])
    assert method.ranks_by_distance(samples, first) == method.rank(samples)


def test_memory_methods_share_one_retrieval_and_generation_per_kind(workspace):
    """``random:l2`` and ``random:l2-pop`` built by name retrieve with one object and weight
    one plain L2 method (the samples are generated for once); another kind gets its own."""
    from automr.methods import Artifacts, MethodOptions, Workspace, build_method

    root, dataset = workspace["root"], workspace["dataset"]
    space = Workspace(dataset, Artifacts(model=str(root / "model"), finetuned=root / "ft",
                                         memory=root / "mem"),
                      MethodOptions(layer=2, num_beams=2, tune_samples=4, combiner="append-token"),
                      device="cpu", cache_dir=root / "cache", progress=False)
    methods = {name: build_method(name, space)
               for name in ("random:l2", "random:l2-pop", "semantic:l2")}
    samples = [s for s in dataset.samples("test") if s.memory][:3]
    evaluation = automr.evaluate(methods, samples, len(dataset.catalog))
    plain = methods["random:l2"].method
    assert methods["random:l2-pop"].method.plain is plain
    assert methods["semantic:l2"].method is not plain
    assert space.retrieval("random") is plain.retrieval
    assert space.retrieval("semantic") is methods["semantic:l2"].method.retrieval
    retrieved = plain.details()["retrieved"]
    assert all(retrieved[s.id] for s in samples)
    assert set(evaluation.reports) == set(methods)


def test_l2_ranks_from_kept_distances_equal_the_grounders_batch_by_batch(workspace):
    """Ranking from the kept distances, several batches and a second call (all cached), equals
    the L2 grounder's own ranking of each batch."""
    import attrs

    from automr.methods import Artifacts, MethodOptions, Workspace

    root, dataset = workspace["root"], workspace["dataset"]
    space = Workspace(dataset, Artifacts(model=str(root / "model"), finetuned=root / "ft"),
                      MethodOptions(layer=2, num_beams=2), device="cpu",
                      cache_dir=root / "cache", progress=False)
    method = attrs.evolve(space.generative("l2", space.run("finetuned"), "l2"), batch_size=2)
    samples = automr.seeded_subset(dataset.samples("test"), 5, 0)
    index = {item: i for i, item in enumerate(dataset.catalog.ids)}
    llm = HFSplitLLM(method.loaded.model)
    expected = []
    for start in range(0, len(samples), 2):
        chunk = samples[start : start + 2]
        ids, mask = left_padded_prompts(method.loaded, dataset, chunk)
        rankings = method.grounder.rank(llm, ids, mask, 2).tolist()
        expected += [r.index(index[s.target]) for s, r in zip(chunk, rankings, strict=True)]
    assert method.rank(samples) == expected
    generated = method.details()["generated"]
    assert len({generated[s.id] for s in samples}) == len(samples)  # whose row shows
    assert method.rank(samples) == expected  # from the kept distances alone


def test_random_retrieval_picks_do_not_depend_on_the_batch(workspace):
    """A sample's random element is the same alone or in a padded batch of others (the
    query's last bits move with the padding; the picks must not)."""
    dataset, loaded, store = workspace["dataset"], workspace["loaded"], workspace["store"]
    samples = [s for s in dataset.samples("test") if len(s.memory) >= 3]
    picks = []
    for batch_size in (1, len(samples)):
        retrieval = automr.MemoryRetrieval(store, automr.RandomRetriever(0),
                                           automr.AppendToken(), k=1)
        method = automr.GenerativeMethod(loaded, dataset,
                                         LikelihoodGrounder(dataset_targets(loaded, dataset)),
                                         layer=2, retrieval=retrieval, batch_size=batch_size)
        method.target_log_likelihoods(samples)
        picks.append(method.details()["retrieved"])
    assert len(samples) >= 8 and picks[0] == picks[1]


def test_base_is_the_fine_tunes_base_model_unless_model_is_given(workspace, tmp_path):
    """``base:*`` beside ``--finetuned`` and no ``--model`` ran the embedded default,
    whatever model the fine-tune had tuned: base and bigrec were two models."""
    from typer.testing import CliRunner

    from automr.cli.main import app
    from automr.methods import Artifacts, Workspace

    root, dataset = workspace["root"], workspace["dataset"]
    result = CliRunner().invoke(app, [
        "evaluate", "--data", str(root / "prepared"), "--out", str(tmp_path),
        "--methods", "base:likelihood", "--measures", "likelihood", "--finetuned",
        str(root / "ft"), "--samples", "2", "--layer", "2", "--quiet", "--device", "cpu",
        "--cache-dir", str(root / "cache")])
    assert result.exit_code == 0, result.output
    model = str(root / "model")
    assert json.loads((tmp_path / "results.json").read_text())["model"] == model
    settings = json.loads((tmp_path / "loglik" / "base-likelihood.settings.json")
                          .read_text())
    assert settings["model"] == model
    assert Workspace(dataset, Artifacts(model="other", finetuned=root / "ft")).base_model == \
        "other"
    assert Workspace(dataset, Artifacts()).base_model == automr.DEFAULT_MODEL
    assert Workspace(dataset, Artifacts(trsr=root / "ft")).base_model == model  # any fine-tune


def test_concat_inserts_only_the_retrieved_elements_where_a_memory_is_shorter_than_k(workspace):
    """top_k fills the row of a memory with fewer than k elements with -1: nothing is inserted
    there (not the element before the memory's first)."""
    from automr.state import LayerState

    store = workspace["store"]
    samples = sorted((s for s in workspace["dataset"].samples("test") if s.memory),
                     key=lambda s: len(s.memory))
    short, long = samples[0], samples[-1]
    assert len(short.memory) < len(long.memory)
    inserted = []

    class Spy:
        uses_token_states = True

        def combine(self, query, memory):
            inserted.append(memory)
            return query

    retrieval = automr.MemoryRetrieval(store, automr.RandomRetriever(seed=1), Spy(),
                                       k=len(long.memory))
    state = LayerState(hidden=torch.zeros(2, 3, store.hidden_size),
                       mask=torch.ones(2, 3, dtype=torch.bool), layer=2)
    retrieval.insert_for([short, long])(state)
    [memory] = inserted
    assert [len(r) for r in retrieval.retrieved] == [len(short.memory), len(long.memory)]
    for row, (sample, chosen) in enumerate(zip((short, long), retrieval.retrieved, strict=True)):
        user = store.request_for(sample)[0]
        expected = torch.cat([store.token_states(user, i) for i in chosen])
        assert int(memory.mask[row].sum()) == len(expected)
        torch.testing.assert_close(memory.hidden[row, :len(expected)], expected.to(
            memory.hidden.dtype))
