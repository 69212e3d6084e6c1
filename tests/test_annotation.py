"""Eq. 5 annotation: exact against full forwards, shared = plain, batched = one at a time."""

import pytest
import torch
from hypothesis import example, given, strategies as st

from automr.annotation import UpperAnnotator, deltas, labels
from automr.annotation.likelihood import common_prefix
from automr.combiners import AppendToken, Concat, PrependToken, pad_memory
from automr.errors import AutomrError
from automr.interfaces import MemoryTokens
from automr.llm import HFSplitLLM
from automr.state import LayerState
from automr.testing.strategies import element_memories
from automr.testing.tiny import TINY_VOCAB, tiny_config, tiny_model

token = st.integers(3, TINY_VOCAB - 1)
ids = st.lists(token, min_size=1, max_size=6)


def full_logprob(model, before: list[int], target: list[int]) -> float:
    """The plain computation: log P(target | before) from one full forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([before + target])).logits[0]
    logp = torch.log_softmax(logits, -1)
    return float(sum(logp[len(before) - 1 + j, t] for j, t in enumerate(target)))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3_5_text"])
@pytest.mark.parametrize("combiner", [PrependToken(), AppendToken()])
@given(prompt=ids, target=ids, elements=st.lists(token, min_size=0, max_size=5),
       batch=st.integers(1, 4), share=st.booleans())
def test_layer_zero_elements_equal_extra_prompt_tokens(tiny_models, arch, combiner, prompt,
                                                      target, elements, batch, share):
    """At layer 0 an element that is a token's embedding acts exactly like that token."""
    model = tiny_models[arch]
    llm = HFSplitLLM(model)
    embedded = llm.embed(torch.tensor([elements], dtype=torch.long))[0]
    memory = MemoryTokens(hidden=embedded[:, None], mask=torch.ones(len(elements), 1,
                                                                    dtype=torch.bool))
    annotator = UpperAnnotator(llm, 0, combiner, element_batch=batch, share_prompt=share)
    base, scores = annotator.log_likelihoods(torch.tensor(prompt), torch.tensor(target), memory)
    assert float(base) == pytest.approx(full_logprob(model, prompt, target), abs=1e-4)
    for element, score in zip(elements, scores.tolist(), strict=True):
        before = [element, *prompt] if isinstance(combiner, PrependToken) else [*prompt, element]
        assert score == pytest.approx(full_logprob(model, before, target), abs=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3_5_text"])
@pytest.mark.parametrize("combiner", [PrependToken(), AppendToken(), Concat()])
@given(prompt=ids, target=ids, elements=st.lists(st.lists(token, min_size=1, max_size=3),
                                                 min_size=1, max_size=4), share=st.booleans())
def test_masked_slots_of_shorter_elements_are_invisible(tiny_models, arch, combiner, prompt,
                                                        target, elements, share):
    """Elements of several vectors, padded to the longest with masked slots (pad_memory): at
    layer 0 each scores as its tokens written into the prompt, whatever follows it."""
    model = tiny_models[arch]
    llm = HFSplitLLM(model)
    memory = pad_memory([llm.embed(torch.tensor([tokens]))[0] for tokens in elements])
    annotator = UpperAnnotator(llm, 0, combiner, share_prompt=share)
    _, scores = annotator.log_likelihoods(torch.tensor(prompt), torch.tensor(target), memory)
    for tokens, score in zip(elements, scores.tolist(), strict=True):
        before = [*prompt, *tokens] if isinstance(combiner, AppendToken) else [*tokens, *prompt]
        assert score == pytest.approx(full_logprob(model, before, target), abs=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3_5_text"])
@given(prompt=ids, target=ids, layer=st.integers(0, 3), mem=st.integers(0, 6),
       batch=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_shared_prompt_path_equals_the_plain_path(tiny_models, arch, prompt, target, layer, mem,
                                                 batch, seed):
    llm = HFSplitLLM(tiny_models[arch])
    generator = torch.Generator().manual_seed(seed)
    memory = MemoryTokens(hidden=torch.randn(mem, 1, llm.hidden_size, generator=generator),
                          mask=torch.ones(mem, 1, dtype=torch.bool))
    args = (torch.tensor(prompt), torch.tensor(target), memory)
    fast = UpperAnnotator(llm, layer, AppendToken(), element_batch=batch).annotate(*args)
    plain = UpperAnnotator(llm, layer, AppendToken(), element_batch=1,
                           share_prompt=False).annotate(*args)
    assert fast.base == pytest.approx(plain.base, abs=1e-5)
    torch.testing.assert_close(fast.with_element, plain.with_element, rtol=1e-4, atol=1e-4)


def naive_concat(llm: HFSplitLLM, layer: int, prompt: list[int], target: list[int],
                 memory: MemoryTokens) -> list[float]:
    """The naive way: per element, the lower half over ``[prompt, target]``, the element's row
    (its mask as drawn) combined before the prompt, and a full upper-half forward (logits at
    every position)."""
    ids = torch.tensor([prompt + target])
    out = []
    with torch.no_grad():
        lowered = llm.lower(ids, torch.ones_like(ids, dtype=torch.bool), layer)
        n = len(prompt)
        query = LayerState(hidden=lowered.hidden[:, :n], mask=lowered.mask[:, :n], layer=layer)
        for m in range(memory.hidden.shape[0]):
            row = MemoryTokens(hidden=memory.hidden[m : m + 1], mask=memory.mask[m : m + 1])
            combined = Concat().combine(query, row)
            full = LayerState(hidden=torch.cat([combined.hidden, lowered.hidden[:, n:]], 1),
                              mask=torch.cat([combined.mask, lowered.mask[:, n:]], 1),
                              layer=layer)
            logp = torch.log_softmax(llm.upper(full)[0].float(), -1)
            start = combined.seq_len - 1
            out.append(float(sum(logp[start + j, t] for j, t in enumerate(target))))
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3_5_text"])
@given(prompt=ids, target=ids, layer=st.integers(0, 3), batch=st.integers(1, 4),
       memory=element_memories(hidden=32), min_shared=st.sampled_from([1, 2, 8]))
def test_concat_fast_path_equals_a_full_upper_forward_per_element(
        tiny_models, arch, prompt, target, layer, batch, memory, min_shared):
    """Elements of mixed lengths with holes, a bit-identical shared prefix run once through a
    KV cache (when at least ``min_shared`` long), length-sorted batches: the same
    log-likelihoods as the naive way."""
    llm = HFSplitLLM(tiny_models[arch])
    assert memory.hidden.shape[2] == llm.hidden_size
    fast = UpperAnnotator(llm, layer, Concat(), element_batch=batch,
                          min_shared=min_shared).annotate(
        torch.tensor(prompt), torch.tensor(target), memory)
    naive = naive_concat(llm, layer, prompt, target, memory)
    assert fast.with_element.shape == (len(naive),)
    torch.testing.assert_close(fast.with_element, torch.tensor(naive), rtol=0, atol=1e-4)


def test_concat_fast_path_keeps_the_order_of_long_elements_with_holes():
    """Elements past 16 slots, as real token states are: their real vectors are packed to the
    front in order (torch's unstable sort reorders rows of 17 slots and more on the CPU, by up
    to 1.4 nats here; the property test above draws at most 9 slots)."""
    model = tiny_model(tiny_config("llama", num_layers=3, initializer_range=0.5))
    llm = HFSplitLLM(model)
    generator = torch.Generator().manual_seed(1)
    mask = torch.rand(3, 30, generator=generator) < 0.7
    mask[:, 0] = True
    memory = MemoryTokens(hidden=torch.randn(3, 30, llm.hidden_size, generator=generator),
                          mask=mask)
    prompt, target = [5, 9, 11, 4], [7, 8, 3]
    fast = UpperAnnotator(llm, 2, Concat(), element_batch=2).annotate(
        torch.tensor(prompt), torch.tensor(target), memory)
    torch.testing.assert_close(fast.with_element,
                               torch.tensor(naive_concat(llm, 2, prompt, target, memory)),
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3_5_text"])
@given(prompt=ids, target=ids, head=st.lists(token, max_size=3),
       elements=st.lists(st.lists(token, max_size=3), max_size=4), batch=st.integers(1, 4),
       min_shared=st.sampled_from([1, 8]))
# equal vectors after the first differing one are no shared prefix
@example(prompt=[5], target=[6], head=[], elements=[[5, 7], [6, 7]], batch=2, min_shared=1)
def test_concat_at_layer_zero_equals_the_element_tokens_written_first(
        tiny_models, arch, prompt, target, head, elements, batch, min_shared):
    """At layer 0 an element made of token embeddings (sharing ``head``, so with
    ``min_shared=1`` the prefix cache runs) acts exactly like those tokens written before the
    prompt, by the model's own forward."""
    model = tiny_models[arch]
    llm = HFSplitLLM(model)
    rows = [llm.embed(torch.tensor([head + own], dtype=torch.long))[0] for own in elements]
    width = max((r.shape[0] for r in rows), default=0)
    memory = MemoryTokens(hidden=torch.zeros(len(rows), width, llm.hidden_size),
                          mask=torch.zeros(len(rows), width, dtype=torch.bool))
    for index, r in enumerate(rows):
        memory.hidden[index, : r.shape[0]] = r
        memory.mask[index, : r.shape[0]] = True
    with torch.no_grad():
        scores = UpperAnnotator(llm, 0, Concat(), element_batch=batch,
                                min_shared=min_shared).annotate(
            torch.tensor(prompt), torch.tensor(target), memory).with_element
    for own, score in zip(elements, scores.tolist(), strict=True):
        assert score == pytest.approx(full_logprob(model, head + own + prompt, target),
                                      abs=1e-4)


def test_common_prefix_counts_bit_identical_leading_vectors():
    a = torch.arange(12.0).reshape(4, 3)
    b = a.clone()
    b[2, 1] += 1e-6
    assert common_prefix(pad_memory([a, b])) == 2
    assert common_prefix(pad_memory([a, a[:3]])) == 3
    assert common_prefix(pad_memory([a])) == 0
    assert common_prefix(pad_memory([a, a[:0]])) == 0
    assert common_prefix(pad_memory([a, torch.zeros(4, 3)])) == 0
    holed = MemoryTokens(hidden=torch.stack([a, torch.cat([a[:1], b[2:3], a[1:3]])]),
                         mask=torch.tensor([[True] * 4, [True, False, True, True]]))
    assert common_prefix(holed) == 3  # the masked vector is skipped, not compared


@given(base=st.floats(-30, 0), values=st.lists(st.floats(-30, 0), min_size=1, max_size=8),
       temperature=st.floats(0.01, 10))
def test_labels_are_distributions_ordered_like_the_deltas(base, values, temperature):
    with_element = torch.tensor(values)
    for form in ("paper", "log"):
        s = labels(base, with_element, form, temperature)
        assert float(s.sum()) == pytest.approx(1.0, abs=1e-5)
        d = deltas(base, with_element, form)
        order = torch.argsort(d, stable=True)
        assert (s[order][1:] >= s[order][:-1] - 1e-7).all()



def test_deltas_are_eq5_differences_of_probabilities_or_log_probabilities():
    """Hand-computed: P(y | z_t) = 0.2; with the elements 0.5 and 0.1. The ordering test
    above cannot see a constant added to every delta (softmax ignores it)."""
    import math

    base, with_element = math.log(0.2), torch.tensor([math.log(0.5), math.log(0.1)])
    torch.testing.assert_close(deltas(base, with_element, "paper"),
                               torch.tensor([0.3, -0.1], dtype=torch.float64))
    torch.testing.assert_close(deltas(base, with_element, "log"),
                               torch.tensor([math.log(2.5), math.log(0.5)], dtype=torch.float64))
    torch.testing.assert_close(labels(base, with_element, "log", 2.0),
                               torch.tensor([2.5**0.5, 0.5**0.5]).double() / (2.5**0.5 + 0.5**0.5))


@given(base=st.floats(-300, -20), gaps=st.lists(st.floats(-3, 3), min_size=1, max_size=8))
def test_paper_deltas_of_long_titles_are_the_plain_float64_differences(base, gaps):
    """A long title's P(y) is below float32's range (log P(y) < -103): its deltas were
    returned in float32, every one of them 0, as if no element changed anything."""
    import math

    with_element = torch.tensor([base + g for g in gaps])  # float32, as annotation stores it
    expected = torch.tensor([math.exp(v) - math.exp(base) for v in with_element.tolist()],
                            dtype=torch.float64)
    torch.testing.assert_close(deltas(base, with_element, "paper"), expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_a_temperature_that_is_not_positive_and_finite_is_refused(temperature):
    """NaN gave NaN labels (refused later as 'targets must be finite', naming no temperature)
    and inf uniform ones, silently: a retriever trained on them learns nothing."""
    with pytest.raises(AutomrError, match="positive and finite"):
        labels(-5.0, torch.tensor([-4.0, -6.0]), "log", temperature)

def test_paper_form_is_near_uniform_for_long_targets():
    """Products of many token probabilities are tiny, so softmax(delta) is nearly uniform."""
    s = labels(-25.0, torch.tensor([-20.0, -24.0, -30.0]), "paper", 1.0)
    assert (s - 1 / 3).abs().max() < 1e-6
    sharp = labels(-25.0, torch.tensor([-20.0, -24.0, -30.0]), "log", 1.0)
    assert sharp.argmax() == 0 and sharp.max() > 0.9


@example(base=-20.0, gaps=[0.0, 0.0])  # every delta is 0: the deltas have no scale
@example(base=-120.0, gaps=[0.0, -1.0, 2.0])
@given(base=st.floats(-300, -20), gaps=st.lists(st.floats(-3, 3), min_size=2, max_size=8))
def test_paper_labels_at_the_deltas_scale_are_the_plain_float64_softmax(base, gaps):
    """With the deltas' own scale as temperature, S' keeps its shape however small the
    products are (log P(y) of -120 is below float32's range). When every element leaves
    P(y) unchanged (all deltas 0) that scale is 0, which is refused as a temperature, and
    at any temperature S' is uniform, as the plain softmax of zeros."""
    import math

    with_element = torch.tensor([base + g for g in gaps])  # float32, as annotation stores it
    plain = with_element.double().exp() - math.exp(base)
    scale = float(plain.abs().max())
    if scale == 0.0:
        with pytest.raises(AutomrError, match="positive"):
            labels(base, with_element, "paper", scale)
    temperature = scale if scale > 0.0 else 1.0
    expected = torch.softmax(plain / temperature, 0)
    got = labels(base, with_element, "paper", temperature)
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("combiner", "n_prompt"),
                         [(AppendToken(), 510), (Concat(), 510), (AppendToken(), 512)])
def test_a_fast_path_whose_cache_would_cross_longrope_switch_runs_plain(tiny_models, combiner,
                                                                         n_prompt):
    """MiniCPM3 (and Phi-3 128k) rotate every position with longrope's long factors once a
    sequence passes the original context (512 in the tiny model): the split refuses to continue
    a cache across it, and annotation stopped there (``automr annotate`` on MiniCPM3 with a
    concat memory); a fast path that would cross runs the plain way, with its scores. A
    prompt of exactly 512 fills the original context: its cache crosses too."""
    llm = HFSplitLLM(tiny_models["minicpm3"])
    assert llm.longrope_switch == 512
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, TINY_VOCAB, (n_prompt,), generator=generator)
    target = torch.tensor([7, 9, 11])
    width = 1 if isinstance(combiner, AppendToken) else 20
    hidden = torch.randn(3, width, llm.hidden_size, generator=generator)
    hidden[:, : width // 2] = hidden[:1, : width // 2]  # a shared prefix: cached once
    memory = MemoryTokens(hidden=hidden, mask=torch.ones(3, width, dtype=torch.bool))
    fast, plain = (UpperAnnotator(llm, 2, combiner, min_shared=1, share_prompt=share).annotate(
        prompt, target, memory) for share in (True, False))
    assert fast.with_element.tolist() == plain.with_element.tolist()


def test_an_annotator_refuses_a_wrong_part_at_construction(tiny_models):
    """A bare model for the split LM, a combiner by name or class, and an element batch of 0 or
    -1 were accepted; annotating then failed with AttributeError ('LlamaForCausalLM' object
    has no attribute 'lower'; 'str' object has no attribute 'combine'), TypeError, or
    ValueError (range() arg 3 must not be zero; torch.cat(): expected a non-empty list)."""
    model = tiny_models["llama"]
    llm = HFSplitLLM(model)
    for wrong in (dict(llm=model), dict(combiner="concat"), dict(combiner=Concat)):
        with pytest.raises(AutomrError, match=f"the {next(iter(wrong))} is "):
            UpperAnnotator(**{"llm": llm, "layer": 1, "combiner": Concat(), **wrong})
    for batch in (0, -1):
        with pytest.raises(ValueError, match="element_batch"):
            UpperAnnotator(llm, 1, Concat(), element_batch=batch)
    UpperAnnotator(llm, 1, Concat(), element_batch=1)


@pytest.mark.parametrize("built_in", [AppendToken, PrependToken, Concat])
def test_a_subclass_of_a_built_in_combiner_is_annotated_with_its_own_combine(tiny_models,
                                                                             built_in):
    """The fast paths were picked by isinstance and never call combine: a user's subclass
    that combines otherwise (here: each row with the next row's element) got the built-in
    layout's labels."""
    import attrs

    @attrs.frozen
    class Shifted(built_in):
        def combine(self, query, memory):
            return super().combine(query, attrs.evolve(memory, hidden=memory.hidden.roll(1, 0)))

    llm = HFSplitLLM(tiny_models["llama"])
    memory = MemoryTokens(hidden=llm.embed(torch.tensor([[3, 20, 40]]))[0][:, None],
                          mask=torch.ones(3, 1, dtype=torch.bool))
    args = (torch.tensor([5, 6, 7]), torch.tensor([8, 9]), memory)
    got = UpperAnnotator(llm, 0, Shifted()).annotate(*args).with_element
    plain = UpperAnnotator(llm, 0, Shifted(), share_prompt=False).annotate(*args).with_element
    torch.testing.assert_close(got, plain, rtol=0, atol=1e-5)
    built = UpperAnnotator(llm, 0, built_in()).annotate(*args).with_element
    torch.testing.assert_close(got, built.roll(1, 0), rtol=0, atol=1e-5)
    assert (got - built).abs().max() > 1e-3  # the shift matters


def test_a_combiner_that_returns_no_layer_state_is_refused_in_one_line(tiny_models):
    """A user's combiner returning its query's tensor failed deep in the upper half
    (AttributeError: 'Tensor' object has no attribute 'hidden'; the public-API review)."""
    import attrs

    @attrs.frozen
    class Bare:
        uses_token_states = False

        def combine(self, query, memory):
            return query.hidden

    llm = HFSplitLLM(tiny_models["llama"])
    memory = MemoryTokens(hidden=llm.embed(torch.tensor([[3, 20]]))[0][:, None],
                          mask=torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(AutomrError, match=r"Bare\.combine gave a Tensor, not a LayerState"):
        UpperAnnotator(llm, 0, Bare()).annotate(torch.tensor([5, 6, 7]), torch.tensor([8, 9]),
                                                memory)
