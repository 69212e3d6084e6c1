"""The split on the real embedded SmolLM2-135M: exact at L=15, greedy decoding = generate(),
constrained beam search = generate() with the catalog trie."""

import pytest
import torch

from automr.llm import HFSplitLLM
from automr.llm.decoding import greedy_generate

pytestmark = pytest.mark.real_model

PROMPTS = [
    'The user has watched the following movies before: "Toy Story (1995)", "Heat (1995)". '
    "Predict the next movie:",
    "Recommend a film:",
]


def test_embedded_default_shape(real_model):
    config = real_model.model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)
    assert len(real_model.fingerprint()) == 64


def test_split_is_exact_at_layer_15(real_model):
    tok = real_model.tokenizer
    tok.padding_side = "left"
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    llm = HFSplitLLM(real_model.model)
    with torch.no_grad():
        split = llm.upper(llm.lower(batch.input_ids, batch.attention_mask, 15))
        for row, prompt in enumerate(PROMPTS):
            alone = real_model.model(**tok(prompt, return_tensors="pt")).logits[0]
            real = batch.attention_mask[row].bool()
            torch.testing.assert_close(split[row][real], alone, rtol=1e-4, atol=1e-4)


def test_greedy_generation_through_the_split_equals_generate(real_model):
    tok = real_model.tokenizer
    tok.padding_side = "left"
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    llm = HFSplitLLM(real_model.model)
    ours = greedy_generate(llm, batch.input_ids, batch.attention_mask, 15, max_new_tokens=12)
    with torch.no_grad():
        theirs = real_model.model.generate(
            **batch, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id,
            eos_token_id=None,
        )[:, batch.input_ids.shape[1]:]
    assert torch.equal(ours, theirs), (tok.batch_decode(ours), tok.batch_decode(theirs))


def test_constrained_beams_equal_generate(real_model, ml100k_prepared):
    """On real ML-100K test prompts, trie-constrained beam search through the split finds the
    titles transformers' generate finds (10 beams, the trie as prefix_allowed_tokens_fn)."""
    import attrs

    from automr.data.subsets import seeded_subset
    from automr.grounding import ConstrainedGrounder, dataset_targets
    from automr.methods.generative import left_padded_prompts

    dataset, _ = ml100k_prepared
    ids, mask = left_padded_prompts(real_model, dataset,
                                    seeded_subset(dataset.samples("test"), 2, 0))
    targets = dataset_targets(real_model, dataset)
    llm = HFSplitLLM(real_model.model)
    grounder = ConstrainedGrounder(targets)
    ours = grounder.beams(llm, ids, mask, 15)
    theirs = attrs.evolve(grounder, engine="generate").beams(llm, ids, mask, 15)
    for mine, hf in zip(ours, theirs, strict=True):
        titles = [targets.texts[grounder.trie.value(h.tokens)] for h in mine]
        assert titles == [targets.texts[grounder.trie.value(h.tokens)] for h in hf]
        assert [h.logprob for h in mine] == pytest.approx([h.logprob for h in hf], abs=1e-3)
