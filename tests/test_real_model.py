"""The split on the real embedded SmolLM2-135M: exact at L=15, greedy decoding = generate()."""

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
