"""The layer split is exact: upper(lower(x)) equals the full model, padded or not, cached or not."""

import math
import sys
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, strategies as st
from jaxtyping import TypeCheckError
from transformers import LlamaConfig, MistralConfig

from automr.errors import AutomrError
from automr.interfaces import SplitLLM
from automr.llm import HFSplitLLM, LayerState
from automr.llm.decoding import Decoding, prefill, step
from automr.llm.split import SUPPORTED_MODEL_TYPES, VISION_LANGUAGE_TYPES
from automr.testing.tiny import TINY_ARCHITECTURES, TINY_VOCAB, tiny_config, tiny_model

ARCHS = list(TINY_ARCHITECTURES)
NUM_LAYERS = 3
token = st.integers(min_value=3, max_value=TINY_VOCAB - 1)
sequences = st.lists(st.lists(token, min_size=1, max_size=9), min_size=1, max_size=3)


def pad(seqs: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad with token 2 on the given side; returns ids and a 0/1 mask."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), 2, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, seq in enumerate(seqs):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq)
        mask[row, span] = 1
    return ids, mask


def alone(model, seq: list[int]) -> torch.Tensor:
    """The plain computation: the full model on one unpadded sequence."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([seq])).logits[0]


def test_hf_split_is_a_split_llm(tiny_models):
    assert isinstance(HFSplitLLM(tiny_models["llama"]), SplitLLM)


def test_a_loaded_model_or_tokenizer_is_refused_for_the_model(tiny_models):
    """HFSplitLLM(loaded) failed with AttributeError: 'LoadedModel' object has no attribute
    'config'."""
    from automr.llm import LoadedModel
    from automr.testing.tiny import tiny_tokenizer

    loaded = LoadedModel(model=tiny_models["llama"], tokenizer=tiny_tokenizer(), name="tiny")
    for wrong in (loaded, loaded.tokenizer):
        with pytest.raises(AutomrError, match=f"not a {type(wrong).__name__}$"):
            HFSplitLLM(wrong)


@pytest.mark.parametrize("arch", ARCHS)
@given(seqs=sequences, layer=st.integers(0, NUM_LAYERS), side=st.sampled_from(["left", "right"]))
def test_upper_of_lower_equals_full_model(tiny_models, arch, seqs, layer, side):
    """The logits, and the final state L2 grounding embeds (the decoder's output after its
    final norm), equal the model's own."""
    model = tiny_models[arch]
    llm = HFSplitLLM(model)
    ids, mask = pad(seqs, side)
    with torch.no_grad():
        state = llm.lower(ids, mask, layer)
        logits, hidden = llm.upper(state), llm.final_hidden(state)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        batched = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        last = model.get_decoder()(input_ids=ids, attention_mask=mask,
                                   position_ids=positions).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(logits[real], batched[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden[real], last[real], rtol=1e-5, atol=1e-5)
    for row, seq in enumerate(seqs):
        torch.testing.assert_close(logits[row][real[row]], alone(model, seq), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@given(seqs=sequences, layer=st.integers(0, NUM_LAYERS - 1),
       side=st.sampled_from(["left", "right"]))
def test_lower_is_the_models_own_state_entering_layer_l(tiny_models, arch, seqs, layer, side):
    """The state ``lower`` gives at ``layer`` is the one the model's layer ``layer`` reads (its
    ``hidden_states[layer]``): lower and upper both shifted by one layer (layer-L memory,
    queries and insertion made at L-1) passed every test, as upper(lower) and the final state
    stayed the model's (the mutation review)."""
    model = tiny_models[arch]
    ids, mask = pad(seqs, side)
    with torch.no_grad():
        state = HFSplitLLM(model).lower(ids, mask, layer)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        states = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                       output_hidden_states=True).hidden_states
        if model.config.model_type in ("mamba", "falcon_mamba"):  # its hidden_states[i] is
            entering = (model.get_input_embeddings()(ids) if layer == 0  # layer i's output
                        else states[layer - 1])
        else:
            entering = states[layer]
    real = mask.bool()
    torch.testing.assert_close(state.hidden[real], entering[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@given(seqs=sequences, layer=st.integers(0, NUM_LAYERS), side=st.sampled_from(["left", "right"]))
def test_logits_at_selected_positions(tiny_models, arch, seqs, layer, side):
    llm = HFSplitLLM(tiny_models[arch])
    ids, mask = pad(seqs, side)
    with torch.no_grad():
        state = llm.lower(ids, mask, layer)
        full = llm.upper(state)
        last = state.last_positions()
        selected = llm.upper(state, logits_at=last)
    torch.testing.assert_close(selected[:, 0], full[torch.arange(len(seqs)), last[:, 0]])
    for row, seq in enumerate(seqs):
        assert ids[row, last[row, 0]] == seq[-1]


def test_logits_at_with_another_row_count_than_the_state_is_refused(tiny_models):
    """gather takes an index with fewer rows: logits_at [[5]] for 3 sequences gave row 0's
    logits only, without a word."""
    llm = HFSplitLLM(tiny_models["llama"])
    ids = torch.randint(5, 100, (3, 6))
    state = llm.lower(ids, torch.ones_like(ids, dtype=torch.bool), 2)
    for rows in (1, 2, 4):
        with pytest.raises(AutomrError, match=f"logits_at has {rows} rows for a state of 3"):
            llm.upper(state, logits_at=torch.full((rows, 1), 5))
    assert llm.upper(state, logits_at=torch.full((3, 1), 5)).shape[:2] == (3, 1)


def test_an_insert_that_changes_the_states_layer_or_rows_is_refused(tiny_models):
    """upper runs from the state's own layer: an insert that relabelled its result layer 0
    ran layers 0..L-1 a second time (logits 0.17 off, generation went on)."""
    llm = HFSplitLLM(tiny_models["llama"])
    ids = torch.randint(5, 100, (2, 6))
    mask = torch.ones_like(ids, dtype=torch.bool)
    kept = prefill(llm, ids, mask, 2, lambda state: state).logits
    torch.testing.assert_close(kept, prefill(llm, ids, mask, 2).logits)
    for insert in (lambda s: LayerState(hidden=s.hidden, mask=s.mask, layer=0),
                   lambda s: LayerState(hidden=s.hidden[:1], mask=s.mask[:1], layer=s.layer)):
        with pytest.raises(AutomrError, match="memory is joined to each row at the layer"):
            prefill(llm, ids, mask, 2, insert)
    # a combiner of the user's that returns a tensor, nothing, or states of another width or
    # dtype failed deep in the model (AttributeError, a matmul's RuntimeError; the API review)
    for insert, message in (
            (lambda s: s.hidden, "gave a Tensor, not a LayerState"),
            (lambda s: None, "gave a NoneType, not a LayerState"),
            (lambda s: LayerState(hidden=torch.cat([s.hidden, s.hidden], -1), mask=s.mask,
                                  layer=s.layer), "width 64, torch.float32 on cpu for the "
                                                  "model's width 32"),
            (lambda s: LayerState(hidden=s.hidden.double(), mask=s.mask, layer=s.layer),
             "torch.float64")):
        with pytest.raises(AutomrError, match=message):
            prefill(llm, ids, mask, 2, insert)


@pytest.mark.parametrize("arch", ARCHS)
@given(
    seqs=st.lists(st.lists(token, min_size=2, max_size=10), min_size=1, max_size=3),
    layer=st.integers(0, NUM_LAYERS), side=st.sampled_from(["left", "right"]),
    split=st.integers(1, 9),
)
def test_incremental_decoding_equals_full_forward(tiny_models, arch, seqs, layer, side, split):
    """Prefill each sequence but its last ``rest`` tokens (prefixes of different lengths, so
    the batch is padded on ``side``), then feed the rest token by token through both halves'
    caches."""
    model = tiny_models[arch]
    llm = HFSplitLLM(model)
    rest = min(split, min(map(len, seqs)) - 1)
    cuts = [len(seq) - rest for seq in seqs]
    ids, mask = pad([seq[:cut] for seq, cut in zip(seqs, cuts, strict=True)], side)
    decoding = prefill(llm, ids, mask, layer)
    for row, seq in enumerate(seqs):
        torch.testing.assert_close(decoding.logits[row], alone(model, seq[: cuts[row]])[-1],
                                   rtol=1e-5, atol=1e-5)
    for done in range(rest):
        step(llm, decoding, torch.tensor([seq[cut + done] for seq, cut in zip(seqs, cuts,
                                                                              strict=True)]))
        for row, seq in enumerate(seqs):
            expected = alone(model, seq[: cuts[row] + done + 1])[-1]
            torch.testing.assert_close(decoding.logits[row], expected, rtol=1e-5, atol=1e-5)


class OldLayer(torch.nn.Module):
    """A decoder layer whose forward names its cache ``past_key_values``, as transformers
    5.20-5.23's do (5.24 renamed it ``cache``); the cache is handed on by position, which
    both name alike. Other keywords are dropped, as those layers' attention ignored them."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states, attention_mask=None, position_ids=None,
                past_key_values=None, use_cache=False, position_embeddings=None, **kwargs):
        return self.layer(hidden_states, attention_mask, position_ids, past_key_values,
                          use_cache=use_cache, position_embeddings=position_embeddings)


def test_a_layer_that_names_its_cache_past_key_values_gets_it():
    """Decoding through layers of transformers before 5.24 fills their caches: the cache went
    by the new name ``cache`` into the layers' ``**kwargs``, was never filled, and the second
    step failed on a mask longer than the keys."""
    model = tiny_model(tiny_config("llama", num_layers=NUM_LAYERS), seed=0)
    seq = [5, 6, 7, 8, 9]
    expected = alone(model, seq)
    decoder = model.get_decoder()
    decoder.layers = torch.nn.ModuleList(OldLayer(layer) for layer in decoder.layers)
    llm = HFSplitLLM(model)
    with torch.no_grad():
        decoding = prefill(llm, torch.tensor([seq[:3]]), torch.ones(1, 3, dtype=torch.long), 1)
        for done, token in enumerate(seq[3:]):
            step(llm, decoding, torch.tensor([token]))
            torch.testing.assert_close(decoding.logits[0], expected[3 + done], rtol=1e-5,
                                       atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@given(prefix=st.lists(token, min_size=0, max_size=4), seq=st.lists(token, min_size=1, max_size=8))
def test_inserted_positions_at_layer_zero_equal_a_longer_prompt(tiny_models, arch, prefix, seq):
    """Embeddings inserted before the prompt at layer 0 act exactly like extra prompt tokens.

    With ``prefix`` empty this is the identity: inserting zero positions changes nothing.
    """
    model = tiny_models[arch]
    llm = HFSplitLLM(model)
    with torch.no_grad():
        state = llm.lower(torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long), 0)
        inserted = llm.embed(torch.tensor([prefix], dtype=torch.long))
        combined = LayerState(
            hidden=torch.cat([inserted, state.hidden], 1),
            mask=torch.cat([torch.ones(1, len(prefix), dtype=torch.bool), state.mask], 1),
            layer=0,
        )
        logits = llm.upper(combined)[0, len(prefix):]
    torch.testing.assert_close(logits, alone(model, prefix + seq)[len(prefix):], rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@given(seq=st.lists(token, min_size=1, max_size=8), extra=st.integers(0, 4),
       layer=st.integers(0, NUM_LAYERS), where=st.integers(0, 8))
def test_masked_insertions_change_nothing(tiny_models, arch, seq, extra, layer, where):
    """Masked positions inserted anywhere (start, middle, end) leave the logits unchanged.

    In the middle this also checks positions: they must count real tokens only.
    """
    llm = HFSplitLLM(tiny_models[arch])
    where = min(where, len(seq))
    with torch.no_grad():
        state = llm.lower(torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long), layer)
        junk = torch.full((1, extra, llm.hidden_size), 3.0)
        off = torch.zeros(1, extra, dtype=torch.bool)
        hidden, mask = state.hidden, state.mask
        combined = LayerState(
            hidden=torch.cat([hidden[:, :where], junk, hidden[:, where:]], 1),
            mask=torch.cat([mask[:, :where], off, mask[:, where:]], 1), layer=layer,
        )
        logits = llm.upper(combined)[combined.mask]
        expected = llm.upper(state)[0]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch,overrides,windows", [
    ("mistral", {}, [4, 4, 4]),  # every layer slides
    ("gemma3_text", {}, [4, None, 4]),  # local layers slide, global ones see everything
    ("qwen3", dict(use_sliding_window=True, sliding_window=3, max_window_layers=1),
     [None, 3, 3]),  # Qwen: the layers from max_window_layers on
    ("olmo3", dict(num_layers=4), [4, 4, 4, None]),  # three local layers to a global one
    ("qwen3_moe", dict(use_sliding_window=True, sliding_window=3), [3, 3, 3]),  # no layer types
    # Command R7B and EXAONE 4.0 32B: three local layers (with RoPE) to a global one (without)
    ("cohere2", dict(num_layers=5, sliding_window_pattern=4), [4, 4, 4, None, 4]),
    ("exaone4", dict(num_layers=5, sliding_window_pattern=4), [4, 4, 4, None, 4]),
    # EXAONE 4.0 1.2B: no window, every layer global and with RoPE
    ("exaone4", dict(sliding_window=None, layer_types=["full_attention"] * 3), [None] * 3),
    ("llama", {}, [None, None, None]),
    ("ministral", {}, [4, None, 4]),  # Ministral 8B: sliding layers among full ones
    ("vaultgemma", {}, [4, None, 4]),
    ("starcoder2", {}, [4, 4, 4]),
    ("cohere2_moe", {}, [None, 4, None]),  # a dense global first layer with RoPE
    # no window: positions far past Ministral 3's (toy) original context, whose queries
    # are scaled up there by position (Llama 4's scale), cached or not
    ("ministral3", {}, [None, None, None]),
    ("mistral3", {}, [None, None, None]),
    # Gemma 4: a local layer, then global ones with wider heads and keys as values; its
    # vision-language class around it, with experts beside every MLP
    ("gemma4_text", {}, [4, None, None]),
    ("gemma4", dict(layer_types=["sliding_attention", "full_attention", "sliding_attention",
                                 "full_attention"], num_layers=4), [4, None, 4, None]),
])
def test_sliding_window_layers_see_what_the_full_model_sees_far_past_the_window(
        arch, overrides, windows):
    """Sequences several windows long, padded left and right, split at every layer and decoded
    token by token through both halves' caches, equal the full model on each sequence alone."""
    model = tiny_model(tiny_config(arch, **{"num_layers": NUM_LAYERS, **overrides}))
    llm = HFSplitLLM(model)
    assert llm.layer_windows == windows
    generator = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, TINY_VOCAB, (n,), generator=generator).tolist() for n in (23, 16)]
    for side in ("left", "right"):
        ids, mask = pad(seqs, side)
        for layer in range(llm.num_layers + 1):
            with torch.no_grad():
                logits = llm.upper(llm.lower(ids, mask, layer))
            for row, seq in enumerate(seqs):
                torch.testing.assert_close(logits[row][mask[row].bool()], alone(model, seq),
                                           rtol=1e-5, atol=1e-5)
        decoding = prefill(llm, *pad([seq[:9] for seq in seqs], side), 2)
        for done in range(9, 16):
            step(llm, decoding, torch.tensor([seq[done] for seq in seqs]))
            for row, seq in enumerate(seqs):
                torch.testing.assert_close(decoding.logits[row], alone(model, seq[: done + 1])[-1],
                                           rtol=1e-5, atol=1e-5)


def test_every_supported_model_type_has_a_tiny_model_under_test():
    assert set(SUPPORTED_MODEL_TYPES + VISION_LANGUAGE_TYPES) == set(TINY_ARCHITECTURES)


def test_an_unsupported_model_type_is_refused_by_name():
    model = tiny_model(tiny_config(num_layers=1))
    model.config.model_type = "gpt2"
    with pytest.raises(AutomrError, match="'gpt2' is not supported by the layer split"):
        HFSplitLLM(model)


@pytest.mark.parametrize("helper", ["HFSplitLLM", "layer_linear_modules",
                                    "decoder_layers_name"])
def test_a_model_without_the_split_is_refused_by_name_before_its_layers_are_read(helper):
    """``automr finetune`` lists a model's LoRA targets before it splits it: a GPT-2 (its
    layers are ``h``) failed with a raw AttributeError ('GPT2Model' has no 'layers')."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from automr.llm import split

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64))
    with pytest.raises(AutomrError, match="'gpt2' is not supported by the layer split"):
        getattr(split, helper)(model)


def test_only_known_vision_language_wrappers_are_split(tiny_models):
    """Gemma 3 4B-27B's class holds a ``gemma3_text`` language model beside a vision tower:
    the split runs that language model. Another wrapper of a supported language model (an OCR
    or speech model around Qwen2, say) is refused, its forward not being checked here."""
    assert HFSplitLLM(tiny_models["gemma3"]).config.model_type == "gemma3_text"
    model = tiny_model(tiny_config("gemma3", num_layers=1))
    model.config.model_type = "got_ocr2"
    with pytest.raises(AutomrError, match="'got_ocr2' is not supported by the layer split"):
        HFSplitLLM(model)


def test_ministral3_beside_a_vision_tower_runs_its_language_model_and_mistral_small_too():
    """Ministral 3's hub checkpoints are ``mistral3`` (Mistral3ForConditionalGeneration): a
    ``ministral3`` language model beside a Pixtral tower; Mistral Small 3.1 and 3.2 have the
    same class around a ``mistral`` one. The split runs that language model, exactly; the
    class around another language model is refused, naming both."""
    from automr.testing.tiny import mistral3_config

    assert HFSplitLLM(tiny_model(tiny_config("mistral3"))).config.model_type == "ministral3"
    mistral = tiny_config("mistral", num_layers=NUM_LAYERS)
    small = tiny_model(mistral3_config(MistralConfig, **mistral.to_diff_dict()))
    llm = HFSplitLLM(small)
    assert llm.config.model_type == "mistral" and llm.layer_windows == [4, 4, 4]
    ids, mask = pad([[5, 9, 40, 7, 12, 3, 8, 20], [8, 11, 30]], "left")
    with torch.no_grad():
        for layer in range(NUM_LAYERS + 1):
            logits = llm.upper(llm.lower(ids, mask, layer))
            for row, seq in enumerate([[5, 9, 40, 7, 12, 3, 8, 20], [8, 11, 30]]):
                torch.testing.assert_close(logits[row][mask[row].bool()], alone(small, seq))
    llama = tiny_config("llama", num_layers=1)
    with pytest.raises(AutomrError, match="'mistral3' is not supported by the layer split "
                                          "with a llama language model"):
        HFSplitLLM(tiny_model(mistral3_config(LlamaConfig, **llama.to_diff_dict())))


def test_gemma4_layers_that_share_keys_and_values_run_exactly_within_a_half():
    """Gemma 4's last ``num_kv_shared_layers`` layers reuse the keys and values of the last
    earlier layer of their type. Split where both lie in one half, the split equals the model,
    prefilled and decoded through the caches; a split between them has no keys for the
    positions a combiner inserts, and is refused by name."""
    model = tiny_model(tiny_config("gemma4_text", num_layers=5, num_kv_shared_layers=2))
    llm = HFSplitLLM(model)
    assert llm.kv_sources == {3: 1, 4: 1}  # layers s f s | f f: both reuse layer 1's
    seqs = [[5, 9, 40, 7, 12, 3, 8, 20], [8, 11, 30, 6]]
    ids, mask = pad(seqs, "left")
    with torch.no_grad():
        for layer in (0, 1, 5):
            logits = llm.upper(llm.lower(ids, mask, layer))
            decoding = prefill(llm, ids[:, :-2], mask[:, :-2], layer)
            step(llm, decoding, ids[:, -2])
            step(llm, decoding, ids[:, -1])
            for row, seq in enumerate(seqs):
                expected = alone(model, seq)
                torch.testing.assert_close(logits[row][mask[row].bool()], expected)
                torch.testing.assert_close(decoding.logits[row], expected[-1])
        for layer in (2, 3, 4):
            with pytest.raises(AutomrError, match=f"layer {layer} splits this model between "
                                                  f"layers that share keys and values"):
                llm.lower(ids, mask, layer)


def test_gemma4_local_layers_that_share_keys_and_values_see_what_the_model_sees_past_the_window():
    """Local layers reusing a local layer's keys and values (Gemma 4 E2B's last layers are
    local and global): over sequences several windows long, padded left and right, with masked
    positions inserted, and decoded through both halves' caches, the split equals the model
    at every layer it allows."""
    local, full = "sliding_attention", "full_attention"
    model = tiny_model(tiny_config("gemma4_text", num_layers=6, num_kv_shared_layers=3,
                                   layer_types=[local, local, full, local, local, full]))
    llm = HFSplitLLM(model)
    assert llm.kv_sources == {3: 1, 4: 1, 5: 2} and llm.layer_windows == [4, 4, None, 4, 4, None]
    generator = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, TINY_VOCAB, (n,), generator=generator).tolist() for n in (23, 16)]
    expected = [alone(model, seq) for seq in seqs]
    junk, off = torch.full((2, 3, llm.hidden_size), 3.0), torch.zeros(2, 3, dtype=torch.bool)
    for side in ("left", "right"):
        ids, mask = pad(seqs, side)
        for layer in (0, 1, 6):
            with torch.no_grad():
                state = llm.lower(ids, mask, layer)
                inserted = LayerState(
                    hidden=torch.cat([state.hidden[:, :10], junk, state.hidden[:, 10:]], 1),
                    mask=torch.cat([state.mask[:, :10], off, state.mask[:, 10:]], 1),
                    layer=layer)
                logits = llm.upper(inserted)
            for row in range(len(seqs)):
                torch.testing.assert_close(logits[row][inserted.mask[row]], expected[row],
                                           rtol=1e-5, atol=1e-5)
            decoding = prefill(llm, *pad([seq[:9] for seq in seqs], side), layer)
            for done in range(9, 16):
                step(llm, decoding, torch.tensor([seq[done] for seq in seqs]))
                for row in range(len(seqs)):
                    torch.testing.assert_close(decoding.logits[row], alone(
                        model, seqs[row][: done + 1])[-1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["gemma4", "gemma4_unified"])
def test_gemma4_vision_language_class_embeds_its_placeholder_ids_as_padding_and_so_does_the_split(
        arch):
    """Gemma 4's vision-language classes (12B's too) embed their image, video and audio
    placeholder ids (ids of the text vocabulary: 258880, 258884 and 258881 in the published
    configs) as the pad token, text alone too: the split embedded them as themselves, off the
    model wherever a text held one. It embeds them as the model does, in a prompt, a decoded
    token and an inserted embedding alike."""
    config = tiny_config(arch, num_layers=NUM_LAYERS)
    config.image_token_id, config.video_token_id, config.audio_token_id = 250, 251, 252
    model = tiny_model(config)
    llm = HFSplitLLM(model)
    seq = [5, 250, 9, 40, 251, 7, 252, 12]
    expected = alone(model, seq)
    with torch.no_grad():
        for layer in range(NUM_LAYERS + 1):
            state = llm.lower(torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long),
                              layer)
            torch.testing.assert_close(llm.upper(state)[0], expected)
        decoding = prefill(llm, torch.tensor([seq[:-2]]), torch.ones(1, len(seq) - 2,
                                                                     dtype=torch.long), 1)
        step(llm, decoding, torch.tensor([seq[-2]]))
        step(llm, decoding, torch.tensor([seq[-1]]))
        torch.testing.assert_close(decoding.logits[0], expected[-1])
        torch.testing.assert_close(llm.embed(torch.tensor([[250, 251, 252]])),
                                   llm.embed(torch.tensor([[2, 2, 2]])))


def test_gemma4_with_per_layer_embeddings_is_refused_and_vision_attention_is_not():
    """Gemma 4 E2B and E4B feed each layer an embedding of the token ids, which inserted soft
    tokens lack: refused. ``use_bidirectional_attention="vision"`` only opens image tokens'
    attention: a text model stays causal, and is split."""
    with pytest.raises(AutomrError, match="per-layer embeddings"):
        HFSplitLLM(tiny_model(tiny_config("gemma4_text", num_layers=2,
                                          hidden_size_per_layer_input=4)))
    vision = tiny_model(tiny_config("gemma4_text", num_layers=2,
                                    use_bidirectional_attention="vision"))
    llm, seq = HFSplitLLM(vision), [5, 9, 40, 7, 12, 3]
    with torch.no_grad():
        state = llm.lower(torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long), 1)
        torch.testing.assert_close(llm.upper(state)[0], alone(vision, seq))
    with pytest.raises(AutomrError, match="bidirectional"):
        HFSplitLLM(tiny_model(tiny_config("gemma4_text", num_layers=2,
                                          use_bidirectional_attention="all")))


@pytest.mark.parametrize("arch,field", [("starcoder2", "embedding_dropout"),
                                        ("phi", "embd_pdrop"), ("gpt_neox", "hidden_dropout")])
def test_embeddings_drop_out_in_training_only(arch, field):
    """StarCoder 2 applies dropout to its embeddings in its model's forward (no module does),
    in training, Phi and GPT-NeoX through a module of the decoder (``embed_dropout``,
    ``emb_dropout``): the split does too, never in eval mode (StarCoder 2's: where the
    embedding module is in training mode; a frozen lower half runs in eval mode)."""
    model = tiny_model(tiny_config(arch, num_layers=1, **{field: 0.5}))
    llm = HFSplitLLM(model)
    ids = torch.tensor([list(range(5, 45))])
    plain = model.get_input_embeddings()(ids)
    torch.testing.assert_close(llm.embed(ids), plain)
    model.train()
    dropped = llm.embed(ids)
    assert 0.3 < (dropped == 0).float().mean().item() < 0.7
    torch.testing.assert_close(dropped[dropped != 0], 2 * plain[dropped != 0])
    if arch == "starcoder2":
        model.get_input_embeddings().eval()
        torch.testing.assert_close(llm.embed(ids), plain)


def test_wrong_shapes_are_rejected(tiny_models):
    llm = HFSplitLLM(tiny_models["llama"])
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(TypeCheckError):
        llm.lower(ids, torch.ones(1, 4, dtype=torch.long), 1)  # mask longer than ids
    with pytest.raises(TypeCheckError):
        llm.lower(ids[0], torch.ones(3, dtype=torch.long), 1)  # missing batch axis
    state = llm.lower(ids, torch.ones(1, 3, dtype=torch.long), 1)
    with pytest.raises(TypeCheckError):
        llm.upper(state, logits_at=torch.tensor([0]))  # positions need [batch k]
    with pytest.raises(ValueError, match="disagree"):
        LayerState(hidden=state.hidden, mask=torch.ones(1, 2, dtype=torch.bool), layer=1)


def test_layer_out_of_range_is_a_clear_error(tiny_models):
    from automr.errors import AutomrError

    llm = HFSplitLLM(tiny_models["llama"])
    with pytest.raises(AutomrError, match=r"outside 0\.\.3"):
        llm.lower(torch.tensor([[5]]), torch.ones(1, 1, dtype=torch.long), 4)


def test_decoding_accepts_an_undecorated_insert_that_lengthens_the_state(tiny_models):
    """``insert`` runs in its own shape scope, so it may return more positions than the prompt."""
    from automr.llm.decoding import greedy_generate

    llm = HFSplitLLM(tiny_models["llama"])
    ids = torch.tensor([[5, 6, 7]])

    def prepend_two(state: LayerState) -> LayerState:
        extra = torch.ones(1, 2, llm.hidden_size)
        return LayerState(hidden=torch.cat([extra, state.hidden], 1),
                          mask=torch.cat([torch.ones(1, 2, dtype=torch.bool), state.mask], 1),
                          layer=state.layer)

    out = greedy_generate(llm, ids, torch.ones_like(ids), 1, max_new_tokens=3, insert=prepend_two)
    assert out.shape == (1, 3)


def longrope_phi3(original: int = 8) -> torch.nn.Module:
    """A tiny Phi-3 with longrope as Phi-3 128k, Phi-3.5 mini and Phi-4 mini have it (their
    original context 4,096 of 131,072, here ``original`` of 32 times that; one factor per
    rotary frequency, long ones far above the short ones)."""
    return tiny_model(tiny_config(
        "phi3", num_layers=2, original_max_position_embeddings=original,
        max_position_embeddings=32 * original,
        rope_scaling=dict(type="longrope", short_factor=[1.0, 1.5], long_factor=[4.0, 40.0])))


@pytest.mark.parametrize("lengths", [[3, 6, 8], [11, 12, 20], [3, 12, 20]])
def test_longrope_split_equals_the_full_model_within_and_past_its_original_context(lengths):
    """Longrope rotates every position with its short or its long factors, by the sequence's
    length; both halves do as the model does, on either side of the switch, cached or not, and
    in a batch with rows on both sides each row as alone (the batch's longest row set the
    factors of all: a row within the switch was 9e-4 off beside one past it)."""
    model, seqs = longrope_phi3(), [list(range(5, 5 + n)) for n in lengths]
    llm = HFSplitLLM(model)
    ids, mask = pad(seqs, "left")
    with torch.no_grad():
        for layer in range(llm.num_layers + 1):
            logits = llm.upper(llm.lower(ids, mask, layer))
            for row, seq in enumerate(seqs):
                torch.testing.assert_close(logits[row][mask[row].bool()], alone(model, seq))
            decoding = prefill(llm, *pad([seq[:-2] for seq in seqs], "left"), layer)
            for row, seq in enumerate(seqs):  # no row's cache crosses the switch
                torch.testing.assert_close(decoding.logits[row], alone(model, seq[:-2])[-1])
            for done in (2, 1):
                step(llm, decoding, torch.tensor([seq[-done] for seq in seqs]))
            for row, seq in enumerate(seqs):
                torch.testing.assert_close(decoding.logits[row], alone(model, seq)[-1])


def test_decoding_across_the_longrope_switch_is_a_clear_error():
    """Past its original context longrope rotates every position with the long factors, so a
    cache holding keys rotated with the short ones cannot continue there (transformers'
    generate recomputes its cache at that point; the split's caches are per half)."""
    llm = HFSplitLLM(longrope_phi3(original=8))
    prompt = torch.tensor([list(range(5, 12))])
    decoding = prefill(llm, prompt, torch.ones_like(prompt), 1)
    step(llm, decoding, torch.tensor([12]))  # 8 positions: still the short factors
    with pytest.raises(AutomrError, match=r"9 positions.*original context of 8.*long factors"):
        step(llm, decoding, torch.tensor([13]))
    # a row crossing beside one already past the switch (whose keys have the long factors)
    prompts = torch.tensor([[2, 2, 2, 5, 6, 7, 8, 9, 10, 11], list(range(5, 15))])
    decoding = prefill(llm, prompts, (prompts != 2).long(), 1)
    step(llm, decoding, torch.tensor([12, 15]))
    with pytest.raises(AutomrError, match=r"8 positions to 9 positions.*original context of 8"):
        step(llm, decoding, torch.tensor([13, 16]))


def test_dynamic_ntk_rope_is_exact_within_its_context_and_refused_past_it():
    """InternLM3-8B's dynamic NTK RoPE rescales every position's rotation past
    ``max_position_embeddings`` by the longest sequence the rotary embedding is called on (and
    keeps the scale): a row within it beside a longer one was 1e-4 off in the toy. Within it the
    split is exact; a sequence past it is refused, prompt or decoding."""
    model = tiny_model(tiny_config("internlm3", max_position_embeddings=16, rope_parameters=dict(
        rope_type="dynamic", rope_theta=10000.0, factor=6.0)))
    llm = HFSplitLLM(model)
    seqs = [list(range(5, 12)), list(range(5, 21))]  # 7 and 16 positions
    ids, mask = pad(seqs, "left")
    with torch.no_grad():
        logits = llm.upper(llm.lower(ids, mask, 1))
    for row, seq in enumerate(seqs):
        torch.testing.assert_close(logits[row][mask[row].bool()], alone(model, seq))
    longer = pad([seqs[0], seqs[1] + [21]], "left")
    with pytest.raises(AutomrError, match=r"17 positions is past .*16.*dynamic NTK"):
        llm.lower(*longer, 1)
    decoding = prefill(llm, ids, mask, 1)
    with pytest.raises(AutomrError, match=r"17 positions is past"):
        step(llm, decoding, torch.tensor([12, 21]))


@pytest.mark.parametrize("opening_length", [10, 16])  # 16: the opening fills the context
def test_a_shared_opening_does_not_split_a_prompt_across_the_longrope_switch(opening_length):
    """prefill(share_prefix=True) runs the batch's common opening first and the rest on its
    cache: for prompts past longrope's switch that continued a short-factor cache there (an
    error), where the whole prompt at once is the model's forward. The target-likelihood
    measure shares by default, so on a Phi-3 128k with long prompts it failed; the opening is
    now run apart only where the prompts stay on its side of the switch."""
    def prepend_two(state: LayerState) -> LayerState:  # memory joined at the split layer
        extra = torch.full((state.batch_size, 2, state.hidden.shape[2]), 0.5)
        return LayerState(hidden=torch.cat([extra, state.hidden], 1), layer=state.layer,
                          mask=torch.cat([torch.ones(state.batch_size, 2, dtype=torch.bool),
                                          state.mask], 1))

    model = longrope_phi3(original=16)
    llm = HFSplitLLM(model)
    opening = list(range(40, 40 + opening_length))  # >= MIN_SHARED, within the original context
    seqs = [opening + list(range(20, 28)), opening + list(range(30, 37))]  # past it
    for layer in (0, 1, 2):
        for insert in (None, prepend_two):
            decoding = prefill(llm, *pad(seqs, "left"), layer, insert, share_prefix=True)
            if insert is None:
                for row, seq in enumerate(seqs):
                    torch.testing.assert_close(decoding.logits[row], alone(model, seq)[-1])
            unshared = prefill(llm, *pad(seqs, "left"), layer, insert)
            torch.testing.assert_close(decoding.logits, unshared.logits)


@pytest.mark.parametrize("layer_types", [None, ["full_attention"] * NUM_LAYERS])
def test_granite_4_with_rotary_positions_is_exact_with_mamba_layers_or_without(layer_types):
    """Granite 4 (granitemoehybrid) runs through the split with RoPE (as here) or without (the
    tiny model of every test), its Mamba2 layers among attention ones (Granite 4.0-H) or
    attention layers only (granite-4.0-micro)."""
    model = tiny_model(tiny_config("granitemoehybrid", position_embedding_type="rope",
                                   **({} if layer_types is None else {"layer_types": layer_types})))
    llm = HFSplitLLM(model)
    assert len(llm.linear_layers) == (2 if layer_types is None else 0)
    seqs = [[5, 9, 40, 7, 12, 3], [8, 11]]
    ids, mask = pad(seqs, "left")
    with torch.no_grad():
        for layer in range(NUM_LAYERS + 1):
            split = llm.upper(llm.lower(ids, mask, layer))
            for row, seq in enumerate(seqs):
                torch.testing.assert_close(split[row][mask[row].bool()], alone(model, seq))


def test_nemotron_h_blocks_of_every_kind_are_exact_masks_anywhere():
    """Nemotron-H with each of its block kinds (Mamba2, experts, attention, Mamba2, MLP: the
    tiny model's 4 layers have no MLP block), masked positions inside a row: split at every
    layer, each row gives the model's logits on its sequence alone."""
    model = tiny_model(tiny_config("nemotron_h", num_layers=5))
    assert model.config.layer_types[-1] == "mlp"
    llm = HFSplitLLM(model)
    seqs = [[5, 9, 40, 7, 12, 3, 8, 11, 20, 21], [8, 11, 4]]
    ids, mask = pad(seqs, "right")
    ids, mask = torch.cat([ids[:, :2], ids[:, :3], ids[:, 2:]], 1), torch.cat(
        [mask[:, :2], torch.zeros_like(mask[:, :3]), mask[:, 2:]], 1).bool()
    with torch.no_grad():
        for layer in range(6):
            split = llm.upper(llm.lower(ids, mask, layer))
            for row, seq in enumerate(seqs):
                torch.testing.assert_close(split[row][mask[row]], alone(model, seq))


def test_lfm2_with_biased_convolutions_is_exact_where_transformers_own_forward_is_not():
    """LFM2 with biases around its convolutions (``conv_bias``; the published checkpoints have
    none): a padded or masked position's input to the convolution is the bias's, not zero,
    though transformers zeroes its hidden state, so its own forward is off on a left-padded
    row. The split skips those positions: each row, padded left or with masked positions
    inside, split at every layer, gives the model's logits on its sequence alone."""
    model = tiny_model(tiny_config("lfm2", num_layers=4, conv_bias=True))
    llm = HFSplitLLM(model)
    seqs = [[5, 9, 40, 7, 12, 3, 8, 11, 20, 21], [8, 11, 4]]
    left = pad(seqs, "left")
    inside = (torch.cat([left[0][:, :8], left[0][:, :3], left[0][:, 8:]], 1),
              torch.cat([left[1][:, :8], torch.zeros_like(left[1][:, :3]), left[1][:, 8:]], 1))
    with torch.no_grad():
        own = model(input_ids=left[0], attention_mask=left[1]).logits
        assert not torch.allclose(own[1][left[1][1].bool()], alone(model, seqs[1]), atol=1e-3)
        for ids, mask in (left, inside):
            for layer in range(5):
                split = llm.upper(llm.lower(ids, mask, layer))
                for row, seq in enumerate(seqs):
                    torch.testing.assert_close(split[row][mask[row].bool()], alone(model, seq))


@pytest.mark.parametrize("arch", ["mamba2", "mamba", "falcon_mamba"])
def test_mamba_in_bfloat16_keeps_its_residual_stream_in_float32_as_the_model_does(arch):
    """Mamba's and Mamba2's blocks add their mixer's output to a float32 residual
    (``residual_in_fp32``), so a bfloat16 model's states are float32 past its first layer: the
    split's are too (rounding them to bfloat16 after each layer puts the logits 0.01 to 0.03
    off), and its logits, padded left, at every layer, are the model's on each row alone."""
    model = tiny_model(tiny_config(arch, num_layers=4)).to(torch.bfloat16)
    llm = HFSplitLLM(model)
    seqs = [[5, 9, 40, 7, 12, 3, 8, 11, 20, 21], [8, 11, 4]]
    ids, mask = pad(seqs, "left")
    with torch.no_grad():
        for layer in range(5):
            state = llm.lower(ids, mask, layer)
            assert state.hidden.dtype == (torch.bfloat16 if layer == 0 else torch.float32)
            logits = llm.upper(state)
            for row, seq in enumerate(seqs):
                assert torch.equal(logits[row][mask[row].bool()].float(), alone(model, seq))


@pytest.mark.parametrize("arch", ["mamba", "falcon_mamba", "jamba"])
def test_mamba1_continues_a_cached_prompt_where_transformers_own_forward_does_not(arch):
    """transformers' own Mamba1 forward starts every multi-token call's scan from zeros (its
    cache's state is dropped: a prompt's second chunk is off) and its padded positions still
    decay the state (a masked block inside a row is off). The split runs both as the model runs
    each row alone."""
    model = tiny_model(tiny_config(arch, num_layers=4))
    llm = HFSplitLLM(model)
    seq = [5, 9, 40, 7, 12, 3, 8, 11, 20, 21]
    with torch.no_grad():
        expected = alone(model, seq)
        first = model(input_ids=torch.tensor([seq[:6]]), use_cache=True)
        second = model(input_ids=torch.tensor([seq[6:]]), cache=first.cache, use_cache=True)
        assert (second.logits[0] - expected[6:]).abs().max() > 0.01
        ids = torch.tensor([[*seq[:3], 2, 2, 2, *seq[3:]]])
        mask = torch.tensor([[1] * 3 + [0] * 3 + [1] * 7])
        own = model(input_ids=ids, attention_mask=mask).logits[0][mask[0].bool()]
        assert (own - expected).abs().max() > 0.02
        lower, upper = llm.new_cache(), llm.new_cache()
        chunks = [llm.upper(llm.lower(ids[:, part], mask[:, part], 2, lower), upper)
                  for part in (slice(0, 5), slice(5, None))]
        torch.testing.assert_close(torch.cat(chunks, 1)[0][mask[0].bool()], expected)


def test_recurrent_layers_of_other_types_are_refused_by_kind():
    """A layer kind the split does not run (linear attention outside
    :data:`~automr.llm.split.LINEAR_ATTENTION_TYPES`, Mamba of other types) keeps a recurrent
    state no mask can stand for: refused at once, naming the layer kind."""
    model = tiny_model(tiny_config("qwen3"))
    model.config.layer_types = ["full_attention", "linear_attention", "mamba"]
    with pytest.raises(AutomrError, match="has linear_attention, mamba layers"):
        HFSplitLLM(model)


def test_a_bidirectional_gemma3_is_refused():
    """EmbeddingGemma's config is a gemma3_text one whose attention looks both ways; the
    split's masks are causal, so its halves would not be that model."""
    model = tiny_model(tiny_config("gemma3_text", num_layers=1, use_bidirectional_attention=True))
    with pytest.raises(AutomrError, match="bidirectional"):
        HFSplitLLM(model)


def float64_gated_delta_rule(query, key, value, g, beta, initial_state=None,
                             output_final_state=False, use_qk_l2norm_in_kernel=False, **kwargs):
    """The gated delta rule of Qwen 3.5 and Qwen3-Next one position at a time in float64
    (transformers' torch kernels compute in float32, whose rounding could hide a logic
    error)."""
    from transformers.models.qwen3_5.modeling_qwen3_5 import l2norm
    heads = value.shape[2]
    query = query.repeat_interleave(heads // query.shape[2], dim=2)
    key = key.repeat_interleave(heads // key.shape[2], dim=2)
    q, k, v, b, g = (x.transpose(1, 2).double() for x in (query, key, value, beta, g))
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    q = q / key.shape[-1] ** 0.5
    state = (torch.zeros(*v.shape[:2], k.shape[-1], v.shape[-1], dtype=torch.float64)
             if initial_state is None else initial_state.double())
    out = torch.zeros_like(v)
    for i in range(v.shape[2]):
        state = state * g[:, :, i].exp()[..., None, None]
        read = (state * k[:, :, i, :, None]).sum(-2)
        state = state + k[:, :, i, :, None] * ((v[:, :, i] - read) * b[:, :, i, None])[..., None, :]
        out[:, :, i] = (state * q[:, :, i, :, None]).sum(-2)
    return out.transpose(1, 2).to(query.dtype), state if output_final_state else None


def float64_mamba2_scan(hidden_states, dt, A, B, C, chunk_size, D=None, dt_bias=None,
                        initial_states=None, dt_softplus=False, dt_limit=(0.0, math.inf),
                        return_final_states=False, **kwargs):
    """Mamba2's scan (Granite 4.0-H's ``mamba2_chunk_scan``) one position at a time in float64
    (transformers' computes in float32)."""
    batch, seq, heads, head_dim = hidden_states.shape
    dt = dt.double() + (0.0 if dt_bias is None else dt_bias.double())
    dt = torch.nn.functional.softplus(dt) if dt_softplus else dt
    dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    x = hidden_states.double()
    B, C = (part.double().repeat_interleave(heads // B.shape[2], dim=2) for part in (B, C))
    state = (torch.zeros(batch, heads, head_dim, B.shape[-1], dtype=torch.float64)
             if initial_states is None else initial_states.double())
    out = torch.zeros_like(x)
    for i in range(seq):
        decay = torch.exp(dt[:, i] * A.double())[..., None, None]
        state = state * decay + dt[:, i, :, None, None] * x[:, i, ..., None] * B[:, i, :, None]
        out[:, i] = (state * C[:, i, :, None]).sum(-1)
        if D is not None:
            out[:, i] = out[:, i] + D.double()[:, None] * x[:, i]
    return (out, state) if return_final_states else out


def float64_mamba2_step(state, hidden_states, dt, A, B, C, D=None, dt_bias=None,
                        dt_softplus=False, z=None, **kwargs):
    """Mamba2's one-token update (``mamba2_selective_state_update``: per-head values expanded
    over the head, the state written in place) through :func:`float64_mamba2_scan`."""
    out, new = float64_mamba2_scan(
        hidden_states[:, None], dt[:, None, :, 0], A[:, 0, 0], B[:, None], C[:, None], 1,
        D=None if D is None else D[:, 0], dt_bias=None if dt_bias is None else dt_bias[:, 0],
        initial_states=state, dt_softplus=dt_softplus, return_final_states=True)
    state.copy_(new)
    return out[:, 0].to(hidden_states.dtype)


def float64_mamba1_scan(hidden_states, dt, A, B, C, D=None, z=None, delta_bias=None,
                        delta_softplus=False, return_last_state=False, **kwargs):
    """Mamba1's selective scan (``mamba_selective_scan`` of Mamba, FalconMamba and Jamba: inputs
    ``[batch, channels, seq]``, ``B`` and ``C`` ``[batch, state, seq]``) one position at a time
    in float64 (transformers' computes in float32)."""
    x, dt, A, B, C = (part.double() for part in (hidden_states, dt, A, B, C))
    dt = dt + (0.0 if delta_bias is None else delta_bias.double()[:, None])
    dt = torch.nn.functional.softplus(dt) if delta_softplus else dt
    state = torch.zeros(*x.shape[:2], A.shape[-1], dtype=torch.float64)
    out = torch.zeros_like(x)
    for i in range(x.shape[-1]):
        state = (state * torch.exp(dt[:, :, i, None] * A)
                 + dt[:, :, i, None] * B[:, None, :, i] * x[:, :, i, None])
        out[:, :, i] = (state * C[:, None, :, i]).sum(-1)
    out = out + (0.0 if D is None else D.double()[:, None] * x)
    out = (out if z is None else out * torch.nn.functional.silu(z.double())).to(
        hidden_states.dtype)
    return (out, state) if return_last_state else out


def float64_mamba1_step(state, hidden_states, dt, A, B, C, D=None, z=None, dt_bias=None,
                        dt_softplus=False, **kwargs):
    """Mamba1's one-token update (``mamba_selective_state_update``: the state written in place)
    through :func:`float64_mamba1_scan`, from ``state``."""
    x, dt, A, B, C = (part.double() for part in (hidden_states, dt, A, B, C))
    dt = dt + (0.0 if dt_bias is None else dt_bias.double())
    dt = torch.nn.functional.softplus(dt) if dt_softplus else dt
    new = state.double() * torch.exp(dt[..., None] * A) + dt[..., None] * B[:, None] * x[..., None]
    state.copy_(new)
    out = (new * C[:, None]).sum(-1) + (0.0 if D is None else D.double() * x)
    out = out if z is None else out * torch.nn.functional.silu(z.double())
    return out.to(hidden_states.dtype)


def float64_weightless_rms_norm(self, hidden):
    """FalconMamba's RMS norms without weights (on dt's input, ``B``, ``C``) in float64."""
    return hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)


def float64_rms_norm(self, hidden, gate=None):
    """Granite 4's RMS norms (gated or not) in float64 (transformers' compute in float32, whose
    rounding differs now and then between a padded batch and a sequence alone); Falcon-H1's
    gated one may gate after the norm (``norm_before_gate``) and norms ``n_groups`` groups."""
    after = gate is not None and getattr(self, "norm_before_gate", False)
    if gate is not None and not after:
        hidden = hidden * torch.nn.functional.silu(gate)
    group = getattr(self, "group_size", hidden.shape[-1] // getattr(self, "n_groups", 1))
    grouped = hidden.unflatten(-1, (-1, group))
    grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
    normed = self.weight * grouped.flatten(-2)
    return normed * torch.nn.functional.silu(gate) if after else normed


def float64_linear(x, weight, bias=None):
    """``F.linear`` in float64 (Nemotron-H's router casts both to float32)."""
    return torch.nn.functional.linear(x.double(), weight.double(),
                                      None if bias is None else bias.double())


def float64_kernels(monkeypatch, model) -> None:
    """Patch a model's recurrent kernels to float64: the gated delta rule of Qwen 3.5 and
    Qwen3-Next; the Mamba2 scan and one-token update of Granite 4.0-H, Bamba, Nemotron-H and
    Falcon-H1,
    their norms (the layer's and the mixer's gated one) and Nemotron-H's router; LFM2's norms
    (its convolution runs in the model's dtype)."""
    layer = model.get_decoder().layers[0]
    if hasattr(layer, "conv"):  # LFM2: its RMS norms compute in float32
        monkeypatch.setattr(type(layer.operator_norm), "forward", float64_rms_norm)
        return
    mixer = getattr(layer, "mamba", None) or getattr(layer, "mixer", None) or layer.linear_attn
    kernels = sys.modules[type(mixer).__module__]
    if hasattr(mixer, "x_proj"):  # Mamba1: its scan, update and norms
        monkeypatch.setattr(kernels, "mamba_selective_scan", float64_mamba1_scan)
        monkeypatch.setattr(kernels, "mamba_selective_state_update", float64_mamba1_step)
        norm = getattr(layer, "input_layernorm", None) or layer.norm  # Jamba's, Mamba's
        monkeypatch.setattr(type(norm), "forward", float64_rms_norm)
        if type(getattr(mixer, "dt_layernorm", norm)) is not type(norm):  # FalconMamba's
            monkeypatch.setattr(type(mixer.dt_layernorm), "forward", float64_weightless_rms_norm)
    elif hasattr(mixer, "A_log") and hasattr(mixer, "chunk_size"):  # Mamba2
        monkeypatch.setattr(kernels, "mamba2_chunk_scan", float64_mamba2_scan)
        monkeypatch.setattr(kernels, "mamba2_selective_state_update", float64_mamba2_step)
        norm = getattr(layer, "input_layernorm", None) or layer.norm
        monkeypatch.setattr(type(norm), "forward", float64_rms_norm)
        if hasattr(mixer.norm, "weight"):  # not Falcon-H1's identity (mamba_rms_norm False)
            monkeypatch.setattr(type(mixer.norm), "forward", float64_rms_norm)
        if hasattr(kernels, "NemotronHTopkRouter"):  # its router computes in float32
            monkeypatch.setattr(kernels, "F", SimpleNamespace(
                **{**vars(torch.nn.functional), "linear": float64_linear}))
    else:
        monkeypatch.setattr(kernels, "torch_chunk_gated_delta_rule", float64_gated_delta_rule)
        monkeypatch.setattr(kernels, "torch_recurrent_gated_delta_rule",
                            float64_gated_delta_rule)


@pytest.mark.parametrize("arch,overrides", [
    *((arch, {}) for arch in ("qwen3_5_text", "qwen3_5_moe_text", "qwen3_next",
                              "granitemoehybrid", "bamba", "nemotron_h", "falcon_h1", "lfm2",
                              "lfm2_moe", "lfm3")),
    ("falcon_h1", dict(mamba_rms_norm=False)),  # a mixer gated without a norm
    # Mamba2 and Mamba1 alone: their residual stream, in float32 (rounding float64's) as they
    # have it, here float64
    *((arch, dict(residual_in_fp32=False)) for arch in ("mamba2", "mamba", "falcon_mamba")),
    ("jamba", {})])
def test_recurrent_layers_are_exact_in_float64_with_masks_anywhere_and_caches(
        monkeypatch, arch, overrides):
    """The linear-attention layers of Qwen 3.5 (dense and experts) and Qwen3-Next (its fused,
    interleaved projections), the Mamba2 layers of Granite 4.0-H, Bamba, Nemotron-H and
    Falcon-H1 (beside attention) and of Mamba2 alone, the Mamba1 layers of Mamba and FalconMamba
    (alone) and Jamba (beside attention) and the short convolutions of LFM2 (dense and experts)
    and LFM3 in float64 (kernels too): each row, padded left or right or with masked positions
    in its middle, split at every layer, prefilled in two chunks and stepped one token at a
    time, shared as a prefix (repeat_interleave) and reordered (select, reserved beams), gives
    the model's logits on its sequence alone to 1e-12."""
    model = tiny_model(tiny_config(arch, num_layers=4, **overrides)).double()
    model.set_experts_implementation("eager")  # grouped_mm takes no float64
    float64_kernels(monkeypatch, model)
    llm = HFSplitLLM(model)

    def reference(seq):
        """The model on ``seq`` alone; Nemotron-H's, Mamba's and Mamba2's causal LMs cast their
        logits to float32, so there its head on its base model's output (the same, but
        float64)."""
        if arch not in ("nemotron_h", "mamba2", "mamba", "falcon_mamba"):
            return alone(model, seq)
        with torch.no_grad():
            base = model.get_decoder()
            return model.lm_head(base(input_ids=torch.tensor([seq])).last_hidden_state)[0]

    generator = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, TINY_VOCAB, (n,), generator=generator).tolist()
            for n in (13, 30, 5, 21)]

    def check(logits, expected):
        assert (logits - expected).abs().max().item() < 1e-12

    def middle(seqs, gap=4):
        """Right padding and ``gap`` masked positions after each row's first third."""
        width = max(map(len, seqs)) + gap
        ids = torch.full((len(seqs), width), 2)
        mask = torch.zeros(len(seqs), width, dtype=torch.bool)
        for row, seq in enumerate(seqs):
            cut = len(seq) // 3
            ids[row, :cut], ids[row, cut + gap: len(seq) + gap] = (torch.tensor(seq[:cut]),
                                                                  torch.tensor(seq[cut:]))
            mask[row, :cut], mask[row, cut + gap: len(seq) + gap] = True, True
        return ids, mask

    with torch.no_grad():
        layouts = [pad(seqs, "left"), pad(seqs, "right"), middle(seqs)]
        for ids, mask in layouts:
            mask = mask.bool()
            for layer in range(5):
                logits = llm.upper(llm.lower(ids, mask, layer))
                for row, seq in enumerate(seqs):
                    check(logits[row][mask[row]], reference(seq))
            # two chunks through both halves' caches, then one-token steps
            lower, upper = llm.new_cache(), llm.new_cache()
            parts = []
            for part in (slice(0, 9), slice(9, None)):
                state = llm.lower(ids[:, part], mask[:, part], 2, lower)
                parts.append(llm.upper(state, upper))
            logits = torch.cat(parts, 1)
            for row, seq in enumerate(seqs):
                check(logits[row][mask[row]], reference(seq))
            decoding = Decoding(lower, upper, 2, logits[:, -1])
            more = torch.randint(3, TINY_VOCAB, (len(seqs), 3), generator=generator)
            for done in range(3):
                step(llm, decoding, more[:, done])
                for row, seq in enumerate(seqs):
                    grown = seq + more[row, :done + 1].tolist()
                    check(decoding.logits[row], reference(grown)[-1])
        # a shared header, repeated per row, then the rows' rests; select; reserved beams
        head, rests = seqs[0], seqs[1:]
        decoding = prefill(llm, *pad([head + rest for rest in rests], "left"), 1,
                           share_prefix=True)
        for row, rest in enumerate(rests):
            check(decoding.logits[row], reference(head + rest)[-1])
        decoding.select(torch.tensor([2, 0, 0]))
        step(llm, decoding, torch.tensor([5, 6, 7]))
        for row, (source, token) in enumerate(zip([2, 0, 0], [5, 6, 7], strict=True)):
            check(decoding.logits[row], reference(head + rests[source] + [token])[-1])
        decoding.reserve(spare=4, repeats=2)
        step(llm, decoding, torch.tensor([8, 9, 10, 11, 12, 13]))
        beams = [1, 0, 3, 3, 5, 4]  # each row takes a row of its own prompt
        decoding.select_beams(torch.tensor(beams))
        step(llm, decoding, torch.full((6,), 14))
        sources, lasts = [2, 2, 0, 0, 0, 0], [5, 5, 6, 6, 7, 7]
        for row, beam in enumerate(beams):
            history = head + rests[sources[beam]] + [lasts[beam], 8 + beam, 14]
            check(decoding.logits[row], reference(history)[-1])


def test_a_linear_layer_takes_an_mlp_that_returns_its_router_logits_too():
    """Qwen3-Next's and Qwen 3.5 MoE's layers take their MLP's output, or its first part where
    the MLP returns a tuple (a mixture of experts with its router logits): the split runs
    the linear layers' MLP itself and does the same."""
    model = tiny_model(tiny_config("qwen3_next", num_layers=2))

    class WithRouterLogits(torch.nn.Module):
        def __init__(self, mlp):
            super().__init__()
            self.mlp = mlp

        def forward(self, hidden):
            return self.mlp(hidden), torch.zeros(hidden.shape[:-1])

    model.model.layers[0].mlp = WithRouterLogits(model.model.layers[0].mlp)  # a linear layer
    llm = HFSplitLLM(model)
    ids, mask = pad([[5, 9, 40, 7], [12, 33]], "left")
    with torch.no_grad():
        logits = llm.upper(llm.lower(ids, mask, 1))
    for row, seq in enumerate([[5, 9, 40, 7], [12, 33]]):
        assert torch.allclose(logits[row][mask[row].bool()], alone(model, seq), atol=1e-5)


@given(st.data(), st.integers(1, 3), st.integers(0, 4), st.integers(1, 6),
       st.one_of(st.none(), st.integers(1, 5)))
def test_attention_bias_is_the_plain_rule(data, batch, past, seq, window) -> None:
    """Query q sees key k <= q that is real and, with a window, fewer than ``window`` real
    tokens back (positions count real tokens); every query sees itself."""
    from automr.llm.split import attention_bias

    bits = data.draw(st.lists(st.booleans(), min_size=batch * (past + seq),
                              max_size=batch * (past + seq)))
    keys = torch.tensor(bits, dtype=torch.bool).reshape(batch, past + seq)
    past_mask = keys[:, :past] if past else None
    bias = attention_bias(keys[:, past:], past_mask, torch.float32, window)
    low = torch.finfo(torch.float32).min
    for b in range(batch):
        real = keys[b].tolist()
        position = [max(sum(real[: k + 1]) - 1, 0) for k in range(past + seq)]
        for i in range(seq):
            q = past + i
            for k in range(past + seq):
                seen = k == q or (k <= q and real[k] and (
                    window is None or position[q] - position[k] < window))
                assert bias[b, 0, i, k].item() == (0.0 if seen else low)


def test_a_sequence_past_the_models_context_that_memory_made_is_warned_of_once():
    """transformers warns of a tokenized prompt past max_position_embeddings, not of one that
    memory joined at layer L makes longer: `concat` with a large k ran the upper layers past
    the model's context (3 x 408 + 494 positions on a model of 512) without a word (the scale
    review)."""
    import warnings

    from automr.testing.tiny import tiny_config, tiny_model

    llm = HFSplitLLM(tiny_model(tiny_config("llama", 2, max_position_embeddings=16)))
    ids = torch.arange(3, 13).unsqueeze(0)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = llm.lower(ids, torch.ones_like(ids), 1)
        llm.upper(state)  # 10 positions of 16: no warning
        assert not caught
        joined = LayerState(hidden=torch.cat([state.hidden, state.hidden], 1),
                            mask=torch.cat([state.mask, state.mask], 1), layer=1)
        for _ in range(2):
            llm.upper(joined)
    assert [str(w.message) for w in caught] == [
        "a sequence of 20 positions is past this model's context of 16 "
        "(max_position_embeddings): its results there are not the model's as trained (with "
        "memory joined to the prompt, a smaller --k or a combiner that adds one token per "
        "element keeps it within)"]
