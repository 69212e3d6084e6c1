"""Contract tests every Retriever, Combiner, Retrieval and Method must pass (pytest mixins).

Use them by subclassing in a test module and providing the component as a fixture::

    import pytest

    from automr.testing.contracts import (
        CombinerContract,
        MethodContract,
        RetrievalContract,
        RetrieverContract,
    )

    class TestMyRetriever(RetrieverContract):
        hidden_size = 8

        @pytest.fixture
        def retriever(self):
            return MyRetriever(hidden_size=8)

    class TestMyCombiner(CombinerContract):
        @pytest.fixture
        def combiner(self):
            return MyCombiner()

    class TestMyRetrieval(RetrievalContract):  # ``store``, ``dataset``: fixtures of yours
        @pytest.fixture
        def retrieval(self, store):
            return MyRetrieval(store)

        @pytest.fixture
        def samples(self, dataset):
            return [s for s in dataset.samples("test") if s.memory][:8]

    class TestMyMethod(MethodContract):  # ``dataset``: a fixture of yours (a PreparedDataset)
        @pytest.fixture
        def method(self, dataset):
            return MyMethod(dataset)

        @pytest.fixture
        def samples(self, dataset):
            return dataset.samples("test")[:8]

The checks are hypothesis properties run inside each test (so fixtures of any scope work).
Combiner checks assume a combiner that *inserts* memory vectors as extra positions (as all of
automr's do); the model-level identity check runs a tiny offline Llama (``split_llm``
fixture, overridable).
"""

import copy
import json
import numbers
from collections.abc import Mapping

import pytest
import torch
from hypothesis import given, settings, strategies as st

from automr.combiners.tokens import pad_memory
from automr.evaluation.folder import EVALUATION_KEYS
from automr.interfaces import Combiner, MemoryTokens, Method, Retriever
from automr.llm.split import HFSplitLLM
from automr.memory import MemoryStore
from automr.recommenders.automr import Retrieval
from automr.retrievers.selection import top_k
from automr.state import LayerState
from automr.testing.strategies import (
    layer_states,
    masks,
    memory_tokens,
    pad_sequences,
    padded_memories,
    padding_sides,
    seeded_tensors,
)
from automr.testing.tiny import TINY_VOCAB, tiny_config, tiny_model

TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def _scores(retriever: Retriever, query, keys, mask) -> torch.Tensor:
    with torch.no_grad():
        return retriever.scores(query, keys, mask)


class RetrieverContract:
    """What every :class:`~automr.interfaces.Retriever` guarantees.

    Subclasses provide a ``retriever`` fixture and set ``hidden_size`` (the key width the
    retriever expects).
    """

    hidden_size: int = 8

    def test_is_a_retriever(self, retriever):
        assert isinstance(retriever, Retriever)

    def test_shape_and_comparable_at_real_elements(self, retriever):
        """One float per element; at real ones no NaN or +inf (-inf vetoes an element:
        :func:`~automr.retrievers.top_k` picks it after every finite one)."""

        @given(memory=padded_memories(self.hidden_size))
        def check(memory):
            scores = _scores(retriever, memory.query, memory.keys, memory.mask)
            assert scores.shape == memory.mask.shape
            assert scores.is_floating_point()
            real = scores[memory.mask]
            assert not bool(torch.isnan(real).any()) and not bool((real == torch.inf).any())

        check()

    def test_top_k_never_selects_masked_elements(self, retriever):
        @given(memory=padded_memories(self.hidden_size), k=st.integers(1, 7))
        def check(memory, k):
            scores = _scores(retriever, memory.query, memory.keys, memory.mask)
            indices, _ = top_k(scores, memory.mask, k)
            chosen = indices >= 0
            assert bool(memory.mask.gather(1, indices.clamp(min=0))[chosen].all())
            expected = torch.clamp(memory.mask.sum(1), max=indices.shape[1])
            torch.testing.assert_close(chosen.sum(1), expected)

        check()

    def test_rows_are_scored_independently(self, retriever):
        """A row's scores do not depend on the other rows of the batch."""

        @given(memory=padded_memories(self.hidden_size, max_batch=4))
        def check(memory):
            batched = _scores(retriever, memory.query, memory.keys, memory.mask)
            for row in range(memory.query.shape[0]):
                alone = _scores(retriever, memory.query[row : row + 1],
                                memory.keys[row : row + 1], memory.mask[row : row + 1])
                real = memory.mask[row]
                torch.testing.assert_close(batched[row][real], alone[0][real], **TOLERANCE)

        check()

    def test_padding_width_and_content_do_not_matter(self, retriever):
        """Masked slots holding NaN, and more of them at the end of the rows (the library
        right-pads a batch to its longest memory), leave real scores unchanged."""

        @given(memory=padded_memories(self.hidden_size), extra=st.integers(1, 4))
        def check(memory, extra):
            batch = memory.mask.shape[0]
            keys = memory.keys.masked_fill(~memory.mask[..., None], torch.nan)
            keys = torch.cat([keys, torch.full((batch, extra, self.hidden_size), torch.nan)], 1)
            mask = torch.cat([memory.mask, torch.zeros(batch, extra, dtype=torch.bool)], 1)
            padded = _scores(retriever, memory.query, keys, mask)[:, : memory.mask.shape[1]]
            plain = _scores(retriever, memory.query, memory.keys, memory.mask)
            real = memory.mask
            torch.testing.assert_close(padded[real], plain[real], **TOLERANCE)

        check()

    def test_deterministic(self, retriever):
        @given(memory=padded_memories(self.hidden_size))
        def check(memory):
            first = _scores(retriever, memory.query, memory.keys, memory.mask)
            second = _scores(retriever, memory.query, memory.keys, memory.mask)
            real = memory.mask
            assert torch.equal(first[real], second[real]), "the same inputs scored otherwise"

        check()

    def test_leaves_its_inputs_unchanged(self, retriever):
        """The keys a retriever scores are the ones then inserted (:class:`MemoryRetrieval`
        gathers them from the same tensor): no write into query, keys or mask."""

        @given(memory=padded_memories(self.hidden_size))
        def check(memory):
            before = [t.clone() for t in (memory.query, memory.keys, memory.mask)]
            _scores(retriever, memory.query, memory.keys, memory.mask)
            for name, now, was in zip(("query", "keys", "mask"),
                                      (memory.query, memory.keys, memory.mask), before,
                                      strict=True):
                assert _unchanged(now, was), f"the retriever wrote into its {name}"

        check()

    def test_scores_bfloat16_states(self, retriever):
        """On CUDA the model, its memory keys and the query are bfloat16 by default: they are
        scored too (finite floats at real elements), not refused by a dtype mismatch."""

        @given(memory=padded_memories(self.hidden_size))
        def check(memory):
            scores = _scores(retriever, memory.query.bfloat16(), memory.keys.bfloat16(),
                             memory.mask)
            assert scores.shape == memory.mask.shape and scores.is_floating_point()
            real = scores[memory.mask]
            assert not bool(torch.isnan(real).any()) and not bool((real == torch.inf).any())

        check()


def _unchanged(now: torch.Tensor, before: torch.Tensor) -> bool:
    """Bit for bit the same values (NaN where NaN was)."""
    return bool(((now == before) | (now.isnan() & before.isnan())).all())


def _real_rows(state_hidden: torch.Tensor, mask: torch.Tensor, row: int) -> torch.Tensor:
    return state_hidden[row][mask[row]]


def _alone(hidden: torch.Tensor, mask: torch.Tensor, row: int) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """Row ``row``'s real positions only, as a batch of one without padding: what it is
    alone, whatever padding the batch gave it."""
    real = hidden[row][mask[row]][None]
    return real, torch.ones(real.shape[:2], dtype=torch.bool, device=mask.device)


def _is_subsequence(part: torch.Tensor, whole: torch.Tensor) -> bool:
    """Whether the vectors of ``part`` appear in ``whole`` in order (exact equality)."""
    position = 0
    for vector in part:
        while position < whole.shape[0] and not torch.equal(whole[position], vector):
            position += 1
        if position == whole.shape[0]:
            return False
        position += 1
    return True


class CombinerContract:
    """What every :class:`~automr.interfaces.Combiner` guarantees.

    Subclasses provide a ``combiner`` fixture; ``hidden_size`` sets the width of drawn states.
    """

    hidden_size: int = 8

    @pytest.fixture(scope="class")
    @classmethod
    def split_llm(cls):
        """A tiny offline Llama of width ``hidden_size`` for the model-level identity check
        (override to use another; one of another width failed a combiner with weights of its
        own width in a raw shape error): 4, 2 or 1 attention heads, whichever gives heads of
        an even width (rotary embeddings need one); a 32-wide one where none does."""
        width = cls.hidden_size
        heads = next((n for n in (4, 2, 1) if width % n == 0 and width // n % 2 == 0), None)
        config = (tiny_config(num_layers=2) if heads is None else tiny_config(
            num_layers=2, hidden_size=width, num_attention_heads=heads,
            num_key_value_heads=2 if heads % 2 == 0 else 1))
        return HFSplitLLM(tiny_model(config, seed=0))

    def test_is_a_combiner(self, combiner):
        assert isinstance(combiner, Combiner)
        assert isinstance(combiner.uses_token_states, bool)

    def test_empty_memory_is_the_identity(self, combiner):
        """n = 0, or every slot masked (holding NaN): the real states are the query's (as
        given: a combiner never writes into its inputs)."""

        @given(query=layer_states(self.hidden_size, layer=2), n=st.integers(0, 3))
        def check(query, n):
            memory = MemoryTokens(
                hidden=torch.full((query.batch_size, n, self.hidden_size), torch.nan),
                mask=torch.zeros(query.batch_size, n, dtype=torch.bool),
            )
            given_hidden, given_mask = query.hidden.clone(), query.mask.clone()
            combined = combiner.combine(query, memory)
            assert combined.layer == query.layer
            assert _unchanged(query.hidden, given_hidden) and torch.equal(query.mask,
                                                                           given_mask)
            for row in range(query.batch_size):
                assert torch.equal(_real_rows(combined.hidden, combined.mask, row),
                                   _real_rows(given_hidden, given_mask, row)), (
                    f"row {row}: with no real memory slot its real states must be the query's")

        check()

    def test_a_batch_equals_its_rows_one_at_a_time(self, combiner):
        """Each row's real states depend on that row's real query states and memory only:
        not on another row's (no user sees another's memory), nor on the padding the batch
        gives it (alone, a row has none), nor on what the query's padded positions hold
        (NaN here)."""

        @given(query=layer_states(self.hidden_size, layer=1), data=st.data())
        def check(query, data):
            memory = data.draw(memory_tokens(query.batch_size, self.hidden_size), label="memory")
            padded = query.hidden.masked_fill(~query.mask[..., None], torch.nan)
            combined = combiner.combine(
                LayerState(hidden=padded, mask=query.mask, layer=query.layer), memory)
            for row in range(query.batch_size):
                hidden, mask = _alone(query.hidden, query.mask, row)
                slots, real = _alone(memory.hidden, memory.mask, row)
                alone = combiner.combine(LayerState(hidden=hidden, mask=mask, layer=query.layer),
                                         MemoryTokens(hidden=slots, mask=real))
                torch.testing.assert_close(
                    _real_rows(combined.hidden, combined.mask, row),
                    _real_rows(alone.hidden, alone.mask, 0), **TOLERANCE,
                    msg=lambda m, row=row: f"row {row} of a batch differs from it alone: {m}")

        check()

    def test_keeps_layer_batch_width_dtype_and_its_inputs(self, combiner):
        """Every combiner, inserting or pooling: a layer state of the query's layer, batch,
        width and dtype, and nothing written into the query or the memory. The query and the
        memory are each float32 or bfloat16: on CUDA the model's states are bfloat16 by
        default, and a memory built on a CPU holds float32 keys."""

        dtypes = st.sampled_from([torch.float32, torch.bfloat16])

        @given(query=layer_states(self.hidden_size, layer=1), data=st.data(),
               query_dtype=dtypes, memory_dtype=dtypes)
        def check(query, data, query_dtype, memory_dtype):
            query = LayerState(hidden=query.hidden.to(query_dtype), mask=query.mask,
                               layer=query.layer)
            memory = data.draw(memory_tokens(query.batch_size, self.hidden_size), label="memory")
            memory = MemoryTokens(hidden=memory.hidden.to(memory_dtype), mask=memory.mask)
            given = (query.hidden.clone(), query.mask.clone(), memory.hidden.clone(),
                     memory.mask.clone())
            combined = combiner.combine(query, memory)
            assert _unchanged(query.hidden, given[0]) and torch.equal(query.mask, given[1]), (
                "the combiner wrote into the query")
            assert _unchanged(memory.hidden, given[2]) and torch.equal(memory.mask, given[3]), (
                "the combiner wrote into the memory")
            assert isinstance(combined, LayerState)
            assert combined.layer == query.layer, "the layer changed"
            assert combined.batch_size == query.batch_size, "the batch size changed"
            assert combined.hidden.shape[2] == self.hidden_size, "the width changed"
            assert combined.hidden.dtype == query.hidden.dtype, (
                f"{query.hidden.dtype} in, {combined.hidden.dtype} out")

        check()

    def test_real_memory_reaches_the_output(self, combiner):
        """A row with a real memory slot comes out other than its query alone: memory that
        does not reach the upper layers is retrieved for nothing."""

        @given(query=layer_states(self.hidden_size, layer=1), data=st.data())
        def check(query, data):
            n = data.draw(st.integers(1, 3), label="slots")
            mask = data.draw(masks(query.batch_size, n, min_real=1), label="mask")
            seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
            hidden = torch.randn(query.batch_size, n, self.hidden_size,
                                 generator=torch.Generator().manual_seed(seed))
            combined = combiner.combine(query, MemoryTokens(hidden=hidden, mask=mask))
            for row in range(query.batch_size):
                out = _real_rows(combined.hidden, combined.mask, row)
                alone = _real_rows(query.hidden, query.mask, row)
                assert out.shape != alone.shape or not torch.equal(out, alone), (
                    f"row {row}: {int(mask[row].sum())} real memory slots changed nothing")

        check()

    def test_output_holds_the_real_tokens_of_both(self, combiner):
        """For a combiner that inserts memory vectors as positions (all of automr's): the real
        positions are exactly the query's and the memory's real vectors, each in its own
        order. A pooling combiner opts out of this check only."""

        @given(query=layer_states(self.hidden_size, layer=1), data=st.data())
        def check(query, data):
            memory = data.draw(memory_tokens(query.batch_size, self.hidden_size), label="memory")
            combined = combiner.combine(query, memory)
            torch.testing.assert_close(combined.mask.sum(1),
                                       query.mask.sum(1) + memory.mask.sum(1))
            for row in range(query.batch_size):
                out = _real_rows(combined.hidden, combined.mask, row)
                assert _is_subsequence(_real_rows(query.hidden, query.mask, row), out)
                assert _is_subsequence(memory.hidden[row][memory.mask[row]], out)

        check()

    def test_masked_memory_slots_have_no_effect(self, combiner):
        @given(query=layer_states(self.hidden_size), data=st.data())
        def check(query, data):
            memory = data.draw(memory_tokens(query.batch_size, self.hidden_size), label="memory")
            junk = memory.hidden.masked_fill(~memory.mask.unsqueeze(-1), torch.nan)
            clean = combiner.combine(query, memory)
            dirty = combiner.combine(query, MemoryTokens(hidden=junk, mask=memory.mask))
            assert torch.equal(clean.mask, dirty.mask), "masked slots changed the output mask"
            assert torch.equal(clean.hidden[clean.mask], dirty.hidden[dirty.mask]), (
                "what masked memory slots hold changed real output states")
            assert not bool(torch.isnan(dirty.hidden[dirty.mask]).any()), (
                "NaN in masked memory slots reached real output states")

        check()

    def test_empty_memory_leaves_the_logits_unchanged(self, combiner, split_llm):
        """Through a real (tiny) model at every layer and padding side; the masked slots hold
        NaN, which must not reach the real positions."""
        llm = split_llm

        @given(
            seqs=st.lists(st.lists(st.integers(3, TINY_VOCAB - 1), min_size=1, max_size=6),
                          min_size=1, max_size=3),
            layer=st.integers(0, llm.num_layers), n=st.integers(0, 2), data=st.data(),
        )
        def check(seqs, layer, n, data):
            sides = data.draw(padding_sides(len(seqs)), label="sides")
            ids, mask = pad_sequences(seqs, sides, pad_id=2)
            with torch.no_grad():
                state = llm.lower(ids, mask, layer)
                memory = MemoryTokens(
                    hidden=torch.full((len(seqs), n, llm.hidden_size), torch.nan),
                    mask=torch.zeros(len(seqs), n, dtype=torch.bool),
                )
                expected = llm.upper(state)[state.mask]  # before: combine must not write
                combined = combiner.combine(state, memory)
                got = llm.upper(combined)[combined.mask]
            torch.testing.assert_close(got, expected, **TOLERANCE)

        check()


class RetrievalContract:
    """What a :class:`~automr.methods.GenerativeMethod` relies on from a
    :class:`~automr.recommenders.automr.Retrieval` (AutoMR's ``MemoryRetrieval``, or yours).

    Subclasses provide a ``retrieval`` fixture and a ``samples`` fixture (at least two samples
    of the memory's dataset, some with memory). Each check inserts into drawn layer-L states
    of the memory's layer and width, padded on either side (a method's prompts come
    left-padded; the likelihood measure's shared prefix leaves them right-padded), for drawn batches
    of the samples. A method inserts in batches that change with its batch size, the shards
    of ``torchrun`` and what a resumed run still has to do, so what a sample gets (and what
    ``retrieved`` records for it) must depend on that sample and its own state only.
    ``examples`` sets how many batches each check draws (each one reads the memory).
    """

    examples: int = 20

    def test_is_a_retrieval_of_a_memory_store(self, retrieval):
        assert isinstance(retrieval, Retrieval)
        assert isinstance(retrieval.store, MemoryStore), (
            f"store is a {type(retrieval.store).__name__}, not a MemoryStore")
        assert isinstance(retrieval.retrieved, list)

    def test_records_each_samples_elements_from_its_own_memory(self, retrieval, samples):
        """One entry in ``retrieved`` per sample of the batch, in order, each a list of
        positions inside that sample's memory span; the state keeps its layer, batch, width
        and dtype, and the query is not written into."""
        store = retrieval.store

        @settings(max_examples=self.examples, deadline=None)
        @given(inputs=_insert_inputs(samples, store))
        def check(inputs):
            batch, state = inputs
            given_hidden, given_mask = state.hidden.clone(), state.mask.clone()
            before = len(retrieval.retrieved)
            combined = retrieval.insert_for(batch)(state)
            entries = retrieval.retrieved[before:]
            assert len(entries) == len(batch), (
                f"{len(entries)} entries in retrieved for a batch of {len(batch)}")
            for sample, entry in zip(batch, entries, strict=True):
                _, count, start = store.request_for(sample)
                assert all(isinstance(p, int) and start <= p < start + count for p in entry), (
                    f"sample {sample.id}: {entry} is not inside its memory, positions "
                    f"{start}..{start + count - 1}")
            assert _unchanged(state.hidden, given_hidden) and torch.equal(state.mask,
                                                                           given_mask), (
                "the insert wrote into the query")
            assert isinstance(combined, LayerState) and combined.layer == state.layer
            assert combined.batch_size == len(batch), "the batch size changed"
            assert combined.hidden.shape[2] == store.hidden_size, "the width changed"
            assert combined.hidden.dtype == state.hidden.dtype

        check()

    def test_a_batch_equals_its_samples_one_at_a_time(self, retrieval, samples):
        """Each sample's real states and retrieved elements are those it gets alone (its
        prompt's real states, without the padding the batch gave them), and the same batch
        inserted again gets the same."""
        @settings(max_examples=self.examples, deadline=None)
        @given(inputs=_insert_inputs(samples, retrieval.store))
        def check(inputs):
            batch, state = inputs
            combined, entries = _inserted(retrieval, batch, state)
            again, entries_again = _inserted(retrieval, batch, state)
            assert entries_again == entries, "the same batch retrieved other elements"
            torch.testing.assert_close(again.hidden, combined.hidden, **TOLERANCE)
            for row, sample in enumerate(batch):
                hidden, mask = _alone(state.hidden, state.mask, row)  # no batch's padding
                alone, [entry] = _inserted(retrieval, [sample], LayerState(
                    hidden=hidden, mask=mask, layer=state.layer))
                assert entry == entries[row], (
                    f"sample {sample.id} retrieved {entries[row]} in a batch, {entry} alone")
                torch.testing.assert_close(
                    _real_rows(combined.hidden, combined.mask, row),
                    _real_rows(alone.hidden, alone.mask, 0), **TOLERANCE,
                    msg=lambda m, row=row: f"row {row} of a batch differs from it alone: {m}")

        check()


    def test_what_it_records_is_what_it_inserts(self, retrieval, samples):
        """A sample whose entry names elements comes out other than its query (a retrieval
        that records picks and inserts nothing ranks as BIGRec); with a ``combiner``
        attribute (AutoMR's), it comes out as that combiner joins the recorded elements
        (their token states, or their keys): recording one element and inserting another,
        or positions counted inside the memory span rather than on the user's timeline,
        reports elements the sample never saw."""
        combiner = getattr(retrieval, "combiner", None)

        @settings(max_examples=self.examples, deadline=None)
        @given(inputs=_insert_inputs(samples, retrieval.store))
        def check(inputs):
            batch, state = inputs
            combined, entries = _inserted(retrieval, batch, state)
            for row, (sample, entry) in enumerate(zip(batch, entries, strict=True)):
                out = _real_rows(combined.hidden, combined.mask, row)
                query = _real_rows(state.hidden, state.mask, row)
                assert not entry or out.shape != query.shape or not torch.equal(out, query), (
                    f"sample {sample.id} records elements {entry}, yet comes out as its query")
            if isinstance(combiner, Combiner):
                expected = combiner.combine(state, _recorded(retrieval.store, combiner, batch,
                                                             entries))
                for row in range(len(batch)):
                    torch.testing.assert_close(
                        _real_rows(combined.hidden, combined.mask, row),
                        _real_rows(expected.hidden, expected.mask, row), **TOLERANCE,
                        msg=lambda m, row=row: f"row {row} is not its recorded elements "
                                               f"{entries[row]} joined by the combiner: {m}")

        check()


def _recorded(store: MemoryStore, combiner: Combiner, batch, entries) -> MemoryTokens:
    """The elements ``entries`` name (timeline positions), as ``combiner`` takes them."""
    rows = []
    for sample, entry in zip(batch, entries, strict=True):
        user, _, start = store.request_for(sample)
        if combiner.uses_token_states:
            parts = [store.token_states(user, position) for position in entry]
        else:
            keys = store.view_sample(sample).keys
            parts = [keys[position - start][None] for position in entry]
        rows.append(torch.cat(parts) if parts else torch.zeros(
            0, store.hidden_size, dtype=store.record.torch_dtype, device=store.device))
    return pad_memory(rows)


@st.composite
def _insert_inputs(draw: st.DrawFn, samples, store: MemoryStore) -> tuple[list, LayerState]:
    """Some of ``samples`` in any order (one may come twice: two prompts of a user) and
    layer-L states of their prompts padded on either side, of the memory's layer and width."""
    if len(samples) < 2:
        raise AssertionError("the samples fixture must give at least two samples")
    batch = draw(st.lists(st.sampled_from(list(samples)), min_size=1,
                          max_size=min(len(samples), 4)), label="batch")
    width = draw(st.integers(1, 6), label="prompt length")
    hidden = draw(seeded_tensors((len(batch), width, store.hidden_size)), label="hidden")
    mask = draw(masks(len(batch), width, min_real=1, padding="mixed"), label="mask")
    return batch, LayerState(hidden=hidden, mask=mask, layer=store.layer)


def _inserted(retrieval: Retrieval, batch, state: LayerState) -> tuple[LayerState, list]:
    before = len(retrieval.retrieved)
    with torch.no_grad():
        combined = retrieval.insert_for(batch)(state)
    return combined, [list(entry) for entry in retrieval.retrieved[before:]]


class MethodContract:
    """What :func:`automr.evaluate` relies on from a :class:`~automr.interfaces.Method`.

    Subclasses provide a ``method`` fixture and a ``samples`` fixture (a few samples of the
    method's dataset, at least two), and set ``n_items`` to its catalog's size when it is not
    ``len(method.dataset.catalog)``. ``evaluate`` ranks in shards and a rerun reads saved
    ranks back, so a method must rank each sample the same whatever else is in the call.
    Whether a rank is right is not checked (nothing here knows the answer): a method off by
    one, 1-based, passes; :func:`~automr.evaluation.ranks_from_scores` gives 0-based ranks.
    """

    n_items: int | None = None

    def _catalog_size(self, method) -> int:
        if self.n_items is not None:
            return self.n_items
        dataset = getattr(method, "dataset", None)
        if dataset is None:
            raise AssertionError(f"{type(method).__name__} has no dataset: set n_items, the "
                                 f"catalog size it ranks over, on the contract's subclass")
        return len(dataset.catalog)

    def test_is_a_method_with_json_settings(self, method):
        assert isinstance(method, Method)
        assert isinstance(method.settings, Mapping)
        json.dumps(dict(method.settings), sort_keys=True)  # evaluate saves them sorted
        assert all(isinstance(key, str) for key in method.settings), (
            f"settings keys must be strings (evaluate adds its own among them): "
            f"{list(method.settings)}")
        assert not set(EVALUATION_KEYS) & set(method.settings), (
            f"settings may not hold {', '.join(EVALUATION_KEYS)}: evaluate adds them itself")

    def test_one_rank_per_sample_in_the_catalog(self, method, samples):
        ranks = _ranks(method, samples)
        assert len(ranks) == len(samples)
        n_items = self._catalog_size(method)
        assert all(isinstance(r, numbers.Integral) and not isinstance(r, bool)
                   and 0 <= r <= n_items for r in ranks), ranks  # n_items: a miss

    def test_shards_and_order_do_not_matter(self, method, samples):
        """Split in halves, reversed, and rotated by one: a method that ranks in batches of
        a size that divides the half sees the same batches in the halves and reversed, but
        other ones rotated."""
        whole = _ranks(method, samples)
        half = len(samples) // 2
        assert _ranks(method, samples[:half]) + _ranks(method, samples[half:]) == whole
        assert _ranks(method, samples[::-1]) == whole[::-1]
        rotated = [*samples[1:], *samples[:1]]
        assert _ranks(method, rotated) == [*whole[1:], *whole[:1]]

    def test_deterministic(self, method, samples):
        assert _ranks(method, samples) == _ranks(method, samples)

    def test_a_fresh_method_ranks_a_part_first_as_in_the_whole(self, method, samples):
        """The checks above call one method again and again: one whose state is set by its
        first call (a cutoff from that call's samples, per-sample values cached as that call's
        batches made them) agrees with itself ever after. Two copies made before any call,
        one called first on the second half, the other on the whole, must agree, and a third
        called first on them reversed (a cache by user filled by the first of a user's samples
        it meets) (a method that cannot be copied skips this check)."""
        try:
            copies = [copy.deepcopy(method) for _ in range(3)]
        except Exception as error:  # an open file, a lock: nothing this contract can judge
            pytest.skip(f"{type(method).__name__} cannot be copied ({type(error).__name__})")
        part_first, whole_first, reversed_first = copies
        half = len(samples) // 2
        whole = _ranks(whole_first, samples)
        assert _ranks(part_first, samples[half:]) == whole[half:], (
            "a fresh method ranked the second half, called on it first, otherwise than in a "
            "first call on all the samples")
        assert _ranks(reversed_first, samples[::-1]) == whole[::-1], (
            "a fresh method ranked the samples reversed, in its first call, otherwise than in "
            "order")


def _ranks(method: Method, samples) -> list:
    """``rank``'s answer as a list (numpy and torch integers as Python's, as evaluate reads
    them)."""
    ranks = method.rank(list(samples))
    return ranks.tolist() if hasattr(ranks, "tolist") else list(ranks)

