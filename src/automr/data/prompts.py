"""BIGRec-style prompts and their tokenization (no model involved).

The prompt is Alpaca-style: a fixed preamble, ``### Instruction:`` (recommend a new item),
``### Input:`` listing the recent K titles, oldest first, each in double quotes
(``The user has watched the following movies before: "T1", "T2"``), and ``### Response:``;
the target is the quoted title of the next item (``"Toy Story (1995)"``).

Tokenization encodes the prompt and the target *separately* and concatenates the ids, so the
target's token boundaries are exact and identical wherever the same title is scored, trained on
or generated. The prompt gets the tokenizer's usual special tokens (e.g. Llama's BOS); the
target gets none. An EOS is appended after the target by default (``add_eos=True``) so the model
learns to stop; it is part of ``labels`` but not of ``target_span`` (title tokens only).
"""

import threading
from collections.abc import Sequence

import attrs

from automr.checks import beartype
from automr.data.catalog import Catalog
from automr.data.records import Sample
from automr.errors import AutomrError

IGNORE_INDEX = -100
ALPACA_HEADER = ("Below is an instruction that describes a task, paired with an input that "
                 "provides further context. Write a response that appropriately completes the "
                 "request.")


@beartype
@attrs.frozen
class PromptConfig:
    """Template strings for the BIGRec prompt.

    Placeholders: ``{plural}``, ``{singular}``, ``{verb}`` (domain words) in ``instruction`` and
    ``history``; ``{titles}`` (the joined quoted titles) in ``history``; ``{title}`` in
    ``title_format`` and ``response``; ``{header}``, ``{instruction}``, ``{input}`` in ``layout``.
    """

    plural: str = "movies"
    singular: str = "movie"
    verb: str = "watched"
    header: str = ALPACA_HEADER
    instruction: str = ("Given a list of {plural} the user has {verb} before, please recommend "
                        "a new {singular} that the user likes to the user.")
    history: str = "The user has {verb} the following {plural} before: {titles}"
    title_format: str = '"{title}"'
    separator: str = ", "
    response: str = '"{title}"'
    layout: str = ("{header}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n"
                   "### Response:\n")

    def __attrs_post_init__(self) -> None:
        words = {"plural": "x", "singular": "x", "verb": "x"}
        checks = [("instruction", self.instruction, words),
                  ("history", self.history, {**words, "titles": "x"}),
                  ("title_format", self.title_format, {"title": "x"}),
                  ("response", self.response, {"title": "x"}),
                  ("layout", self.layout, {"header": "", "instruction": "", "input": ""})]
        for name, template, fields in checks:
            try:
                template.format(**fields)
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(f"{name} template {template!r} is invalid: {error!r}; allowed "
                                 f"placeholders are {sorted(fields)}") from None


PROMPT_DOMAINS: dict[str, PromptConfig] = {
    "movies": PromptConfig(),
    "books": PromptConfig(plural="books", singular="book", verb="read"),
    "games": PromptConfig(plural="video games", singular="video game", verb="played"),
    "items": PromptConfig(plural="items", singular="item", verb="interacted with"),
}


def check_domain(domain: str) -> None:
    """Refuse a ``domain`` that is not one of :data:`PROMPT_DOMAINS`: a prepared dataset of an
    unknown one would be prompted with the ``items`` vocabulary, without a word."""
    if domain not in PROMPT_DOMAINS:
        raise AutomrError(f"unknown prompt domain {domain!r}; use one of "
                          f"{', '.join(sorted(PROMPT_DOMAINS))}")


def prompt_config(domain: str) -> PromptConfig:
    """The preset for ``domain`` (one of :data:`PROMPT_DOMAINS`)."""
    if domain not in PROMPT_DOMAINS:
        raise KeyError(f"unknown prompt domain {domain!r}; known: {sorted(PROMPT_DOMAINS)}")
    return PROMPT_DOMAINS[domain]


def format_prompt(titles: Sequence[str], config: PromptConfig = PromptConfig(),
                  context: str | None = None) -> str:
    """The full prompt text for a history of ``titles`` (oldest first), ending where the
    response starts.

    A ``context`` (extra text about the user, e.g. a baseline's long-term summary) goes on its
    own line at the start of the input section, before the history line; without one (None or
    empty) the prompt is the plain BIGRec prompt.
    """
    words = {"plural": config.plural, "singular": config.singular, "verb": config.verb}
    history = config.history.format(titles=format_titles(titles, config), **words)
    return config.layout.format(
        header=config.header,
        instruction=config.instruction.format(**words),
        input=f"{context}\n{history}" if context else history,
    )


def format_titles(titles: Sequence[str], config: PromptConfig = PromptConfig()) -> str:
    """Titles as the prompt lists them: each in ``title_format``, joined by ``separator``."""
    return config.separator.join(config.title_format.format(title=t) for t in titles)


def format_target(title: str, config: PromptConfig = PromptConfig()) -> str:
    """The response text for ``title`` (BIGRec: the title in double quotes)."""
    return config.response.format(title=title)


def sample_texts(
    sample: Sample, catalog: Catalog, config: PromptConfig = PromptConfig(),
    context: str | None = None,
) -> tuple[str, str]:
    """``(prompt, target)`` for a sample: its recent items' titles (after ``context``, if
    any) and its target's title."""
    return (format_prompt(catalog.titles(sample.recent), config, context),
            format_target(catalog.title(sample.target), config))


@beartype
@attrs.frozen
class TokenizedExample:
    """Token ids of one prompt + target.

    ``input_ids = prompt_ids + target_ids (+ [eos_id])``; ``target_span`` is the half-open range
    of the title's tokens inside ``input_ids``; ``labels`` is ``IGNORE_INDEX`` on the prompt and
    the ids on the target and EOS (the usual causal-LM training labels, unshifted).
    """

    prompt_ids: tuple[int, ...]
    target_ids: tuple[int, ...]
    eos_id: int | None = None

    @property
    def input_ids(self) -> tuple[int, ...]:
        """``prompt_ids + target_ids``, then ``eos_id`` when it is not None."""
        eos = (self.eos_id,) if self.eos_id is not None else ()
        return self.prompt_ids + self.target_ids + eos

    @property
    def target_span(self) -> tuple[int, int]:
        """``(start, end)``: the title's tokens are ``input_ids[start:end]`` (EOS excluded)."""
        start = len(self.prompt_ids)
        return start, start + len(self.target_ids)

    @property
    def target_mask(self) -> tuple[bool, ...]:
        """True exactly on the title's tokens (not on the prompt, not on the EOS)."""
        start, end = self.target_span
        return tuple(start <= i < end for i in range(len(self.input_ids)))

    @property
    def labels(self) -> tuple[int, ...]:
        """``IGNORE_INDEX`` on every prompt token, then the target's ids and EOS (unshifted)."""
        return (IGNORE_INDEX,) * len(self.prompt_ids) + self.input_ids[len(self.prompt_ids):]


_TOKENIZING = threading.Lock()


def encode_texts(tokenizer, texts: str | list[str], **kwargs):
    """``tokenizer(texts, **kwargs)``, reading the text of a special token as text: a title
    holding ``</s>`` or ``<|im_end|>`` (a tokenizer's EOS; Amazon's ``&lt;/s&gt;`` unescaped)
    put that token inside it, so a target stopped mid-title and constrained decoding lost
    items. Every title, prompt and memory text is tokenized through it, one call at a time: a
    fast tokenizer's padding is a setting of its backend that each call sets, so a call in
    another thread between the setting and the encoding padded this one's ids (or unpadded
    its batch). ``split_special_tokens=False`` reads them as the tokens (a chat template's)."""
    with _TOKENIZING:
        return tokenizer(texts, **{"split_special_tokens": True, **kwargs})


TOKENIZED_AT_ONCE = 1000
"""How many texts :func:`text_token_ids` gives the tokenizer in one call."""


def text_token_ids(tokenizer, texts: Sequence[str], **kwargs) -> list[list[int]]:
    """Each text's token ids (:func:`encode_texts` without padding), :data:`TOKENIZED_AT_ONCE`
    texts a call: a fast tokenizer makes an encoding per text (its tokens as strings, offsets)
    before the ids come out, so a catalog's 100,000 titles in one call held 1.3 GB more."""
    return [ids for start in range(0, len(texts), TOKENIZED_AT_ONCE)
            for ids in encode_texts(tokenizer, list(texts[start : start + TOKENIZED_AT_ONCE]),
                                    **kwargs)["input_ids"]]


def tokenize_example(tokenizer, prompt: str, target: str, *, add_eos: bool = True
                     ) -> TokenizedExample:
    """Tokenize ``prompt`` (with the tokenizer's special tokens) and ``target`` (without)
    separately; append the EOS if ``add_eos`` and the tokenizer has one.

    ``tokenizer`` is any Hugging Face tokenizer (callable returning ``input_ids``).
    """
    prompt_ids = encode_texts(tokenizer, prompt, add_special_tokens=True)["input_ids"]
    target_ids = encode_texts(tokenizer, target, add_special_tokens=False)["input_ids"]
    if not target_ids:
        raise ValueError(f"target {target!r} tokenizes to nothing")
    eos = tokenizer.eos_token_id if add_eos else None
    return TokenizedExample(tuple(prompt_ids), tuple(target_ids), eos)


def tokenize_sample(
    tokenizer, sample: Sample, catalog: Catalog, config: PromptConfig = PromptConfig(),
    *, add_eos: bool = True, context: str | None = None,
) -> TokenizedExample:
    """:func:`sample_texts` (with ``context``, if any) then :func:`tokenize_example`."""
    prompt, target = sample_texts(sample, catalog, config, context)
    return tokenize_example(tokenizer, prompt, target, add_eos=add_eos)
