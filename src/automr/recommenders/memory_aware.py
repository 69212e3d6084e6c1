"""A memory-aware recommender (beyond the paper, an option): fine-tune BIGRec *with* memory.

The paper keeps the recommender frozen and trains only the retriever, so the upper half meets
layer-L memory for the first time at inference. Here, while BIGRec is fine-tuned, a share of
the training examples get one element of their own memory joined at the split layer, through
the combiner AutoMR uses at inference, so the upper layers learn to read it.

Only combiners that put the memory *before* the prompt can be trained this way (``concat``,
``prepend-token``): a training sequence is ``[prompt, target]`` at layer L, and the memory then
sits where it sits in decoding, ahead of the prompt, with the target tokens after both (the
lower half never sees memory, exactly as the lower KV cache in decoding). ``append-token``
would need the memory between prompt and target and is refused.

Which examples get an element, and which element, is a function of ``(seed, epoch, sample id)``
(``random``: uniform over the sample's memory) or of the prompt's layer-L states (``semantic``:
the element closest to the pooled prompt, as :class:`~automr.retrievers.SemanticRetriever`
picks it), so a resumed run draws the same and validation uses one fixed draw. Rows without
an element get a fully masked memory row, which is invisible: their loss is the plain one.
"""

import random
from collections.abc import Sequence

import attrs
import torch

from automr.combiners import COMBINERS, pad_memory
from automr.data import Sample
from automr.errors import AutomrError
from automr.interfaces import Insert, MemoryTokens
from automr.memory import MemoryStore
from automr.recommenders.finetune_config import MemoryTraining
from automr.retrievers import build_retriever, retrieved_memory, top_k
from automr.state import LayerState


@attrs.define(eq=False)
class MemoryInserts:
    """The memory inserts of a fixed list of examples (``samples[i]`` is example ``i``), whose
    prompts are the first ``prompt_lengths[i]`` tokens of their right-padded sequences."""

    store: MemoryStore
    """The memory the elements come from."""
    spec: MemoryTraining
    """The share, retrieval and combiner."""
    samples: Sequence[Sample]
    prompt_lengths: Sequence[int]
    seed: int = 0
    """With the epoch and the sample id, decides which examples get an element and, for
    ``random``, which one."""

    def __attrs_post_init__(self) -> None:
        combiner = COMBINERS[self.spec.combiner]()
        if combiner.uses_token_states and not self.store.record.store_token_states:
            raise AutomrError(f"memory-aware fine-tuning with {self.spec.combiner} inserts token "
                              f"states, but the memory in {self.store.folder} stores none: "
                              f"build it with `automr memory build --store-token-states`")
        if len(self.samples) != len(self.prompt_lengths):
            raise AutomrError("MemoryInserts: one prompt length per sample")

    def drawn(self, index: int, epoch: int) -> tuple[bool, int]:
        """Whether example ``index`` gets an element in ``epoch`` and, for ``random``, which
        (its position in the sample's memory, oldest first)."""
        sample = self.samples[index]
        if not sample.memory:
            return False, -1
        rng = random.Random(f"{self.seed}/{epoch}/{sample.id}")
        chosen = rng.random() < self.spec.share
        return chosen, rng.randrange(len(sample.memory))

    def insert(self, indices: Sequence[int], epoch: int) -> Insert | None:
        """The insert of the batch of examples ``indices`` (None when none gets an element)."""
        draws = [self.drawn(i, epoch) for i in indices]
        if not any(chosen for chosen, _ in draws):
            return None
        samples = [self.samples[i] for i in indices]
        requests = [self.store.request_for(s) for s in samples]
        prompt_lengths = [self.prompt_lengths[i] for i in indices]
        combiner = COMBINERS[self.spec.combiner]()

        def insert(state: LayerState) -> LayerState:
            elements = self._elements(state, requests, draws, prompt_lengths)
            return combiner.combine(state, self._tokens(requests, elements, combiner))

        return insert

    def _elements(self, state: LayerState, requests, draws, prompt_lengths) -> list[int]:
        """Per row, the chosen element's position in the sample's memory (-1: none)."""
        if self.spec.retrieval == "random":
            return [element if chosen else -1 for chosen, element in draws]
        keys, mask = self.store.padded_keys(requests)
        positions = torch.arange(state.seq_len, device=state.mask.device)
        prompt = state.mask & (positions < torch.tensor(prompt_lengths, device=positions.device
                                                        )[:, None])
        query = self.store.record.pooling(state.hidden, prompt)  # the target stays unseen
        retriever = build_retriever("semantic", self.store.hidden_size, seed=self.seed)
        device = query.device
        scores = retriever.scores(query.to(keys.dtype), keys.to(device), mask.to(device))
        best, _ = top_k(scores, mask.to(device), 1)
        return [int(best[row, 0]) if chosen else -1
                for row, (chosen, _) in enumerate(draws)]

    def _tokens(self, requests, elements: list[int], combiner) -> MemoryTokens:
        if not combiner.uses_token_states:
            keys, _ = self.store.padded_keys(requests)
            indices = torch.tensor(elements)[:, None]
            return retrieved_memory(keys, indices)
        rows = [self.store.token_states(user, start + element) if element >= 0
                else torch.zeros(0, self.store.hidden_size, dtype=self.store.record.torch_dtype,
                                 device=self.store.device)
                for (user, _, start), element in zip(requests, elements, strict=True)]
        return pad_memory(rows)
