"""Grounders rank the whole catalog exactly as the plain computations say."""

import copy
import math
import typing

import attrs
import pytest
import torch
from hypothesis import given, settings, strategies as st

from automr.combiners import COMBINERS
from automr.grounding import (
    ConstrainedGrounder,
    L2Grounder,
    LikelihoodGrounder,
    build_grounder,
    catalog_embeddings,
    catalog_targets,
    dataset_targets,
    embed_texts,
    target_log_likelihoods,
)
from automr.interfaces import MemoryTokens
from automr.llm import HFSplitLLM, LayerState
from automr.llm.decoding import MIN_SHARED, common_prefix, greedy_generate
from automr.llm.loading import LoadedModel

TITLES = ['"Heat (1995)"', '"Heat (1996)"', '"Toy Story (1995)"', '"Up"', '"U"']
words = st.text(alphabet="abcdefgh ", min_size=1, max_size=8)


def encode_prompts(tokenizer, prompts):
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def plain_scores(model, tokenizer, prompt: str, targets) -> torch.Tensor:
    """log P(title + EOS | prompt) by one full forward per title."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    out = []
    for title in targets.token_ids:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt_ids + list(title)])).logits[0]
        logp = torch.log_softmax(logits, -1)
        out.append(sum(logp[len(prompt_ids) - 1 + j, t] for j, t in enumerate(title)))
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3_5_text"])
@given(prompts=st.lists(words, min_size=1, max_size=2), layer=st.integers(0, 3),
       chunk=st.integers(1, 5))
def test_likelihood_scores_equal_full_forwards(tiny_models, tokenizer, arch, prompts, layer,
                                               chunk):
    model = tiny_models[arch]
    targets = catalog_targets(tokenizer, TITLES)
    ids, mask = encode_prompts(tokenizer, prompts)
    scores = LikelihoodGrounder(targets, chunk_size=chunk).scores(HFSplitLLM(model), ids, mask,
                                                                  layer)
    for row, prompt in enumerate(prompts):
        torch.testing.assert_close(scores[row], plain_scores(model, tokenizer, prompt, targets),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3_5_text"])
@given(data=st.data(), prompts=st.lists(words, min_size=1, max_size=3), layer=st.integers(0, 3))
def test_target_log_likelihoods_equal_full_forwards(tiny_models, tokenizer, arch, data, prompts,
                                                    layer):
    """One batched pass over every row's own target = a full forward per prompt + target."""
    model = tiny_models[arch]
    targets = catalog_targets(tokenizer, TITLES)
    chosen = [data.draw(st.integers(0, len(TITLES) - 1)) for _ in prompts]
    ids, mask = encode_prompts(tokenizer, prompts)
    scores = target_log_likelihoods(HFSplitLLM(model), ids, mask, layer,
                                    [targets.token_ids[c] for c in chosen])
    for row, (prompt, c) in enumerate(zip(prompts, chosen, strict=True)):
        torch.testing.assert_close(scores[row], plain_scores(model, tokenizer, prompt, targets)[c],
                                   rtol=1e-4, atol=1e-4)


HEADER = "Below is what the user watched: "
"""A common opening of every prompt (as the template's), long enough to be run once."""


def prepend_two(state: LayerState) -> LayerState:
    """Two fixed vectors before every row (memory joined at the split layer)."""
    extra = torch.full((state.batch_size, 2, state.hidden.shape[2]), 0.5)
    return LayerState(hidden=torch.cat([extra, state.hidden], 1),
                      mask=torch.cat([torch.ones(state.batch_size, 2, dtype=torch.bool),
                                      state.mask], 1), layer=state.layer)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
@given(data=st.data(), prompts=st.lists(words, min_size=2, max_size=3), layer=st.integers(0, 3),
       inserted=st.booleans())
def test_target_log_likelihoods_run_the_shared_opening_once_and_equal_the_unshared(
        tiny_models, tokenizer, arch, data, prompts, layer, inserted):
    """With the prompts' common opening run once (the default), each row's likelihood is the
    one prompt by prompt gives, memory inserted or not, and without memory a full forward's."""
    model = tiny_models[arch]
    llm = HFSplitLLM(model)
    targets = catalog_targets(tokenizer, TITLES)
    chosen = [data.draw(st.integers(0, len(TITLES) - 1)) for _ in prompts]
    texts = [HEADER + prompt for prompt in prompts]
    ids, mask = encode_prompts(tokenizer, texts)
    rows = [row[real].tolist() for row, real in zip(ids, mask.bool(), strict=True)]
    assert common_prefix(rows) >= MIN_SHARED  # the shared pass is the one tested
    insert = prepend_two if inserted else None
    title_ids = [targets.token_ids[c] for c in chosen]
    shared = target_log_likelihoods(llm, ids, mask, layer, title_ids, insert)
    plain = target_log_likelihoods(llm, ids, mask, layer, title_ids, insert, share_prefix=False)
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-5)
    if not inserted:
        for row, (text, c) in enumerate(zip(texts, chosen, strict=True)):
            torch.testing.assert_close(shared[row], plain_scores(model, tokenizer, text,
                                                                 targets)[c],
                                       rtol=1e-4, atol=1e-4)


def plain_joined_scores(llm, prompt_ids, targets, layer, combiner, memory) -> torch.Tensor:
    """log P(title + EOS | prompt, memory) per title, without a cache: the lower half over
    ``[prompt, title]`` alone, ``memory`` joined to the prompt's states, the target's states
    after them, one upper-half forward (logits at every position)."""
    out = []
    with torch.no_grad():
        for title in targets.token_ids:
            ids = torch.tensor([prompt_ids + list(title)])
            lowered = llm.lower(ids, torch.ones_like(ids, dtype=torch.bool), layer)
            n = len(prompt_ids)
            query = LayerState(hidden=lowered.hidden[:, :n], mask=lowered.mask[:, :n],
                               layer=layer)
            joined = combiner.combine(query, memory)
            full = LayerState(hidden=torch.cat([joined.hidden, lowered.hidden[:, n:]], 1),
                              mask=torch.cat([joined.mask, lowered.mask[:, n:]], 1), layer=layer)
            logp = torch.log_softmax(llm.upper(full)[0].float(), -1)
            start = joined.seq_len - 1
            out.append(sum(logp[start + j, t] for j, t in enumerate(title)))
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["llama", "qwen3_5_text"])
@given(prompts=st.lists(words, min_size=1, max_size=3), layer=st.integers(0, 3),
       chunk=st.integers(1, 5), kind=st.sampled_from(sorted(COMBINERS)),
       width=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_likelihood_scores_with_memory_equal_a_plain_forward_per_title(
        tiny_models, tokenizer, arch, prompts, layer, chunk, kind, width, seed):
    """Memory joined at the split layer (each prompt its own row, prompts of other lengths
    left-padded beside it), titles scored in chunks against copies of the prompt's caches:
    each title's score is the one an uncached forward of that prompt alone gives."""
    llm = HFSplitLLM(tiny_models[arch])
    targets = catalog_targets(tokenizer, TITLES)
    ids, mask = encode_prompts(tokenizer, prompts)
    hidden = torch.randn(len(prompts), width, llm.hidden_size,
                         generator=torch.Generator().manual_seed(seed))
    memory = MemoryTokens(hidden=hidden, mask=torch.ones(len(prompts), width, dtype=torch.bool))
    combiner = COMBINERS[kind]()
    scores = LikelihoodGrounder(targets, chunk_size=chunk).scores(
        llm, ids, mask, layer, lambda state: combiner.combine(state, memory))
    for row, prompt in enumerate(prompts):
        own = MemoryTokens(hidden=hidden[row : row + 1], mask=memory.mask[row : row + 1])
        expected = plain_joined_scores(llm, tokenizer(prompt)["input_ids"], targets, layer,
                                       combiner, own)
        torch.testing.assert_close(scores[row], expected, rtol=0, atol=1e-4)


def test_likelihood_grounder_ranks_the_most_likely_title_first(tiny_models, tokenizer):
    """rank is scores sorted highest first (the test above checks the scores only)."""
    llm = HFSplitLLM(tiny_models["llama"])
    grounder = LikelihoodGrounder(catalog_targets(tokenizer, TITLES))
    ids, mask = encode_prompts(tokenizer, ["ab", "hello"])
    scores = grounder.scores(llm, ids, mask, 2)
    ranking = grounder.rank(llm, ids, mask, 2)
    for row in range(2):
        expected = sorted(range(len(TITLES)), key=lambda i: (-float(scores[row, i]), i))
        assert ranking[row].tolist() == expected


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3_5_text"])
@given(prompts=st.lists(words, min_size=1, max_size=2), layer=st.integers(0, 3))
def test_constrained_with_enough_beams_is_the_likelihood_ranking(tiny_models, tokenizer, arch,
                                                                 prompts, layer):
    llm = HFSplitLLM(tiny_models[arch])
    targets = catalog_targets(tokenizer, TITLES)
    ids, mask = encode_prompts(tokenizer, prompts)
    constrained = ConstrainedGrounder(targets, num_beams=len(TITLES)).rank(llm, ids, mask, layer)
    scores = LikelihoodGrounder(targets).scores(llm, ids, mask, layer)
    for row in range(len(prompts)):
        ordered = scores[row][constrained[row]]
        assert sorted(constrained[row].tolist()) == list(range(len(TITLES)))
        assert (ordered[:-1] >= ordered[1:] - 1e-5).all(), ordered


@pytest.mark.parametrize("beams", [2, len(set(TITLES))])
def test_items_sharing_a_title_are_found_together(tiny_models, tokenizer, beams):
    """Amazon keeps items with the same title apart (editions, by default): a beam that
    writes the title finds every item holding it, in catalog order, and the ranking stays an
    order of the whole catalog; with a beam per title it is the likelihood ranking."""
    titles = [*TITLES, TITLES[0], TITLES[3], TITLES[0]]
    llm = HFSplitLLM(tiny_models["llama"])
    targets = catalog_targets(tokenizer, titles)
    ids, mask = encode_prompts(tokenizer, ["a b", "hh"])
    ranked = ConstrainedGrounder(targets, num_beams=beams).rank(llm, ids, mask, 2)
    scores = LikelihoodGrounder(targets).scores(llm, ids, mask, 2)
    for row in range(2):
        order = ranked[row].tolist()
        assert sorted(order) == list(range(len(titles)))
        groups = [[i for i, t in enumerate(titles) if t == title] for title in TITLES]
        top = next(g for g in groups if order[0] in g)
        assert order[: len(top)] == top, order  # the best beam's title: all its items first
        if beams == len(set(TITLES)):  # every title found: each one's items together
            for group in groups:
                at = order.index(group[0])
                assert order[at : at + len(group)] == group, order
            ordered = scores[row][ranked[row]]
            assert (ordered[:-1] >= ordered[1:] - 1e-5).all(), ordered


def test_a_prior_orders_the_items_sharing_a_found_title(tiny_models, tokenizer):
    """constrained-pop: the prior that orders the tail also orders the items of a found title
    (highest first, equal values in catalog order), and tells them apart as its ``tie_key``;
    without a weight (gamma 0) they are ties in catalog order."""
    titles = [*TITLES, TITLES[0], TITLES[3], TITLES[0]]
    prior = torch.tensor([0.1, 0.0, 0.0, 0.2, 0.0, 0.9, 0.5, 0.1])
    llm = HFSplitLLM(tiny_models["llama"])
    targets = catalog_targets(tokenizer, titles)
    ids, mask = encode_prompts(tokenizer, ["a b", "hh"])
    for gamma, groups in ((2.0, [[5, 0, 7], [6, 3]]), (0.0, [[0, 5, 7], [3, 6]])):
        grounder = ConstrainedGrounder(targets, num_beams=len(set(titles)), prior=prior,
                                       gamma=gamma)
        assert (grounder.tie_key is None) == (gamma == 0)
        for order in grounder.rank(llm, ids, mask, 2).tolist():
            for group in groups:
                at = order.index(group[0])
                assert order[at : at + len(group)] == group, order


def plain_found_first(grounder: ConstrainedGrounder, found: list[list[int]]) -> list[list[int]]:
    """One sample at a time, in Python lists: the beams' items, then the rest of the catalog
    by (prior-adjusted) distance to the first one, else by the prior, else in catalog order."""
    from automr.grounding.prior import adjusted_distances

    n_items, emb, prior = len(grounder.targets), grounder.catalog_embeddings, grounder.prior
    rankings = []
    for items in found:
        if items and emb is not None:
            distances = torch.cdist(emb[items[0]: items[0] + 1], emb)
            if prior is not None and grounder.gamma:
                distances = adjusted_distances(distances, prior, grounder.gamma)
            rest = distances[0].argsort(stable=True).tolist()
        elif prior is not None and grounder.gamma:
            rest = prior.argsort(descending=True, stable=True).tolist()
        else:
            rest = list(range(n_items))
        rankings.append(items + [i for i in rest if i not in items])
    return rankings


@given(data=st.data(), n_items=st.integers(1, 12), with_embeddings=st.booleans(),
       gamma=st.sampled_from([0.0, 0.5, 3.0]), with_prior=st.booleans())
def test_constrained_ranking_after_the_beams_is_the_plain_walk(data, n_items, with_embeddings,
                                                                gamma, with_prior):
    """Batched tensor ops give each sample's plain order: beams' items first, the rest once."""
    from automr.grounding.targets import CatalogTargets

    targets = CatalogTargets(tuple(f"t{i}" for i in range(n_items)),
                             tuple((i + 3, 2) for i in range(n_items)), eos_token_id=2)
    values = st.floats(-4, 4, width=32)  # few distinct values: ties between items
    emb = torch.tensor(data.draw(st.lists(st.lists(values.map(round), min_size=3, max_size=3),
                                          min_size=n_items, max_size=n_items)),
                       dtype=torch.float32)
    prior = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 0.25, 1.0]),
                                            min_size=n_items, max_size=n_items)))
    grounder = ConstrainedGrounder(targets, emb if with_embeddings else None,
                                   prior=prior if with_prior else None, gamma=gamma)
    found = data.draw(st.lists(st.lists(st.integers(0, n_items - 1), unique=True,
                                        max_size=n_items), min_size=1, max_size=4))
    from automr.grounding.constrained import found_first

    ranked = found_first(found, grounder.fallback_orders([f[0] if f else None for f in found]))
    assert ranked.tolist() == plain_found_first(grounder, found)


@pytest.mark.parametrize(("gamma", "rest"), [(0.0, [1, 2, 3, 4]), (3.0, [4, 1, 2, 3])])
def test_constrained_rest_is_anchored_on_the_top_beam_and_weighed_by_the_prior(
        tiny_models, monkeypatch, gamma, rest):
    """Items on a line, beams finding items 0 then 5: the rest goes by distance to item 0 (not
    to the last beam's item 5); a strong prior on item 4 lifts it as BIGRec's injection does."""
    from automr.grounding.targets import CatalogTargets
    from automr.llm.beam import Hypothesis

    targets = CatalogTargets(tuple(f"t{i}" for i in range(6)),
                             tuple((i + 3, 2) for i in range(6)), eos_token_id=2)
    emb = torch.tensor([[float(i), 0.0, 0.0] for i in range(6)])
    prior = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    grounder = ConstrainedGrounder(targets, emb, num_beams=2, prior=prior, gamma=gamma)
    monkeypatch.setattr(ConstrainedGrounder, "beams", lambda *args, **kwargs: [
        [Hypothesis((3, 2), -1.0), Hypothesis((8, 2), -2.0)]])
    ids = torch.tensor([[5, 6]])
    ranking = grounder.rank(HFSplitLLM(tiny_models["llama"]), ids, torch.ones_like(ids), 1)
    assert ranking.tolist() == [[0, 5, *rest]]


def test_constrained_fallback_follows_l2_distance_to_the_top_beam(tiny_models, tokenizer):
    llm = HFSplitLLM(tiny_models["llama"])
    targets = catalog_targets(tokenizer, TITLES)
    embeddings = embed_texts(tiny_models["llama"], tokenizer, TITLES)
    ids, mask = encode_prompts(tokenizer, ["abc"])
    ranking = ConstrainedGrounder(targets, embeddings, num_beams=1).rank(llm, ids, mask, 1)[0]
    top = int(ranking[0])
    distances = torch.cdist(embeddings[top : top + 1], embeddings)[0]
    assert ranking.tolist() == distances.argsort(stable=True).tolist()


@given(texts=st.lists(words, min_size=1, max_size=5), batch=st.integers(1, 5))
def test_text_embeddings_do_not_depend_on_batching(tiny_models, tokenizer, texts, batch):
    tokenizer.padding_side = "right"
    model = tiny_models["qwen2"]
    batched = embed_texts(model, tokenizer, texts, batch_size=batch)
    alone = torch.cat([embed_texts(model, tokenizer, [t]) for t in texts])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


def test_text_embeddings_are_float32_in_text_order_whatever_the_default_dtype(tiny_models,
                                                                               tokenizer):
    """The rows are written in place (a float64 default dtype made a float64 buffer that the
    float32 rows could not be put into); texts come as any sequence (a tuple too)."""
    model = tiny_models["llama"]
    texts = ["a longer title here", "b", "mid title"]  # sorted by length to batch, not kept so
    alone = torch.cat([embed_texts(model, tokenizer, [t]) for t in texts])
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        embeddings = embed_texts(model, tokenizer, tuple(texts), batch_size=2)
    finally:
        torch.set_default_dtype(default)
    assert embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings, alone, rtol=1e-5, atol=1e-5)
    grounder = L2Grounder(model, tokenizer, embed_texts(model, tokenizer, TITLES))
    assert torch.equal(grounder.embed(tuple(texts)), grounder.embed(texts))
    assert grounder.distances_to(tuple(texts)).shape == (3, len(TITLES))


def test_l2_grounder_ranks_by_distance_to_the_generated_text(tiny_models, tokenizer):
    model = tiny_models["llama"]
    llm = HFSplitLLM(model)
    embeddings = embed_texts(model, tokenizer, TITLES)
    grounder = L2Grounder(model, tokenizer, embeddings, num_beams=1, max_new_tokens=4)
    ids, mask = encode_prompts(tokenizer, ["ab", "hello"])
    texts = grounder.generate(llm, ids, mask, 2)
    assert len(set(texts)) == 2 and " " not in texts  # else every row is one row: no check
    greedy = greedy_generate(llm, ids, mask, 2, max_new_tokens=4, eos_token_id=2)
    for row, text in enumerate(texts):
        expected = tokenizer.decode([t for t in greedy[row].tolist() if t != 2])
        assert text == (expected or " ")
    ranking = grounder.rank(llm, ids, mask, 2)
    generated = embed_texts(model, tokenizer, texts)
    distances = torch.tensor([[float((g.double() - e.double()).norm()) for e in embeddings]
                              for g in generated])
    assert torch.equal(ranking, distances.argsort(dim=1, stable=True))


def test_l2_grounder_generates_the_top_beam(tiny_models, tokenizer):
    """With several beams the text measured from is the best one by summed log-probability
    (with one beam, as above, any beam is the top one)."""
    from automr.llm.beam import beam_search

    model = tiny_models["llama"]
    llm = HFSplitLLM(model)
    grounder = L2Grounder(model, tokenizer, embed_texts(model, tokenizer, TITLES), num_beams=3,
                          max_new_tokens=4)
    ids, mask = encode_prompts(tokenizer, ["ab", "hello"])
    beams = beam_search(llm, ids, mask, 2, num_beams=3, max_new_tokens=4, eos_token_id=2)
    decoded = [[tokenizer.decode([t for t in h.tokens if t != 2]) for h in hyps]
               for hyps in beams]
    assert all(len(set(texts)) > 1 for texts in decoded)  # else any beam would do: no check
    best = [max(hyps, key=lambda h: h.logprob) for hyps in beams]
    expected = [tokenizer.decode([t for t in h.tokens if t != 2]) or " " for h in best]
    assert grounder.generate(llm, ids, mask, 2) == expected


@given(rows=st.integers(1, 40), items=st.integers(1, 60), scale=st.sampled_from([1.0, 50.0]),
       seed=st.integers(0, 2**16))
def test_l2_distances_equal_the_plain_float64_loop(rows, items, scale, seed):
    """Past 25 rows cdist's default cancels (|a|^2 + |b|^2 - 2ab); ours stays at float
    rounding, a query's distance to itself included, at title embeddings' norms (~50)."""
    from automr.grounding.embedding import l2_distances

    generator = torch.Generator().manual_seed(seed)
    catalog = scale * torch.randn(items, 64, generator=generator) / 8
    queries = torch.cat([catalog[:1], scale * torch.randn(rows - 1, 64, generator=generator) / 8])
    plain = torch.tensor([[float(((q.double() - c.double()) ** 2).sum().sqrt()) for c in catalog]
                          for q in queries], dtype=torch.float64)
    distances = l2_distances(queries, catalog)
    assert float((distances.double() - plain).abs().max()) <= 1e-5 * scale
    assert float(distances[0, 0]) == 0.0


def test_popularity_injection_is_bigrecs_formula():
    from automr.grounding.prior import adjusted_distances, choose_gamma, min_max

    distances = torch.tensor([[4.0, 2.0, 3.0, 6.0], [1.0, 1.5, 3.0, 2.0]])
    prior = torch.tensor([0.0, 0.2, 1.0, 0.5])
    plain = distances.argsort(dim=1, stable=True)
    assert torch.equal(adjusted_distances(distances, prior, 0.0).argsort(dim=1, stable=True),
                       plain)  # gamma 0: the plain L2 ranking
    gamma = 2.5
    expected = (distances - distances.amin(1, keepdim=True)) / (
        distances.amax(1, keepdim=True) - distances.amin(1, keepdim=True)) * (1 + prior) ** -gamma
    torch.testing.assert_close(adjusted_distances(distances, prior, gamma), expected)
    assert torch.equal(min_max(torch.tensor([3.0, 3.0])), torch.zeros(2))
    # targets are the most popular item: a large gamma wins; the nearest item: gamma 0 wins
    best, values = choose_gamma(distances, prior, torch.tensor([2, 2]))
    assert best > 0 and values[best] == max(values.values())
    assert choose_gamma(distances, prior, torch.tensor([1, 0]))[0] == 0.0


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 9), n=st.integers(2, 40), cut=st.integers(1, 9),
       per_sample_prior=st.booleans(), seed=st.integers(0, 2**16))
def test_gamma_metrics_of_chunks_of_samples_are_the_columns_of_all_at_once(
        batch, n, cut, per_sample_prior, seed):
    from automr.grounding.prior import GAMMA_GRID, best_gamma, choose_gamma, gamma_metrics

    generator = torch.Generator().manual_seed(seed)
    distances = torch.rand(batch, n, generator=generator)
    prior = torch.rand(batch if per_sample_prior else 1, n, generator=generator)
    targets = torch.randint(0, n, (batch,), generator=generator)
    exclude = torch.rand(batch, n, generator=generator) < 0.3
    whole = gamma_metrics(distances, prior, targets, exclude=exclude)
    assert whole.shape == (len(GAMMA_GRID), batch) and whole.dtype == torch.float64
    parts = [gamma_metrics(distances[i : i + cut],
                           prior[i : i + cut] if per_sample_prior else prior,
                           targets[i : i + cut], exclude=exclude[i : i + cut])
             for i in range(0, batch, cut)]
    assert torch.equal(torch.cat(parts, dim=1), whole)
    assert best_gamma(whole) == choose_gamma(distances, prior, targets, exclude=exclude)


def test_best_gamma_takes_a_value_per_gamma_and_sample():
    from automr.errors import AutomrError
    from automr.grounding.prior import best_gamma

    assert best_gamma(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64),
                      (0.0, 1.0, 2.0)) == (0.0, {0.0: 0.5, 1.0: 0.5, 2.0: 0.0})  # the smallest
    assert best_gamma(torch.tensor([[0.0, 1.0], [0.5, 0.5], [1.0, 0.5]], dtype=torch.float64),
                      (0.0, 1.0, 2.0)) == (2.0, {0.0: 0.5, 1.0: 0.5, 2.0: 0.75})
    for wrong in (torch.zeros(2, 3, dtype=torch.float64), torch.zeros(3, 0, dtype=torch.float64)):
        with pytest.raises(AutomrError, match="one value per gamma"):
            best_gamma(wrong, (0.0, 1.0, 2.0))


def test_gammas_that_rank_the_targets_alike_tie_and_the_smallest_wins():
    """Two gammas giving the same ranks in another sample order had means that differed in
    the last bit (float summation order): gamma 3 was chosen over an exactly tied gamma 0."""
    import math
    import random

    from automr.evaluation.metrics import ranks_from_scores
    from automr.grounding.prior import adjusted_distances, choose_gamma, min_max

    rng, twins = random.Random(0), random.Random(1)
    for trial in range(12):
        batch, n = rng.randint(1, 6), rng.randint(2, 30)
        distances = torch.tensor([[rng.random() for _ in range(n)] for _ in range(batch)])
        prior = min_max(torch.tensor([float(rng.randint(0, 5)) for _ in range(n)]))[None]
        targets = torch.tensor([rng.randrange(n) for _ in range(batch)])
        exclude = torch.tensor([[rng.random() < 0.2 for _ in range(n)]
                                for _ in range(batch)]) if trial % 2 else None
        # a title two items share: the target at the distance of another item (a ranking
        # that broke such ties in the target's favour passed random distances alone)
        for row, target in enumerate(targets.tolist()):
            if twins.random() < 0.5:
                twin = twins.choice([j for j in range(n) if j != target])
                distances[row, twin] = distances[row, target]
        best, values = choose_gamma(distances, prior, targets, exclude=exclude)
        for gamma, value in values.items():  # each the exact mean of its ranks' NDCG@5
            ranks = ranks_from_scores(-adjusted_distances(distances, prior, gamma), targets,
                                      exclude).tolist()
            assert value == math.fsum(1 / math.log2(r + 2) for r in ranks if r < 5) / batch
        assert best == min(g for g, v in values.items() if v == max(values.values()))
    assert best == 0.0  # the last draw: gamma 0 and gamma 3 rank [2, 1, 3, 1, 1] alike


def test_plain_l2_and_its_injection_at_gamma_0_rank_ties_alike(tiny_models, tokenizer,
                                                               tmp_path, monkeypatch):
    """Items at one distance (a title shared by several items) rank the target below all of
    them in the plain L2 method as in its injections (plain L2 put the lower index first)."""
    from automr.methods import GenerativeMethod
    from automr.methods.injection import PriorWeightedMethod
    from automr.testing.synthetic import synthetic_dataset

    dataset = synthetic_dataset(tmp_path)
    samples = dataset.samples("test")[:3]
    n_items = len(dataset.catalog)
    column = {item_id: i for i, item_id in enumerate(dataset.catalog.ids)}
    distances = torch.full((len(samples), n_items), 5.0)
    partner = {s.id: (column[s.target] + 1) % n_items for s in samples}  # listed after it
    for row, sample in enumerate(samples):  # the target and its partner at 1.0
        distances[row, column[sample.target]] = distances[row, partner[sample.id]] = 1.0
    monkeypatch.setattr(GenerativeMethod, "distances", lambda self, given: distances)
    loaded = LoadedModel(model=tiny_models["llama"], tokenizer=tokenizer, name="tiny")
    for exclude_seen in (False, True):
        plain = GenerativeMethod(loaded, dataset, L2Grounder(
            loaded.model, tokenizer, torch.zeros(n_items, 4)), layer=1,
            exclude_seen=exclude_seen)
        injected = PriorWeightedMethod(plain, lambda given: torch.rand(len(given), n_items),
                                       gamma=0.0)
        assert plain.rank(samples) == injected.rank(samples)
        assert plain.rank(samples) == [
            1 - (exclude_seen and dataset.catalog.ids[partner[s.id]] in s.history)
            for s in samples]


def test_titles_the_tokenizer_writes_alike_tie_as_one_title(tmp_path):
    """Qwen's tokenizers normalize text to NFC, so "Café" typed as NFC and as NFD are one
    token sequence the model cannot tell apart: the target ranks as below a shared title
    (the tie compared title strings, so the first-listed item won one rank)."""
    import unicodedata

    from tokenizers import normalizers

    from automr.grounding import ConstrainedGrounder, LikelihoodGrounder
    from automr.grounding.catalog import dataset_targets
    from automr.methods import GenerativeMethod
    from automr.testing.synthetic import synthetic_dataset
    from automr.testing.tiny import tiny_config, tiny_model, tiny_tokenizer

    nfc = "Café au lait (1993)"
    tokenizer = tiny_tokenizer()
    tokenizer.backend_tokenizer.normalizer = normalizers.NFC()
    loaded = LoadedModel(model=tiny_model(tiny_config(num_layers=2), seed=0),
                         tokenizer=tokenizer, name="tiny")
    ranks = {}
    for second in (nfc, unicodedata.normalize("NFD", nfc)):
        dataset = synthetic_dataset(tmp_path / str(len(second)), titles={"i5": nfc, "i6": second})
        samples = [s for split in ("train", "valid", "test") for s in dataset.samples(split)
                   if s.target == "i5"][:2]
        assert samples
        targets = dataset_targets(loaded, dataset)
        for grounder in (LikelihoodGrounder(targets), ConstrainedGrounder(targets, num_beams=2)):
            method = GenerativeMethod(loaded, dataset, grounder=grounder, layer=1)
            ranks.setdefault(type(grounder).__name__, []).append(method.rank(samples))
    for name, (identical, normalized) in ranks.items():
        assert identical == normalized, name


@pytest.mark.parametrize("grounder", ["l2", "likelihood"])
def test_a_method_refuses_to_go_on_after_its_models_weights_changed(tmp_path, grounder):
    """A caller who trained the model after building a method got the values it kept, and an
    L2 grounder's catalog embeddings, of the old weights (the long-lived process review)."""
    from automr.errors import AutomrError
    from automr.grounding import build_grounder
    from automr.methods import GenerativeMethod
    from automr.methods.generative import KeptLikelihoods
    from automr.testing.synthetic import synthetic_dataset
    from automr.testing.tiny import tiny_config, tiny_model, tiny_tokenizer

    dataset = synthetic_dataset(tmp_path)
    loaded = LoadedModel(model=tiny_model(tiny_config(num_layers=2), seed=0),
                         tokenizer=tiny_tokenizer(), name="tiny")
    method = GenerativeMethod(loaded, dataset, build_grounder(
        grounder, loaded, dataset, loaded.fingerprint(), num_beams=2, cache_dir=tmp_path,
        progress=False), layer=1)
    samples = dataset.samples("test")[:2]
    method.rank(samples)
    method.target_log_likelihoods(samples)
    with torch.no_grad():
        next(loaded.model.parameters()).mul_(2.0)  # a caller's own training step
    for call in (method.rank, method.target_log_likelihoods):
        with pytest.raises(AutomrError, match="changed since this GenerativeMethod was built"):
            call(samples)
    rebuilt = attrs.evolve(method)  # as the message says; sharing its kept likelihoods,
    fresh = attrs.evolve(method, likelihoods=KeptLikelihoods())  # which were the old weights'
    assert rebuilt.likelihoods is method.likelihoods
    assert rebuilt.target_log_likelihoods(samples) == fresh.target_log_likelihoods(samples)


def test_two_samples_of_one_id_and_other_histories_are_scored_apart(tmp_path, writing_model):
    """Values were kept by sample id: a user's sample served again with another history (a
    what-if, by hand) got the first one's log-likelihood and L2 distances, in one call or
    the next (the cold-users review)."""
    import automr
    from automr.grounding import build_grounder
    from automr.methods import GenerativeMethod
    from automr.testing.synthetic import synthetic_dataset

    dataset = synthetic_dataset(tmp_path)
    loaded = automr.load_model(str(writing_model(tmp_path / "model")), device="cpu")

    def method() -> GenerativeMethod:
        return GenerativeMethod(loaded, dataset, build_grounder(
            "l2", loaded, dataset, loaded.fingerprint(), num_beams=2, cache_dir=tmp_path,
            progress=False), layer=1)

    sample = next(s for s in dataset.samples("test") if len(set(s.recent)) > 1)
    other = attrs.evolve(sample, recent=sample.recent[::-1])
    assert other.id == sample.id
    alone = [method().target_log_likelihoods([s])[0] for s in (sample, other)]
    assert alone[0] != alone[1]
    shared = method()
    assert shared.target_log_likelihoods([sample, other]) == alone
    assert shared.target_log_likelihoods([other]) == alone[1:]
    apart = torch.cat([method().distances([s]) for s in (sample, other)])
    assert not torch.equal(apart[0], apart[1])
    torch.testing.assert_close(shared.distances([sample, other]), apart, rtol=0, atol=1e-6)


def test_an_injection_weighs_by_the_prior_scaled_to_0_1():
    """Raw scores (popularity counts, SASRec logits) are min-max scaled per sample before
    weighing: scores in any unit rank as the same scores in [0, 1]."""
    from types import SimpleNamespace

    from automr.grounding.prior import adjusted_distances
    from automr.methods.injection import PriorWeightedMethod

    distances = torch.tensor([[0.0, 1.0, 2.0, 4.0]])
    plain = SimpleNamespace(distances=lambda samples: distances,
                            ranks_by_distance=lambda samples, weighted: weighted)
    unit = torch.tensor([[0.0, 0.0, 1.0, 0.5]])
    weighted = adjusted_distances(distances, unit, 2.0)
    for scores in (unit, 40 * unit + 10):
        injected = PriorWeightedMethod(plain, lambda samples, s=scores: s, gamma=2.0)
        torch.testing.assert_close(injected.rank([]), weighted)


@pytest.mark.parametrize("gamma", [math.inf, -math.inf, math.nan])
def test_an_injection_refuses_a_gamma_that_is_not_finite(gamma):
    """gamma=inf ranked by (1 + prior) ** -inf, 0 for every item the prior favours (2 samples
    of the synthetic data: both targets at rank 27 of 30), without a word; gamma=nan was
    refused only after the LM had generated for the samples ('scores contain NaN')."""
    from types import SimpleNamespace

    from automr.methods.injection import PriorWeightedMethod

    plain = SimpleNamespace(distances=lambda samples: torch.zeros(1, 4),
                            ranks_by_distance=lambda samples, weighted: weighted)
    with pytest.raises(ValueError, match="'gamma' must be"):
        PriorWeightedMethod(plain, lambda samples: torch.ones(1, 4), gamma=gamma)


def test_a_prior_per_sample_weighs_each_row_by_its_own_scores():
    """BIGRec's collaborative injection: one prior row per sample, each row as if alone."""
    from automr.grounding.prior import adjusted_distances, choose_gamma

    distances = torch.tensor([[2.0, 4.0, 3.0, 6.0], [1.0, 1.5, 3.0, 2.0]])
    prior = torch.tensor([[0.0, 1.0, 0.2, 0.5], [0.0, 0.0, 0.3, 1.0]])
    for gamma in (0.0, 0.7, 40.0):
        rows = [adjusted_distances(distances[i : i + 1], prior[i], gamma) for i in range(2)]
        torch.testing.assert_close(adjusted_distances(distances, prior, gamma), torch.cat(rows))
    # each target is its row's top prior item, third by distance: a gamma > 0 lifts both
    best, values = choose_gamma(distances, prior, torch.tensor([1, 3]))
    assert best > 0 and values[best] == max(values.values()) > values[0.0]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3_5_text"])
@given(prompts=st.lists(words, min_size=1, max_size=3), layer=st.integers(0, 3),
       beams=st.integers(1, len(TITLES)), memory=st.booleans(), data=st.data())
def test_fast_engine_ranks_as_the_reference(tiny_models, tokenizer, arch, prompts, layer, beams,
                                            memory, data):
    """The fast search (shared template header, batched live beams) ranks the catalog as the
    implementation it replaced, memory inserted or not."""
    from automr.combiners import AppendToken
    from automr.interfaces import MemoryTokens
    from automr.testing.strategies import seeded_tensors

    llm = HFSplitLLM(tiny_models[arch])
    targets = catalog_targets(tokenizer, TITLES)
    ids, mask = encode_prompts(tokenizer, [f"The user watched: {p}" for p in prompts])
    insert = None
    if memory:
        hidden = data.draw(seeded_tensors((len(prompts), 1, llm.hidden_size)), label="memory")
        tokens = MemoryTokens(hidden=hidden, mask=torch.ones(len(prompts), 1, dtype=torch.bool))

        def insert(state):
            return AppendToken().combine(state, tokens)
    fast = ConstrainedGrounder(targets, num_beams=beams)
    reference = ConstrainedGrounder(targets, num_beams=beams, engine="reference")
    assert torch.equal(fast.rank(llm, ids, mask, layer, insert),
                       reference.rank(llm, ids, mask, layer, insert))


def test_generate_engine_refuses_memory(tiny_models, tokenizer):
    from automr.errors import AutomrError

    llm = HFSplitLLM(tiny_models["llama"])
    grounder = ConstrainedGrounder(catalog_targets(tokenizer, TITLES), engine="generate")
    ids, mask = encode_prompts(tokenizer, ["abc"])
    with pytest.raises(AutomrError, match="without memory"):
        grounder.rank(llm, ids, mask, 1, insert=lambda state: state)


@given(prompts=st.lists(words, min_size=1, max_size=3))
def test_generate_engine_with_one_beam_finds_the_fast_engines_title(tiny_models, tokenizer,
                                                                    prompts):
    """With one beam transformers' generate runs greedy search, which gives no sequence
    scores: the title and its log-probability are still the fast search's."""
    llm = HFSplitLLM(tiny_models["llama"])
    grounder = ConstrainedGrounder(catalog_targets(tokenizer, TITLES), num_beams=1)
    ids, mask = encode_prompts(tokenizer, prompts)
    fast = grounder.beams(llm, ids, mask, 1)
    generated = attrs.evolve(grounder, engine="generate").beams(llm, ids, mask, 1)
    assert [[h.tokens for h in hyps] for hyps in generated] == \
        [[h.tokens for h in hyps] for hyps in fast]
    for hyps, ours in zip(generated, fast, strict=True):
        assert hyps[0].logprob == pytest.approx(ours[0].logprob, abs=1e-4)


def test_catalog_embeddings_come_without_a_cache_that_cannot_be_written(tiny_models, tokenizer,
                                                                        tmp_path):
    """A shared, read-only cache (here: a file where the cache folder would be) does not stop
    grounding: the embeddings are computed and not kept."""
    tokenizer.padding_side = "right"
    model = tiny_models["llama"]
    targets = catalog_targets(tokenizer, TITLES)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, name="tiny", fingerprint="f" * 64)
    (tmp_path / "readonly").write_text("")
    got = catalog_embeddings(loaded, targets, "f" * 64, tmp_path / "readonly" / "cache",
                             progress=False)
    assert torch.equal(got, embed_texts(model, tokenizer, targets.texts))


def test_catalog_embeddings_are_cached_per_dtype(tiny_models, tokenizer, tmp_path):
    tokenizer.padding_side = "right"
    model = tiny_models["llama"]
    targets = catalog_targets(tokenizer, TITLES)
    fingerprint = "f" * 64  # a model's fingerprint is the same in every dtype
    half = LoadedModel(model=copy.deepcopy(model).to(torch.bfloat16), tokenizer=tokenizer,
                       name="tiny", fingerprint=fingerprint)
    full = LoadedModel(model=model, tokenizer=tokenizer, name="tiny", fingerprint=fingerprint)
    cached = catalog_embeddings(half, targets, fingerprint, tmp_path, progress=False)
    expected = embed_texts(model, tokenizer, targets.texts)
    assert not torch.equal(cached, expected)
    for _ in range(2):  # computed, then read from the cache
        got = catalog_embeddings(full, targets, fingerprint, tmp_path, progress=False)
        assert torch.equal(got, expected)
    assert torch.equal(catalog_embeddings(half, targets, fingerprint, tmp_path, progress=False),
                       cached)


def test_editions_embedded_in_other_batches_tie_in_bfloat16(tiny_models, tokenizer, tmp_path,
                                                           monkeypatch):
    """Two items of one title, embedded in batches of other padding, rounded apart in
    bfloat16 (SmolLM2-135M: 0.39 to 0.61 apart, 8 copies of 8): the L2 grounding ranked the
    target first or second by which edition it was, where both rank below the other. Texts
    are batched shortest first, so two copies of a title usually share a batch; here the
    second copy is embedded beside the longest title, as a batch boundary between them
    would."""
    from automr.evaluation.metrics import ranks_from_scores
    from automr.grounding import catalog as grounding_catalog
    from automr.testing.synthetic import synthetic_dataset

    tokenizer.padding_side = "right"
    long = "A title much longer than any other one (1999)"
    dataset = synthetic_dataset(tmp_path / "data", items=40, titles={
        "i0": "Twin", "i39": "Twin", "i20": long})
    twins = dataset.catalog.positions(dataset.catalog.ids_for_title("Twin"))
    embed = grounding_catalog.embed_texts

    def apart(model, tokenizer, texts, **options):
        vectors = embed(model, tokenizer, texts, **options)
        longest = max(texts, key=len)
        vectors[twins[1]] = embed(model, tokenizer, [texts[twins[1]], longest])[0]
        return vectors

    monkeypatch.setattr(grounding_catalog, "embed_texts", apart)
    model = copy.deepcopy(tiny_models["llama"]).to(torch.bfloat16)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, name="tiny", fingerprint="f" * 64)
    embedded = grounding_catalog.catalog_embeddings(
        loaded, grounding_catalog.dataset_targets(loaded, dataset), "f" * 64,
        tmp_path / "cache", progress=False)
    assert not torch.equal(embedded[twins[0]], embedded[twins[1]])  # rounded apart
    grounder = build_grounder("l2", loaded, dataset, "f" * 64, cache_dir=tmp_path / "cache",
                              progress=False)
    rows = grounder.catalog_embeddings[twins]
    distances = grounder.distances_from(rows[:1].expand(2, -1).float())
    assert ranks_from_scores(-distances, torch.tensor(twins)).tolist() == [1, 1]


def test_text_embeddings_start_with_the_bos_a_tokenizer_adds(tiny_models, tmp_path):
    """Llama's and Gemma's tokenizers add a BOS to every encoding; titles and generated texts
    were embedded without it (Gemma's states without its BOS are not the model's; BIGRec's
    code keeps it). An embedding is the model's final state at the last token of BOS + text,
    and the catalog's cache tells a tokenizer that adds one from one that does not."""
    from automr.testing.tiny import tiny_tokenizer

    model, bos = tiny_models["llama"], tiny_tokenizer(bos=True)
    ids = bos("abc")["input_ids"]
    assert ids[0] == bos.bos_token_id and len(ids) == 4
    with torch.no_grad():
        plain = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    torch.testing.assert_close(embed_texts(model, bos, ["abc"])[0], plain)
    targets = catalog_targets(bos, TITLES)
    fingerprint = "f" * 64
    without = catalog_embeddings(LoadedModel(model=model, tokenizer=tiny_tokenizer(), name="t",
                                             fingerprint=fingerprint),
                                 targets, fingerprint, tmp_path, progress=False)
    with_bos = catalog_embeddings(LoadedModel(model=model, tokenizer=bos, name="t",
                                              fingerprint=fingerprint), targets,
                                  fingerprint, tmp_path, progress=False)
    assert torch.equal(with_bos, embed_texts(model, bos, targets.texts))
    assert not torch.allclose(with_bos, without)


def test_a_grounder_or_context_that_breaks_its_protocol_is_named(tiny_models, tokenizer,
                                                                  tmp_path):
    """A grounder ranking only its top 10, or a context with one text too few, was a bare
    ValueError ("0 is not in list", "zip() argument 2 is shorter")."""
    from automr.errors import AutomrError
    from automr.methods import GenerativeMethod
    from automr.testing.synthetic import synthetic_dataset

    dataset = synthetic_dataset(tmp_path)
    samples = list(dataset.samples("test")[:2])
    loaded = LoadedModel(model=tiny_models["llama"], tokenizer=tokenizer, name="tiny")

    class TopTen:
        def rank(self, llm, input_ids, attention_mask, layer, insert=None):
            return torch.arange(10).expand(input_ids.shape[0], -1)

    class OneShort:
        config: typing.ClassVar[dict] = {}

        def texts(self, given):
            return ["context"] * (len(given) - 1)

    with pytest.raises(AutomrError, match=r"TopTen\.rank gave .* not an order of the whole"):
        GenerativeMethod(loaded, dataset, TopTen(), layer=1).rank(samples)
    with pytest.raises(AutomrError, match=r"OneShort\.texts gave 1 texts for 2 samples"):
        GenerativeMethod(loaded, dataset, TopTen(), layer=1, context=OneShort()).rank(samples)


@pytest.mark.parametrize("given", ["grounder", "context"])
def test_a_grounder_or_context_given_by_name_is_refused_at_once(tiny_models, tokenizer,
                                                                 tmp_path, given):
    """GenerativeMethod(loaded, dataset, "constrained") was accepted and failed when ranking
    with an AttributeError ('str' object has no attribute 'rank'; a context: 'texts'), after
    every method before it in an evaluation had ranked."""
    from automr.errors import AutomrError
    from automr.methods import GenerativeMethod
    from automr.testing.synthetic import synthetic_dataset

    dataset = synthetic_dataset(tmp_path)
    loaded = LoadedModel(model=tiny_models["llama"], tokenizer=tokenizer, name="tiny")
    grounder = L2Grounder(loaded.model, tokenizer, torch.zeros(len(dataset.catalog), 4))
    parts = {"grounder": grounder, "context": None, given: "rella"}
    with pytest.raises(AutomrError, match=f"the {given} is not a"):
        GenerativeMethod(loaded, dataset, parts["grounder"], layer=1, context=parts["context"])


@pytest.fixture(scope="module")
def ordered_method(tmp_path_factory):
    """A generative method over the synthetic catalog, only its ranking arithmetic used."""
    from automr.methods import GenerativeMethod
    from automr.testing.synthetic import synthetic_dataset
    from automr.testing.tiny import tiny_config, tiny_model, tiny_tokenizer

    dataset = synthetic_dataset(tmp_path_factory.mktemp("ordered"))
    loaded = LoadedModel(model=tiny_model(tiny_config(num_layers=2), seed=0),
                         tokenizer=tiny_tokenizer(), name="tiny")
    return GenerativeMethod(loaded, dataset, grounder=NeverRanks(), layer=1)


def test_samples_of_another_catalog_or_a_bare_model_are_refused_at_once(ordered_method,
                                                                         tmp_path):
    """A sample of another dataset failed with a bare KeyError ('333') when its batch's prompts
    were written, after the batches before it had run; GenerativeMethod(loaded.model, ...) was
    accepted and failed when ranking with an AttributeError, as a retrieval that is none did
    (or whose store is none) when the method was built."""
    import attrs

    from automr.errors import AutomrError
    from automr.methods import GenerativeMethod

    samples = list(ordered_method.dataset.samples("test")[:2])
    foreign = [samples[0], attrs.evolve(samples[1], recent=("333", *samples[1].recent[1:]))]
    for run in (ordered_method.rank, ordered_method.target_log_likelihoods):
        with pytest.raises(AutomrError, match="item '333' is not in this catalog"):
            run(foreign)
    with pytest.raises(AutomrError, match="not a LoadedModel"):
        GenerativeMethod(ordered_method.loaded.model, ordered_method.dataset, NeverRanks(),
                         layer=1)
    # the dataset's folder was accepted and failed at the first rank ('catalog')
    with pytest.raises(AutomrError, match=r"the dataset argument is of type PosixPath, not "
                                          r"PreparedDataset \(open a prepared folder"):
        GenerativeMethod(ordered_method.loaded, tmp_path, NeverRanks(), layer=1)
    # a dict, as the likelihoods were before KeptLikelihoods: attrs' multi-line TypeError
    with pytest.raises(AutomrError, match=r"the likelihoods argument is of type dict, not "
                                          r"KeptLikelihoods \(share another method's"):
        GenerativeMethod(ordered_method.loaded, ordered_method.dataset, NeverRanks(), layer=1,
                         likelihoods={})
    with pytest.raises(AutomrError, match=r"the likelihoods argument is of type dict"):
        ordered_method.likelihoods = {}  # assigned: taken, then a raw AttributeError
    # the memory itself where its retrieval is meant failed with an AttributeError ('store')
    with pytest.raises(AutomrError, match=r"retrieval is not a Retrieval: it needs store and "
                                          r"retrieved and insert_for\(samples\)"):
        GenerativeMethod(ordered_method.loaded, ordered_method.dataset, NeverRanks(), layer=1,
                         retrieval=tmp_path)

    class Stored:  # a user's retrieval whose store is the memory's folder
        store, retrieved = tmp_path, []

        def insert_for(self, samples):
            raise AssertionError("not called")

    with pytest.raises(AutomrError, match="retrieval's store argument is of type PosixPath, "
                                          "not MemoryStore"):
        GenerativeMethod(ordered_method.loaded, ordered_method.dataset, NeverRanks(), layer=1,
                         retrieval=Stored())


@pytest.mark.parametrize("layer", [-1, 3, 99, True])
def test_a_layer_the_model_does_not_have_is_refused_at_construction(ordered_method, layer):
    """layer=99 (of a 2-layer model) was refused only when the method ranked: in an
    evaluation, after every method before it had ranked every sample; True ran as layer 1."""
    from automr.errors import AutomrError
    from automr.methods import GenerativeMethod

    match = ("layer must be an int, not True" if layer is True else
             f"layer {layer!r} is outside 0..2 for this model")
    with pytest.raises(AutomrError, match=match):
        GenerativeMethod(ordered_method.loaded, ordered_method.dataset, NeverRanks(),
                         layer=layer)


@given(data=st.data(), exclude_seen=st.booleans())
def test_ranks_in_order_are_the_targets_positions_in_the_lists(ordered_method, data,
                                                                exclude_seen):
    """A grounder's orders of the whole catalog -> each target's rank, vectorised: the
    target's index in the list with the history (but not the target) taken out, as a list
    walk finds it (the walk took 26 ms a sample at 98.7k items)."""
    import attrs

    method = attrs.evolve(ordered_method, exclude_seen=exclude_seen)
    ids = list(method.dataset.catalog.ids)
    samples = data.draw(st.lists(st.sampled_from(method.dataset.samples("test")), min_size=1,
                                 max_size=5))
    rankings = torch.stack([torch.tensor(data.draw(st.permutations(range(len(ids)))))
                            for _ in samples])
    expected = []
    for sample, ranking in zip(samples, rankings.tolist(), strict=True):
        seen = {ids.index(i) for i in sample.history} - {ids.index(sample.target)}
        kept = [i for i in ranking if i not in seen] if exclude_seen else ranking
        expected.append(kept.index(ids.index(sample.target)))
    assert method.ranks_in_order(samples, rankings) == expected

@given(data=st.data(), exclude_seen=st.booleans())
def test_ranks_by_distance_count_the_items_at_most_as_far(ordered_method, data, exclude_seen):
    """L2's (and every injection's) ranks: the other items at most as far as the target,
    the history's left out with ``exclude_seen`` (the target never is)."""
    import attrs

    method = attrs.evolve(ordered_method, exclude_seen=exclude_seen)
    ids = list(method.dataset.catalog.ids)
    samples = data.draw(st.lists(st.sampled_from(method.dataset.samples("test")), min_size=1,
                                 max_size=5))
    distances = torch.tensor([data.draw(st.lists(st.integers(0, 3), min_size=len(ids),
                                                 max_size=len(ids))) for _ in samples],
                             dtype=torch.float32)
    expected = []
    for sample, row in zip(samples, distances.tolist(), strict=True):
        target = ids.index(sample.target)
        seen = {ids.index(i) for i in sample.history} if exclude_seen else set()
        expected.append(sum(1 for b in range(len(ids)) if b != target and b not in seen
                            and row[b] <= row[target]))
    assert method.ranks_by_distance(samples, distances) == expected



@pytest.mark.parametrize("broken", ["repeated", "outside", "negative", "float"])
def test_a_ranking_that_is_not_an_order_of_the_catalog_is_refused(ordered_method, broken):
    """A float ranking (probabilities, the argsort forgotten) was a raw RuntimeError of
    scatter_add_."""
    from automr.errors import AutomrError

    samples = list(ordered_method.dataset.samples("test")[:2])
    n_items = len(ordered_method.dataset.catalog)
    rankings = torch.stack([torch.randperm(n_items), torch.arange(n_items)])
    if broken == "float":
        rankings = torch.softmax(rankings.float(), dim=1)
    else:
        rankings[1, 0] = {"repeated": 1, "outside": n_items, "negative": -1}[broken]
    with pytest.raises(AutomrError, match="not an order of the whole catalog"):
        ordered_method.ranks_in_order(samples, rankings)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_a_ranking_of_a_narrower_integer_type_ranks_as_int64(ordered_method, dtype):
    """The Protocol's ``Int`` allows int16 rankings; they were a raw RuntimeError of
    scatter_add_ (the extension-points review)."""
    samples = list(ordered_method.dataset.samples("test")[:2])
    n_items = len(ordered_method.dataset.catalog)
    assert n_items <= 127  # int8 holds them
    rankings = torch.stack([torch.randperm(n_items, generator=torch.Generator().manual_seed(0)),
                            torch.arange(n_items)])
    assert (ordered_method.ranks_in_order(samples, rankings.to(dtype))
            == ordered_method.ranks_in_order(samples, rankings))


@pytest.mark.parametrize("rows", [1, 3, 4])
def test_a_ranking_with_another_number_of_rows_than_samples_is_refused(ordered_method, rows):
    """A grounder's rows are the prompts': more rows (two per prompt, flattened) were read
    as the first samples' rankings, silently wrong ranks; fewer were a raw IndexError."""
    from automr.errors import AutomrError

    samples = list(ordered_method.dataset.samples("test")[:2])
    n_items = len(ordered_method.dataset.catalog)
    rankings = torch.stack([torch.randperm(n_items) for _ in range(rows)])
    with pytest.raises(AutomrError, match=rf"\({rows}, {n_items}\) item indices for 2 samples"):
        ordered_method.ranks_in_order(samples, rankings)


class NeverRanks:
    """A grounder whose ranking is never asked for: only its ``tie_key`` is read."""

    def __init__(self, tie_key: torch.Tensor | None = None) -> None:
        self.tie_key = tie_key

    def rank(self, llm, input_ids, attention_mask, layer, insert=None):
        raise AssertionError("only the ranking arithmetic is tested here")


SHARED_TITLES = {"i5": "Twin", "i6": "Twin", "i10": "Triple", "i11": "Triple", "i12": "Triple"}


def shared_title_dataset(folder):
    """The synthetic dataset with items i5, i6 sharing one title and i10, i11, i12 another (as
    Amazon editions do: CSV items are not merged by default)."""
    from automr.testing.synthetic import synthetic_dataset

    return synthetic_dataset(folder, titles=SHARED_TITLES)


@given(data=st.data(), exclude_seen=st.booleans(), together=st.booleans(),
       keyed=st.booleans())
def test_a_target_sharing_its_title_ranks_below_the_items_listed_with_it(
        shared_method, data, exclude_seen, together, keyed):
    """The model writes a title, not an item: items sharing the target's title that a grounder
    lists together with it (the constrained beams' titles, equal likelihoods) are ties, broken
    against the target as :func:`ranks_from_scores` (and the L2 grounding) break them; the
    constrained and likelihood grounders list them in catalog order, so the first listed
    edition ranked above the others. A grounder's ``tie_key`` (constrained-pop's prior) tells
    them apart: only equal values tie."""
    import attrs

    key = torch.tensor([float(i % 2) for i in range(len(shared_method.dataset.catalog))])
    grounder = NeverRanks(key if keyed else None)
    method = attrs.evolve(shared_method, exclude_seen=exclude_seen, grounder=grounder)
    catalog = method.dataset.catalog
    ids = list(catalog.ids)
    shared = [s for s in method.dataset.samples("test") if len(
        catalog.ids_for_title(catalog.title(s.target))) > 1]
    samples = data.draw(st.lists(st.sampled_from(shared), min_size=1, max_size=5))
    rankings, expected = [], []
    for sample in samples:
        target = ids.index(sample.target)
        mates = [ids.index(i) for i in catalog.ids_for_title(catalog.title(sample.target))]
        ranking = data.draw(st.permutations(range(len(ids))))
        if together:  # the title's items one after the other, where the first one stood
            mates = data.draw(st.permutations(mates))
            first = min(ranking.index(i) for i in mates)
            rest = [i for i in ranking if i not in mates]
            ranking = [*rest[:first], *mates, *rest[first:]]
        rankings.append(torch.tensor(ranking))
        seen = {ids.index(i) for i in sample.history} - {target} if exclude_seen else set()
        kept = [i for i in ranking if i not in seen]
        at = kept.index(target)
        while at + 1 < len(kept) and kept[at + 1] in mates and (
                not keyed or key[kept[at + 1]] == key[target]):
            at += 1
        expected.append(at)
    assert method.ranks_in_order(samples, torch.stack(rankings)) == expected


@pytest.fixture(scope="module")
def shared_method(tmp_path_factory, ordered_method):
    import attrs

    dataset = shared_title_dataset(tmp_path_factory.mktemp("shared"))
    assert len(dataset.catalog.repeated_titles) == 2
    return attrs.evolve(ordered_method, dataset=dataset)


def test_text_embeddings_come_from_the_base_model_with_a_peft_adapter_off(tiny_models,
                                                                          tokenizer):
    """Titles are embedded (and TRSR summaries written) by the base LM: a fine-tune's adapter
    is switched off, so the embeddings are the untuned model's, as their cache key says."""
    from peft import LoraConfig, get_peft_model

    from automr.llm.loading import without_peft_deprecation

    base = copy.deepcopy(tiny_models["qwen2"])
    texts = ["abc", "hello there"]
    expected = embed_texts(base, tokenizer, texts)
    with without_peft_deprecation():
        tuned = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, weight in tuned.named_parameters():
            if "lora_B" in name:
                weight.normal_(0.0, 1.0)  # peft starts B at 0: an adapter that changes nothing
        ids = torch.tensor([tokenizer("abc")["input_ids"]])
        assert not torch.allclose(tuned(input_ids=ids).logits, base(input_ids=ids).logits)
    torch.testing.assert_close(embed_texts(tuned, tokenizer, texts), expected)


def test_a_shared_titles_trie_value_is_its_first_catalog_index(tokenizer):
    targets = catalog_targets(tokenizer, ['"a"', '"b"', '"a"', '"a"'])
    assert targets.sharing() == {0: (0, 2, 3), 1: (1,)}
    assert targets.trie().value(targets.token_ids[3]) == 0


def test_catalog_targets_need_an_eos():
    from automr.testing.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()  # not the session's: the tests after it need its EOS
    tokenizer.eos_token = None
    assert tokenizer.eos_token_id is None
    with pytest.raises(ValueError, match="the tokenizer has no EOS token"):
        catalog_targets(tokenizer, TITLES)


@pytest.mark.parametrize(("kind", "given"), [
    ("constrained", {"num_beams": 0}), ("l2", {"num_beams": 0}),
    ("constrained", {"num_beams": -1}),
    ("constrained-pop", {"gamma": math.nan}), ("constrained-pop", {"gamma": math.inf})])
def test_build_grounder_refuses_a_beam_width_or_gamma_at_once(tiny_models, tmp_path, monkeypatch,
                                                               kind, given):
    """num_beams=0 silently became the default width (``num_beams or 10``), -1 failed in the
    beam search (negative dimension -1), and gamma=nan ranked the catalog's tail by NaN
    distances without a word; each is refused before the catalog is embedded."""
    import automr.grounding.catalog as catalog
    from automr.errors import AutomrError
    from automr.testing.synthetic import synthetic_dataset
    from automr.testing.tiny import tiny_tokenizer

    dataset = synthetic_dataset(tmp_path / "data")
    loaded = LoadedModel(model=tiny_models["llama"], tokenizer=tiny_tokenizer(), name="tiny",
                         fingerprint="f" * 64)
    monkeypatch.setattr(catalog, "catalog_embeddings", None)  # not reached
    with pytest.raises(AutomrError, match=next(iter(given))):
        build_grounder(kind, loaded, dataset, "f" * 64, cache_dir=tmp_path / "cache",
                       progress=False, **given)
    with pytest.raises(ValueError, match="num_beams"):
        ConstrainedGrounder(dataset_targets(loaded, dataset), num_beams=0)


def test_a_cache_of_an_older_embedding_rule_is_not_read_back(tiny_models, tmp_path):
    """A bfloat16 cache written before titles were embedded shortest first (9f45410) had the
    same name as today's, and was read back (501 of 1,194 ML-100K rows differed, up to 0.04):
    the names carry the rule, so a file of the older name is left alone."""
    import re

    from safetensors.torch import save_file

    from automr.testing.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.padding_side = "right"
    model = tiny_models["llama"]
    targets = catalog_targets(tokenizer, TITLES)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, name="tiny", fingerprint="f" * 64)
    catalog_embeddings(loaded, targets, "f" * 64, tmp_path, progress=False)
    [today] = (tmp_path / "grounding").iterdir()
    today.unlink()
    older = today.with_name(re.sub(r"-e\d+(?=\.safetensors$)", "", today.name))
    save_file({"embeddings": torch.zeros(len(targets), model.config.hidden_size)}, older)
    got = catalog_embeddings(loaded, targets, "f" * 64, tmp_path, progress=False)
    assert torch.equal(got, embed_texts(model, tokenizer, targets.texts))


@given(st.lists(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]), min_size=1, max_size=8),
                min_size=1, max_size=3).filter(lambda rows: len({len(r) for r in rows}) == 1))
def test_rank_by_distance_puts_equal_distances_in_catalog_order(rows):
    """Nearest first, and items at one distance (a title the catalog holds twice) in catalog
    order, as its docstring says and `automr recommend` lists them: only distinct distances
    were under test, so reversed ties passed (the mutation review)."""
    from automr.grounding.l2 import rank_by_distance

    ranked = rank_by_distance(torch.tensor(rows))
    for row, order in zip(rows, ranked.tolist(), strict=True):
        assert order == sorted(range(len(row)), key=lambda item: (row[item], item))
