"""BIGRec prompts and their tokenization (byte-level tiny tokenizer, no model)."""

import pytest
from hypothesis import given, settings, strategies as st

from automr.data import (
    IGNORE_INDEX,
    Catalog,
    Item,
    PromptConfig,
    Sample,
    format_prompt,
    format_target,
    prompt_config,
    sample_texts,
    tokenize_example,
    tokenize_sample,
)
from automr.testing.tiny import tiny_tokenizer

TOKENIZER = tiny_tokenizer()
TITLES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1,
                 max_size=30).map(str.strip).filter(bool)


def test_bigrec_prompt_text():
    prompt = format_prompt(["Toy Story (1995)", "Heat (1995)"])
    assert prompt == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nGiven a list of movies the user has watched before, please "
        "recommend a new movie that the user likes to the user.\n\n"
        "### Input:\nThe user has watched the following movies before: \"Toy Story (1995)\", "
        "\"Heat (1995)\"\n\n### Response:\n")
    assert format_target("Heat (1995)") == '"Heat (1995)"'
    books = format_prompt(["Dune"], prompt_config("books"))
    assert "The user has read the following books before: \"Dune\"" in books
    assert "recommend a new book" in books


def test_prompt_config_validates_templates():
    with pytest.raises(ValueError, match="history"):
        PromptConfig(history="The user has {verb} {nouns}: {titles}")
    with pytest.raises(ValueError, match="title_format template '\\{0\\}' is invalid"):
        PromptConfig(title_format="{0}")  # a positional field: an IndexError, reported alike
    with pytest.raises(KeyError, match="unknown prompt domain 'cars'; known: \\['books', "):
        prompt_config("cars")
    custom = PromptConfig(title_format="<{title}>", separator="; ", response="{title}")
    assert "<A>; <B>" in format_prompt(["A", "B"], custom)


def test_sample_texts_use_recent_titles_only():
    catalog = Catalog((Item("1", "A (1990)"), Item("2", "B (1991)"), Item("3", "C (1992)")))
    sample = Sample("u", "3", 100, recent=("2",), recent_timestamps=(50,), memory=("1",),
                    memory_timestamps=(10,))
    prompt, target = sample_texts(sample, catalog)
    assert '"B (1991)"' in prompt and "A (1990)" not in prompt
    assert target == '"C (1992)"'


@settings(max_examples=60, deadline=None)
@given(st.lists(TITLES, min_size=1, max_size=5), TITLES, st.booleans())
def test_tokenized_target_span_is_exact(history, title, add_eos):
    prompt, target = format_prompt(history), format_target(title)
    example = tokenize_example(TOKENIZER, prompt, target, add_eos=add_eos)
    ids = example.input_ids
    start, end = example.target_span
    assert ids[:start] == example.prompt_ids
    assert TOKENIZER.decode(list(ids[start:end])) == target
    assert TOKENIZER.decode(list(example.prompt_ids)) == prompt
    assert list(example.prompt_ids) == TOKENIZER(prompt)["input_ids"]
    assert sum(example.target_mask) == end - start and len(example.target_mask) == len(ids)
    if add_eos:
        assert ids[-1] == TOKENIZER.eos_token_id and len(ids) == end + 1
    else:
        assert len(ids) == end
    labels = example.labels
    assert labels[:start] == (IGNORE_INDEX,) * start
    assert labels[start:] == ids[start:]


def test_tokenize_sample():
    catalog = Catalog((Item("1", "A (1990)"), Item("2", "B (1991)")))
    sample = Sample("u", "2", 100, recent=("1",), recent_timestamps=(50,))
    example = tokenize_sample(TOKENIZER, sample, catalog)
    start, end = example.target_span
    assert TOKENIZER.decode(list(example.input_ids[start:end])) == '"B (1991)"'


def llama2_like_tokenizer():
    """Llama-2's kind: SentencePiece pieces ('▁' for a space, one before the text), byte
    fallback, a BOS added to every encoding with special tokens, no pad token."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for char in "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\"'(),.:#":
        vocab.setdefault(char, len(vocab))
    vocab["▁\""] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("▁", "\"")], unk_token="<unk>",
                                   byte_fallback=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def test_a_bos_adding_tokenizer_gives_one_bos_and_the_catalogs_title_tokens():
    """With Llama-2's tokenizer (a BOS on every encoding with special tokens, the target's
    own word-start piece) an example holds one BOS, at the start; the title's tokens are
    those the grounders' catalog holds (trie, likelihood), and the EOS is appended once."""
    from automr.grounding.targets import catalog_targets

    tokenizer = llama2_like_tokenizer()
    prompt, target = format_prompt(["Toy Story (1995)"]), format_target("Heat (1995)")
    example = tokenize_example(tokenizer, prompt, target)
    assert example.input_ids.count(1) == 1 and example.input_ids[0] == 1
    assert example.input_ids.count(2) == 1 and example.input_ids[-1] == 2
    assert tokenizer.convert_ids_to_tokens(list(example.target_ids[:1])) == ["▁\""]
    assert catalog_targets(tokenizer, [target]).token_ids == (example.input_ids[
        example.target_span[0]:],)
    assert example.labels == ((IGNORE_INDEX,) * len(example.prompt_ids) + example.target_ids
                              + (2,))
    assert tokenizer.decode(list(example.target_ids)) == target


@pytest.mark.parametrize("special", ["<|im_end|>", "<|im_start|>", "<|endoftext|>"])
def test_a_title_holding_a_special_tokens_text_is_read_as_text(special):
    """A title holding "<|im_end|>" (SmolLM2's EOS; Llama's "</s>", Amazon's "&lt;/s&gt;"
    unescaped) was that token: the target held an EOS mid-title, so the model learnt to stop
    there and constrained decoding lost items (the adversarial-titles review)."""
    from automr.grounding.targets import catalog_targets

    ids = {TOKENIZER.convert_tokens_to_ids(t) for t in TOKENIZER.all_special_tokens}
    title = f"Songs {special} Live"
    example = tokenize_example(TOKENIZER, f"Watched: {title}\n### Response:", title)
    assert not ids & set(example.prompt_ids) and not ids & set(example.target_ids)
    assert TOKENIZER.decode(example.target_ids) == title
    [row] = catalog_targets(TOKENIZER, [title]).token_ids
    assert [i for i in row if i in ids] == [TOKENIZER.eos_token_id] == [row[-1]]


@settings(max_examples=25, deadline=None)
@given(texts=st.lists(st.text(max_size=12), max_size=9), at_once=st.integers(1, 4),
       special=st.booleans())
def test_text_token_ids_a_few_texts_a_call_are_the_ids_of_one_call(texts, at_once, special):
    """A catalog is tokenized a chunk of titles at a time (100,000 titles in one call held
    1.3 GB more): each text's ids are those of one call over them all."""
    from automr.data import prompts

    whole = (prompts.encode_texts(TOKENIZER, texts, add_special_tokens=special)["input_ids"]
             if texts else [])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prompts, "TOKENIZED_AT_ONCE", at_once)
        for given_as in (list, tuple):
            assert prompts.text_token_ids(TOKENIZER, given_as(texts),
                                          add_special_tokens=special) == whole
