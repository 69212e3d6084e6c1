"""BIGRec's grounding: generate a title, then rank the catalog by L2 distance in embedding space."""

from collections.abc import Sequence

import attrs
import torch
from jaxtyping import Float, Int, jaxtyped
from torch import Tensor

from automr.checks import beartype, int_field
from automr.grounding.embedding import embed_texts, l2_distances
from automr.interfaces import Insert, SplitLLM
from automr.llm.beam import beam_search
from automr.types import TokenIds, TokenMask


@attrs.define
class L2Grounder:
    """Beam search (``num_beams``, BIGRec: 4) for the best title, then every catalog item ranked
    by the L2 distance between its title embedding and the generated text's embedding, both
    from the *base* model (adapter off, last layer, last token).

    BIGRec's statistical information injection re-weights :meth:`distances` by a prior
    (popularity or a conventional model's scores) at the method level:
    :class:`~automr.methods.injection.PriorWeightedMethod`.

    Two details differ from BIGRec's released code. Both sides are embedded as response texts,
    quotes kept (``"Toy Story (1995)"``; BIGRec strips them from both). As there, the texts
    get the special tokens the tokenizer adds (Llama's BOS; SmolLM2's: none). And the top beam
    is the one with the best summed log-probability (:mod:`automr.llm.beam`), where BIGRec's
    ``generate`` (``length_penalty`` 1) divides it by the length (the generated tokens' in
    today's transformers; older ones, BIGRec's, counted the prompt's too). Re-ranked so, the 4
    beams of 32 ML-100K test prompts (SmolLM2 tuned on 32 samples) had another top in 24 (2
    with the prompt counted).
    """

    model: torch.nn.Module
    tokenizer: object
    catalog_embeddings: Float[Tensor, "items hidden"]
    num_beams: int = int_field(attrs.validators.gt(0), default=4)
    max_new_tokens: int = int_field(attrs.validators.gt(0), default=32)

    @jaxtyped(typechecker=beartype)
    def rank(
        self, llm: SplitLLM, input_ids: TokenIds, attention_mask: TokenMask, layer: int,
        insert: Insert | None = None,
    ) -> Int[Tensor, "batch items"]:
        """Each prompt's catalog positions by :meth:`distances`, nearest first (equal
        distances in catalog order)."""
        return rank_by_distance(self.distances(llm, input_ids, attention_mask, layer, insert))

    @jaxtyped(typechecker=beartype)
    def distances(
        self, llm: SplitLLM, input_ids: TokenIds, attention_mask: TokenMask, layer: int,
        insert: Insert | None = None,
    ) -> Float[Tensor, "batch items"]:
        """L2 distance of every catalog title to each prompt's generated text."""
        return self.distances_to(self.generate(llm, input_ids, attention_mask, layer, insert))

    @jaxtyped(typechecker=beartype)
    def distances_to(self, texts: Sequence[str]) -> Float[Tensor, "batch items"]:
        """L2 distance of every catalog title to each of ``texts`` (e.g. kept generations)."""
        return self.distances_from(self.embed(texts))

    @jaxtyped(typechecker=beartype)
    def embed(self, texts: Sequence[str]) -> Float[Tensor, "batch hidden"]:
        """The embedding of each text that :meth:`distances_from` measures the titles to."""
        return embed_texts(self.model, self.tokenizer, texts)

    @jaxtyped(typechecker=beartype)
    def distances_from(
        self, embeddings: Float[Tensor, "batch hidden"]
    ) -> Float[Tensor, "batch items"]:
        """L2 distance of every catalog title to each embedding, on the catalog's device; a
        row depends on its embedding only (not on the others in the batch)."""
        catalog = self.catalog_embeddings
        return l2_distances(embeddings.to(catalog), catalog)

    @jaxtyped(typechecker=beartype)
    def generate(
        self, llm: SplitLLM, input_ids: TokenIds, attention_mask: TokenMask, layer: int,
        insert: Insert | None = None,
    ) -> list[str]:
        """The top beam's text for each prompt (EOS dropped)."""
        eos = self.tokenizer.eos_token_id
        beams = beam_search(llm, input_ids, attention_mask, layer, num_beams=self.num_beams,
                            max_new_tokens=self.max_new_tokens, eos_token_id=eos, insert=insert)
        tokens = [[t for t in hyps[0].tokens if t != eos] if hyps else [] for hyps in beams]
        return [text or " " for text in self.tokenizer.batch_decode(tokens)]


@jaxtyped(typechecker=beartype)
def rank_by_distance(distances: Float[Tensor, "batch items"]) -> Int[Tensor, "batch items"]:
    """Each row's items, nearest first; equal distances (repeated titles) keep catalog order."""
    return distances.argsort(dim=1, stable=True)
