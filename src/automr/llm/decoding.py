"""Incremental decoding through a split LM with one KV cache per half.

After a prompt is lowered (and, for AutoMR, memory is inserted at layer L), each new token
goes through ``lower`` with the lower cache, which never sees memory, and then through
``upper`` with the upper cache, which does. Grounders build on :func:`prefill` and
:func:`step`, so a memory-free recommender and AutoMR share one decoding path.
"""

import attrs
import torch
from beartype import beartype
from jaxtyping import Float, Int, jaxtyped
from torch import Tensor

from automr.interfaces import Insert, SplitLLM
from automr.state import KVCache, LayerState
from automr.types import TokenIds, TokenMask


@attrs.define
class Decoding:
    """A batch in the middle of decoding: both halves' caches and the next-token logits."""

    lower_cache: KVCache
    upper_cache: KVCache
    layer: int
    logits: Float[Tensor, "batch vocab"]

    def repeat_interleave(self, repeats: int) -> None:
        """Repeat every sequence ``repeats`` times (e.g. to start beams)."""
        self.lower_cache.repeat_interleave(repeats)
        self.upper_cache.repeat_interleave(repeats)
        self.logits = self.logits.repeat_interleave(repeats, dim=0)

    def select(self, indices: Int[Tensor, " n"]) -> None:
        """Keep and reorder sequences (beam search bookkeeping)."""
        self.lower_cache.select(indices)
        self.upper_cache.select(indices)
        self.logits = self.logits[indices]


@torch.no_grad()
@jaxtyped(typechecker=beartype)
def prefill(
    llm: SplitLLM, input_ids: TokenIds, attention_mask: TokenMask, layer: int,
    insert: Insert | None = None,
) -> Decoding:
    """Run the prompt through both halves (inserting memory at ``layer`` if given)."""
    lower_cache, upper_cache = llm.new_cache(), llm.new_cache()
    state = llm.lower(input_ids, attention_mask, layer, cache=lower_cache)
    if insert is not None:
        state = _inserted(insert, state)
    logits = llm.upper(state, cache=upper_cache, logits_at=state.last_positions())
    return Decoding(lower_cache, upper_cache, layer, logits[:, 0])


@jaxtyped(typechecker=beartype)
def _inserted(insert: Insert, state: LayerState) -> LayerState:
    """Call ``insert`` in its own shape scope: the result may be longer than the prompt, so
    its ``seq`` must not be bound to the caller's."""
    return insert(state)


@torch.no_grad()
@jaxtyped(typechecker=beartype)
def step(llm: SplitLLM, decoding: Decoding, token_ids: Int[Tensor, " batch"]) -> None:
    """Append one token per sequence; updates ``decoding.logits`` in place."""
    ids = token_ids.unsqueeze(1)
    mask = torch.ones_like(ids, dtype=torch.bool)
    state = llm.lower(ids, mask, decoding.layer, cache=decoding.lower_cache)
    decoding.logits = llm.upper(state, cache=decoding.upper_cache)[:, -1]


@torch.no_grad()
@jaxtyped(typechecker=beartype)
def greedy_generate(
    llm: SplitLLM, input_ids: TokenIds, attention_mask: TokenMask, layer: int,
    max_new_tokens: int, eos_token_id: int | None = None, insert: Insert | None = None,
) -> Int[Tensor, "batch new"]:
    """Greedy decoding through the split; finished sequences are padded with ``eos_token_id``."""
    decoding = prefill(llm, input_ids, attention_mask, layer, insert)
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    generated = []
    for _ in range(max_new_tokens):
        token = decoding.logits.argmax(-1)
        if eos_token_id is not None:
            token = token.masked_fill(finished, eos_token_id)
            finished |= token == eos_token_id
        generated.append(token)
        if bool(finished.all()) or len(generated) == max_new_tokens:
            break
        step(llm, decoding, token)
    return torch.stack(generated, dim=1)
