"""Incremental decoding through a split LM with one KV cache per half.

After a prompt is lowered (and, for AutoMR, memory is inserted at layer L), each new token
goes through ``lower`` with the lower cache, which never sees memory, and then through
``upper`` with the upper cache, which does. Grounders build on :func:`prefill` and
:func:`step`, so a memory-free recommender and AutoMR share one decoding path.

Two fast paths, both exact up to float rounding:

* ``prefill(..., share_prefix=True)`` runs the tokens every prompt of the batch starts with
  (the prompt template's fixed header) once, then each prompt's rest on top of that cache.
* :meth:`Decoding.reserve` moves both caches into buffers with room for the tokens still to
  come (:class:`ReservedLayers`): a step writes its keys and values in place instead of
  concatenating (which copies the whole cache every step), and :meth:`Decoding.select_beams`
  reorders beams without touching the prompt's part, which all beams of a prompt share.
"""

from collections.abc import Sequence

import attrs
import torch
from jaxtyping import Bool, Float, Int, jaxtyped
from torch import Tensor

from automr.checks import beartype
from automr.errors import AutomrError, WrongTypeError
from automr.interfaces import Insert, SplitLLM
from automr.state import KVCache, LayerState
from automr.types import TokenIds, TokenMask, as_bool_mask

MIN_SHARED = 8
"""Shortest common prompt prefix worth a pass of its own (``prefill(share_prefix=True)``)."""


class ReservedLayers:
    """A per-layer key/value store that decoder layers call like a transformers cache
    (``update``), holding each layer's keys and values in a buffer with spare positions.

    Appending writes into the buffer and returns a view of the filled part, so a step copies
    only its own keys and values (a growing cache concatenates, copying the whole cache per
    layer and step). The first ``shared`` positions are the prompt's: rows of one prompt
    (its beams) hold the same ones, so :meth:`select_beams` leaves them where they are.
    """

    def __init__(self, keys: dict[int, Tensor], values: dict[int, Tensor], length: int,
                 spare: int) -> None:
        self.keys, self.values = keys, values
        self.lengths = dict.fromkeys(keys, length)
        self.shared, self.spare = length, spare

    @classmethod
    def from_layers(cls, layers: object, spare: int, repeats: int) -> "ReservedLayers":
        """Copy a transformers cache's filled layers, each row repeated ``repeats`` times, into
        buffers with ``spare`` free positions."""
        keys, values, length = {}, {}, 0
        for index, layer in enumerate(getattr(layers, "layers", ())):
            if not getattr(layer, "is_initialized", False) or layer.keys.numel() == 0:
                continue
            length = layer.keys.shape[2]
            keys[index] = _repeated_into_buffer(layer.keys, repeats, spare)
            values[index] = _repeated_into_buffer(layer.values, repeats, spare)
        return cls(keys, values, length, spare)

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args,
               **kwargs) -> tuple[Tensor, Tensor]:
        """Append ``[batch, heads, new, dim]`` keys and values; return all filled positions."""
        new = key_states.shape[2]
        if layer_idx not in self.keys:
            self.keys[layer_idx] = key_states.new_empty((*key_states.shape[:2], 0,
                                                         key_states.shape[3]))
            self.values[layer_idx] = value_states.new_empty((*value_states.shape[:2], 0,
                                                             value_states.shape[3]))
            self.lengths[layer_idx] = 0
        start = self.lengths[layer_idx]
        if start + new > self.keys[layer_idx].shape[2]:
            self._grow(layer_idx, start + new + self.spare)
        end = start + new
        self.keys[layer_idx][:, :, start:end] = key_states
        self.values[layer_idx][:, :, start:end] = value_states
        self.lengths[layer_idx] = end
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def _grow(self, layer_idx: int, capacity: int) -> None:
        for store in (self.keys, self.values):
            old = store[layer_idx]
            grown = old.new_empty((*old.shape[:2], capacity, old.shape[3]))
            grown[:, :, : self.lengths[layer_idx]] = old[:, :, : self.lengths[layer_idx]]
            store[layer_idx] = grown

    def select_beams(self, indices: Tensor) -> None:
        """Row ``r`` takes row ``indices[r]``'s positions after the shared ones; both rows must
        hold the same prompt."""
        for index, length in self.lengths.items():
            for store in (self.keys, self.values):
                tail = store[index][:, :, self.shared : length]
                tail.copy_(tail.index_select(0, indices))

    def batch_select_indices(self, indices: Tensor) -> None:
        """Keep (and reorder to) any rows, every position."""
        for store in (self.keys, self.values):
            for index in store:
                store[index] = store[index].index_select(0, indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        for store in (self.keys, self.values):
            for index in store:
                store[index] = store[index].repeat_interleave(repeats, dim=0)


def _repeated_into_buffer(states: Tensor, repeats: int, spare: int) -> Tensor:
    """``states`` ``[batch, heads, seq, dim]`` with each row repeated, in a buffer of
    ``seq + spare`` positions (one copy, no intermediate)."""
    batch, heads, seq, dim = states.shape
    buffer = states.new_empty((batch * repeats, heads, seq + spare, dim))
    buffer.view(batch, repeats, heads, seq + spare, dim)[:, :, :, :seq] = states[:, None]
    return buffer


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

    def reserve(self, spare: int, repeats: int = 1) -> None:
        """Move both caches into buffers with ``spare`` free positions (:class:`ReservedLayers`),
        each sequence repeated ``repeats`` times (e.g. a prompt's beams)."""
        for cache in (self.lower_cache, self.upper_cache):
            cache.layers = ReservedLayers.from_layers(cache.layers, spare, repeats)
            cache.repeat_recurrent(repeats)  # a fixed size per row: repeated whole
            if cache.past_mask is not None:
                cache.past_mask = cache.past_mask.repeat_interleave(repeats, dim=0)
        self.logits = self.logits.repeat_interleave(repeats, dim=0)

    def select_beams(self, indices: Int[Tensor, " n"]) -> None:
        """Like :meth:`select` where each row takes a row of its own prompt (after
        :meth:`reserve`): the prompt's keys and values stay in place."""
        for cache in (self.lower_cache, self.upper_cache):
            cache.layers.select_beams(indices)
            cache.select_recurrent(indices)  # a fixed size per row: copied whole
            cache.past_mask = cache.past_mask[indices]
        self.logits = self.logits[indices]


@torch.no_grad()
@jaxtyped(typechecker=beartype)
def prefill(
    llm: SplitLLM, input_ids: TokenIds, attention_mask: TokenMask, layer: int,
    insert: Insert | None = None, share_prefix: bool = False,
) -> Decoding:
    """Run the prompt through both halves (inserting memory at ``layer`` if given).

    ``share_prefix``: the tokens every prompt starts with run once (both halves without
    ``insert``, the lower half with it); the caches then hold ``[prefix | rest | padding]``
    instead of the batch's layout, which positions and masks make equivalent. Not where a
    prompt crosses the model's longrope switch after the prefix: its cache could not continue
    there (:class:`~automr.llm.split.HFSplitLLM`), the whole prompt at once can. The two
    halves are :func:`lower_prompts` and :func:`upper_prompts`.
    """
    lowered = lower_prompts(llm, input_ids, attention_mask, layer, share_prefix)
    upper_cache, logits = upper_prompts(llm, lowered.head, lowered.rest, insert)
    return Decoding(lowered.lower_cache, upper_cache, layer, logits)


@attrs.frozen
class LoweredPrompts:
    """A batch of prompts through the lower half: its cache, and the layer-L states the upper
    half takes. ``head`` holds the tokens every prompt starts with (one row, run once) and
    ``rest`` each prompt's tokens after them, right-padded; without a shared prefix ``head``
    is None and ``rest`` is the batch as given."""

    lower_cache: KVCache
    head: LayerState | None
    rest: LayerState


@jaxtyped(typechecker=beartype)
def lower_prompts(
    llm: SplitLLM, input_ids: TokenIds, attention_mask: TokenMask, layer: int,
    share_prefix: bool = False,
) -> LoweredPrompts:
    """The lower half of :func:`prefill`: layers ``0..layer-1`` over the prompts."""
    mask = as_bool_mask(attention_mask)
    lower_cache = llm.new_cache()
    if share_prefix:
        rows = [ids[real].tolist() for ids, real in zip(input_ids, mask, strict=True)]
        shared = common_prefix(rows)
        switch = getattr(llm, "longrope_switch", None)
        crosses = switch is not None and shared <= switch < max(map(len, rows))
        if shared >= MIN_SHARED and len(rows) > 1 and not crosses:
            device = llm.device
            head_ids = torch.tensor([rows[0][:shared]], device=device)
            head = llm.lower(head_ids, torch.ones_like(head_ids, dtype=torch.bool), layer,
                             lower_cache)
            lower_cache.repeat_interleave(len(rows))
            width = max(len(r) for r in rows) - shared
            rest_ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
            rest_mask = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
            for row, tokens in enumerate(rows):
                rest_ids[row, : len(tokens) - shared] = torch.tensor(tokens[shared:],
                                                                     device=device)
                rest_mask[row, : len(tokens) - shared] = True
            return LoweredPrompts(lower_cache, head,
                                  llm.lower(rest_ids, rest_mask, layer, lower_cache))
    return LoweredPrompts(lower_cache, None,
                          llm.lower(input_ids, mask, layer, cache=lower_cache))


@jaxtyped(typechecker=beartype)
def upper_prompts(
    llm: SplitLLM, head: LayerState | None, rest: LayerState, insert: Insert | None = None,
) -> tuple[KVCache, Tensor]:
    """The upper half of :func:`prefill` over the layer-L states of :func:`lower_prompts`
    (memory inserted first, if given): the upper cache and each prompt's next-token logits
    ``[batch, vocab]``. Without ``insert`` a ``head`` runs once; with it, the memory joins
    each whole prompt, so the head is repeated into every row."""
    upper_cache = llm.new_cache()
    if head is not None and insert is None:
        llm.upper(head, cache=upper_cache, logits_at=torch.zeros(1, 1, dtype=torch.long,
                                                                 device=head.hidden.device))
        upper_cache.repeat_interleave(rest.batch_size)
        return upper_cache, llm.upper(rest, cache=upper_cache,
                                      logits_at=rest.last_positions())[:, 0]
    state = rest if head is None else LayerState(
        hidden=torch.cat([head.hidden.expand(rest.batch_size, -1, -1), rest.hidden], 1),
        mask=torch.cat([head.mask.expand(rest.batch_size, -1), rest.mask], 1), layer=rest.layer)
    if insert is not None:
        state = apply_insert(insert, state)
    return upper_cache, llm.upper(state, cache=upper_cache,
                                  logits_at=state.last_positions())[:, 0]


def common_prefix(rows: list[list[int]]) -> int:
    """Length of the longest common prefix, leaving every row at least one more token."""
    limit = min(map(len, rows)) - 1
    length = 0
    while length < limit and all(r[length] == rows[0][length] for r in rows):
        length += 1
    return length


@jaxtyped(typechecker=beartype)
def apply_insert(insert: Insert, state: LayerState) -> LayerState:
    """``insert(state)``, in its own shape scope (the result may be longer than the prompt,
    so its ``seq`` is not bound to the caller's), refused unless :func:`check_inserted`."""
    inserted = insert(state)
    check_inserted(inserted, state, "the insert")
    return inserted


def check_inserted(inserted: object, state: LayerState, by: str) -> None:
    """Refuse what ``by`` (an insert, a combiner) made of ``state`` unless it is a
    :class:`LayerState` with the state's rows, layer, hidden width, dtype and device: the
    upper half runs from its layer, one row per prompt."""
    if not isinstance(inserted, LayerState):
        raise WrongTypeError(f"{by} gave a {type(inserted).__name__}, not a LayerState: a "
                             f"combiner returns the state it was given with memory joined")
    hidden = inserted.hidden
    if (hidden.shape[-1], hidden.dtype, hidden.device) != (
            state.hidden.shape[-1], state.hidden.dtype, state.hidden.device):
        raise AutomrError(f"{by} gave hidden states of width {hidden.shape[-1]}, "
                          f"{hidden.dtype} on {hidden.device} for the model's width "
                          f"{state.hidden.shape[-1]}, {state.hidden.dtype} on "
                          f"{state.hidden.device}: a combiner keeps the states' width, dtype "
                          f"and device")
    if inserted.batch_size != state.batch_size or inserted.layer != state.layer:
        raise AutomrError(f"{by} turned a layer-{state.layer} state of {state.batch_size} "
                          f"rows into a layer-{inserted.layer} state of {inserted.batch_size} "
                          f"rows: memory is joined to each row at the layer it is given")


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
def extend(
    llm: SplitLLM, decoding: Decoding, token_ids: Int[Tensor, "batch new"],
    mask: Bool[Tensor, "batch new"],
) -> Float[Tensor, "batch new vocab"]:
    """Append several tokens per sequence (right-padded, ``mask`` marks real ones; at least
    one per row): the logits after each, and ``decoding.logits`` after each row's last."""
    state = llm.lower(token_ids, mask, decoding.layer, cache=decoding.lower_cache)
    logits = llm.upper(state, cache=decoding.upper_cache)
    decoding.logits = logits.gather(1, state.last_positions()[..., None].expand(
        -1, -1, logits.shape[-1]))[:, 0]
    return logits


@torch.no_grad()
@jaxtyped(typechecker=beartype)
def greedy_generate(
    llm: SplitLLM, input_ids: TokenIds, attention_mask: TokenMask, layer: int,
    max_new_tokens: int, eos_token_id: int | Sequence[int] | None = None,
    insert: Insert | None = None,
) -> Int[Tensor, "batch new"]:
    """Greedy decoding through the split; a sequence finishes at ``eos_token_id`` (or at any
    of several: a chat model's end of turn, e.g. Gemma's ``<end_of_turn>``, is no EOS of its
    tokenizer) and is then padded with it (the first of several)."""
    decoding = prefill(llm, input_ids, attention_mask, layer, insert)  # inserts, as always
    if max_new_tokens == 0:
        return input_ids.new_zeros((input_ids.shape[0], 0))
    stops = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else
                         list(eos_token_id or ()), dtype=torch.long, device=input_ids.device)
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    generated = []
    for _ in range(max_new_tokens):
        token = decoding.logits.argmax(-1)
        if len(stops):
            token = token.masked_fill(finished, int(stops[0]))
            finished |= torch.isin(token, stops)
        generated.append(token)
        if bool(finished.all()) or len(generated) == max_new_tokens:
            break
        step(llm, decoding, token)
    return torch.stack(generated, dim=1)
