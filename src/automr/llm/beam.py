"""Beam search through a split LM, optionally restricted by a token trie.

One implementation serves plain beam search (BIGRec generates, then grounds by L2 distance)
and constrained decoding (every beam is a real catalog title). Hypotheses are ranked by their
summed token log-probability (no length normalisation), so a finished beam's score is exactly
``log P(title tokens, EOS | prompt)``.
"""

from collections.abc import Sequence

import attrs
import torch
from beartype import beartype
from jaxtyping import jaxtyped

from automr.interfaces import Insert, SplitLLM
from automr.llm.decoding import prefill, step
from automr.types import TokenIds, TokenMask


class TokenTrie:
    """Prefix tree over token sequences (e.g. every catalog title's tokens + EOS).

    ``allowed(prefix)`` lists the tokens that extend ``prefix`` towards a stored sequence;
    ``value(sequence)`` gives what was stored for a complete sequence (e.g. an item index).
    """

    def __init__(self, sequences: Sequence[Sequence[int]], values: Sequence[int]) -> None:
        if len(sequences) != len(values):
            raise ValueError("TokenTrie: one value per sequence")
        self._children: dict[tuple[int, ...], set[int]] = {}
        self._values: dict[tuple[int, ...], int] = {}
        for sequence, value in zip(sequences, values, strict=True):
            key = tuple(sequence)
            if key in self._values:
                raise ValueError(f"TokenTrie: sequence {key} stored twice")
            self._values[key] = value
            for end in range(len(key)):
                self._children.setdefault(key[:end], set()).add(key[end])

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        return sorted(self._children.get(tuple(prefix), ()))

    def value(self, sequence: Sequence[int]) -> int | None:
        return self._values.get(tuple(sequence))

    def __len__(self) -> int:
        return len(self._values)


@attrs.frozen
class Hypothesis:
    """A finished beam: its tokens (EOS included when it ended on one) and log-probability."""

    tokens: tuple[int, ...]
    logprob: float


@torch.no_grad()
@jaxtyped(typechecker=beartype)
def beam_search(
    llm: SplitLLM, input_ids: TokenIds, attention_mask: TokenMask, layer: int, *,
    num_beams: int, max_new_tokens: int, eos_token_id: int,
    trie: TokenTrie | None = None, insert: Insert | None = None,
) -> list[list[Hypothesis]]:
    """Up to ``num_beams`` hypotheses per prompt, best first.

    Without a trie, a beam ends when it emits EOS or reaches ``max_new_tokens``; with one, only
    trie paths are followed and only complete sequences are returned.
    """
    batch = input_ids.shape[0]
    decoding = prefill(llm, input_ids, attention_mask, layer, insert)
    decoding.repeat_interleave(num_beams)
    device = decoding.logits.device
    scores = torch.full((batch, num_beams), float("-inf"), device=device)
    scores[:, 0] = 0.0
    prefixes: list[tuple[int, ...]] = [()] * (batch * num_beams)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    done = [False] * batch
    for length in range(max_new_tokens):
        logp = torch.log_softmax(decoding.logits.float(), dim=-1)
        if trie is not None:
            logp = logp + _trie_mask(trie, prefixes, logp.shape[-1], device)
        total = (scores.view(-1, 1) + logp).view(batch, -1)
        top_scores, top_index = total.topk(2 * num_beams, dim=1)
        beam_of = top_index // logp.shape[-1]
        token_of = top_index % logp.shape[-1]
        keep_rows, keep_tokens = [], []
        new_scores = torch.full_like(scores, float("-inf"))
        for b in range(batch):
            kept = 0
            for score, beam, token in zip(top_scores[b].tolist(), beam_of[b].tolist(),
                                          token_of[b].tolist(), strict=True):
                if done[b] or score == float("-inf") or kept == num_beams:
                    break
                row = b * num_beams + beam
                tokens = (*prefixes[row], token)
                if token == eos_token_id:
                    _add_finished(finished[b], Hypothesis(tokens, score), num_beams)
                    continue
                keep_rows.append(row)
                keep_tokens.append(token)
                new_scores[b, kept] = score
                kept += 1
            while kept < num_beams:  # pad with a dead beam so shapes stay fixed
                keep_rows.append(b * num_beams)
                keep_tokens.append(eos_token_id)
                kept += 1
            worst = min((h.logprob for h in finished[b]), default=float("-inf"))
            best_live = float(new_scores[b].max())
            if len(finished[b]) == num_beams and best_live <= worst:
                done[b] = True
        prefixes = [(*prefixes[r], t) for r, t in zip(keep_rows, keep_tokens, strict=True)]
        scores = new_scores
        if all(done) or length == max_new_tokens - 1:
            break
        decoding.select(torch.tensor(keep_rows, device=device))
        step(llm, decoding, torch.tensor(keep_tokens, device=device))
    if trie is None:  # beams cut by max_new_tokens still count as hypotheses
        for b in range(batch):
            for beam in range(num_beams):
                score = float(scores[b, beam])
                if not done[b] and score > float("-inf"):
                    hypothesis = Hypothesis(prefixes[b * num_beams + beam], score)
                    _add_finished(finished[b], hypothesis, num_beams)
    return finished


def _add_finished(finished: list[Hypothesis], hypothesis: Hypothesis, limit: int) -> None:
    """Insert keeping the ``limit`` best, best first."""
    finished.append(hypothesis)
    finished.sort(key=lambda h: -h.logprob)
    del finished[limit:]


def _trie_mask(
    trie: TokenTrie, prefixes: list[tuple[int, ...]], vocab: int, device: torch.device
) -> torch.Tensor:
    """0 where a token continues a trie path from the beam's prefix, -inf elsewhere."""
    mask = torch.full((len(prefixes), vocab), float("-inf"), device=device)
    for row, prefix in enumerate(prefixes):
        allowed = trie.allowed(prefix)
        if allowed:
            mask[row, allowed] = 0.0
    return mask
