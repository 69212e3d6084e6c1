"""The Retrieval contract, on AutoMR's MemoryRetrieval with each kind of retriever and
combiner, on the oracle example's own retrieval, and on two retrievals it must refuse."""

import importlib.util
from pathlib import Path

import pytest
import torch

import automr
from automr.memory import MemoryConfig, build_memory
from automr.testing.contracts import RetrievalContract
from automr.testing.synthetic import save_tiny_model, synthetic_dataset

LAYER = 2
EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.fixture(scope="module")
def memory(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval-contract")
    dataset = synthetic_dataset(root)
    loaded = automr.load_model(str(save_tiny_model(root / "model")), device="cpu")
    store = build_memory(loaded, dataset, LAYER,
                         MemoryConfig(encoder="item", store_token_states=True), root / "mem",
                         progress=False)
    samples = [s for s in dataset.samples("test") if s.memory][:6]
    assert len(samples) >= 4
    return store, samples


@pytest.fixture(scope="module")
def samples(memory):
    return memory[1]


class TestMemoryRetrieval(RetrievalContract):
    @pytest.fixture(params=[("semantic", "append-token", 2), ("random", "concat", 1),
                            ("mlp", "prepend-token", 1)], ids=lambda p: "-".join(map(str, p)))
    def retrieval(self, request, memory):
        kind, combiner, k = request.param
        store = memory[0]
        return automr.MemoryRetrieval(store, automr.build_retriever(kind, store.hidden_size),
                                      automr.COMBINERS[combiner](), k=k)


class TestTheOracleExamplesRetrieval(RetrievalContract):
    @pytest.fixture
    def retrieval(self, memory):
        spec = importlib.util.spec_from_file_location("automr_example_oracle_contract",
                                                      EXAMPLES / "oracle_ranking.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        store, samples = memory
        picks = {s.id: len(s.memory) - 1 - i % len(s.memory) for i, s in enumerate(samples)}
        return module.PickedRetrieval(store, automr.Concat(), picks)


class ByRow:
    """Scores element ``row % width`` of each row highest: a pick that follows the sample's
    place in its batch, not the sample."""

    def scores(self, query, keys, mask):
        rows = torch.arange(len(keys))
        scores = torch.zeros(mask.shape)
        scores[rows, rows % mask.shape[1]] = 1.0
        return scores


class Unrecorded:
    """Inserts as AutoMR does but forgets what it retrieved."""

    def __init__(self, inner: automr.MemoryRetrieval) -> None:
        self.inner, self.store, self.retrieved = inner, inner.store, []

    def insert_for(self, samples):
        return self.inner.insert_for(samples)


class PaddedQuery:
    """Semantic scores of the prompt's mean over every position, padding included: what a
    sample picks follows the padding its batch gave its prompt."""

    def scores(self, query, keys, mask):
        return torch.einsum("bh,bmh->bm", query, keys)


class UnmaskedPooling(automr.MemoryRetrieval):
    """MemoryRetrieval whose query is pooled over the padded prompt too."""

    def insert_for(self, samples):
        insert = super().insert_for(samples)

        def padded(state):
            return insert(automr.LayerState(hidden=state.hidden, layer=state.layer,
                                            mask=torch.ones_like(state.mask)))
        return padded


def test_the_contract_refuses_a_retrieval_that_reads_the_prompts_padding(memory, unshrunk):
    """The sample alone kept the batch's left padding, so a pick that read it passed."""
    store, samples = memory
    contract = RetrievalContract()
    with pytest.raises(AssertionError, match=r"in a batch|differs from it alone"):
        contract.test_a_batch_equals_its_samples_one_at_a_time(
            UnmaskedPooling(store, PaddedQuery(), automr.AppendToken()), samples)


def test_the_contract_refuses_a_batch_dependent_or_unrecorded_retrieval(memory):
    store, samples = memory
    contract = RetrievalContract()
    by_row = automr.MemoryRetrieval(store, ByRow(), automr.AppendToken())
    contract.test_records_each_samples_elements_from_its_own_memory(by_row, samples)
    with pytest.raises(AssertionError, match=r"in a batch|differs from it alone"):
        contract.test_a_batch_equals_its_samples_one_at_a_time(by_row, samples)
    unrecorded = Unrecorded(automr.MemoryRetrieval(store, automr.build_retriever(
        "semantic", store.hidden_size), automr.AppendToken()))
    contract.test_is_a_retrieval_of_a_memory_store(unrecorded)
    with pytest.raises(AssertionError, match="0 entries in retrieved"):
        contract.test_records_each_samples_elements_from_its_own_memory(unrecorded, samples)


class LastColumnQuery:
    """Scores by the state's last column: the prompt's last token where prompts are
    left-padded, a padding slot where the likelihood measure's shared prefix leaves them
    right-padded (its picks then changed with the batch size)."""

    def __init__(self, store) -> None:
        self.store, self.retrieved = store, []

    def insert_for(self, samples):
        inner = automr.MemoryRetrieval(self.store, automr.build_retriever(
            "semantic", self.store.hidden_size), automr.AppendToken())

        def insert(state):
            last = state.hidden[:, -1:].expand_as(state.hidden)
            combined = inner.insert_for(samples)(automr.LayerState(
                hidden=last, mask=torch.ones_like(state.mask), layer=state.layer))
            self.retrieved += inner.retrieved
            return automr.LayerState(hidden=torch.cat([state.hidden, combined.hidden[:, -1:]], 1),
                                     mask=torch.cat([state.mask, combined.mask[:, -1:]], 1),
                                     layer=state.layer)
        return insert


def test_the_contract_draws_prompts_padded_on_either_side(memory):
    """It drew left padding only, so a retrieval reading the last column passed; the
    likelihood measure gives it right-padded prompts (the extension-points review)."""
    store, samples = memory
    with pytest.raises(AssertionError, match=r"in a batch|differs from it alone"):
        RetrievalContract().test_a_batch_equals_its_samples_one_at_a_time(
            LastColumnQuery(store), samples)
