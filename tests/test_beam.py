"""Beam search through the split: greedy at one beam, exact log-probs under a trie, and the
fast search equal to the plain reference (tries, memory inserts, padding, shared headers)."""

import pytest
import torch
from hypothesis import example, given, strategies as st

from automr.combiners import COMBINERS
from automr.interfaces import MemoryTokens
from automr.llm import HFSplitLLM
from automr.llm.beam import TokenTrie, beam_search, reference_beam_search
from automr.llm.decoding import greedy_generate, prefill, step
from automr.testing.strategies import masks, pad_sequences, padding_sides
from automr.testing.tiny import TINY_VOCAB

EOS = 2
ARCHS = ["llama", "qwen2", "qwen3_5_text", "qwen3_5_moe_text", "qwen3_next", "deepseek_v3",
         "minicpm3", "mamba2", "mamba"]
"""Llama, an untied head with biases, and the hybrids with recurrent layers (their states
are selected, repeated and reserved with the keys and values); multi-head latent attention,
whose caches hold a compressed latent and one rotary key per position, of other widths, in
place of keys and values (DeepSeek-V3; MiniCPM3, its head's input scaled too); Mamba2 and
Mamba, recurrent states alone (no keys and values at all)."""
token = st.integers(min_value=3, max_value=TINY_VOCAB - 1)


def sequence_logprob(model, prompt: list[int], continuation: list[int]) -> float:
    """The plain computation: sum of log P(continuation | prompt) from one full forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + continuation])).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    start = len(prompt) - 1
    return float(sum(logp[start + i, tok] for i, tok in enumerate(continuation)))


@pytest.mark.parametrize("arch", ARCHS)
@given(prompt=st.lists(token, min_size=1, max_size=6), layer=st.integers(0, 3))
def test_one_beam_is_greedy(tiny_models, arch, prompt, layer):
    llm = HFSplitLLM(tiny_models[arch])
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)
    [hyps] = beam_search(llm, ids, mask, layer, num_beams=1, max_new_tokens=5, eos_token_id=EOS)
    greedy = greedy_generate(llm, ids, mask, layer, max_new_tokens=5, eos_token_id=EOS)[0]
    assert list(hyps[0].tokens) == greedy.tolist()[: len(hyps[0].tokens)]
    nothing = greedy_generate(llm, ids, mask, layer, max_new_tokens=0, eos_token_id=EOS)
    assert nothing.shape == (1, 0) and nothing.dtype == ids.dtype


@given(prompts=st.lists(st.lists(token, min_size=1, max_size=5), min_size=2, max_size=3),
       layer=st.integers(0, 3), data=st.data())
def test_greedy_stops_at_any_of_several_ids_and_pads_with_the_first(tiny_models, prompts,
                                                                     layer, data):
    """With several stop ids, a row finishes at any of them and is then padded with the first;
    decoding ends once every row has finished. The plain computation: each row's free greedy
    tokens cut after its first stop."""
    llm = HFSplitLLM(tiny_models["qwen2"])
    ids, mask = pad_sequences(prompts, data.draw(padding_sides(len(prompts))), pad_id=EOS)
    steps = 6
    free = greedy_generate(llm, ids, mask, layer, max_new_tokens=steps).tolist()
    # stops: a token no row writes (padding), then tokens the rows do write early on
    unused = next(t for t in range(3, TINY_VOCAB) if all(t not in row for row in free))
    stops = [unused, *data.draw(st.lists(st.sampled_from([t for row in free for t in row[:3]]),
                                         min_size=1, max_size=3), label="stops")]
    ends = [next((i + 1 for i, t in enumerate(row) if t in stops), steps) for row in free]
    width = max(ends)
    expected = [row[:end] + [unused] * (width - end) for row, end in zip(free, ends, strict=True)]
    generated = greedy_generate(llm, ids, mask, layer, max_new_tokens=steps, eos_token_id=stops)
    assert generated.tolist() == expected


@pytest.mark.parametrize("arch", ARCHS)
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


HEADER = [5, 9, 14, 20, 7, 7, 31, 40, 12, 3]  # a shared prompt header (>= MIN_SHARED tokens)


@st.composite
def search_inputs(draw):
    """Prompts (some sharing a header, each padded on its own side), titles for a trie (or
    none; from a few tokens, so that they share prefixes and end in many places), a beam
    count and a split layer."""
    header = draw(st.sampled_from([[], HEADER[:8], HEADER]))
    prompts = draw(st.lists(st.lists(token, min_size=1, max_size=5), min_size=1, max_size=3))
    prompts = [header + p for p in prompts]
    letters = draw(st.sampled_from([token, st.integers(3, 10)]))  # few: titles share prefixes
    titles = draw(st.none() | st.lists(st.lists(letters, min_size=1, max_size=3), min_size=1,
                                       max_size=16, unique_by=tuple))
    sides = draw(padding_sides(len(prompts)))
    return prompts, sides, titles, draw(st.integers(1, 5)), draw(st.integers(0, 3))


def assert_same_beams(fast, reference):
    assert [[h.tokens for h in hyps] for hyps in fast] == \
        [[h.tokens for h in hyps] for hyps in reference]
    for hyps, ref in zip(fast, reference, strict=True):
        for h, r in zip(hyps, ref, strict=True):
            assert h.logprob == pytest.approx(r.logprob, abs=1e-4)


@st.composite
def memory_draws(draw):
    """What a memory insert is made of, for up to 3 prompts: a token count, the seed of its
    states and its mask (each batch takes its prompts' rows)."""
    n = draw(st.integers(0, 2))
    return n, draw(st.integers(0, 2**32 - 1)), draw(masks(3, n))


def competing_eos(logits: torch.Tensor, titles, rank: int | None) -> int:
    """EOS itself (``rank`` None) or the token at ``rank`` among those the model ranks highest
    after any prompt (none of the titles' tokens): an end of sequence the beams compete with."""
    if rank is None:
        return EOS
    used = {t for title in titles or [] for t in title}
    order = logits.float().log_softmax(-1).amax(0).argsort(descending=True).tolist()
    return [t for t in order if t not in used][rank]


# the trie's candidates include each prompt's 2 * beams best edges: a beam ending on EOS
# leaves its prompt a live beam to follow (title (4,) here) as the reference does
SHORT_TITLES = ([[3]], ["left"], [[3], [4], [3, 3]], 2, 0)
# a live beam whose only way on is EOS (after title (3,)) while the other prompt branches
ONLY_EOS = ([[3], [7, 8, 9]], ["left", "right"], [[3], [4], [4, 5, 6], [4, 5, 7], [7]], 2, 1)


@pytest.mark.parametrize("arch", ARCHS)
@given(inputs=search_inputs(), kind=st.sampled_from([None, *sorted(COMBINERS)]),
       share=st.booleans(), steps=st.integers(1, 5), memory=memory_draws(),
       eos_rank=st.sampled_from([0, 1, 2, None]), open_end=st.booleans())
@example(inputs=SHORT_TITLES, kind=None, share=False, steps=2, memory=(0, 0, None),
         eos_rank=None, open_end=False)
@example(inputs=ONLY_EOS, kind=None, share=False, steps=3, memory=(0, 0, None), eos_rank=None,
         open_end=False)
@example(inputs=ONLY_EOS, kind=None, share=True, steps=4, memory=(0, 0, None), eos_rank=0,
         open_end=False)
# a trie holding (3, 3) alone, without EOS: its one beam can never finish, in one pass or not
@example(inputs=([[3], [3]], ["left", "left"], [[3, 3]], 1, 0), kind=None, share=False,
         steps=2, memory=(0, 0, None), eos_rank=0, open_end=True)
def test_fast_search_equals_the_reference(tiny_models, arch, inputs, kind, share, steps, memory,
                                          eos_rank, open_end):
    """Batched beams in blocks of live rows, reserved caches, the shared header run once:
    the same hypotheses as the plain search, with and without a trie and a memory insert,
    with an EOS the model ranks high (so that ending competes with going on), and with
    ``open_end`` a trie whose longest sequence does not end with EOS (it never completes)."""
    prompts, sides, titles, beams, layer = inputs
    llm = HFSplitLLM(tiny_models[arch])
    ids, mask = pad_sequences(prompts, sides, pad_id=EOS)
    insert = None
    if kind is not None:
        n, seed, real = memory
        hidden = torch.randn((len(prompts), n, llm.hidden_size),
                             generator=torch.Generator().manual_seed(seed))
        tokens = MemoryTokens(hidden=hidden, mask=real[: len(prompts)])
        combiner = COMBINERS[kind]()

        def insert(state):
            return combiner.combine(state, tokens)
    eos = competing_eos(prefill(llm, ids, mask, layer, insert).logits, titles, eos_rank)
    trie = None
    if titles is not None:
        sequences = [[*t, eos] for t in titles]
        if open_end:
            longest = max(range(len(titles)), key=lambda i: len(titles[i]))
            sequences[longest] = list(titles[longest])
        trie = TokenTrie(sequences, list(range(len(sequences))))
        steps = min(steps, max(map(len, sequences)))
    common = {"num_beams": beams, "max_new_tokens": steps, "eos_token_id": eos, "trie": trie,
              "insert": insert}
    reference = reference_beam_search(llm, ids, mask, layer, **common)
    fast = beam_search(llm, ids, mask, layer, share_prefix=share, **common)
    assert_same_beams(fast, reference)


@given(titles=st.lists(st.lists(token, min_size=1, max_size=4), min_size=1, max_size=12,
                       unique_by=tuple),
       walks=st.lists(st.lists(token | st.just(EOS), min_size=1, max_size=5), max_size=6))
def test_trie_nodes_follow_the_prefixes(titles, walks):
    """``mask``/``advance`` on node tensors say what ``allowed`` says of each prefix."""
    sequences = [[*t, EOS] for t in titles]
    trie = TokenTrie(sequences, list(range(len(sequences))))
    walks = walks + [s[:cut] for s in sequences for cut in range(len(s) + 1)]
    for walk in walks:
        node = torch.tensor([trie.root])
        for length in range(len(walk) + 1):
            allowed = trie.allowed(walk[:length])
            if length and not any(tuple(s[:length]) == tuple(walk[:length]) for s in sequences):
                assert int(node) == trie.dead
            mask = trie.mask(node, TINY_VOCAB)[0]
            assert torch.nonzero(mask == 0).flatten().tolist() == allowed
            assert bool((mask[mask != 0] == float("-inf")).all())
            if length < len(walk):
                node = trie.advance(node, torch.tensor([walk[length]]))


@pytest.mark.parametrize("arch", ARCHS)
@given(inputs=search_inputs(), data=st.data())
def test_reserved_decoding_equals_the_growing_cache(tiny_models, arch, inputs, data):
    """Prefill with the shared header, reserve, then steps that reorder rows among the rows
    of their prompt (tail only) or take any rows (every position): the plain way's logits."""
    prompts, sides, _, repeats, layer = inputs
    llm = HFSplitLLM(tiny_models[arch])
    ids, mask = pad_sequences(prompts, sides, pad_id=EOS)
    plain = prefill(llm, ids, mask, layer)
    plain.repeat_interleave(repeats)
    fast = prefill(llm, ids, mask, layer, share_prefix=True)
    fast.reserve(1, repeats=repeats)  # one spare position: later steps grow the buffers
    prompt_of = [r // repeats for r in range(len(prompts) * repeats)]
    for _ in range(data.draw(st.integers(1, 4), label="steps")):
        torch.testing.assert_close(fast.logits, plain.logits, rtol=1e-5, atol=1e-5)
        rows = len(prompt_of)
        picks = data.draw(st.lists(st.integers(0, rows - 1), min_size=1, max_size=rows + 2))
        if data.draw(st.booleans(), label="within prompts"):  # row r takes a row of its prompt
            indices = []
            for r, p in zip(range(rows), picks * rows, strict=False):
                same = [q for q in range(rows) if prompt_of[q] == prompt_of[r]]
                indices.append(same[p % len(same)])
            fast.select_beams(torch.tensor(indices))
        else:
            indices = picks
            fast.select(torch.tensor(indices))
            prompt_of = [prompt_of[i] for i in indices]
        plain.select(torch.tensor(indices))
        tokens = torch.tensor(data.draw(st.lists(token, min_size=len(indices),
                                                 max_size=len(indices))))
        step(llm, plain, tokens)
        step(llm, fast, tokens)
    torch.testing.assert_close(fast.logits, plain.logits, rtol=1e-5, atol=1e-5)
