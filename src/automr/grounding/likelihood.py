"""Exact likelihood ranking: every catalog title scored given the prompt (small catalogs)."""

import copy
from collections.abc import Sequence

import attrs
import torch
from jaxtyping import Float, Int, jaxtyped
from torch import Tensor

from automr.checks import beartype, int_field
from automr.grounding.targets import CatalogTargets
from automr.interfaces import Insert, SplitLLM
from automr.llm.decoding import Decoding, prefill
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
    """
    if len(targets) != input_ids.shape[0] or not all(targets):
        raise ValueError("target_log_likelihoods: one non-empty target per prompt")
    decoding = prefill(llm, input_ids, attention_mask, layer, insert, share_prefix=share_prefix)
    return _continuation_log_likelihoods(llm, decoding, targets)


def _continuation_log_likelihoods(
    llm: SplitLLM, decoding: Decoding, continuations: Sequence[Sequence[int]]
) -> Float[Tensor, " n"]:
    """Summed log-probabilities of each row's continuation after a prefilled prompt."""
    width = max(map(len, continuations))
    ids = torch.zeros(len(continuations), width, dtype=torch.long, device=llm.device)
    mask = torch.zeros(len(continuations), width, dtype=torch.bool, device=llm.device)
    for row, tokens in enumerate(continuations):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = True
    state = llm.lower(ids, mask, decoding.layer, cache=decoding.lower_cache)
    logits = llm.upper(state, cache=decoding.upper_cache)
    # token j is predicted by the prompt's last position (j = 0) or by position j - 1
    logits = torch.cat([decoding.logits[:, None], logits[:, :-1]], 1)
    logp = torch.log_softmax(logits.float(), -1).gather(2, ids[..., None])[..., 0]
    return (logp * mask).sum(1)
