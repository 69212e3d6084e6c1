"""AutoMR's retrieval query at inference: each sample's prompt alone, encoded at the memory's
layer and pooled as the memory's record says (what annotation records as ``z_t``), whatever
the batch and its left padding; so a query-dependent retriever picks the same elements at
any batch size."""

import attrs
import pytest
import torch

import automr
from automr.data import tokenize_sample
from automr.grounding import LikelihoodGrounder, dataset_targets
from automr.interfaces import Combiner, Grounder, PromptContext, Retriever, require
from automr.memory import Backbone, LayerEncoder, MemoryConfig, build_memory
from automr.retrievers import SemanticRetriever
from automr.testing.synthetic import save_tiny_model, synthetic_dataset

LAYER = 2


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval-query")
    dataset = synthetic_dataset(root)
    loaded = automr.load_model(str(save_tiny_model(root / "model")), device="cpu")
    store = build_memory(loaded, dataset, LAYER, MemoryConfig(encoder="item"), root / "mem",
                         progress=False)
    prompts = {}  # one test sample per prompt length: the batch is left-padded unevenly
    for sample in dataset.samples("test"):
        if sample.memory:
            prompt = tokenize_sample(loaded.tokenizer, sample, dataset.catalog,
                                     dataset.prompt_config).prompt_ids
            prompts.setdefault(len(prompt), (sample, prompt))
    chosen = [sample for length, (sample, _) in sorted(prompts.items())]
    assert len(chosen) >= 3
    contexts = [None] * len(chosen)
    contexts[1] = "Earlier they also watched " + ", ".join(f'"Item {k}"' for k in range(12))
    prompts = [tokenize_sample(loaded.tokenizer, s, dataset.catalog, dataset.prompt_config,
                               context=c).prompt_ids for s, c in zip(chosen, contexts,
                                                                     strict=True)]
    return {"dataset": dataset, "loaded": loaded, "store": store, "samples": chosen,
            "context": FixedContext(dict(zip((s.id for s in chosen), contexts, strict=True))),
            "prompts": prompts}


class FixedContext:
    """A prompt context of given texts (one long one, so most prompts are padded far)."""

    def __init__(self, texts: dict) -> None:
        self.by_id = texts

    @property
    def config(self) -> dict:
        return {"kind": "fixed"}

    def texts(self, samples):
        return [self.by_id[s.id] for s in samples]


class SpyRetriever:
    """A semantic retriever that records every query it is asked about."""

    def __init__(self) -> None:
        self.inner = SemanticRetriever()
        self.queries: list[torch.Tensor] = []

    def scores(self, query, keys, mask):
        self.queries.append(query.detach().clone())
        return self.inner.scores(query, keys, mask)


def method(workspace, retriever, batch_size: int, k: int = 2,
           context: bool = True) -> automr.GenerativeMethod:
    loaded, dataset = workspace["loaded"], workspace["dataset"]
    retrieval = automr.MemoryRetrieval(workspace["store"], retriever, automr.AppendToken(), k=k)
    return automr.GenerativeMethod(loaded, dataset, LikelihoodGrounder(
        dataset_targets(loaded, dataset)), layer=LAYER, retrieval=retrieval,
        batch_size=batch_size, context=workspace["context"] if context else None)


def test_the_query_is_the_pooled_prompt_alone(workspace):
    samples, store = workspace["samples"], workspace["store"]
    spy = SpyRetriever()
    method(workspace, spy, batch_size=len(samples)).target_log_likelihoods(samples)
    [queries] = spy.queries  # one batch, one retrieval
    assert len({len(p) for p in workspace["prompts"]}) == len(samples)  # all padded differently
    encoder = LayerEncoder(Backbone.of(workspace["loaded"]), LAYER, store.record.pooling)
    expected = torch.cat([encoder.encode_tokens([prompt]).keys
                          for prompt in workspace["prompts"]])
    torch.testing.assert_close(queries.float(), expected.float(), rtol=0, atol=1e-5)


def test_a_query_dependent_retriever_picks_the_same_at_any_batch_size(workspace):
    samples = workspace["samples"]
    store = workspace["store"]
    keys, mask = store.padded_keys([store.request_for(s) for s in samples])
    retriever = SemanticRetriever.centered(keys, mask)  # centred: picks follow the query
    picks = {}
    for batch_size in (1, len(samples)):
        run = method(workspace, retriever, batch_size=batch_size)
        run.target_log_likelihoods(samples)
        picks[batch_size] = run.details()["retrieved"]
    assert picks[1] == picks[len(samples)]
    assert all(len(picks[1][s.id]) == 2 for s in samples)


@pytest.mark.parametrize("given", ["retriever", "combiner"])
def test_a_component_given_by_name_is_refused_at_once(workspace, given):
    """MemoryRetrieval(store, "semantic", ...) was accepted and failed only once ranking
    reached the first insert, with an AttributeError ('str' object has no attribute
    'scores'); a combiner by name failed with another."""
    store = workspace["store"]
    parts = {"retriever": SemanticRetriever(), "combiner": automr.AppendToken(), given: "x"}
    with pytest.raises(automr.AutomrError, match=f"the {given} is not a"):
        automr.MemoryRetrieval(store, parts["retriever"], parts["combiner"])


@pytest.mark.parametrize(("protocol", "needs"), [
    (Retriever, "scores(query, keys, mask)"),
    (Combiner, "uses_token_states and combine(query, memory)"),
    (Grounder, "rank(llm, input_ids, attention_mask, layer, insert)"),
    (PromptContext, "config and texts(samples)")])
def test_a_refused_component_is_told_what_its_protocol_needs(protocol, needs):
    """The one-line refusal lists the Protocol's members with their arguments (read from the
    Protocol, so it cannot fall behind it) and how to get a real one; one of the shape passes."""
    with pytest.raises(automr.AutomrError) as refused:
        require("semantic", protocol, "part", "a built-in one by name is X")
    assert str(refused.value) == (f"the part is not a {protocol.__name__}: it needs {needs} "
                                  f"(got a str; a built-in one by name is X)")
    require(SemanticRetriever(), Retriever, "retriever", "")


@pytest.mark.parametrize(("protocol", "cls"), [
    (Combiner, automr.Concat), (Combiner, automr.AppendToken), (Retriever, SemanticRetriever)])
def test_a_component_class_is_refused_for_its_instance(protocol, cls):
    """A class has its methods' names, so it passed the Protocol's ``isinstance``; its unbound
    ``combine`` then failed at the first batch (TypeError: missing 'memory')."""
    with pytest.raises(automr.AutomrError, match=f"the class {cls.__name__}, not an instance"):
        require(cls, protocol, "part", "X")
    require(cls(), protocol, "part", "X")


def test_a_wrong_store_or_retriever_size_is_refused_at_once(workspace):
    """A memory folder's path for the store failed with AttributeError ('PosixPath' object has
    no attribute 'record'); an MLP retriever of another hidden size was accepted and the first
    batch failed in a matmul (mat1 and mat2 shapes cannot be multiplied (2x32 and 999x256))."""
    store = workspace["store"]
    with pytest.raises(automr.AutomrError, match="not a MemoryStore"):
        automr.MemoryRetrieval(store.folder, SemanticRetriever(), automr.AppendToken())
    wrong = automr.build_retriever("mlp", store.hidden_size + 1)
    with pytest.raises(automr.AutomrError, match=f"holds keys of size {store.hidden_size}"):
        automr.MemoryRetrieval(store, wrong, automr.AppendToken())
    automr.MemoryRetrieval(store, automr.build_retriever("mlp", store.hidden_size),
                           automr.AppendToken())
    for size in (store.hidden_size + 1, 1):  # a centre of another size failed in the first
        centred = SemanticRetriever(center=torch.zeros(size))  # batch, or broadcast as one
        with pytest.raises(automr.AutomrError, match=rf"centre has shape \({size},\), but "):
            automr.MemoryRetrieval(store, centred, automr.AppendToken())


def test_the_pipeline_functions_refuse_a_path_dict_or_bare_model_at_once(workspace, tmp_path):
    """Each failed at its first attribute: build_grounder(loaded.model, ...) with
    AttributeError ('LlamaForCausalLM' object has no attribute 'tokenizer'), build_memory with
    the dataset's folder or a dict config ('PosixPath' object has no attribute 'protocol';
    'dict' object has no attribute 'window'), annotate_dataset with a memory's folder or a
    dict config ('check_dataset'; 'split'), retrieval_dataset with an annotation folder
    ('header'), finetune with the bare model ('name')."""
    dataset, loaded, store = workspace["dataset"], workspace["loaded"], workspace["store"]
    calls = {
        "model": [lambda: automr.build_grounder("constrained", loaded.model, dataset, "f" * 64,
                                                cache_dir=tmp_path, progress=False),
                  lambda: automr.annotate_dataset(loaded.model, dataset, store, tmp_path / "a",
                                                  progress=False),
                  lambda: automr.finetune(loaded.model, dataset, tmp_path / "f",
                                          progress=False)],
        "dataset": [lambda: build_memory(loaded, dataset.path, LAYER, MemoryConfig(),
                                         tmp_path / "m", progress=False)],
        "config": [lambda: build_memory(loaded, dataset, LAYER, {"encoder": "item"},
                                        tmp_path / "m", progress=False),
                   lambda: automr.annotate_dataset(loaded, dataset, store, tmp_path / "a",
                                                   {"max_samples": 2}, progress=False)],
        "memory": [lambda: automr.annotate_dataset(loaded, dataset, store.folder,
                                                   tmp_path / "a", progress=False)],
        "annotations": [lambda: automr.retrieval_dataset(tmp_path, dataset, store)],
    }
    for role, refused in calls.items():
        for call in refused:
            with pytest.raises(automr.AutomrError, match=f"^the {role} argument is of type "):
                call()
    assert not list(tmp_path.iterdir())


def test_a_memory_of_another_models_size_is_refused_at_construction(workspace):
    """A memory of size-32 states joined to a model of size 64 was accepted; the first batch
    then failed in the retriever (a jaxtyping TypeCheckError of its scores' 'keys'), after
    every method before it in an evaluation had ranked."""
    from automr.testing.tiny import tiny_config, tiny_model, tiny_tokenizer

    class Unused:
        def rank(self, llm, input_ids, attention_mask, layer, insert=None):
            raise AssertionError("not reached")

    store = workspace["store"]
    wide = automr.LoadedModel(model=tiny_model(tiny_config(num_layers=3, hidden_size=64)),
                              tokenizer=tiny_tokenizer(), name="wide")
    retrieval = automr.MemoryRetrieval(store, SemanticRetriever(), automr.AppendToken())
    with pytest.raises(automr.AutomrError, match="holds states of size 32, the model's are of "
                                                 "size 64"):
        automr.GenerativeMethod(wide, workspace["dataset"], Unused(), LAYER, retrieval=retrieval)
    automr.GenerativeMethod(workspace["loaded"], workspace["dataset"], Unused(), LAYER,
                            retrieval=retrieval)


def test_a_memory_of_another_dataset_is_refused_at_construction(workspace, tmp_path):
    """The same interactions with one title changed: every sample's history is in the memory
    (request_for passes), but its keys encode the other titles. annotate_dataset refused it;
    a GenerativeMethod with it ranked, silently."""

    class Unused:
        def rank(self, llm, input_ids, attention_mask, layer, insert=None):
            raise AssertionError("not reached")

    renamed = synthetic_dataset(tmp_path, titles={"i3": "Another Title"})
    retrieval = automr.MemoryRetrieval(workspace["store"], SemanticRetriever(),
                                       automr.AppendToken())
    with pytest.raises(automr.AutomrError, match="was built from another dataset"):
        automr.GenerativeMethod(workspace["loaded"], renamed, Unused(), LAYER,
                                retrieval=retrieval)
    automr.GenerativeMethod(workspace["loaded"], renamed, Unused(), LAYER)  # no memory: fine


class LaterSlotsHigher(SemanticRetriever):
    """Semantic scores raised by their slot, as a batched product's rounding may raise one
    copy of a key over another: copies of a key (an item met twice) score apart."""

    def scores(self, query, keys, mask):
        raised = super().scores(query, keys, mask) + 1e-3 * torch.arange(keys.shape[1])
        return raised.masked_fill(~mask, -torch.inf)


def test_of_copies_of_a_key_the_first_is_retrieved(workspace):
    """top_k's tie rule (the lowest index first) is what picks among copies, not the slot
    rounding: which copy was reported (retrieved/, rq3's ages) changed with the batch."""
    dataset, store = workspace["dataset"], workspace["store"]
    samples = [s for s in dataset.samples("test") if len(set(s.memory)) < len(s.memory)][:6]
    assert samples  # memories with an item met twice
    run = method(workspace, LaterSlotsHigher(), batch_size=len(samples), context=False)
    run.target_log_likelihoods(samples)
    retrieved = run.details()["retrieved"]
    for sample in samples:
        keys, start = store.view_sample(sample).keys, store.request_for(sample)[2]
        picked = {position - start for position in retrieved[sample.id]}
        for index in picked:  # every earlier copy of a picked key is picked too
            assert all(j in picked for j in range(index) if torch.equal(keys[j], keys[index]))


class Newest:
    """Scores by position alone (as examples/custom_retriever.py's recency retriever)."""

    def scores(self, query, keys, mask):
        ranks = torch.arange(keys.shape[1], dtype=query.dtype).expand(keys.shape[0], -1)
        return ranks.masked_fill(~mask, -torch.inf)


def test_retrievers_that_score_copies_apart_keep_their_picks(workspace):
    """Copies take the first's score only for retrievers that score by key: the random one
    scores copies apart (a draw uniform over elements) and a user's may score by position;
    equalising them inserted another element than the one the retriever ranked first."""
    dataset, store = workspace["dataset"], workspace["store"]
    samples = [s for s in dataset.samples("test") if len(set(s.memory)) < len(s.memory)]
    keys, mask = store.padded_keys([store.request_for(s) for s in samples])
    starts = [store.request_for(s)[2] for s in samples]
    for retriever in (automr.build_retriever("random", store.hidden_size, seed=seed)
                      for seed in range(5)):
        first = retriever.scores(torch.zeros(len(samples), store.hidden_size), keys, mask)
        run = method(workspace, retriever, batch_size=len(samples), k=1, context=False)
        run.target_log_likelihoods(samples)
        retrieved = run.details()["retrieved"]
        assert [retrieved[s.id] for s in samples] == [
            [start + int(first[row].argmax())] for row, start in enumerate(starts)]
    run = method(workspace, Newest(), batch_size=len(samples), k=1, context=False)
    run.target_log_likelihoods(samples)
    assert [run.details()["retrieved"][s.id] for s in samples] == [
        [start + len(s.memory) - 1] for s, start in zip(samples, starts, strict=True)]


def test_a_method_refuses_to_go_on_after_its_retrievers_weights_changed(workspace):
    """A retriever trained further after the method was built: its ranks followed the new
    weights, its kept target log-likelihoods (and the elements they recorded) the old ones
    (the extension-points review)."""
    samples = workspace["samples"]
    retriever = automr.build_retriever("mlp", workspace["store"].hidden_size)
    run = method(workspace, retriever, batch_size=2, k=1)
    before = run.target_log_likelihoods(samples)
    with torch.no_grad():
        for weight in retriever.mlp[-1].parameters():  # a caller's own step: the
            weight.neg_()  # scores reversed
    with pytest.raises(automr.AutomrError, match="retriever or combiner changed since this "
                                                 "GenerativeMethod was built"):
        run.target_log_likelihoods(samples)
    fresh = method(workspace, retriever, batch_size=2, k=1)
    assert fresh.target_log_likelihoods(samples) != before  # the new weights pick otherwise
    rebuilt = attrs.evolve(run)  # as the message says, sharing its kept values: the old
    assert rebuilt.likelihoods is run.likelihoods  # weights' were read back (today's review)
    assert rebuilt.target_log_likelihoods(samples) == fresh.target_log_likelihoods(samples)


class RowByRow:
    """A likelihood grounder that runs its prompts one at a time, calling ``insert`` on each
    row alone: the memory bound to the batch's first sample joined every prompt."""

    def __init__(self, inner) -> None:
        self.inner, self.targets = inner, inner.targets

    def rank(self, llm, input_ids, attention_mask, layer, insert=None):
        return torch.cat([self.inner.rank(llm, input_ids[row : row + 1],
                                          attention_mask[row : row + 1], layer, insert)
                          for row in range(len(input_ids))])


def test_an_insert_applied_to_other_rows_than_its_batch_is_refused(workspace):
    loaded, dataset, samples = workspace["loaded"], workspace["dataset"], workspace["samples"]
    retrieval = automr.MemoryRetrieval(workspace["store"], SemanticRetriever(),
                                       automr.AppendToken())
    grounder = RowByRow(LikelihoodGrounder(dataset_targets(loaded, dataset)))
    run = automr.GenerativeMethod(loaded, dataset, grounder, layer=LAYER, retrieval=retrieval,
                                  batch_size=2)
    with pytest.raises(automr.AutomrError, match="the insert for 2 samples got 1 prompt rows: a "
                                                 "grounder applies it once"):
        run.rank(samples[:2])


def test_a_memory_or_cache_of_another_model_of_its_size_is_refused(workspace, tmp_path):
    """annotate_dataset and a GenerativeMethod joined a memory built with one model to another
    of its size (another seed), and build_grounder read the catalog embeddings cached under
    the fingerprint it was given: values of states the model never makes. The CLI refused
    through the fine-tune's checks (the mismatched-artifacts review)."""
    from automr.testing.tiny import tiny_config, tiny_model, tiny_tokenizer

    class Unused:
        def rank(self, llm, input_ids, attention_mask, layer, insert=None):
            raise AssertionError("not reached")

    loaded, dataset, store = workspace["loaded"], workspace["dataset"], workspace["store"]
    other = automr.LoadedModel(model=tiny_model(tiny_config(num_layers=4), seed=1),
                               tokenizer=tiny_tokenizer(), name="other")
    retrieval = automr.MemoryRetrieval(store, SemanticRetriever(), automr.AppendToken())
    another = "was built with another model .* than the lower 2 layers of"
    with pytest.raises(automr.AutomrError, match=f"{another} 'other'"):
        automr.GenerativeMethod(other, dataset, Unused(), LAYER, retrieval=retrieval)
    with pytest.raises(automr.AutomrError, match=f"{another} 'other'"):
        automr.annotate_dataset(other, dataset, store, tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()
    for tuned_from, refused in ((LAYER - 1, True), (LAYER, False)):  # a fine-tune of it
        tuned = automr.LoadedModel(model=loaded.model, tokenizer=loaded.tokenizer,
                                   name="tuned", fingerprint="f" * 64,
                                   base_fingerprint=loaded.fingerprint(),
                                   tuned_from_layer=tuned_from)
        if refused:
            with pytest.raises(automr.AutomrError, match=f"{another} 'tuned'"):
                automr.GenerativeMethod(tuned, dataset, Unused(), LAYER, retrieval=retrieval)
        else:
            automr.GenerativeMethod(tuned, dataset, Unused(), LAYER, retrieval=retrieval)
    with pytest.raises(automr.AutomrError, match=r"catalog embeddings of model fingerprint "
                                                 r"\w+ was asked for with 'other'"):
        automr.build_grounder("l2", other, dataset, loaded.fingerprint(), cache_dir=tmp_path)
