"""TRSR: LM-written summaries of the user's long-term history, put in the prompt.

TRSR (Zheng et al., 2024) segments a user's history into blocks and has an untuned LLM
summarise the user's interests from them. Here the long-term history is the sample's memory
(everything older than the recent K): its newest ``block_size * max_blocks`` items, cut into
blocks of ``block_size`` counted back from the newest item (so only the oldest kept block may
be shorter), summarised oldest block first, greedy, ``max_new_tokens`` each:

- ``recurrent`` (default): the first block is summarised alone; each later block's prompt
  holds the summary so far and asks for an updated one; the last reply is the summary;
- ``hierarchical``: every block is summarised alone, then one more prompt merges the block
  summaries (oldest first) into the final one (a single block's summary is final as is).

The context reads ``Summary of the user's long-term preferences: <summary>``; a sample without
long-term history (or whose summary comes out empty) gets none.

:meth:`TRSRContext.precompute` writes the summaries of many samples ahead of use; under a
launcher (:mod:`automr.distributed`) every process writes its round-robin share of them.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from automr import distributed
from automr.cache import resolve_cache_dir
from automr.contexts.spec import ContextSpec
from automr.contexts.summaries import SummaryCache, SummaryWriter
from automr.data import Catalog, PromptConfig, Sample
from automr.data.prompts import format_titles
from automr.llm.loading import LoadedModel, dtype_name
from automr.progress import Progress

CONTEXT_TEMPLATE = "Summary of the user's long-term preferences: {summary}"
FIRST_BLOCK = ("The user has {verb} the following {plural}, oldest first: {titles}.\n"
               "Summarize the user's {singular} preferences in one or two sentences.")
NEXT_BLOCK = ("Summary of the user's {singular} preferences so far: {previous}\n"
              "Since then, the user has {verb} the following {plural}, oldest first: {titles}.\n"
              "Update the summary of the user's {singular} preferences in one or two "
              "sentences.")
MERGE = ("Summaries of the user's {singular} preferences in successive periods, oldest "
         "first:\n{summaries}\nCombine them into one summary of the user's {singular} "
         "preferences in one or two sentences.")


def trsr_blocks(items: Sequence[str], block_size: int, max_blocks: int) -> list[tuple[str, ...]]:
    """The newest ``block_size * max_blocks`` of ``items`` (oldest first) in blocks of
    ``block_size`` counted back from the newest, oldest block first."""
    blocks, end = [], len(items)
    while end > 0 and len(blocks) < max_blocks:
        start = max(0, end - block_size)
        blocks.append(tuple(items[start:end]))
        end = start
    return blocks[::-1]


def block_prompt(titles: Sequence[str], prompt: PromptConfig, previous: str | None = None
                 ) -> str:
    """The instruction summarising one block (recurrent mode: after the summary so far)."""
    words = {"plural": prompt.plural, "singular": prompt.singular, "verb": prompt.verb}
    joined = format_titles(titles, prompt)
    if previous is None:
        return FIRST_BLOCK.format(titles=joined, **words)
    return NEXT_BLOCK.format(titles=joined, previous=previous, **words)


def merge_prompt(summaries: Sequence[str], prompt: PromptConfig) -> str:
    """The instruction merging block summaries (hierarchical mode)."""
    listed = "\n".join(f"{i}. {summary}" for i, summary in enumerate(summaries, 1))
    return MERGE.format(summaries=listed, singular=prompt.singular)


class TRSRContext:
    """:class:`~automr.interfaces.PromptContext` with a cached LM-written summary per sample."""

    def __init__(self, writer: SummaryWriter, cache: SummaryCache, catalog: Catalog,
                 prompt: PromptConfig, block_size: int = 5,
                 max_blocks: int = 5, mode: str = "recurrent", progress: bool = True) -> None:
        self.spec = ContextSpec(kind="trsr", block_size=block_size, max_blocks=max_blocks,
                                mode=mode, max_new_tokens=writer.max_new_tokens)
        self.writer, self.cache, self.catalog, self.prompt = writer, cache, catalog, prompt
        self.progress = progress

    @property
    def config(self) -> dict[str, Any]:
        """The ``trsr`` :class:`ContextSpec` as JSON (block size, blocks, mode, tokens)."""
        return self.spec.to_json()

    def blocks(self, sample: Sample) -> list[list[str]]:
        """The titles of ``sample``'s blocks, oldest block first."""
        return [self.catalog.titles(block) for block in
                trsr_blocks(sample.memory, self.spec.block_size, self.spec.max_blocks)]

    def summaries(self, samples: Sequence[Sample]) -> list[str | None]:
        """The final summary of each sample (None without long-term history)."""
        blocks = [self.blocks(sample) for sample in samples]
        rounds = max(map(len, blocks), default=0)
        final: list[str | None] = [None] * len(samples)
        with Progress(disable=not self.progress) as bar:
            task = bar.add_task("TRSR summaries", total=0)
            if self.spec.mode == "recurrent":
                for r in range(rounds):
                    rows = [i for i, b in enumerate(blocks) if len(b) > r]
                    asks = [block_prompt(blocks[i][r], self.prompt, final[i]) for i in rows]
                    for i, reply in zip(rows, self.replies(asks, bar, task), strict=True):
                        final[i] = reply
            else:
                flat = [(i, block) for i, b in enumerate(blocks) for block in b]
                replies = self.replies([block_prompt(b, self.prompt) for _, b in flat], bar, task)
                per_sample: list[list[str]] = [[] for _ in samples]
                for (i, _), reply in zip(flat, replies, strict=True):
                    per_sample[i].append(reply)
                rows = [i for i, s in enumerate(per_sample) if len(s) > 1]
                merged = self.replies([merge_prompt(per_sample[i], self.prompt) for i in rows],
                                      bar, task)
                for i, s in enumerate(per_sample):
                    final[i] = s[0] if len(s) == 1 else None
                for i, reply in zip(rows, merged, strict=True):
                    final[i] = reply
        return final

    def replies(self, instructions: Sequence[str], bar: Progress | None = None, task=None
                ) -> list[str]:
        """The writer's reply to each instruction, from the cache where it has one; the rest
        generated in batches (each distinct prompt once) and cached batch by batch."""
        prompts = [self.writer.render(text) for text in instructions]
        missing = list(dict.fromkeys(p for p in prompts if self.cache.get(p) is None))
        if bar is not None:
            total = next(t.total for t in bar.tasks if t.id == task) or 0
            bar.update(task, total=total + len(missing))
        size = self.writer.batch_size
        for start in range(0, len(missing), size):
            chunk = missing[start : start + size]
            self.cache.add(chunk, self.writer.generate(chunk))
            if bar is not None:
                bar.advance(task, len(chunk))
        return [self.cache.get(p) or "" for p in prompts]

    def texts(self, samples: Sequence[Sample]) -> list[str | None]:
        """``"Summary of the user's long-term preferences: {summary}"`` per sample (None where
        :meth:`summaries` gives None or an empty summary)."""
        return [CONTEXT_TEMPLATE.format(summary=s) if s else None
                for s in self.summaries(samples)]

    def precompute(self, samples: Sequence[Sample]) -> None:
        """Write (and cache) the summaries of ``samples``, each process those of its
        round-robin share of their users (most samples first); every process then reads all
        of them from the cache. Collective: every process calls it with the same samples.

        A user's samples share their older blocks' prompts: shared by sample, every process
        wrote them again (113 generations for 87 distinct prompts on two processes)."""
        by_user: dict[str, list[Sample]] = {}
        for sample in samples:
            by_user.setdefault(sample.user, []).append(sample)
        users = sorted(by_user, key=lambda user: (-len(by_user[user]), user))
        progress = self.progress
        self.progress = progress and distributed.is_main()
        try:
            self.summaries([s for user in distributed.mine(users) for s in by_user[user]])
        finally:
            self.progress = progress
        distributed.barrier()
        self.cache.reload()


def trsr_context(
    loaded: LoadedModel, catalog: Catalog, prompt: PromptConfig, base_fingerprint: str,
    spec: ContextSpec, cache_dir: Path | str | None = None, folder: Path | str | None = None,
    batch_size: int = 8, progress: bool = True,
) -> TRSRContext:
    """TRSR with ``loaded``'s base model, caching summaries in ``folder`` (default: the
    ``trsr`` folder of the cache) under ``base_fingerprint`` (``loaded``'s or, for a
    fine-tune, its base's)."""
    loaded.check_base_fingerprint(base_fingerprint, "TRSR summaries")
    root = Path(folder) if folder is not None else resolve_cache_dir(cache_dir) / "trsr"
    writer = SummaryWriter(loaded.model, loaded.tokenizer, spec.max_new_tokens, batch_size)
    cache = SummaryCache(root / f"{base_fingerprint[:16]}.jsonl", base_fingerprint,
                         spec.max_new_tokens,
                         [i for i in writer.stop_ids() if i != loaded.tokenizer.eos_token_id],
                         dtype_name(loaded.model.dtype), reads=writer.reads)
    return TRSRContext(writer, cache, catalog, prompt, spec.block_size, spec.max_blocks,
                       spec.mode, progress)
