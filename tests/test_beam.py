"""Beam search through the split: greedy at one beam, exact log-probs under a trie."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from automr.llm import HFSplitLLM
from automr.llm.beam import TokenTrie, beam_search
from automr.llm.decoding import greedy_generate
from automr.testing.tiny import TINY_VOCAB

EOS = 2
token = st.integers(min_value=3, max_value=TINY_VOCAB - 1)


def sequence_logprob(model, prompt: list[int], continuation: list[int]) -> float:
    """The plain computation: sum of log P(continuation | prompt) from one full forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + continuation])).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    start = len(prompt) - 1
    return float(sum(logp[start + i, tok] for i, tok in enumerate(continuation)))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@given(prompt=st.lists(token, min_size=1, max_size=6), layer=st.integers(0, 3))
def test_one_beam_is_greedy(tiny_models, arch, prompt, layer):
    llm = HFSplitLLM(tiny_models[arch])
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)
    [hyps] = beam_search(llm, ids, mask, layer, num_beams=1, max_new_tokens=5, eos_token_id=EOS)
    greedy = greedy_generate(llm, ids, mask, layer, max_new_tokens=5, eos_token_id=EOS)[0]
    assert list(hyps[0].tokens) == greedy.tolist()[: len(hyps[0].tokens)]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@given(
    prompts=st.lists(st.lists(token, min_size=1, max_size=5), min_size=1, max_size=2),
    titles=st.lists(st.lists(token, min_size=1, max_size=3), min_size=1, max_size=5,
                    unique_by=tuple),
    layer=st.integers(0, 3),
)
def test_trie_beams_are_exact_and_complete(tiny_models, arch, prompts, titles, layer):
    """With as many beams as titles, every title comes back with its exact log-probability."""
    model = tiny_models[arch]
    llm = HFSplitLLM(model)
    sequences = [[*t, EOS] for t in titles]  # a title may be a prefix of another
    trie = TokenTrie(sequences, list(range(len(sequences))))
    width = max(map(len, prompts))
    ids = torch.tensor([[EOS] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    results = beam_search(llm, ids, mask, layer, num_beams=len(sequences), eos_token_id=EOS,
                          max_new_tokens=max(map(len, sequences)), trie=trie)
    for prompt, hyps in zip(prompts, results, strict=True):
        assert sorted(h.tokens for h in hyps) == sorted(tuple(s) for s in sequences)
        assert [h.logprob for h in hyps] == sorted((h.logprob for h in hyps), reverse=True)
        for h in hyps:
            expected = sequence_logprob(model, prompt, list(h.tokens))
            assert h.logprob == pytest.approx(expected, abs=1e-4)
