"""Eq. 5's ingredients: log P(y | z_t) and log P(y | z_t, z_m) for every memory element m.

Only the upper half runs per element. The lower half runs once per sample over
``[prompt, target]``: causal attention keeps the prompt's layer-L states independent of the
target, and the target's states never see memory, exactly as in decoding, where the lower
cache never holds memory. Each element's sequence is ``combine(prompt states, element)``
followed by the target states; logits are computed only where they predict target tokens.

With the append-token layout the prompt's upper-layer work is shared: the prompt runs through
the upper half once into a KV cache, which every element then extends by its own token and the
target tokens (DESIGN.md §5). Both paths give the same numbers (tested); the shared one does
a fraction of the work.

With the layouts that put the element before the prompt (concat, prepend-token) the prompt's
upper-layer states depend on the element, so nothing of the prompt can be shared exactly. What
can: the leading tokens that every element of the sample has bit for bit (e.g. a template
prefix of the element texts) run once into a KV cache that each element extends, and elements
sorted by length so that a batch carries little padding (masked slots are exact, see
:mod:`automr.combiners.insert`, but they cost work). The bigger lever there is annotating a
seeded subset of each sample's elements (:func:`element_subset`).
"""

import copy

import attrs
import torch
from jaxtyping import Float, Int, jaxtyped
from torch import Tensor

from automr.checks import beartype, int_field, is_bool, is_int, to_int
from automr.combiners import AppendToken, Concat, PrependToken
from automr.interfaces import Combiner, MemoryTokens, SplitLLM, require
from automr.llm.decoding import check_inserted
from automr.state import KVCache, LayerState


@attrs.frozen
class SampleLikelihoods:
    """One sample's target log-likelihood without memory and with each element inserted."""

    base: float
    with_element: Float[Tensor, " mem"]
    query: Float[Tensor, "seq hidden"]  # the prompt's layer-L states (for pooling z_t)


@attrs.define
class UpperAnnotator:
    """An :class:`~automr.interfaces.Annotator` over a split LM, a layer and a combiner.

    ``element_batch`` elements run through the upper half together. ``share_prompt`` takes the
    layout's fast path: with :class:`~automr.combiners.tokens.AppendToken` the prompt's KV
    cache is shared by every element; with :class:`~automr.combiners.tokens.Concat` and
    :class:`~automr.combiners.tokens.PrependToken` elements run sorted by length, and their
    common leading vectors run once into a KV cache when there are at least ``min_shared`` of them
    (an item memory's elements share one, its opening quote: caching it cost more than it
    saved, 0.76-0.90x the plain path on an H200 from 135M to 7B parameters). ``share_prompt=
    False`` runs every element over the whole combined sequence in memory order (the plain
    path the fast ones are tested against; a combiner of another class, a subclass of these
    included, always takes it). A fast path whose cache would continue across a
    longrope switch (MiniCPM3, Phi-3 128k: the split refuses that) runs the plain way.
    """

    llm: SplitLLM
    layer: int = attrs.field(converter=to_int, validator=is_int)
    combiner: Combiner
    element_batch: int = int_field(attrs.validators.ge(1), default=32)
    share_prompt: bool = attrs.field(default=True, validator=is_bool)
    min_shared: int = int_field(attrs.validators.ge(1), default=8)

    def __attrs_post_init__(self) -> None:
        require(self.llm, SplitLLM, "llm", "split a loaded model with "
                "automr.HFSplitLLM(loaded.model)")
        require(self.combiner, Combiner, "combiner",
                "a built-in one by name is automr.COMBINERS[name]()")

    @torch.no_grad()
    @jaxtyped(typechecker=beartype)
    def log_likelihoods(
        self, prompt_ids: Int[Tensor, " seq"], target_ids: Int[Tensor, " target"],
        memory: MemoryTokens,
    ) -> tuple[Float[Tensor, ""], Float[Tensor, " mem"]]:
        """The target's log-likelihood without memory and with each element (one row of
        ``memory`` per element): :meth:`annotate` without the prompt's states."""
        result = self.annotate(prompt_ids, target_ids, memory)
        return torch.tensor(result.base), result.with_element

    @torch.no_grad()
    @jaxtyped(typechecker=beartype)
    def annotate(
        self, prompt_ids: Int[Tensor, " seq"], target_ids: Int[Tensor, " target"],
        memory: MemoryTokens,
    ) -> SampleLikelihoods:
        """Base and per-element log-likelihoods of ``target_ids`` (one row of ``memory`` per
        element) and the prompt's layer-L states."""
        device = self.llm.device
        ids = torch.cat([prompt_ids, target_ids]).to(device)[None]
        lowered = self.llm.lower(ids, torch.ones_like(ids, dtype=torch.bool), self.layer)
        n_prompt = prompt_ids.shape[0]
        prompt = LayerState(hidden=lowered.hidden[:, :n_prompt], mask=lowered.mask[:, :n_prompt],
                            layer=self.layer)
        target = LayerState(hidden=lowered.hidden[:, n_prompt:], mask=lowered.mask[:, n_prompt:],
                            layer=self.layer)
        target_ids = target_ids.to(device)
        base = self._plain(prompt, target, target_ids, None)[0]
        layout = type(self.combiner)  # a subclass may combine otherwise: the plain path
        shareable = layout is AppendToken and bool(memory.mask.all()) and not (
            _crosses(self.llm, prompt.seq_len, prompt.seq_len + memory.hidden.shape[1]
                     + target.seq_len))
        if self.share_prompt and shareable:
            scores = self._shared(prompt, target, target_ids, memory)
        elif self.share_prompt and layout in (Concat, PrependToken):
            scores = self._prepended(prompt, target, target_ids, memory)
        else:
            scores = torch.cat([
                self._plain(prompt, target, target_ids, _rows(memory, start, self.element_batch))
                for start in range(0, memory.hidden.shape[0], self.element_batch)
            ]) if memory.hidden.shape[0] else torch.zeros(0, device=device)
        return SampleLikelihoods(float(base), scores.float().cpu(), prompt.hidden[0])

    def _plain(self, prompt: LayerState, target: LayerState, target_ids: Tensor,
               memory: MemoryTokens | None) -> Float[Tensor, " rows"]:
        """Upper half over ``combine(prompt, memory row) + target`` for each memory row."""
        rows = 1 if memory is None else memory.hidden.shape[0]
        query = _expand(prompt, rows)
        combined = query if memory is None else self.combiner.combine(query, memory)
        check_inserted(combined, query, f"{type(self.combiner).__name__}.combine")
        full = LayerState(
            hidden=torch.cat([combined.hidden, _expand(target, rows).hidden], 1),
            mask=torch.cat([combined.mask, _expand(target, rows).mask], 1), layer=self.layer,
        )
        # the first target token is read at each row's last real slot: a memory row padded
        # with masked slots (append layout) ends with them
        device = full.hidden.device
        last = combined.mask.to(device).long().cumsum(1).argmax(1)
        later = torch.arange(combined.seq_len, combined.seq_len + target.seq_len - 1,
                             device=device)
        positions = torch.cat([last[:, None], later.expand(rows, -1)], 1)
        logits = self.llm.upper(full, logits_at=positions)
        return _target_logprob(logits, target_ids)

    def _shared(self, prompt: LayerState, target: LayerState, target_ids: Tensor,
                memory: MemoryTokens) -> Float[Tensor, " mem"]:
        """Append layout: the prompt's upper pass once, then ``[element, target]`` per element."""
        cache = self.llm.new_cache()
        self.llm.upper(prompt, cache=cache, logits_at=torch.zeros(1, 0, dtype=torch.long,
                                                                   device=prompt.hidden.device))
        scores = []
        for start in range(0, memory.hidden.shape[0], self.element_batch):
            chunk = _rows(memory, start, self.element_batch)
            rows = chunk.hidden.shape[0]
            shared = _copy_cache(cache, rows)
            tail = LayerState(
                hidden=torch.cat([chunk.hidden.to(target.hidden), _expand(target, rows).hidden], 1),
                mask=torch.cat([chunk.mask.to(target.mask.device), _expand(target, rows).mask], 1),
                layer=self.layer,
            )
            n = chunk.hidden.shape[1]
            positions = torch.arange(n - 1, n - 1 + target.seq_len, device=tail.hidden.device)
            logits = self.llm.upper(tail, cache=shared, logits_at=positions.expand(rows, -1))
            scores.append(_target_logprob(logits, target_ids))
        return torch.cat(scores) if scores else torch.zeros(0, device=prompt.hidden.device)

    def _prepended(self, prompt: LayerState, target: LayerState, target_ids: Tensor,
                   memory: MemoryTokens) -> Float[Tensor, " mem"]:
        """Element-before-prompt layouts: ``[element, prompt, target]`` per element, the
        elements' bit-identical leading tokens (``min_shared`` or more) run once into a KV
        cache, elements batched in order of length (each batch right-padded with masked slots
        to its longest)."""
        device, dtype = prompt.hidden.device, prompt.hidden.dtype
        count = memory.hidden.shape[0]
        scores = torch.zeros(count, device=device)
        if count == 0:
            return scores
        packed, real = _packed(memory, device, dtype)
        lengths = real.sum(1).tolist()  # the only reads back: lengths, then the prefix
        shared = _shared_length(packed, lengths)
        shared = shared if shared >= self.min_shared else 0
        if _crosses(self.llm, shared, max(lengths) + prompt.seq_len + target.seq_len):
            shared = 0  # the whole sequence at once: a cache cannot continue past the switch
        cache = None
        if shared:
            cache = self.llm.new_cache()
            head = packed[:1, :shared]
            self.llm.upper(LayerState(hidden=head, mask=real[:1, :shared], layer=self.layer),
                           cache=cache,
                           logits_at=torch.zeros(1, 0, dtype=torch.long, device=device))
        order = sorted(range(count), key=lambda m: (lengths[m], m))
        for start in range(0, count, self.element_batch):
            chunk = order[start : start + self.element_batch]
            rows = torch.tensor(chunk, device=device)
            width = max(lengths[m] for m in chunk)
            query, tail = _expand(prompt, len(chunk)), _expand(target, len(chunk))
            state = LayerState(
                hidden=torch.cat([packed[rows, shared:width], query.hidden, tail.hidden], 1),
                mask=torch.cat([real[rows, shared:width], query.mask, tail.mask], 1),
                layer=self.layer)
            first = width - shared + prompt.seq_len - 1
            positions = torch.arange(first, first + target.seq_len, device=device)
            logits = self.llm.upper(state, cache=None if cache is None else _copy_cache(
                cache, len(chunk)), logits_at=positions.expand(len(chunk), -1))
            scores[rows] = _target_logprob(logits, target_ids)
        return scores


def _packed(memory: MemoryTokens, device: torch.device, dtype: torch.dtype
            ) -> tuple[Tensor, Tensor]:
    """Each element's real vectors moved to the front of its row, in order, the rest zeros
    (right padding, whatever holes the mask had): one gather, no per-element loop."""
    mask = memory.mask.to(device)
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)
    real = mask.gather(1, order)
    hidden = memory.hidden.to(device=device, dtype=dtype)
    hidden = hidden.gather(1, order[..., None].expand(-1, -1, hidden.shape[2]))
    return hidden.masked_fill(~real[..., None], 0), real


def common_prefix(memory: MemoryTokens) -> int:
    """How many leading real vectors every element (row of ``memory``; two or more) has bit for
    bit equal to the first element's (at most the shortest element's length)."""
    packed, real = _packed(memory, memory.hidden.device, memory.hidden.dtype)
    return _shared_length(packed, real.sum(1).tolist())


def _shared_length(packed: Tensor, lengths: list[int]) -> int:
    limit = min(lengths) if len(lengths) > 1 else 0
    if limit == 0:
        return 0
    heads = packed[:, :limit]
    same = (heads == heads[:1]).all(2).all(0)
    return int(same.long().cumprod(0).sum())


def _crosses(llm: SplitLLM, cached: int, total: int) -> bool:
    """Whether continuing a cache of ``cached`` positions to ``total`` crosses the model's
    longrope switch (:class:`~automr.llm.split.HFSplitLLM` refuses that; the whole sequence
    in one pass gets the factors its length calls for)."""
    switch = getattr(llm, "longrope_switch", None)
    return switch is not None and cached <= switch < total


def _target_logprob(logits: Tensor, target_ids: Tensor) -> Tensor:
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(2, target_ids.expand(logits.shape[0], -1)[..., None])[..., 0].sum(1)


def _expand(state: LayerState, rows: int) -> LayerState:
    return LayerState(hidden=state.hidden.expand(rows, -1, -1), mask=state.mask.expand(rows, -1),
                      layer=state.layer)


def _rows(memory: MemoryTokens, start: int, count: int) -> MemoryTokens:
    return MemoryTokens(hidden=memory.hidden[start : start + count],
                        mask=memory.mask[start : start + count])


def _copy_cache(cache: KVCache, rows: int) -> KVCache:
    """A copy of a one-sequence cache repeated ``rows`` times (the original stays as is)."""
    shared = copy.deepcopy(cache)
    shared.repeat_interleave(rows)
    return shared
