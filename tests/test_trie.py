"""The token trie answers exactly what the plain computation over the stored sequences says:
the next tokens of every sequence sharing a prefix, the value of a complete sequence, and,
per node, whether one sequence alone passes through it and the rest of that sequence."""

import pytest
import torch
from hypothesis import example, given, strategies as st

from automr.llm.trie import TokenTrie

# few letters, short sequences: prefixes are shared, and some sequences are prefixes of others
letters = st.sampled_from([0, 1, 2, 7, 300, 50_000])
stored = st.lists(st.lists(letters, max_size=6).map(tuple), max_size=24, unique=True)
walks = st.lists(st.lists(letters | st.integers(0, 60_000), max_size=7), max_size=8)


def next_tokens(sequences, prefix) -> list[int]:
    """The plain computation: the token after ``prefix`` in every sequence that extends it."""
    n = len(prefix)
    return sorted({s[n] for s in sequences if len(s) > n and tuple(s[:n]) == tuple(prefix)})


def through(sequences, prefix) -> list[int]:
    n = len(prefix)
    return [i for i, s in enumerate(sequences) if tuple(s[:n]) == tuple(prefix)]


def prefixes(sequences, extra):
    return [list(p) for p in extra] + [list(s[:cut]) for s in sequences
                                        for cut in range(len(s) + 1)]


@given(sequences=stored, extra=walks, offset=st.integers(-5, 5))
def test_allowed_and_value_are_the_plain_computation(sequences, extra, offset):
    values = [10 * i + offset for i in range(len(sequences))]
    trie = TokenTrie(sequences, values)
    assert len(trie) == len(sequences)
    for prefix in prefixes(sequences, extra):
        assert trie.allowed(prefix) == next_tokens(sequences, prefix)
        expected = values[sequences.index(tuple(prefix))] if tuple(prefix) in sequences else None
        assert trie.value(prefix) == expected


@given(sequences=stored, extra=walks)
# 15 = 8 + 7: past the largest token (7) a node * 8 + token key may be another node's edge
@example(sequences=[(7,), (0, 7)], extra=[[15]])
def test_nodes_are_the_plain_computation(sequences, extra):
    """Walking node tensors with ``advance``: ``mask`` gives the next tokens, a prefix no
    sequence starts with is the dead node, and ``completions`` finds the one sequence left."""
    trie = TokenTrie(sequences, list(range(len(sequences))))
    for walk in prefixes(sequences, extra):
        node = torch.tensor([trie.root])
        for length in range(len(walk) + 1):
            prefix = walk[:length]
            if length:
                node = trie.advance(node, torch.tensor([walk[length - 1]]))
            sharing = through(sequences, prefix)
            if length and not sharing:
                assert int(node) == trie.dead
            vocab = 60_001
            allowed = torch.nonzero(trie.mask(node, vocab)[0] == 0).flatten().tolist()
            assert allowed == next_tokens(sequences, prefix)
            unique, rest, lengths = trie.completions(node)
            assert bool(unique) == (len(sharing) == 1)
            if len(sharing) == 1:
                tail = list(sequences[sharing[0]][length:])
                assert rest[0, : int(lengths)].tolist() == tail
                assert bool((rest[0, int(lengths):] == -1).all())


@given(sequences=stored.filter(bool), data=st.data())
def test_a_sequence_stored_twice_is_refused(sequences, data):
    twice = data.draw(st.sampled_from(sequences))
    with pytest.raises(ValueError, match="stored twice"):
        TokenTrie([*sequences, twice], list(range(len(sequences) + 1)))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="one value per sequence"):
        TokenTrie([(1, 2)], [])
    for bad in (-2, -1):  # -1 is the padding of the trie's arrays
        with pytest.raises(ValueError, match=">= 0"):
            TokenTrie([(1, bad)], [0])


def test_nodes_are_linear_in_the_tokens():
    """One node per distinct prefix (shared prefixes once), not one per (title, cut)."""
    titles = [(5, 6, *range(100, 100 + n)) for n in range(1, 30)]
    trie = TokenTrie(titles, list(range(len(titles))))
    distinct = {t[:cut] for t in titles for cut in range(len(t) + 1)}
    assert trie.dead == len(distinct)


def test_what_a_trie_keeps_follows_the_tokens_not_the_longest_title():
    """Titles were padded to the longest: one junk title of 5,000 tokens among 2,000 short
    ones (Amazon metadata has them) kept 2,001 x 5,001 tokens, not ~11,000."""
    import attrs

    titles = [(i % 97, i // 97, 0) for i in range(2_000)] + [(500, *range(1, 5_000), 0)]
    trie = TokenTrie(titles, list(range(len(titles))))
    tokens = sum(map(len, titles))
    kept = sum(getattr(trie._cpu, field.name).numel() for field in attrs.fields(type(trie._cpu)))
    assert kept < 12 * tokens
    assert trie.value(titles[-1]) == len(titles) - 1
    unique, rest, lengths = trie.completions(trie.advance(torch.tensor([trie.root]),
                                                          torch.tensor([500])))
    assert bool(unique) and rest[0, : int(lengths)].tolist() == [*range(1, 5_000), 0]
