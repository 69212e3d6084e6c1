"""Eq. 5 annotation: exact against full forwards, shared = plain, batched = one at a time."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from automr.annotation import UpperAnnotator, deltas, labels
from automr.combiners import AppendToken, PrependToken
from automr.interfaces import MemoryTokens
from automr.llm import HFSplitLLM
from automr.testing.tiny import TINY_VOCAB

token = st.integers(3, TINY_VOCAB - 1)
ids = st.lists(token, min_size=1, max_size=6)


def full_logprob(model, before: list[int], target: list[int]) -> float:
    """The plain computation: log P(target | before) from one full forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([before + target])).logits[0]
    logp = torch.log_softmax(logits, -1)
    return float(sum(logp[len(before) - 1 + j, t] for j, t in enumerate(target)))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
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


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
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


def test_paper_form_is_near_uniform_for_long_targets():
    """Products of many token probabilities are tiny, so softmax(delta) is nearly uniform."""
    s = labels(-25.0, torch.tensor([-20.0, -24.0, -30.0]), "paper", 1.0)
    assert (s - 1 / 3).abs().max() < 1e-6
    sharp = labels(-25.0, torch.tensor([-20.0, -24.0, -30.0]), "log", 1.0)
    assert sharp.argmax() == 0 and sharp.max() > 0.9
