"""Beam search through a split LM, optionally restricted by a token trie.

One implementation serves plain beam search (BIGRec generates, then grounds by L2 distance)
and constrained decoding (every beam is a real catalog title). Hypotheses are ranked by their
summed token log-probability (no length normalisation), so a finished beam's score is exactly
``log P(title tokens, EOS | prompt)``.

:func:`beam_search` keeps every prompt's beams in one batch with tensor bookkeeping (trie
nodes, scores, finished hypotheses), beams share their prompt's keys and values
(:meth:`~automr.llm.decoding.Decoding.reserve`) and the prompts' common header can run once.
:func:`reference_beam_search` is the plain version it replaced (Python loops over beams, a
copied, growing cache); the two give the same beams, and ``automr bench ground`` times both.
Not where trie candidates tie exactly (bfloat16 logits can): each keeps the ones ``topk``
puts first among them, from rows laid out differently (8 tokens given one head row in a tiny
Qwen2: other beams for 150 of 211 prompts).
"""

import attrs
import torch
from jaxtyping import Bool, Float, Int, jaxtyped
from torch import Tensor

from automr.checks import beartype
from automr.interfaces import Insert, SplitLLM
from automr.llm.decoding import extend, prefill, step
from automr.llm.trie import NEG_INF, TokenTrie
from automr.types import TokenIds, TokenMask

ENDGAME_ROWS = 32
"""Most live beams to finish in one pass (:meth:`_Beams.endgame`): a pass over ``rows x
longest rest`` positions costs about what that many single steps would, and a step's fixed
cost (reading the weights) is about that of 30 rows on a CPU, so below this a pass is never
much dearer than the steps it replaces, even if most of them would have ended early."""


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
    trie: TokenTrie | None = None, insert: Insert | None = None, share_prefix: bool = False,
) -> list[list[Hypothesis]]:
    """Up to ``num_beams`` hypotheses per prompt, best first.

    Without a trie, a beam ends when it emits EOS or reaches ``max_new_tokens``; with one, only
    trie paths are followed and only complete sequences are returned. Every step keeps, per
    prompt, the best candidates in order until ``num_beams`` live ones (an EOS among them
    finishes a hypothesis); a prompt is done once it has ``num_beams`` finished hypotheses and
    no live beam scores above the worst. ``share_prefix``: the prompts' common first tokens
    run once (:func:`~automr.llm.decoding.prefill`); same beams up to float rounding.

    Rows follow the live beams: each prompt has one row at the start, and its rows shrink
    as its beams die (when a quarter of all rows would idle) or it is done, so a step costs
    about what the search needs. Once every live beam can only end one way (one stored
    sequence passes through its trie node), the rest of each runs in one pass
    (:meth:`_Beams.finish_endgame` says why that is the same search).
    """
    decoding = prefill(llm, input_ids, attention_mask, layer, insert, share_prefix=share_prefix)
    decoding.reserve(max_new_tokens)
    beams = _Beams.start(input_ids.shape[0], num_beams, max_new_tokens, eos_token_id, trie,
                         decoding.logits.device)
    for length in range(max_new_tokens):
        rows, tokens, same_layout = beams.advance(decoding.logits, length)
        if length == max_new_tokens - 1 or len(rows) == 0:
            break
        if (end := beams.endgame()) is not None:  # every live beam has one way to end
            live, ids, mask, rest = end
            decoding.select(rows[live])
            beams.finish_endgame(extend(llm, decoding, ids, mask), rest, length)
            break
        if same_layout:  # each prompt keeps its rows: they hold its prompt already
            decoding.select_beams(rows)
        else:
            decoding.select(rows)
        step(llm, decoding, tokens)
    if trie is None:  # beams cut by max_new_tokens still count as hypotheses
        beams.finish_live()
    return beams.hypotheses()


@attrs.define
class _Beams:
    """The search's state for ``batch`` prompts with up to ``width`` beams each.

    Beams have slots ``0..width-1`` per prompt (live ones first, in the order they were
    chosen; ``scores`` is -inf for the rest). Each prompt owns a block of consecutive rows
    (``blocks`` of them), its ``counts`` live beams in the first ones; the rest are idle.
    ``tokens`` and ``nodes`` are per row. Finished hypotheses are kept per prompt, best
    first, as scores (-inf = empty slot), tokens and lengths.
    """

    width: int
    eos: int
    trie: TokenTrie | None
    scores: Float[Tensor, "batch width"]
    counts: Int[Tensor, " batch"]
    blocks: Int[Tensor, " batch"]
    tokens: Int[Tensor, "rows steps"]
    nodes: Int[Tensor, " rows"]
    done: Bool[Tensor, " batch"]
    finished: Float[Tensor, "batch width"]
    finished_tokens: Int[Tensor, "batch width steps"]
    finished_lengths: Int[Tensor, "batch width"]
    length: int = 0

    @classmethod
    def start(cls, batch: int, width: int, steps: int, eos: int, trie: TokenTrie | None,
              device: torch.device) -> "_Beams":
        scores = torch.full((batch, width), NEG_INF, device=device)
        scores[:, 0] = 0.0  # one live beam per prompt
        long = {"dtype": torch.long, "device": device}
        return cls(width, eos, trie, scores, torch.ones(batch, **long),
                   torch.ones(batch, **long), torch.zeros(batch, steps, **long),
                   torch.full((batch,), TokenTrie.root, **long),
                   torch.zeros(batch, dtype=torch.bool, device=device),
                   torch.full((batch, width), NEG_INF, device=device),
                   torch.zeros(batch, width, steps, **long), torch.zeros(batch, width, **long))

    def _live(self) -> tuple[Int[Tensor, " live"], Int[Tensor, " live"], Int[Tensor, " live"]]:
        """Each live beam's prompt, slot and row."""
        total = int(self.counts.sum())
        prompt = torch.arange(len(self.counts), device=self.counts.device).repeat_interleave(
            self.counts, output_size=total)
        slot = torch.arange(total, device=prompt.device) - (
            self.counts.cumsum(0) - self.counts)[prompt]
        return prompt, slot, (self.blocks.cumsum(0) - self.blocks)[prompt] + slot

    def advance(self, logits: Float[Tensor, "rows vocab"], length: int
                ) -> tuple[Int[Tensor, " new"], Int[Tensor, " new"], bool]:
        """One step from every row's next-token logits: the row each new row extends, its
        token (EOS for idle rows), and whether the prompts kept their blocks of rows."""
        width = self.scores.shape[1]
        prompt, slot, row = self._live()
        logp = torch.log_softmax(logits[row].float(), dim=-1)
        if self.trie is None:
            top, beam, token = self._candidates(prompt, slot, logp)
        else:
            top, beam, token = self._trie_candidates(prompt, slot, row, logp)
        valid = (top > NEG_INF) & ~self.done[:, None]
        ends = token == self.eos
        live = valid & ~ends
        ahead = live.long().cumsum(1) - live.long()  # live candidates before each one
        considered = valid & (ahead < width)  # everything up to the width-th live candidate
        first = (self.blocks.cumsum(0) - self.blocks)[:, None]
        source = (first + beam).clamp(max=len(logits) - 1)  # the rows candidates extend
        self._finish(torch.where(considered & ends, top, NEG_INF), source, length)
        # the k-th kept candidate becomes beam k; missing ones are dead
        slots = (considered & live)[:, None, :] & (
            ahead[:, None, :] == torch.arange(width, device=top.device)[None, :, None])
        has = slots.any(-1)
        pick = slots.float().argmax(-1)
        self.scores = torch.where(has, top.gather(1, pick), NEG_INF)
        self.counts = has.sum(1)
        sources = torch.where(has, source.gather(1, pick), first)
        tokens = torch.where(has, token.gather(1, pick), self.eos)
        # keep the blocks unless a prompt needs more rows or a quarter of the rows would idle
        keep = bool((self.counts <= self.blocks).all()) and \
            4 * int(self.counts.sum()) >= 3 * int(self.blocks.sum())
        if not keep:
            self.blocks = self.counts
        used = torch.arange(width, device=top.device)[None, :] < self.blocks[:, None]
        rows, tokens = sources[used], tokens[used]
        self.tokens = self.tokens[rows]
        self.tokens[:, length] = tokens
        self.length = length + 1
        if self.trie is not None:
            self.nodes = self.trie.advance(self.nodes[rows], tokens)
        full = (self.finished > NEG_INF).all(1)
        self.done |= full & (self.scores.amax(1) <= self.finished.amin(1))
        return rows, tokens, keep

    def _candidates(self, prompt: Tensor, slot: Tensor, logp: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per prompt, the ``2 * width`` best (beam, token) continuations: scores, beams,
        tokens, best first."""
        batch, width = self.scores.shape
        vocab = logp.shape[-1]
        wide = max(int(self.counts.max()), 1)  # slots that can be live
        total = torch.full((batch * wide, vocab), NEG_INF, device=logp.device)
        total[prompt * wide + slot] = self.scores[prompt, slot][:, None] + logp
        top, index = total.view(batch, -1).topk(min(2 * width, wide * vocab), dim=1)
        return top, index // vocab, index % vocab

    def _trie_candidates(self, prompt: Tensor, slot: Tensor, row: Tensor, logp: Tensor
                         ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`_candidates` among the trie's continuations only (the others are -inf):
        each prompt's edges in (beam, token) order, padded with -inf."""
        batch, width = self.scores.shape
        live, tokens = self.trie.children(self.nodes[row])
        if len(tokens) == 0:
            top = torch.full((batch, 1), NEG_INF, device=logp.device)
            return top, torch.zeros_like(top, dtype=torch.long), \
                torch.full_like(top, self.eos, dtype=torch.long)
        values = self.scores[prompt, slot][live] + logp[live, tokens]
        owner = prompt[live]
        counts = torch.bincount(owner, minlength=batch)
        first = counts.cumsum(0) - counts
        grid = torch.full((batch, max(int(counts.max()), 1)), NEG_INF, device=logp.device)
        grid[owner, torch.arange(len(owner), device=owner.device) - first[owner]] = values
        top, index = grid.topk(min(2 * width, grid.shape[1]), dim=1)
        edge = (index + first[:, None]).clamp(max=len(tokens) - 1)
        return top, slot[live[edge]], tokens[edge]

    def _finish(self, scores: Float[Tensor, "batch k"], rows: Int[Tensor, "batch k"],
                length: int) -> None:
        """Merge candidates (``scores`` -inf = none) extending ``rows`` with EOS into the
        finished hypotheses, keeping the best ``width``; earlier ones first among ties."""
        if not bool((scores > NEG_INF).any()):
            return
        tokens = self.tokens[rows]
        tokens[..., length] = self.eos
        self._merge(scores, tokens, torch.full_like(rows, length + 1))

    def endgame(self) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """When every live beam (at most :data:`ENDGAME_ROWS`) has a single way to end (with
        EOS, within ``max_new_tokens``):
        the live rows among the rows just chosen, the right-padded tokens to run for them (the
        chosen token, then the rest but its final EOS) with their mask, and the rest (padded
        with -1)."""
        if self.trie is None or not 0 < int(self.counts.sum()) <= ENDGAME_ROWS:
            return None
        _, _, live = self._live()
        unique, rest, lengths = self.trie.completions(self.nodes[live])
        fits = self.length + lengths <= self.tokens.shape[1]  # ends within max_new_tokens
        if not bool((unique & (lengths > 0) & fits).all()):
            return None
        if not bool((rest.gather(1, lengths[:, None] - 1) == self.eos).all()):
            return None
        width = int(lengths.max())
        last = self.tokens[live, self.length - 1]
        ids = torch.cat([last[:, None], rest[:, : width - 1].clamp(min=0)], 1)
        mask = torch.arange(width, device=ids.device)[None, :] < lengths[:, None]
        return live, ids, mask, rest[:, :width]

    def finish_endgame(self, logits: Float[Tensor, "live new vocab"],
                       rest: Int[Tensor, "live new"], length: int) -> None:
        """Score the ``rest`` of each live beam (``logits`` after each token run by
        :meth:`endgame`) as step-by-step search would, and merge the results.

        Step by step, each beam would be its only continuation's one candidate, so it would
        stay live until it ends, unless its prompt is done first; then its score is already
        no better than the worst finished one, and so is its final score. Merging all final
        hypotheses at once, those that end earlier first, gives the same finished ones."""
        prompt, slot, live = self._live()
        logp = torch.log_softmax(logits.float(), dim=-1).gather(2, rest.clamp(min=0)[..., None])
        score = self.scores[prompt, slot]
        for j in range(rest.shape[1]):  # one addition per token, in order, as the steps do
            score = score + torch.where(rest[:, j] >= 0, logp[:, j, 0], 0.0)
        tokens = self.tokens[live]
        tokens[:, length + 1 : length + 1 + rest.shape[1]] = torch.where(rest >= 0, rest, 0)
        batch, width = self.scores.shape
        scores = torch.full((batch, width), NEG_INF, device=score.device)
        scores[prompt, slot] = torch.where(self.done[prompt], NEG_INF, score)
        padded = self.tokens.new_zeros(batch, width, self.tokens.shape[1])
        padded[prompt, slot] = tokens
        lengths = torch.full((batch, width), self.tokens.shape[1] + 1, device=score.device)
        lengths[prompt, slot] = length + 1 + (rest >= 0).sum(1)
        order = scores.sort(dim=1, descending=True, stable=True).indices
        order = order.gather(1, lengths.gather(1, order).sort(dim=1, stable=True).indices)
        self._merge(scores.gather(1, order), padded.gather(1, order[..., None].expand_as(padded)),
                    lengths.gather(1, order))

    def finish_live(self) -> None:
        """Live beams of prompts not done become hypotheses as they are."""
        batch, width = self.scores.shape
        prompt, slot, row = self._live()
        tokens = self.tokens.new_zeros(batch * width, self.tokens.shape[1])
        tokens[prompt * width + slot] = self.tokens[row]
        scores = torch.where(self.done[:, None], NEG_INF, self.scores)
        self._merge(scores, tokens.view(batch, width, -1),
                    torch.full_like(scores, self.length, dtype=torch.long))

    def _merge(self, scores: Float[Tensor, "batch k"], tokens: Int[Tensor, "batch k steps"],
               lengths: Int[Tensor, "batch k"]) -> None:
        merged = torch.cat([self.finished, scores], 1)
        order = merged.sort(dim=1, descending=True, stable=True).indices[:, : self.width]
        self.finished = merged.gather(1, order)
        steps = tokens.shape[-1]
        merged_tokens = torch.cat([self.finished_tokens, tokens], 1)
        self.finished_tokens = merged_tokens.gather(1, order[..., None].expand(-1, -1, steps))
        self.finished_lengths = torch.cat([self.finished_lengths, lengths], 1).gather(1, order)

    def hypotheses(self) -> list[list[Hypothesis]]:
        out = []
        for scores, tokens, lengths in zip(self.finished.tolist(),
                                           self.finished_tokens.tolist(),
                                           self.finished_lengths.tolist(), strict=True):
            out.append([Hypothesis(tuple(t[:n]), s)
                        for s, t, n in zip(scores, tokens, lengths, strict=True) if s > NEG_INF])
        return out


@torch.no_grad()
@jaxtyped(typechecker=beartype)
def generate_beams(
    model: torch.nn.Module, input_ids: TokenIds, attention_mask: TokenMask, *, num_beams: int,
    max_new_tokens: int, eos_token_id: int, trie: TokenTrie,
) -> list[list[Hypothesis]]:
    """The search with transformers' ``generate`` on the whole model (no split, no memory):
    ``num_beams`` beams, the trie as ``prefix_allowed_tokens_fn``, scores summed
    log-probabilities (``length_penalty=0``) and the exact stopping rule
    (``early_stopping="never"``). A comparison for tests and benchmarks.

    One rule differs from :func:`beam_search`: ``generate`` finishes a title only when its EOS
    is among a step's ``num_beams`` best candidates, :func:`beam_search` whenever it comes
    before the ``num_beams``-th live one, so it can find better titles (with that one rule
    changed, the reference gave generate's beams for all of 120 tiny-model prompts, 48 of
    which differed before)."""
    width = input_ids.shape[1]

    def allowed(batch_id: int, sequence: Tensor) -> list[int]:
        # a prefix off the trie is a beam generate keeps only as a -1e9 spare: any token
        return trie.allowed(sequence[width:].tolist()) or [eos_token_id]

    out = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, num_beams=num_beams,
        num_return_sequences=num_beams, max_new_tokens=max_new_tokens, do_sample=False,
        length_penalty=0.0, early_stopping="never", eos_token_id=eos_token_id,
        pad_token_id=eos_token_id, prefix_allowed_tokens_fn=allowed, output_scores=True,
        output_logits=num_beams == 1, return_dict_in_generate=True,
    )
    new = out.sequences[:, width:]
    scores = (out.sequences_scores if num_beams > 1 else
              _greedy_scores(torch.stack(out.logits, 1), new, eos_token_id))
    results: list[list[Hypothesis]] = [[] for _ in range(input_ids.shape[0])]
    for row, (sequence, score) in enumerate(zip(new.tolist(), scores.tolist(), strict=True)):
        tokens = tuple(sequence[: sequence.index(eos_token_id) + 1]
                       if eos_token_id in sequence else sequence)
        if trie.value(tokens) is not None and score > -1e8:
            results[row // num_beams].append(Hypothesis(tokens, score))
    return results


def _greedy_scores(logits: Tensor, tokens: Tensor, eos: int) -> Tensor:
    """Each row's summed log-probability of its ``tokens`` up to its first ``eos`` (included),
    from the raw ``logits`` before each: the score greedy ``generate`` does not give."""
    logp = torch.log_softmax(logits.float(), -1).gather(2, tokens[..., None])[..., 0]
    ended = (tokens == eos).long().cumsum(1) - (tokens == eos).long()  # EOS before each
    return torch.where(ended == 0, logp, 0.0).sum(1)


@torch.no_grad()
@jaxtyped(typechecker=beartype)
def reference_beam_search(
    llm: SplitLLM, input_ids: TokenIds, attention_mask: TokenMask, layer: int, *,
    num_beams: int, max_new_tokens: int, eos_token_id: int,
    trie: TokenTrie | None = None, insert: Insert | None = None,
) -> list[list[Hypothesis]]:
    """:func:`beam_search` the plain way (the implementation it replaced): every beam's copy of
    the prompt cache, reordered and grown by concatenation each step, and Python loops over
    beams and trie prefixes. Kept as the reference the fast one is tested and timed against."""
    batch = input_ids.shape[0]
    decoding = prefill(llm, input_ids, attention_mask, layer, insert)
    decoding.repeat_interleave(num_beams)
    device = decoding.logits.device
    scores = torch.full((batch, num_beams), NEG_INF, device=device)
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
        new_scores = torch.full_like(scores, NEG_INF)
        for b in range(batch):
            kept = 0
            for score, beam, token in zip(top_scores[b].tolist(), beam_of[b].tolist(),
                                          token_of[b].tolist(), strict=True):
                if done[b] or score == NEG_INF or kept == num_beams:
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
            worst = min((h.logprob for h in finished[b]), default=NEG_INF)
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
                if not done[b] and score > NEG_INF:
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
    mask = torch.full((len(prefixes), vocab), NEG_INF, device=device)
    for row, prefix in enumerate(prefixes):
        allowed = trie.allowed(prefix)
        if allowed:
            mask[row, allowed] = 0.0
    return mask
