"""Prompt contexts (ReLLa, TRSR): the prompt layout, what each context picks, TRSR's summaries."""

import copy
import hashlib
import json
import math

import attrs
import pytest
import torch
from hypothesis import given, strategies as st

from automr.contexts import (
    ContextSpec,
    ReLLaContext,
    SummaryCache,
    SummaryWriter,
    TRSRContext,
    rella_scores,
    trsr_blocks,
)
from automr.data import Catalog, Item, PromptConfig, Sample, format_prompt, tokenize_sample
from automr.errors import AutomrError
from automr.interfaces import PromptContext
from automr.llm.decoding import greedy_generate
from automr.llm.split import HFSplitLLM
from automr.testing.strategies import seeded_tensors
from automr.testing.tiny import tiny_tokenizer

WORDS = PromptConfig()
TITLES = st.lists(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8),
                  min_size=1, max_size=4)


def catalog_of(n: int) -> Catalog:
    return Catalog(Item(f"i{k}", f"Title {k}") for k in range(n))


def sample_of(memory: list[str], recent: list[str]) -> Sample:
    times = list(range(1, len(memory) + len(recent) + 1))
    return Sample(user="u", target="i0", timestamp=10_000, recent=tuple(recent),
                  recent_timestamps=tuple(times[len(memory):]), memory=tuple(memory),
                  memory_timestamps=tuple(times[: len(memory)]))


# -- the prompt ------------------------------------------------------------------------------
@given(titles=TITLES)
def test_no_context_is_the_plain_prompt(titles):
    plain = format_prompt(titles, WORDS)
    assert format_prompt(titles, WORDS, None) == plain
    assert format_prompt(titles, WORDS, "") == plain


@given(titles=TITLES, context=st.text(min_size=1, max_size=20))
def test_context_goes_on_its_own_line_before_the_history(titles, context):
    plain, with_context = format_prompt(titles, WORDS), format_prompt(titles, WORDS, context)
    history = plain.split("### Input:\n", 1)[1].split("\n\n### Response:", 1)[0]
    assert with_context == plain.replace(f"### Input:\n{history}",
                                         f"### Input:\n{context}\n{history}")


def test_prompt_with_context_reads_as_documented():
    prompt = format_prompt(["A", "B"], WORDS, 'Earlier, the user has also watched: "C".')
    assert ('### Input:\nEarlier, the user has also watched: "C".\nThe user has watched the '
            'following movies before: "A", "B"\n\n### Response:\n') in prompt


def test_tokenize_sample_passes_the_context_through():
    tokenizer, catalog = tiny_tokenizer(), catalog_of(4)
    sample = sample_of(["i1"], ["i2", "i3"])
    plain = tokenize_sample(tokenizer, sample, catalog, WORDS)
    assert tokenize_sample(tokenizer, sample, catalog, WORDS, context=None) == plain
    extra = tokenize_sample(tokenizer, sample, catalog, WORDS, context="Hi.")
    assert extra.target_ids == plain.target_ids
    assert tokenizer.decode(extra.prompt_ids).count("Hi.\nThe user has watched") == 1


# -- ReLLa -----------------------------------------------------------------------------------
def test_rella_lists_the_most_similar_long_term_items_oldest_first():
    # recent items point along x; memory items i1..i4 at decreasing angles to x, i5 opposite
    embeddings = torch.tensor([[0.0, 1.0], [1.0, 0.1], [1.0, 0.5], [1.0, 2.0], [1.0, 0.0],
                               [-1.0, 0.0], [1.0, 0.05], [1.0, -0.05]])
    context = ReLLaContext(embeddings, catalog_of(8), WORDS, k=3)
    sample = sample_of(["i4", "i3", "i2", "i1", "i5"], ["i6", "i7"])
    assert context.selected(sample) == ("i4", "i2", "i1")  # the 3 closest, in memory order
    assert context.texts([sample]) == [
        'Earlier, the user has also watched: "Title 4", "Title 2", "Title 1".']
    assert isinstance(context, PromptContext)
    assert context.config == {"kind": "rella", "k": 3}


def test_rella_counts_a_repeated_item_once_at_its_latest_position_and_ties_go_recent():
    # i1 and i2 share an embedding (equal scores): with k=1 the more recent one is chosen;
    # i3 repeats: it is listed once, at its latest position (after i1, not before it)
    embeddings = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.2], [1.0, 0.1]])
    catalog = catalog_of(5)
    assert ReLLaContext(embeddings, catalog, WORDS, k=1).selected(
        sample_of(["i2", "i1"], ["i4"])) == ("i1",)
    assert ReLLaContext(embeddings, catalog, WORDS, k=1).selected(
        sample_of(["i1", "i2"], ["i4"])) == ("i2",)
    assert ReLLaContext(embeddings, catalog, WORDS, k=2).selected(
        sample_of(["i3", "i1", "i3"], ["i4"])) == ("i1", "i3")


def test_rella_gives_no_context_without_long_term_history():
    context = ReLLaContext(torch.eye(4), catalog_of(4), WORDS, k=2)
    assert context.texts([sample_of([], ["i1", "i2"])]) == [None]
    with pytest.raises(ValueError):
        ReLLaContext(torch.eye(4), catalog_of(4), WORDS, k=0)


def test_rella_queries_with_the_mean_of_all_recent_items():
    """The query is the mean of the recent items' embeddings, not one of them."""
    memory = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    recent = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(rella_scores(memory, recent),
                               torch.tensor([1.0, 0.5 ** 0.5, 0.5 ** 0.5]))
    # i1 lies between the two recent items: it is chosen, though each is closer to one of them
    embeddings = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 0.1], [0.1, 1.0], [1.0, 0.0],
                               [0.0, 1.0]])
    context = ReLLaContext(embeddings, catalog_of(6), WORDS, k=1)
    assert context.selected(sample_of(["i1", "i2", "i3"], ["i4", "i5"])) == ("i1",)


@given(embeddings=seeded_tensors((12, 5)), data=st.data())
def test_rella_picks_at_most_k_memory_items_by_score(embeddings, data):
    order = data.draw(st.permutations(range(12)))
    n_memory = data.draw(st.integers(0, 9))
    n_recent = data.draw(st.integers(1, 12 - n_memory))
    memory = [f"i{k}" for k in order[:n_memory]]
    recent = [f"i{k}" for k in order[n_memory: n_memory + n_recent]]
    k = data.draw(st.integers(1, 6))
    context = ReLLaContext(embeddings, catalog_of(12), WORDS, k=k)
    sample = sample_of(memory, recent)
    chosen = context.selected(sample)
    assert len(chosen) == min(k, n_memory) and set(chosen) <= set(memory)
    positions = [memory.index(item) for item in chosen]
    assert positions == sorted(positions)  # chronological
    rows = torch.tensor([int(i[1:]) for i in memory], dtype=torch.long)
    query = embeddings[torch.tensor([int(i[1:]) for i in recent])]
    scores = dict(zip(memory, rella_scores(embeddings[rows], query).tolist(), strict=True))
    left_out = [scores[i] for i in memory if i not in chosen]
    if chosen and left_out:
        assert min(scores[i] for i in chosen) >= max(left_out) - 1e-6


# -- TRSR ------------------------------------------------------------------------------------
@given(n=st.integers(0, 40), block_size=st.integers(1, 7), max_blocks=st.integers(1, 6))
def test_trsr_blocks_are_the_newest_items_in_blocks(n, block_size, max_blocks):
    items = [f"i{k}" for k in range(n)]
    blocks = trsr_blocks(items, block_size, max_blocks)
    assert len(blocks) == min(max_blocks, math.ceil(n / block_size))
    kept = [item for block in blocks for item in block]
    assert kept == items[len(items) - len(kept):]  # the most recent ones, oldest first
    assert len(kept) == min(n, block_size * max_blocks)
    assert all(len(block) == block_size for block in blocks[1:])
    assert all(0 < len(block) <= block_size for block in blocks)


class FakeWriter:
    """Stands in for the LM: replies ``S<call>.<row>`` and counts calls."""

    max_new_tokens, batch_size = 7, 2

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def render(self, instruction: str) -> str:
        return f"<{instruction}>"

    def generate(self, prompts):
        self.calls.append(list(prompts))
        return [f"S{len(self.calls)}.{row}" for row in range(len(prompts))]


def trsr(tmp_path, writer, mode="recurrent", block_size=2, max_blocks=3) -> TRSRContext:
    cache = SummaryCache(tmp_path / "summaries.jsonl", "fp", writer.max_new_tokens)
    return TRSRContext(writer, cache, catalog_of(12), WORDS, block_size, max_blocks, mode,
                       progress=False)


def test_recurrent_prompts_carry_the_summary_so_far(tmp_path):
    writer = FakeWriter()
    context = trsr(tmp_path, writer)
    long_user = sample_of([f"i{k}" for k in range(1, 6)], ["i6"])  # blocks [1] [2 3] [4 5]
    texts = context.texts([long_user, sample_of([], ["i7"])])
    prompts = [p for call in writer.calls for p in call]
    assert len(prompts) == 3
    assert '"Title 1"' in prompts[0] and "so far" not in prompts[0]
    assert '"Title 2", "Title 3"' in prompts[1] and "so far: S1.0" in prompts[1]
    assert '"Title 4", "Title 5"' in prompts[2] and "so far: S2.0" in prompts[2]
    assert texts == ["Summary of the user's long-term preferences: S3.0", None]
    assert context.config == {"kind": "trsr", "block_size": 2, "max_blocks": 3,
                              "mode": "recurrent", "max_new_tokens": 7}
    assert isinstance(context, PromptContext)


def test_hierarchical_merges_independent_block_summaries(tmp_path):
    writer = FakeWriter()
    context = trsr(tmp_path, writer, mode="hierarchical")
    one_block = sample_of(["i1", "i2"], ["i3"])
    two_blocks = sample_of(["i4", "i5", "i6"], ["i7"])
    texts = context.texts([one_block, two_blocks])
    first = [p for call in writer.calls[:2] for p in call]  # 3 block prompts, batch size 2
    assert len(first) == 3 and not any("so far" in p for p in first)
    merge = writer.calls[-1]
    assert len(merge) == 1 and "1. S1.1\n2. S2.0" in merge[0]
    assert texts[0] == "Summary of the user's long-term preferences: S1.0"
    assert texts[1] == f"Summary of the user's long-term preferences: S{len(writer.calls)}.0"


def test_summaries_are_cached_and_reused(tmp_path):
    samples = [sample_of([f"i{k}" for k in range(1, 6)], ["i6"]),
               sample_of([f"i{k}" for k in range(2, 9)], ["i9"])]
    writer = FakeWriter()
    first = trsr(tmp_path, writer).texts(samples)
    calls = len(writer.calls)
    again = FakeWriter()
    assert trsr(tmp_path, again).texts(samples) == first  # a fresh cache object, same file
    assert again.calls == []
    assert calls > 0
    other = FakeWriter()  # another model fingerprint: nothing reused
    cache = SummaryCache(tmp_path / "summaries.jsonl", "other", other.max_new_tokens)
    TRSRContext(other, cache, catalog_of(12), WORDS, 2, 3, progress=False).texts(samples)
    assert other.calls


def test_a_prompt_shared_by_samples_is_written_once(tmp_path):
    writer = FakeWriter()
    same = [sample_of(["i1", "i2", "i3"], ["i4"]), sample_of(["i1", "i2", "i3"], ["i5"])]
    texts = trsr(tmp_path, writer).texts(same)
    prompts = [p for call in writer.calls for p in call]
    assert len(prompts) == len(set(prompts)) == 2  # blocks [1] [2 3], once for both samples
    assert texts[0] == texts[1] is not None


class EmptyWriter(FakeWriter):
    def generate(self, prompts):
        super().generate(prompts)
        return ["" for _ in prompts]


def test_an_empty_summary_gives_no_context(tmp_path):
    context = trsr(tmp_path, EmptyWriter())
    assert context.summaries([sample_of(["i1"], ["i2"])]) == [""]
    assert context.texts([sample_of(["i1"], ["i2"])]) == [None]


def test_a_cut_cache_line_is_skipped_and_the_file_stays_readable(tmp_path):
    path = tmp_path / "s.jsonl"
    cache = SummaryCache(path, "fp", 5)
    cache.add(["a"], ["A"])
    with path.open("a") as f:
        f.write('{"key": "cut')
    reopened = SummaryCache(path, "fp", 5)
    assert reopened.get("a") == "A"
    reopened.add(["b"], ["B"])
    assert SummaryCache(path, "fp", 5).get("b") == "B"


def test_the_first_reply_written_for_a_prompt_is_the_one_kept(tmp_path):
    """Two writers can reply to the same prompt (a batch's padding changes bfloat16 replies;
    processes under a launcher): the cache keeps the first, as the docs say."""
    path = tmp_path / "s.jsonl"
    one, other = SummaryCache(path, "fp", 5), SummaryCache(path, "fp", 5)
    one.add(["a"], ["first"])
    other.add(["a"], ["second"])  # opened before the first was written
    cache = SummaryCache(path, "fp", 5)
    assert cache.get("a") == "first"
    cache.add(["a"], ["third"])
    assert cache.get("a") == "first"
    assert SummaryCache(path, "fp", 5).get("a") == "first"


def test_batched_summaries_equal_one_at_a_time(tiny_models):
    # the tiny llama ends every reply at once (all replies ''); qwen2 writes distinct tokens
    writer = SummaryWriter(tiny_models["qwen2"], tiny_tokenizer(), max_new_tokens=6,
                           batch_size=4)
    prompts = [writer.render(text) for text in ["short", "a much longer instruction here", "x"]]
    batched = writer.generate(prompts)
    assert batched == [writer.generate([p])[0] for p in prompts]
    assert all(batched) and len(set(batched)) == len(batched)
    assert all("\n" not in reply for reply in batched)


@pytest.mark.parametrize("batch_size, max_new_tokens", [(0, 6), (-2, 6), (2, 0)])
def test_a_writer_with_no_batch_or_reply_length_is_refused(tiny_models, batch_size,
                                                            max_new_tokens):
    """A batch size of 0 raised range()'s ValueError; below 0, no summary was written and
    every context came out empty, silently."""
    with pytest.raises(AutomrError, match="at least 1"):
        SummaryWriter(tiny_models["llama"], tiny_tokenizer(), max_new_tokens=max_new_tokens,
                      batch_size=batch_size)


def test_context_commands_refuse_a_batch_size_below_1_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from automr.cli.main import app

    for command in (["context", "trsr"], ["context", "show", "--kind", "trsr"]):
        result = CliRunner().invoke(app, [*command, "--data", str(tmp_path / "missing"),
                                          "--batch-size", "0"])
        assert result.exit_code == 2 and "--batch-size" in result.output, result.output


def test_writer_uses_the_chat_template_when_there_is_one(tiny_models):
    tokenizer = tiny_tokenizer()
    assert SummaryWriter(tiny_models["llama"], tokenizer).render("Hi") == "Hi\n"
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                               "{{ m['content'] }}<|im_end|>\n{% endfor %}"
                               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    writer = SummaryWriter(tiny_models["llama"], tokenizer, max_new_tokens=3)
    assert writer.render("Hi") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert len(writer.generate([writer.render("Hi")])) == 1


def test_a_reply_ends_at_the_models_end_of_turn_token_too(tiny_models, monkeypatch):
    """Gemma's chat turns end with ``<end_of_turn>``, which is no EOS of its tokenizer: its
    generation config lists it among the EOS ids, and a reply stops there (it ran on to
    ``max_new_tokens``, writing the next turn into the summary)."""
    model, tokenizer = tiny_models["qwen2"], tiny_tokenizer()  # writes distinct tokens
    writer = SummaryWriter(model, tokenizer, max_new_tokens=6)
    prompt = writer.render("Summarise the user's taste")
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    free = greedy_generate(HFSplitLLM(model), ids, torch.ones_like(ids), 0, 6)[0].tolist()
    turn_end = free[2]
    assert tokenizer.eos_token_id not in free[:3] and turn_end not in free[:2]
    monkeypatch.setattr(model.generation_config, "eos_token_id",
                        [tokenizer.eos_token_id, turn_end])
    expected = " ".join(tokenizer.decode(free[:2], skip_special_tokens=True).split())
    assert writer.generate([prompt]) == [expected]
    assert writer.stop_ids() == [tokenizer.eos_token_id, turn_end]


def test_summaries_that_stop_at_an_end_of_turn_token_are_cached_apart(tmp_path):
    """A generation config's end-of-turn token changes the replies but is not in the model's
    fingerprint: replies written when they stopped at the EOS alone (before it was honoured)
    are not read back for such a model; a model stopping at its EOS alone keeps its keys."""
    path = tmp_path / "summaries.jsonl"
    SummaryCache(path, "fp", 5).add(["a"], ["ran on into the next turn"])
    assert SummaryCache(path, "fp", 5, more_stops=[7]).get("a") is None
    assert SummaryCache(path, "fp", 5, more_stops=()).get("a") == "ran on into the next turn"
    payload = json.dumps(["fp", 5, "a"])
    assert SummaryCache(path, "fp", 5).key("a") == hashlib.sha256(payload.encode()).hexdigest()


def test_context_spec_round_trips_and_validates():
    for spec in (ContextSpec(kind="rella", k=3),
                 ContextSpec(kind="trsr", block_size=4, mode="hierarchical")):
        assert ContextSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError):
        ContextSpec(kind="other")
    with pytest.raises(ValueError):
        ContextSpec(kind="trsr", mode="sideways")


def test_summaries_written_for_other_tokens_are_not_read_back(tmp_path, tiny_models):
    """Two tokenizers of the same weights (one adds a BOS) share the fingerprint and the key:
    the second read the first's replies to prompts it reads otherwise. Each reply records
    what the model read; replies written before that was recorded are read for any."""
    from automr.contexts import trsr_context
    from automr.llm.loading import LoadedModel

    spec, catalog = ContextSpec(kind="trsr", max_new_tokens=5), catalog_of(4)

    def cache_of(bos: bool):
        loaded = LoadedModel(model=tiny_models["llama"], tokenizer=tiny_tokenizer(bos),
                             name="tiny", fingerprint="fp")
        return trsr_context(loaded, catalog, WORDS, "fp", spec, folder=tmp_path,
                            progress=False).cache

    plain, with_bos = cache_of(False), cache_of(True)
    assert plain.key("a") == with_bos.key("a") and plain.digest("a") != with_bos.digest("a")
    plain.add(["a"], ["a reply to the plain tokens"])
    assert cache_of(True).get("a") is None
    cache_of(True).add(["a"], ["a reply to the BOS and the tokens"])
    assert cache_of(False).get("a") == "a reply to the plain tokens"
    assert cache_of(True).get("a") == "a reply to the BOS and the tokens"
    SummaryCache(plain.path, "fp", 5).add(["b"], ["written before tokens were recorded"])
    assert cache_of(True).get("b") == cache_of(False).get("b") == (
        "written before tokens were recorded")


def test_summaries_written_in_another_dtype_are_cached_apart(tmp_path, tiny_models):
    """A model's fingerprint is the same in every dtype, its bfloat16 replies are not its
    float32 ones: a TRSR context of a bfloat16 model does not read float32 replies (float32
    keys are as they were)."""
    from automr.contexts import trsr_context
    from automr.llm.loading import LoadedModel

    spec, catalog = ContextSpec(kind="trsr", max_new_tokens=5), catalog_of(4)

    def cache_of(model):
        loaded = LoadedModel(model=model, tokenizer=tiny_tokenizer(), name="tiny",
                             fingerprint="fp")
        return trsr_context(loaded, catalog, WORDS, "fp", spec, folder=tmp_path,
                            progress=False).cache

    model = tiny_models["llama"]
    cache_of(model).add(["a"], ["a float32 reply"])
    assert cache_of(model).get("a") == "a float32 reply"
    payload = json.dumps(["fp", 5, "a"])
    assert cache_of(model).key("a") == hashlib.sha256(payload.encode()).hexdigest()
    half = cache_of(copy.deepcopy(model).to(torch.bfloat16))
    assert half.dtype == "bfloat16" and half.get("a") is None
    half.add(["a"], ["a bfloat16 reply"])
    assert cache_of(model).get("a") == "a float32 reply"

def test_generation_prompts_carry_the_contexts(tmp_path):
    from automr.llm.loading import LoadedModel
    from automr.methods.generative import left_padded_prompts
    from automr.testing.synthetic import synthetic_dataset

    dataset = synthetic_dataset(tmp_path)
    loaded = LoadedModel(model=None, tokenizer=tiny_tokenizer(), name="tiny")
    samples = dataset.samples("test")[:3]
    contexts = ["One.", None, "A longer context line."]
    ids, mask = left_padded_prompts(loaded, dataset, samples, contexts)
    for row, (sample, context) in enumerate(zip(samples, contexts, strict=True)):
        expected = tokenize_sample(loaded.tokenizer, sample, dataset.catalog,
                                   dataset.prompt_config, context=context).prompt_ids
        assert ids[row][mask[row].bool()].tolist() == list(expected)


def test_processes_share_trsr_summaries_by_user(tmp_path, monkeypatch):
    """A user's samples at one timestamp (MovieLens rates many films in a second) have one
    memory and so the same prompts: shared by sample, two processes wrote them both."""
    from automr import distributed

    same = [attrs.evolve(sample_of([f"i{k}" for k in range(1, 6)], ["i6"]), target=target)
            for target in ("i7", "i8", "i9", "i10")]
    other = attrs.evolve(sample_of(["i2", "i4", "i6"], ["i1"]), user="v")
    samples = [same[0], other, *same[1:]]
    writers = [FakeWriter(), FakeWriter()]
    contexts = [trsr(tmp_path, writer) for writer in writers]  # both read the cache first
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for rank, context in enumerate(contexts):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        context.precompute(samples)
    monkeypatch.undo()
    written = [[p for call in writer.calls for p in call] for writer in writers]
    assert [len(prompts) for prompts in written] == [3, 2]  # u's three blocks, v's two
    assert not set(written[0]) & set(written[1])
    fresh = FakeWriter()
    texts = trsr(tmp_path, fresh).texts(samples)
    assert fresh.calls == [] and texts[0] == texts[2] == texts[3] != texts[1]
