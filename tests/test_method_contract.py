"""Every method kind the CLI builds passes :class:`MethodContract` on a tiny model: the same
ranks whatever else is in the call (evaluate ranks in shards, the LM methods in padded
batches of 3 here), in any order, on a repeat."""

import attrs
import pytest
import torch

import automr
from automr.evaluation import ranks_from_scores
from automr.memory import MemoryConfig, build_memory
from automr.methods import Artifacts, MethodOptions, Workspace, build_method
from automr.recommenders.finetune import FinetuneConfig, finetune
from automr.retrievers import build_retriever
from automr.testing.contracts import MethodContract
from automr.testing.synthetic import synthetic_dataset
from automr.testing.tiny import tiny_config, tiny_model

KINDS = ["pop", "cooc", "sasrec", "base:l2", "bigrec:constrained", "bigrec:l2",
         "bigrec:l2-pop", "automr:constrained", "random:l2", "semantic:constrained"]


@pytest.fixture(scope="module")
def space(tmp_path_factory, writing_model) -> Workspace:
    root = tmp_path_factory.mktemp("contract")
    dataset = synthetic_dataset(root)
    model = str(writing_model(root / "model"))  # its L2 texts differ per sample
    finetune(automr.load_model(model, device="cpu"), dataset, root / "ft",
             FinetuneConfig(max_train_samples=8, max_valid_samples=4, batch_size=4,
                            lora_from_layer=2), progress=False)
    store = build_memory(automr.load_model(model, device="cpu"), dataset, 2,
                         MemoryConfig(encoder="item", store_token_states=True), root / "mem",
                         progress=False)
    build_retriever("mlp", store.hidden_size, seed=0).save(root / "ret")
    artifacts = Artifacts(model=model, finetuned=root / "ft", memory=root / "mem",
                          retriever=root / "ret")
    options = MethodOptions(batch_size=3, num_beams=3, layer=2, tune_samples=4)
    return Workspace(dataset=dataset, artifacts=artifacts, options=options, device="cpu",
                     progress=False)


@pytest.mark.parametrize("kind", KINDS)
class TestEveryMethodKind(MethodContract):
    @pytest.fixture
    def method(self, space, kind):
        self.n_items = len(space.dataset.catalog)
        return build_method(kind, space)

    @pytest.fixture
    def samples(self, space):
        return space.dataset.samples("test")[:7]


def test_a_method_without_a_dataset_is_told_to_set_n_items():
    """The Method Protocol does not require ``dataset``; the contract says what to set."""
    from automr.testing.contracts import MethodContract

    class Bare:
        @property
        def settings(self) -> dict:
            return {}

        def rank(self, samples):
            return [0 for _ in samples]

    with pytest.raises(AssertionError, match="set n_items"):
        MethodContract()._catalog_size(Bare())


def test_the_contract_fails_settings_holding_a_key_the_evaluation_adds():
    """evaluate refuses them (its own ``method`` would replace the method's)."""

    class Variant:
        @property
        def settings(self) -> dict:
            return {"method": "cosine-v1"}

        def rank(self, samples):
            return [0 for _ in samples]

    with pytest.raises(AssertionError, match="settings may not hold method, samples, n_items"):
        MethodContract().test_is_a_method_with_json_settings(Variant())


class FirstCallCutoff:
    """Ranks by popularity up to a cutoff its first call fixes (that call's latest sample): it
    agrees with itself ever after, which every other check of the contract asked of it."""

    def __init__(self, dataset) -> None:
        self.dataset, self.cutoff, self.settings = dataset, None, {}

    def rank(self, samples):
        self.cutoff = self.cutoff or max(s.timestamp for s in samples)
        catalog = self.dataset.catalog
        seen = catalog.positions(e.item for e in self.dataset.interactions
                                 if e.timestamp < self.cutoff)
        counts = torch.bincount(torch.tensor(seen, dtype=torch.long),
                                minlength=len(catalog)).float()
        targets = torch.tensor(catalog.positions(s.target for s in samples))
        return ranks_from_scores(counts.expand(len(samples), -1), targets).tolist()


def test_the_contract_fails_a_method_set_by_its_first_call(space, unshrunk):
    samples = sorted(space.dataset.samples("test"), key=lambda s: -s.timestamp)[:8]
    contract = MethodContract()
    contract.n_items = len(space.dataset.catalog)
    contract.test_shards_and_order_do_not_matter(FirstCallCutoff(space.dataset), samples)
    contract.test_deterministic(FirstCallCutoff(space.dataset), samples)
    with pytest.raises(AssertionError, match="a fresh method ranked the second half"):
        contract.test_a_fresh_method_ranks_a_part_first_as_in_the_whole(
            FirstCallCutoff(space.dataset), samples)


@pytest.mark.parametrize("kind", ["bigrec:l2", "random:l2"])
def test_l2_texts_do_not_depend_on_the_batch_they_were_generated_in(space, kind):
    """The contract's repeats of an L2 method measure the texts its first call generated
    (kept per sample): here each call is a fresh workspace's method, which generates again,
    in other padded batches."""
    samples = space.dataset.samples("test")[:7]

    def fresh(chunk):
        method = build_method(kind, attrs.evolve(space))
        ranks = method.rank(chunk)
        generated = method.details()["generated"]
        return ranks, [generated[s.id] for s in chunk]

    whole, texts = fresh(samples)
    assert len(set(texts)) > len(samples) // 2  # else whose text is whose shows little
    assert fresh(samples[::-1]) == (whole[::-1], texts[::-1])
    assert fresh(samples[1:5]) == (whole[1:5], texts[1:5])


def test_memory_methods_retrieve_with_the_options_k_combiner_and_retrieval_seed(space):
    """Each memory kind gets its own retriever, and every one the asked k and combiner."""
    options = attrs.evolve(space.options, k=2, combiner="append-token", seed=3, retrieval_seed=7)
    other = attrs.evolve(space, options=options)
    retrievals = {kind: other.retrieval(kind) for kind in ("automr", "random", "semantic")}
    assert {kind: type(r.retriever).__name__ for kind, r in retrievals.items()} == {
        "automr": "MLPRetriever", "random": "RandomRetriever", "semantic": "SemanticRetriever"}
    assert all(r.k == 2 and isinstance(r.combiner, automr.AppendToken)
               for r in retrievals.values())
    assert retrievals["random"].retriever.seed == 7
    for kind, retrieval in retrievals.items():  # each kind's methods use its retrieval
        assert build_method(f"{kind}:constrained", other).method.retrieval is retrieval
    assert attrs.evolve(space, options=attrs.evolve(options, retrieval_seed=None)).retrieval(
        "random").retriever.seed == 3  # unset: the sample seed


def test_a_retriever_trained_for_another_combiner_is_refused(space, tmp_path):
    retriever = build_retriever("mlp", space.retrieval("automr").store.hidden_size, seed=0)
    retriever.provenance["combiner"] = "concat"
    retriever.save(tmp_path / "ret")
    other = attrs.evolve(space, artifacts=attrs.evolve(space.artifacts, retriever=tmp_path / "ret"),
                         options=attrs.evolve(space.options, combiner="append-token"))
    with pytest.raises(automr.AutomrError, match="combiner"):
        other.retrieval("automr")
    assert attrs.evolve(other, options=space.options).retrieval("automr").k == 1  # concat: taken


@pytest.mark.parametrize("kind", ["pop", "cooc", "bigrec:l2", "random:constrained"])
def test_exclude_seen_reaches_the_built_method(space, kind):
    other = attrs.evolve(space, options=attrs.evolve(space.options, exclude_seen=True))
    assert build_method(kind, other).method.exclude_seen
    assert not build_method(kind, space).method.exclude_seen


@pytest.mark.parametrize("kind", ["bigrec:l2", "bigrec:constrained", "bigrec:l2-pop"])
def test_samples_given_as_a_generator_are_ranked_and_scored_as_a_list(space, kind):
    """target_log_likelihoods(a generator) did the work, then returned [] (it read the
    samples twice); rank(a generator) failed with a TypeError or a torch RuntimeError (the
    public-API review)."""
    method = build_method(kind, space).method
    samples = space.dataset.samples("test")[:4]
    assert method.rank(s for s in samples) == method.rank(samples)
    assert (method.target_log_likelihoods(s for s in samples)
            == method.target_log_likelihoods(samples))


def test_a_prior_weighted_method_refuses_a_plain_method_without_distances(space):
    """A constrained BIGRec, a floor or the SASRec method itself for its scores failed when it
    first ranked (AttributeError, 'not callable'; the public-API review)."""
    from automr.methods import PriorWeightedMethod

    l2 = build_method("bigrec:l2", space).method
    for plain in (build_method("bigrec:constrained", space).method,
                  build_method("pop", space).method):
        with pytest.raises(automr.AutomrError, match="give a GenerativeMethod with the l2"):
            PriorWeightedMethod(plain, lambda samples: torch.zeros(len(samples), 3), 1.0)
    with pytest.raises(automr.AutomrError, match="scores must be a function of the samples"):
        PriorWeightedMethod(l2, object(), 1.0)


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_gamma_is_tuned_on_the_seeded_validation_samples_without_their_history(
        space, monkeypatch, exclude_seen):
    from automr.data.subsets import seeded_subset
    from automr.grounding.prior import GAMMA_GRID
    from automr.methods import registry

    seen = {}

    def gamma_metrics(distances, prior, targets, exclude=None):
        seen.update(targets=targets.tolist(), exclude=exclude)
        return torch.zeros(len(GAMMA_GRID), len(targets), dtype=torch.float64)

    monkeypatch.setattr(registry, "gamma_metrics", gamma_metrics)
    options = attrs.evolve(space.options, seed=5, tune_samples=3, exclude_seen=exclude_seen)
    other, catalog = attrs.evolve(space, options=options), space.dataset.catalog

    class Plain:
        batch_size = 8

        def distances(self, samples):
            return torch.zeros(len(samples), len(catalog))

    _, tuning = other.tuned_gamma(Plain(), lambda samples: torch.zeros(1, len(catalog)))
    assert tuning["tuned_on_valid_samples"] == 3
    samples = seeded_subset(space.dataset.samples("valid"), 3, 5)
    assert seen["targets"] == catalog.positions(s.target for s in samples)
    assert seen["targets"] != catalog.positions(
        s.target for s in seeded_subset(space.dataset.samples("valid"), 3, 0))
    if not exclude_seen:
        assert seen["exclude"] is None
    else:
        assert [set(torch.nonzero(row).flatten().tolist()) for row in seen["exclude"]] == [
            set(catalog.positions(s.history)) for s in samples]
    every = attrs.evolve(space, options=attrs.evolve(options, tune_samples=10**6))
    _, tuning = every.tuned_gamma(Plain(), lambda samples: torch.zeros(1, len(catalog)))
    assert tuning["tuned_on_valid_samples"] == len(space.dataset.samples("valid"))  # not 10**6


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_gamma_tuned_a_few_samples_at_a_time_is_the_gamma_tuned_at_once(
        space, monkeypatch, exclude_seen):
    """A large catalog's tuning takes its samples a chunk at a time (its [samples, items]
    matrices were GBs at 100k items): the same gamma and values as all at once."""
    import zlib

    from automr.methods import registry

    catalog = space.dataset.catalog
    options = attrs.evolve(space.options, tune_samples=7, exclude_seen=exclude_seen)
    other = attrs.evolve(space, options=options)
    asked = []

    def per_sample(samples):  # one fixed row per sample, whatever else is asked with it
        return torch.stack([torch.rand(len(catalog), generator=torch.Generator().manual_seed(
            zlib.crc32(s.id.encode()))) for s in samples])

    class Plain:
        batch_size = 1

        def distances(self, samples):
            asked.append(len(samples))
            return per_sample(samples)

    def scores(samples):
        return per_sample(samples) * 3

    at_once = other.tuned_gamma(Plain(), scores)
    assert asked == [7]
    monkeypatch.setattr(registry, "TUNING_CELLS", 3 * len(catalog))
    asked.clear()
    assert other.tuned_gamma(Plain(), scores) == at_once
    assert asked == [3, 3, 1]
    monkeypatch.setattr(registry, "TUNING_CELLS", 1)  # a row at a time, at least
    asked.clear()
    assert other.tuned_gamma(Plain(), scores) == at_once
    assert asked == [1] * 7
    Plain.batch_size = 2  # whole generation batches: in bfloat16 another batch rounds otherwise
    for cells, chunks in ((1, [2, 2, 2, 1]), (5 * len(catalog), [4, 3]),
                          (10**9, [7])):
        monkeypatch.setattr(registry, "TUNING_CELLS", cells)
        asked.clear()
        assert other.tuned_gamma(Plain(), scores) == at_once
        assert asked == chunks


def test_a_memory_method_at_another_layer_than_its_memorys_is_refused(space):
    other = attrs.evolve(space, options=attrs.evolve(space.options, layer=1))
    with pytest.raises(automr.AutomrError, match="--layer 1 differs from the memory's layer 2"):
        other.retrieval("random")


def fine_tune_copy(space, folder, **changes):
    """The workspace's fine-tune copied to ``folder``, its record's config changed."""
    import json
    import shutil

    shutil.copytree(space.artifacts.finetuned, folder)
    record = json.loads((folder / "finetune.json").read_text())
    record["config"].update(changes)
    record.pop("data_fingerprint")  # as written before automr recorded it: not checked
    (folder / "finetune.json").write_text(json.dumps(record))
    return folder


def test_a_memory_above_the_adapters_first_layer_is_refused_where_it_is_opened(space, tmp_path):
    run = automr.FinetunedRun.open(fine_tune_copy(space, tmp_path / "ft", lora_from_layer=1))
    with pytest.raises(automr.AutomrError, match=r"changes layers 1\.\.1 below it"):
        run.open_memory(space.artifacts.memory)


def test_a_memory_of_another_dataset_is_refused(space, tmp_path):
    other = synthetic_dataset(tmp_path, seed=1)
    artifacts = attrs.evolve(space.artifacts, finetuned=fine_tune_copy(space, tmp_path / "ft"))
    with pytest.raises(automr.AutomrError, match="built from another dataset"):
        attrs.evolve(space, dataset=other, artifacts=artifacts).retrieval("random")


def test_a_layer_up_to_the_models_count_splits_there_and_one_above_is_refused(space):
    from automr.llm.split import HFSplitLLM

    loaded = space.model(None)
    layers = HFSplitLLM(loaded.model).num_layers
    at = attrs.evolve(space, options=attrs.evolve(space.options, layer=layers))
    assert at.split_layer(loaded) == layers  # the whole model below the split
    above = attrs.evolve(space, options=attrs.evolve(space.options, layer=layers + 1))
    with pytest.raises(automr.AutomrError, match=f"outside 0..{layers}"):
        above.split_layer(loaded)


@pytest.mark.parametrize("name", ["sasrec:l2", "pop:constrained", "bigrec", "bigrec:nope"])
def test_a_kind_is_named_with_a_grounder_exactly_when_it_takes_one(name):
    from automr.methods import parse_method

    with pytest.raises(automr.AutomrError, match="unknown method"):
        parse_method(name)


def test_a_kind_of_ones_own_left_a_likelihood_kind_is_refused_in_one_line(tmp_path,
                                                                          monkeypatch):
    """MethodKind's defaults say likelihood=True, so a kind of one's own that writes no
    titles was wrapped as a LikelihoodMethod: --measures likelihood ranked it, then failed
    with AttributeError: 'PopularityMethod' object has no attribute 'target_log_likelihoods'."""
    from automr.errors import AutomrError
    from automr.methods import METHODS, MethodKind

    dataset = synthetic_dataset(tmp_path)
    monkeypatch.setitem(METHODS, "mine", MethodKind(
        "popularity", lambda space, grounder, label: automr.PopularityMethod(space.dataset)))
    method = build_method("mine:l2", Workspace(dataset, progress=False))
    with pytest.raises(AutomrError, match=r"a PopularityMethod scores no true title .* "
                                          r"likelihood=False"):
        automr.evaluate({"mine": method}, dataset.samples("test")[:4], len(dataset.catalog),
                        measures=("likelihood",))


def test_a_hub_ids_base_settings_follow_its_cached_revision(space, tmp_path, monkeypatch):
    """base:G of a hub id was keyed by the id alone: once the hub cache's refs/main moved to a
    revision of other weights, a rerun read the old revision's ranks back."""
    import shutil

    import huggingface_hub.constants

    from automr.methods import method_settings

    hub = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    repo = hub / "models--org--tiny"
    for revision, seed in (("a" * 40, 0), ("b" * 40, 1)):
        snapshot = repo / "snapshots" / revision
        shutil.copytree(space.artifacts.model, snapshot)
        tiny_model(tiny_config("llama", num_layers=4), seed=seed).save_pretrained(snapshot)
    (repo / "refs").mkdir()
    hub_space = attrs.evolve(space, artifacts=attrs.evolve(space.artifacts, model="org/tiny"))
    settings = {}
    for revision in ("a" * 40, "b" * 40):
        (repo / "refs" / "main").write_text(revision)
        settings[revision] = method_settings("base:likelihood", hub_space)
    first, second = settings.values()
    assert first["model"] == second["model"] == "org/tiny"
    assert first["digests"]["model"] != second["digests"]["model"]
