"""Exact likelihood ranking: every catalog title scored given the prompt (small catalogs)."""

import copy
import weakref
from collections.abc import Hashable, Sequence

import attrs
import torch
from jaxtyping import Float, Int, jaxtyped
from torch import Tensor

from automr.checks import beartype, int_field
from automr.grounding.targets import CatalogTargets
from automr.interfaces import Insert, SplitLLM
from automr.llm.decoding import Decoding, lower_prompts, prefill, upper_prompts
from automr.state import LayerState
from automr.types import TokenIds, TokenMask


@attrs.define
class LikelihoodGrounder:
    """Ranks all items by ``log P(title tokens, EOS | prompt)``, highest first.

    The prompt runs once per sample (both halves, memory inserted if given); titles are then
    scored in chunks of ``chunk_size`` against copies of the prompt's two KV caches. Cost is
    about the catalog's total title tokens per sample, so it suits small catalogs.
    """

    targets: CatalogTargets
    chunk_size: int = int_field(attrs.validators.gt(0), default=64)

    @jaxtyped(typechecker=beartype)
    def rank(
        self, llm: SplitLLM, input_ids: TokenIds, attention_mask: TokenMask, layer: int,
        insert: Insert | None = None,
    ) -> Int[Tensor, "batch items"]:
        """Each prompt's catalog positions by :meth:`scores`, highest first (equal scores in
        catalog order)."""
        scores = self.scores(llm, input_ids, attention_mask, layer, insert)
        return scores.argsort(dim=1, descending=True, stable=True)

    @torch.no_grad()
    @jaxtyped(typechecker=beartype)
    def scores(
        self, llm: SplitLLM, input_ids: TokenIds, attention_mask: TokenMask, layer: int,
        insert: Insert | None = None,
    ) -> Float[Tensor, "batch items"]:
        """``[prompts, items]``: each title's ``log P(title tokens, EOS | prompt)``, the prompt
        split at ``layer`` with ``insert`` (optional) joined there."""
        batch = prefill(llm, input_ids, attention_mask, layer, insert)
        rows = []
        for b in range(input_ids.shape[0]):
            start = copy.deepcopy(batch)
            start.select(torch.tensor([b], device=llm.device))
            chunks = [
                self._score_chunk(llm, start, self.targets.token_ids[i : i + self.chunk_size])
                for i in range(0, len(self.targets), self.chunk_size)
            ]
            rows.append(torch.cat(chunks))
        return torch.stack(rows)

    def _score_chunk(
        self, llm: SplitLLM, start: Decoding, titles: tuple[tuple[int, ...], ...]
    ) -> Float[Tensor, " chunk"]:
        decoding = copy.deepcopy(start)
        decoding.repeat_interleave(len(titles))
        return _continuation_log_likelihoods(llm, decoding, titles)

@torch.no_grad()
@jaxtyped(typechecker=beartype)
def target_log_likelihoods(
    llm: SplitLLM, input_ids: TokenIds, attention_mask: TokenMask, layer: int,
    targets: Sequence[Sequence[int]], insert: Insert | None = None, share_prefix: bool = True,
) -> Float[Tensor, " batch"]:
    """``log P(targets[b] | prompt b)`` for each row, teacher-forced through the split.

    The prompts run once (memory inserted at ``layer`` if given); then every row's target
    tokens run in one right-padded pass against the prompt caches. The score
    :class:`LikelihoodGrounder` gives that title, without scoring the rest of the catalog.
    ``share_prefix``: the tokens every prompt of the batch starts with (the template's
    opening) run once (:func:`~automr.llm.decoding.prefill`); the values equal the unshared
    ones within float rounding (a property test; ``benchmarks/likelihood.py`` measures both).
    It is :func:`lower_targets`, then :func:`target_log_likelihoods_from`.
    """
    return target_log_likelihoods_from(
        llm, lower_targets(llm, input_ids, attention_mask, layer, targets, share_prefix), insert)


@attrs.frozen(eq=False)
class LoweredTargets:
    """A batch of prompts and their target tokens through the lower half: the layer-L states
    the upper half takes (:class:`~automr.llm.decoding.LoweredPrompts`' ``head`` and ``rest``,
    and the targets', run against the prompts' lower cache), with the target token ids. The
    lower half never sees memory, so one serves every ``insert``
    (:func:`target_log_likelihoods_from`)."""

    head: LayerState | None
    rest: LayerState
    targets: LayerState
    target_ids: Int[Tensor, "batch target"]

    def nbytes(self) -> int:
        """The bytes its tensors hold."""
        return sum(t.numel() * t.element_size() for t in self._tensors())

    def copy_to(self, device: torch.device | str) -> "LoweredTargets":
        """A copy on ``device`` (also where it is there: a model whose layers wrote into their
        input would otherwise change what is kept)."""
        def moved(state: LayerState) -> LayerState:
            return LayerState(hidden=state.hidden.to(device, copy=True),
                              mask=state.mask.to(device, copy=True), layer=state.layer)

        return LoweredTargets(None if self.head is None else moved(self.head),
                              moved(self.rest), moved(self.targets),
                              self.target_ids.to(device, copy=True))

    def _tensors(self) -> list[Tensor]:
        states = [s for s in (self.head, self.rest, self.targets) if s is not None]
        return [*(t for s in states for t in (s.hidden, s.mask)), self.target_ids]


@attrs.frozen(eq=False)
class _Kept:
    """One kept pass of :class:`LoweredBatches`, with what it was made of."""

    model: "weakref.ReferenceType[torch.nn.Module]"
    weights: tuple[int, ...]
    input_ids: Tensor
    targets: tuple[tuple[int, ...], ...]
    lowered: LoweredTargets
    nbytes: int
    waiting: set[Hashable]
    """The inputs of the readers that have not read it."""


@attrs.define(eq=False)
class LoweredBatches:
    """Lower-half passes of likelihood batches (:class:`LoweredTargets`), kept on the CPU for
    the methods of one model that score the same batches with other memory (BIGRec, AutoMR,
    random retrieval, ...): the lower half never sees memory, so only the first of them runs
    it. A pass is taken again only for the same model object (held weakly: a model loaded
    again is another; the passes of a model that is gone are dropped) with its weights as
    they were (their version counts: a caller's training steps raise them), layer and token
    ids (prompts and targets); up to ``max_bytes`` are kept, and a batch past them runs
    again.

    A pass is kept only while a reader (:meth:`expect`; a :class:`GenerativeMethod` given
    this object is one) of its model and layer with other inputs has not read it: a method
    alone keeps nothing, and the last reader of a pass frees it. ``keep_for_later`` keeps
    every pass for readers not made yet (evaluations in turn that share one, as ``automr
    rq2``'s)."""

    max_bytes: int = int_field(attrs.validators.ge(0), default=2**31)
    keep_for_later: bool = attrs.field(default=False,
                                       validator=attrs.validators.instance_of(bool))
    reused: int = int_field(default=0)
    """Batches served from here so far."""
    _kept: dict[tuple, _Kept] = attrs.field(factory=dict, init=False)
    _bytes: int = attrs.field(default=0, init=False)
    _readers: "weakref.WeakKeyDictionary[object, tuple]" = attrs.field(
        factory=weakref.WeakKeyDictionary, init=False)

    def expect(self, reader: object, model: torch.nn.Module, layer: int,
               inputs: Hashable) -> None:
        """Say that ``reader`` (held weakly) reads the passes of ``model`` split at
        ``layer``; readers of equal ``inputs`` make the same values (one of them reads for
        all: methods that share kept likelihoods)."""
        self._readers[reader] = (id(model), layer, inputs)

    def _waiting(self, model: torch.nn.Module, layer: int, reader: object) -> set[Hashable]:
        """The inputs of the readers of ``model`` at ``layer`` other than ``reader``'s."""
        mine = self._readers.get(reader) if reader is not None else None
        return {inputs for model_id, at, inputs in self._readers.values()
                if (model_id, at) == (id(model), layer)} - (set() if mine is None else {mine[2]})

    def get(self, model: torch.nn.Module, layer: int, batch: tuple[str, ...],
            input_ids: TokenIds, targets: Sequence[Sequence[int]],
            reader: object = None) -> LoweredTargets | None:
        """A copy (on ``input_ids``' device) of the pass of ``model`` split at ``layer`` over
        the samples ``batch`` (their ids), if one is kept of these prompt ids and targets;
        ``reader`` has read it."""
        key = (id(model), layer, batch)
        kept = self._kept.get(key)
        if kept is None or kept.model() is not model or kept.weights != _weights(model) or (
                kept.targets != _rows(targets)) or not (
                kept.input_ids.shape == input_ids.shape
                and torch.equal(kept.input_ids, input_ids.cpu())):
            return None
        self.reused += 1
        kept.waiting.intersection_update(self._waiting(model, layer, reader))
        if not (kept.waiting or self.keep_for_later):
            self._bytes -= self._kept.pop(key).nbytes
        return kept.lowered.copy_to(input_ids.device)

    def put(self, model: torch.nn.Module, layer: int, batch: tuple[str, ...],
            input_ids: TokenIds, targets: Sequence[Sequence[int]],
            lowered: LoweredTargets, reader: object = None) -> None:
        """Keep a copy of ``lowered``, the pass that :meth:`get` names, made by ``reader``,
        on the CPU while another reader waits for it and it fits in ``max_bytes``."""
        for gone in [key for key, kept in self._kept.items() if kept.model() is None]:
            self._bytes -= self._kept.pop(gone).nbytes
        key = (id(model), layer, batch)
        size = lowered.nbytes() + input_ids.numel() * input_ids.element_size()
        if key in self._kept:  # of other weights, or prompts (a get found it unfit)
            self._bytes -= self._kept.pop(key).nbytes
        waiting = self._waiting(model, layer, reader)
        if (waiting or self.keep_for_later) and self._bytes + size <= self.max_bytes:
            self._kept[key] = _Kept(weakref.ref(model), _weights(model), input_ids.cpu(),
                                    _rows(targets), lowered.copy_to("cpu"), size, waiting)
            self._bytes += size


def _weights(model: torch.nn.Module) -> tuple[int, ...]:
    """The version count of each of ``model``'s weights (in-place writes raise them; weights
    made under ``torch.inference_mode`` have none: -1)."""
    return tuple(-1 if p.is_inference() else p._version for p in model.parameters())


def _rows(targets: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    return tuple(map(tuple, targets))


@torch.no_grad()
@jaxtyped(typechecker=beartype)
def lower_targets(
    llm: SplitLLM, input_ids: TokenIds, attention_mask: TokenMask, layer: int,
    targets: Sequence[Sequence[int]], share_prefix: bool = True,
) -> LoweredTargets:
    """The lower half of :func:`target_log_likelihoods`: the prompts, then the targets
    (right-padded) against their lower cache."""
    if len(targets) != input_ids.shape[0] or not all(targets):
        raise ValueError("target_log_likelihoods: one non-empty target per prompt")
    lowered = lower_prompts(llm, input_ids, attention_mask, layer, share_prefix)
    ids, mask = _right_padded(targets, llm.device)
    return LoweredTargets(lowered.head, lowered.rest,
                          llm.lower(ids, mask, layer, cache=lowered.lower_cache), ids)


@torch.no_grad()
@jaxtyped(typechecker=beartype)
def target_log_likelihoods_from(
    llm: SplitLLM, lowered: LoweredTargets, insert: Insert | None = None
) -> Float[Tensor, " batch"]:
    """The upper half of :func:`target_log_likelihoods` (``insert`` joined to the prompts)."""
    upper_cache, first = upper_prompts(llm, lowered.head, lowered.rest, insert)
    logits = llm.upper(lowered.targets, cache=upper_cache)
    return _summed_log_probs(first, logits, lowered.target_ids, lowered.targets.mask)


def _continuation_log_likelihoods(
    llm: SplitLLM, decoding: Decoding, continuations: Sequence[Sequence[int]]
) -> Float[Tensor, " n"]:
    """Summed log-probabilities of each row's continuation after a prefilled prompt."""
    ids, mask = _right_padded(continuations, llm.device)
    state = llm.lower(ids, mask, decoding.layer, cache=decoding.lower_cache)
    logits = llm.upper(state, cache=decoding.upper_cache)
    return _summed_log_probs(decoding.logits, logits, ids, mask)


def _right_padded(rows: Sequence[Sequence[int]], device: torch.device) -> tuple[Tensor, Tensor]:
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    mask = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
    for row, tokens in enumerate(rows):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = True
    return ids, mask


def _summed_log_probs(first: Tensor, logits: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
    """Each row's summed log-probability of its tokens ``ids`` (real where ``mask``): token j
    is predicted by the prompt's last position (``first``, j = 0) or by position j - 1."""
    logits = torch.cat([first[:, None], logits[:, :-1]], 1)
    logp = torch.log_softmax(logits.float(), -1).gather(2, ids[..., None])[..., 0]
    return (logp * mask).sum(1)
