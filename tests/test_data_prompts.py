"""BIGRec prompts and their tokenization (byte-level tiny tokenizer, no model)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    with pytest.raises(KeyError):
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
