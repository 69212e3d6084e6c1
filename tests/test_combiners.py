"""Combiners insert memory at layer L exactly: positions, padding, masks and decoding caches."""

import pytest
import torch
from hypothesis import given, strategies as st

from automr.combiners import COMBINERS, AppendToken, Concat, PrependToken, pad_memory
from automr.errors import AutomrError
from automr.interfaces import Combiner, MemoryTokens
from automr.llm import HFSplitLLM, LayerState
from automr.llm.decoding import greedy_generate, prefill, step
from automr.testing.contracts import CombinerContract
from automr.testing.strategies import masks, pad_sequences, padding_sides, seeded_tensors
from automr.testing.tiny import TINY_ARCHITECTURES, TINY_VOCAB

ARCHS = list(TINY_ARCHITECTURES)
NUM_LAYERS = 3
TOL = {"rtol": 1e-5, "atol": 1e-5}
BEFORE = ["prepend-token", "concat"]

token = st.integers(min_value=3, max_value=TINY_VOCAB - 1)
prompts = st.lists(st.lists(token, min_size=1, max_size=7), min_size=1, max_size=3)


pytestmark = pytest.mark.usefixtures("one_thread")


class TestPrependToken(CombinerContract):
    @pytest.fixture
    def combiner(self):
        return PrependToken()


class TestAppendToken(CombinerContract):
    @pytest.fixture
    def combiner(self):
        return AppendToken()


class TestConcat(CombinerContract):
    @pytest.fixture
    def combiner(self):
        return Concat()


class TestAppendTokenSixWide(CombinerContract):
    """The contract's tiny model took the combiner's width with 4 heads: at 6 the config
    refused it, at 12 a head of 3 (odd) failed inside the rotary embedding (the second diff
    review)."""

    hidden_size = 6

    @pytest.fixture
    def combiner(self):
        return AppendToken()


class TestConcatTwelveWide(TestAppendTokenSixWide):
    hidden_size = 12

    @pytest.fixture
    def combiner(self):
        return Concat()


class WritesIntoItsQuery:
    """Append-token that zeroes the query's first position in place (then appends)."""

    uses_token_states = False

    def combine(self, query, memory):
        query.hidden[:, 0] = 0
        return AppendToken().combine(query, memory)


def test_the_contract_fails_a_combiner_that_writes_into_its_inputs(unshrunk):
    """The contract computed what it expected after combining, so an in-place edit passed."""
    contract = CombinerContract()
    contract.hidden_size = 8
    for check in (contract.test_empty_memory_is_the_identity,
                  contract.test_keeps_layer_batch_width_dtype_and_its_inputs):
        with pytest.raises(AssertionError):
            check(WritesIntoItsQuery())


class SharesMemoryAcrossTheBatch:
    """Adds the mean of the whole batch's memory to every position: one user's memory leaks
    into another's states (a fresh-eyes reviewer's mutant, which the contract passed)."""

    uses_token_states = False

    def combine(self, query, memory):
        real = memory.mask.unsqueeze(-1)
        pooled = memory.hidden.masked_fill(~real, 0.0).sum((0, 1)) / real.sum().clamp(min=1)
        return LayerState(hidden=query.hidden + pooled, mask=query.mask, layer=query.layer)


def test_the_contract_fails_a_combiner_that_mixes_the_rows_of_a_batch(unshrunk):
    contract = CombinerContract()
    contract.hidden_size = 8
    with pytest.raises(AssertionError, match="differs from it alone"):
        contract.test_a_batch_equals_its_rows_one_at_a_time(SharesMemoryAcrossTheBatch())


class MeanOverPaddedWidth:
    """Appends the memory's mean as one token, divided by the padded slot count (which the
    other rows decide) instead of the real one; the contract's row alone kept the batch's
    padding, so it passed."""

    uses_token_states = False

    def combine(self, query, memory):
        pooled = memory.hidden.masked_fill(~memory.mask[..., None], 0).sum(1) / max(
            memory.hidden.shape[1], 1)
        return AppendToken().combine(query, MemoryTokens(
            hidden=pooled[:, None], mask=memory.mask.any(1, keepdim=True)))


class ReadsTheQuerysPadding:
    """Appends the mean of every query position, padded ones included."""

    uses_token_states = False

    def combine(self, query, memory):
        pooled = query.hidden.mean(1, keepdim=True)
        return AppendToken().combine(query, MemoryTokens(
            hidden=pooled, mask=torch.ones(query.batch_size, 1, dtype=torch.bool)))


class DropsSlotsInPlace:
    """Keeps two memory slots by writing into the memory's mask."""

    uses_token_states = False

    def combine(self, query, memory):
        memory.mask.logical_and_(memory.mask.cumsum(1) <= 2)
        return AppendToken().combine(query, memory)


@pytest.mark.parametrize("combiner", [MeanOverPaddedWidth(), ReadsTheQuerysPadding()])
def test_the_contract_fails_a_combiner_that_reads_the_padding(unshrunk, combiner):
    contract = CombinerContract()
    contract.hidden_size = 8
    with pytest.raises(AssertionError):
        contract.test_a_batch_equals_its_rows_one_at_a_time(combiner)


def test_the_contract_fails_a_combiner_that_writes_into_the_memorys_mask(unshrunk):
    contract = CombinerContract()
    contract.hidden_size = 8
    with pytest.raises(AssertionError, match="wrote into the memory"):
        contract.test_keeps_layer_batch_width_dtype_and_its_inputs(DropsSlotsInPlace())


def full(model, seq: list[int]) -> torch.Tensor:
    """The plain computation: the full model on one unpadded sequence."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([seq])).logits[0]


def padded_memory(llm: HFSplitLLM, rows: list[list[int]], sides: list[str]) -> MemoryTokens:
    """Token embeddings of ``rows`` as memory, padded per row on its side with junk slots."""
    ids, mask = pad_sequences(rows, sides, pad_id=5)
    with torch.no_grad():
        hidden = llm.embed(ids) if ids.shape[1] else torch.zeros(len(rows), 0, llm.hidden_size)
    return MemoryTokens(hidden=hidden.masked_fill(~mask.unsqueeze(-1), 7.0), mask=mask)


def test_registry_names_the_three_combiners():
    assert set(COMBINERS) == {"prepend-token", "append-token", "concat"}
    for build in COMBINERS.values():
        assert isinstance(build(), Combiner)
    assert COMBINERS["concat"]().uses_token_states
    assert not COMBINERS["prepend-token"]().uses_token_states
    assert not COMBINERS["append-token"]().uses_token_states


def test_layouts_on_a_small_example():
    query = LayerState(hidden=torch.arange(6.0).reshape(1, 3, 2),
                       mask=torch.tensor([[False, True, True]]), layer=2)
    memory = MemoryTokens(hidden=torch.full((1, 1, 2), 9.0), mask=torch.tensor([[True]]))
    before = PrependToken().combine(query, memory)
    after = AppendToken().combine(query, memory)
    assert before.hidden[0, :, 0].tolist() == [9.0, 0.0, 2.0, 4.0]
    assert before.mask.tolist() == [[True, False, True, True]]
    assert after.hidden[0, :, 0].tolist() == [0.0, 2.0, 4.0, 9.0]
    assert after.layer == before.layer == 2


def test_mismatched_memory_is_a_clear_error():
    query = LayerState(hidden=torch.zeros(2, 3, 4), mask=torch.ones(2, 3, dtype=torch.bool),
                       layer=1)
    with pytest.raises(AutomrError, match="hidden size 5"):
        PrependToken().combine(query, MemoryTokens(hidden=torch.zeros(2, 1, 5),
                                                   mask=torch.ones(2, 1, dtype=torch.bool)))
    with pytest.raises(AutomrError, match="1 rows"):
        AppendToken().combine(query, MemoryTokens(hidden=torch.zeros(1, 1, 4),
                                                  mask=torch.ones(1, 1, dtype=torch.bool)))


@pytest.mark.parametrize("odd", [torch.full((3, 1), 7.0), torch.ones(3, 4, dtype=torch.long),
                                 torch.ones(3, 4, dtype=torch.float64), torch.ones(4)])
def test_pad_memory_refuses_any_row_unlike_the_first(odd):
    """beartype checks some items of a sequence: the same call was refused 21 times in 40 and
    otherwise broadcast a [3, 1] row over the hidden axis (or cast an int row)."""
    for _ in range(20):
        with pytest.raises(AutomrError, match="every row is \\[vectors, hidden\\] of one"):
            pad_memory([torch.randn(2, 4), torch.randn(1, 4), odd])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_pad_memory_reads_an_empty_rows_dtype_from_the_rows_with_vectors(dtype):
    """The memory-aware fine-tune gives an example without an element a float32 [0, hidden]
    row: a bfloat16 memory's batches were refused (and, first in a batch, made it float32)."""
    rows = [torch.zeros(0, 4), torch.randn(2, 4, dtype=dtype), torch.zeros(0, 4),
            torch.randn(1, 4, dtype=dtype)]
    memory = pad_memory(rows)
    assert memory.hidden.dtype == dtype
    assert memory.mask.tolist() == [[False, False], [True, True], [False, False], [True, False]]
    assert torch.equal(memory.hidden[1], rows[1]) and torch.equal(memory.hidden[3, :1], rows[3])
    with pytest.raises(AutomrError, match="every row is"):
        pad_memory([torch.zeros(0, 5), *rows[1:]])  # another hidden size, even empty


def test_pad_memory_right_pads_rows():
    memory = pad_memory([torch.ones(2, 3), torch.ones(0, 3), torch.full((1, 3), 2.0)])
    assert memory.mask.tolist() == [[True, True], [False, False], [True, False]]
    assert memory.hidden[2, 0].tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("arch", ARCHS)
@given(seqs=prompts, layer=st.integers(0, NUM_LAYERS), kind=st.sampled_from(sorted(COMBINERS)),
       n=st.integers(0, 3), data=st.data())
def test_empty_memory_is_the_identity(tiny_models, arch, seqs, layer, kind, n, data):
    """n = 0, or n > 0 slots all masked (holding NaN): upper() logits at the query's real
    positions agree."""
    llm = HFSplitLLM(tiny_models[arch])
    ids, mask = pad_sequences(seqs, data.draw(padding_sides(len(seqs))), pad_id=2)
    memory = MemoryTokens(hidden=torch.full((len(seqs), n, llm.hidden_size), torch.nan),
                          mask=torch.zeros(len(seqs), n, dtype=torch.bool))
    with torch.no_grad():
        state = llm.lower(ids, mask, layer)
        combined = COMBINERS[kind]().combine(state, memory)
        got = llm.upper(combined)[combined.mask]
        expected = llm.upper(state)[state.mask]
    torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("arch", ARCHS)
@given(seqs=prompts, kind=st.sampled_from(BEFORE), data=st.data())
def test_before_at_layer_zero_equals_a_longer_prompt(tiny_models, arch, seqs, kind, data):
    """Embeddings of T prepended at layer 0 = the full model on [T, prompt], row by row.

    Rows are padded on mixed sides and the memory is padded too (junk in masked slots), so
    this checks the positions of every real token.
    """
    model = tiny_models[arch]
    llm = HFSplitLLM(model)
    inserted = data.draw(st.lists(st.lists(token, max_size=4), min_size=len(seqs),
                                  max_size=len(seqs)), label="T")
    ids, mask = pad_sequences(seqs, data.draw(padding_sides(len(seqs))), pad_id=2)
    memory = padded_memory(llm, inserted, data.draw(padding_sides(len(seqs))))
    with torch.no_grad():
        combined = COMBINERS[kind]().combine(llm.lower(ids, mask, 0), memory)
        logits = llm.upper(combined)
    for row, (seq, extra) in enumerate(zip(seqs, inserted, strict=True)):
        torch.testing.assert_close(logits[row][combined.mask[row]], full(model, extra + seq),
                                   **TOL)


@pytest.mark.parametrize("arch", ARCHS)
@given(seqs=prompts, data=st.data())
def test_append_at_layer_zero_equals_a_longer_prompt(tiny_models, arch, seqs, data):
    """Embeddings of T appended at layer 0 = the full model on [prompt, T] at every prompt and
    T position, also for right-padded rows (padding lies between prompt and memory)."""
    model = tiny_models[arch]
    llm = HFSplitLLM(model)
    inserted = data.draw(st.lists(st.lists(token, max_size=4), min_size=len(seqs),
                                  max_size=len(seqs)), label="T")
    ids, mask = pad_sequences(seqs, data.draw(padding_sides(len(seqs))), pad_id=2)
    memory = padded_memory(llm, inserted, data.draw(padding_sides(len(seqs))))
    with torch.no_grad():
        combined = AppendToken().combine(llm.lower(ids, mask, 0), memory)
        logits = llm.upper(combined)
    for row, (seq, extra) in enumerate(zip(seqs, inserted, strict=True)):
        torch.testing.assert_close(logits[row][combined.mask[row]], full(model, seq + extra),
                                   **TOL)


@pytest.mark.parametrize("arch", ARCHS)
@given(seqs=prompts, layer=st.integers(0, NUM_LAYERS), kind=st.sampled_from(sorted(COMBINERS)),
       n=st.integers(0, 3), data=st.data())
def test_mixed_padding_batch_equals_one_at_a_time(tiny_models, arch, seqs, layer, kind, n, data):
    """At any layer, a batch with rows padded on different sides (and memory with holes)
    gives each row the logits it gets alone, unpadded, with only its real memory slots."""
    llm = HFSplitLLM(tiny_models[arch])
    combiner = COMBINERS[kind]()
    ids, mask = pad_sequences(seqs, data.draw(padding_sides(len(seqs))), pad_id=2)
    hidden = data.draw(seeded_tensors((len(seqs), n, llm.hidden_size)), label="memory")
    memory = MemoryTokens(hidden=hidden, mask=data.draw(masks(len(seqs), n), label="mask"))
    with torch.no_grad():
        combined = combiner.combine(llm.lower(ids, mask, layer), memory)
        batched = llm.upper(combined)
        for row, seq in enumerate(seqs):
            ones = torch.ones(1, len(seq), dtype=torch.bool)
            alone_state = llm.lower(torch.tensor([seq]), ones, layer)
            real = memory.mask[row]
            alone_memory = MemoryTokens(hidden=hidden[row : row + 1, real],
                                        mask=real[real].unsqueeze(0))
            alone = llm.upper(combiner.combine(alone_state, alone_memory))[0]
            torch.testing.assert_close(batched[row][combined.mask[row]], alone, **TOL)


def greedy_full(model, seq: list[int], steps: int) -> list[int]:
    """Greedy decoding with the plain full model, recomputing everything each step."""
    seq, new = list(seq), []
    for _ in range(steps):
        new.append(int(full(model, seq)[-1].argmax()))
        seq.append(new[-1])
    return new


@pytest.mark.parametrize("arch", ARCHS)
@given(seqs=prompts, where=st.sampled_from(["prepend-token", "append-token"]), data=st.data())
def test_generation_after_combine_equals_the_full_model(tiny_models, arch, seqs, where, data):
    """Greedy decoding through the split with embeddings of T inserted at layer 0 (two caches,
    shifted upper positions) = greedy decoding of the full model on [T, prompt] (prepend) or
    [prompt, T] (append)."""
    model = tiny_models[arch]
    llm = HFSplitLLM(model)
    combiner = COMBINERS[where]()
    inserted = data.draw(st.lists(st.lists(token, max_size=3), min_size=len(seqs),
                                  max_size=len(seqs)), label="T")
    ids, mask = pad_sequences(seqs, data.draw(padding_sides(len(seqs))), pad_id=2)
    memory = padded_memory(llm, inserted, data.draw(padding_sides(len(seqs))))
    steps = 4
    generated = greedy_generate(llm, ids, mask, 0, steps,
                                insert=lambda state: combiner.combine(state, memory))
    for row, (seq, extra) in enumerate(zip(seqs, inserted, strict=True)):
        context = extra + seq if where == "prepend-token" else seq + extra
        assert generated[row].tolist() == greedy_full(model, context, steps)


@pytest.mark.parametrize("arch", ARCHS)
@given(seqs=prompts, layer=st.integers(1, NUM_LAYERS), kind=st.sampled_from(sorted(COMBINERS)),
       n=st.integers(1, 3), data=st.data())
def test_cached_generation_equals_recomputation(tiny_models, arch, seqs, layer, kind, n, data):
    """At any layer: greedy decoding with both caches after a combine = recomputing lower,
    combine and upper on the whole sequence at every step (no caches), with the generated
    tokens after the combined prompt (so after the memory, for append-token): the same tokens,
    and the same logits at every step."""
    llm = HFSplitLLM(tiny_models[arch])
    combiner = COMBINERS[kind]()
    ids, mask = pad_sequences(seqs, data.draw(padding_sides(len(seqs))), pad_id=2)
    hidden = data.draw(seeded_tensors((len(seqs), n, llm.hidden_size)), label="memory")
    memory = MemoryTokens(hidden=hidden, mask=data.draw(masks(len(seqs), n), label="mask"))
    steps = 3
    generated = greedy_generate(llm, ids, mask, layer, steps,
                                insert=lambda state: combiner.combine(state, memory))
    decoding = prefill(llm, ids, mask, layer, lambda state: combiner.combine(state, memory))
    cached = [decoding.logits]
    for step_index in range(steps - 1):
        step(llm, decoding, generated[:, step_index])
        cached.append(decoding.logits)
    for row, seq in enumerate(seqs):
        row_memory = MemoryTokens(hidden=hidden[row : row + 1], mask=memory.mask[row : row + 1])
        context = list(seq)
        with torch.no_grad():
            for index in range(steps):
                ones = torch.ones(1, len(context), dtype=torch.bool)
                state = llm.lower(torch.tensor([context]), ones, layer)
                prompt = LayerState(hidden=state.hidden[:, : len(seq)],
                                    mask=state.mask[:, : len(seq)], layer=layer)
                combined = combiner.combine(prompt, row_memory)
                whole = LayerState(hidden=torch.cat([combined.hidden,
                                                     state.hidden[:, len(seq) :]], 1),
                                   mask=torch.cat([combined.mask, state.mask[:, len(seq) :]], 1),
                                   layer=layer)
                logits = llm.upper(whole, logits_at=whole.last_positions())
                torch.testing.assert_close(cached[index][row], logits[0, 0], **TOL)
                next_token = int(logits[0, 0].argmax())
                assert int(generated[row, index]) == next_token
                context.append(next_token)


def test_the_contract_fails_a_pooling_combiner_that_drops_memory_or_changes_dtype(unshrunk):
    """A pooling combiner opts out of the insertion check only; the shape, dtype and
    input checks, and that real memory reaches the output, still hold for it."""
    contract = CombinerContract()
    contract.hidden_size = 8

    class IgnoresMemory:
        uses_token_states = False

        def combine(self, query, memory):
            return LayerState(hidden=query.hidden.clone(), mask=query.mask.clone(),
                              layer=query.layer)

    class AddsMeanInFloat64:
        uses_token_states = False

        def combine(self, query, memory):
            weight = memory.mask.unsqueeze(-1).double()
            mean = (memory.hidden.double() * weight).sum(1) / weight.sum(1).clamp(min=1)
            return LayerState(hidden=query.hidden.double() + mean.unsqueeze(1),
                              mask=query.mask.clone(), layer=query.layer)

    with pytest.raises(AssertionError, match="changed nothing"):
        contract.test_real_memory_reaches_the_output(IgnoresMemory())
    with pytest.raises(AssertionError, match="float64 out"):
        contract.test_keeps_layer_batch_width_dtype_and_its_inputs(AddsMeanInFloat64())


def test_the_contract_fails_a_combiner_that_leaves_a_bfloat16_query_in_float32(unshrunk):
    """On CUDA the query's layer-L state is bfloat16 (the model's default there) and a memory
    built on a CPU holds float32 keys; a combiner that makes a float32 tensor of its own, or
    joins the memory uncast, hands the upper half float32 states, which a bfloat16 model
    refuses. The contract drew float32 only, so both passed (a fresh-eyes reviewer's)."""
    contract = CombinerContract()
    contract.hidden_size = 8

    class AddsAFloat32Separator:
        uses_token_states = False

        def combine(self, query, memory):
            hidden = memory.hidden.to(query.hidden.dtype).masked_fill(
                ~memory.mask.unsqueeze(-1), 0.0)
            separator = torch.zeros(query.batch_size, 1, query.hidden.shape[2])  # float32
            return LayerState(
                hidden=torch.cat([query.hidden, separator, hidden], 1),
                mask=torch.cat([query.mask, memory.mask.any(1, keepdim=True), memory.mask], 1),
                layer=query.layer)

    class JoinsTheMemoryUncast:
        uses_token_states = False

        def combine(self, query, memory):
            hidden = memory.hidden.masked_fill(~memory.mask.unsqueeze(-1), 0.0)
            return LayerState(hidden=torch.cat([query.hidden, hidden], 1),
                              mask=torch.cat([query.mask, memory.mask], 1), layer=query.layer)

    for combiner in (AddsAFloat32Separator(), JoinsTheMemoryUncast()):
        with pytest.raises(AssertionError, match=r"torch.bfloat16 in, torch.float32 out"):
            contract.test_keeps_layer_batch_width_dtype_and_its_inputs(combiner)
