"""Constrained decoding: beam search over a trie of catalog titles, so every beam is an item."""

import math
from typing import Literal

import attrs
import torch
from jaxtyping import Float, Int, jaxtyped
from torch import Tensor

from automr.checks import beartype, int_field, real_field
from automr.errors import AutomrError
from automr.grounding.embedding import l2_distances
from automr.grounding.prior import adjusted_distances
from automr.grounding.targets import CatalogTargets
from automr.interfaces import Insert, SplitLLM
from automr.llm.beam import (
    Hypothesis,
    TokenTrie,
    beam_search,
    generate_beams,
    reference_beam_search,
)
from automr.types import TokenIds, TokenMask


@attrs.define
class ConstrainedGrounder:
    """The ``num_beams`` titles found by trie-constrained beam search come first, ordered by
    their exact sequence log-probability (title tokens + EOS; the items sharing a title
    together, in catalog order, or by the prior when it weighs in; ties that an evaluation
    breaks against the target, :meth:`~automr.methods.GenerativeMethod.ranks_in_order`);
    the rest of the catalog follows,
    ordered by L2 distance to the top beam's title embedding (the BIGRec grounding space), or
    by catalog index when no embeddings are given.

    With a ``prior`` (item scores in [0, 1], e.g. popularity) and ``gamma > 0`` the rest is
    ordered by the distance re-weighted as in BIGRec's statistical information injection
    (:func:`~automr.grounding.prior.adjusted_distances`): a large ``gamma`` orders it by the
    prior. ``automr evaluate``'s ``constrained-pop`` takes the ``gamma`` that the L2
    grounding's injection (``l2-pop``) chooses on validation samples, from the distances to
    the *generated* text: it is not tuned on this ranking, whose tail is anchored on the top
    beam's title.

    ``engine`` runs the search: ``fast`` (:func:`~automr.llm.beam.beam_search`, the prompts'
    common header run once), ``reference`` (the plain implementation it replaced, same beams)
    or ``generate`` (transformers' ``generate`` on the whole model, memory-free only): the
    last two exist to be compared with.
    """

    targets: CatalogTargets
    catalog_embeddings: Float[Tensor, "items hidden"] | None = None
    num_beams: int = int_field(attrs.validators.gt(0), default=10)
    prior: Float[Tensor, " items"] | None = None
    gamma: float = real_field(attrs.validators.gt(-math.inf), attrs.validators.lt(math.inf),
                              default=0.0)
    engine: Literal["fast", "reference", "generate"] = attrs.field(
        default="fast", validator=attrs.validators.in_(("fast", "reference", "generate")))
    trie: TokenTrie = attrs.field(init=False)
    sharing: dict[int, tuple[int, ...]] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.trie = self.targets.trie()
        self.sharing = self.targets.sharing()

    @jaxtyped(typechecker=beartype)
    def rank(
        self, llm: SplitLLM, input_ids: TokenIds, attention_mask: TokenMask, layer: int,
        insert: Insert | None = None,
    ) -> Int[Tensor, "batch items"]:
        """Each prompt's catalog positions, best first: the items of its :meth:`beams`' titles,
        then the rest in :meth:`fallback_orders` (anchored on the top beam's item).
        ``layer`` is the split and ``insert`` (optional) joins memory there."""
        beams = self.beams(llm, input_ids, attention_mask, layer, insert)
        found = [[item for i in map(self.trie.value, (h.tokens for h in hyps)) if i is not None
                  for item in self._items(i)] for hyps in beams]  # a title: all its items
        orders = self.fallback_orders([items[0] if items else None for items in found])
        return found_first(found, orders).to(input_ids.device)

    @property
    def tie_key(self) -> Float[Tensor, " items"] | None:
        """What tells items sharing a title apart in this ranking: the prior when it weighs
        in (``gamma > 0``), else nothing (they are ties); see
        :meth:`~automr.methods.GenerativeMethod.ranks_in_order`."""
        return self.prior if self.prior is not None and self.gamma else None

    def _items(self, first: int) -> tuple[int, ...]:
        """The items of the title whose first catalog index is ``first``: in catalog order,
        or by :attr:`tie_key` (highest first, then catalog order) when it is set."""
        items = self.sharing[first]
        key = self.tie_key
        return items if key is None else tuple(sorted(items, key=lambda i: -float(key[i])))

    def beams(
        self, llm: SplitLLM, input_ids: TokenIds, attention_mask: TokenMask, layer: int,
        insert: Insert | None = None,
    ) -> list[list[Hypothesis]]:
        """The ``num_beams`` best catalog titles per prompt (tokens + EOS), best first."""
        common = {"num_beams": self.num_beams, "eos_token_id": self.targets.eos_token_id,
                  "max_new_tokens": max(map(len, self.targets.token_ids)), "trie": self.trie}
        if self.engine == "generate":
            if insert is not None or not hasattr(llm, "model"):
                raise AutomrError("the generate engine runs a whole transformers model without "
                                  "memory; use engine='fast'")
            return generate_beams(llm.model, input_ids, attention_mask, **common)
        if self.engine == "reference":
            return reference_beam_search(llm, input_ids, attention_mask, layer, insert=insert,
                                         **common)
        return beam_search(llm, input_ids, attention_mask, layer, insert=insert,
                           share_prefix=True, **common)

    @jaxtyped(typechecker=beartype)
    def fallback_orders(self, anchors: list[int | None]) -> Int[Tensor, "batch items"]:
        """Each sample's order of the whole catalog after its beams: by (prior-adjusted) L2
        distance to its ``anchor`` (the top beam's item); by the prior, or catalog order,
        without an anchor or embeddings. One batched distance computation for all anchors
        (:func:`l2_distances` is batch-invariant, so a row does not depend on the others)."""
        n_items = len(self.targets)
        if self.prior is not None and self.gamma:
            plain = self.prior.argsort(descending=True, stable=True)
        else:
            plain = torch.arange(n_items)
        orders = plain.to(self._device()).expand(len(anchors), n_items).clone()
        rows = [row for row, anchor in enumerate(anchors) if anchor is not None]
        if rows and self.catalog_embeddings is not None:
            emb = self.catalog_embeddings
            distances = l2_distances(emb[[anchors[row] for row in rows]], emb)
            if self.prior is not None and self.gamma:
                distances = adjusted_distances(distances, self.prior, self.gamma)
            orders[rows] = distances.argsort(dim=1, stable=True).to(orders.device)
        return orders

    def _device(self) -> torch.device:
        held = self.catalog_embeddings if self.catalog_embeddings is not None else self.prior
        return held.device if held is not None else torch.device("cpu")


@jaxtyped(typechecker=beartype)
def found_first(found: list[list[int]], orders: Int[Tensor, "batch items"]
                ) -> Int[Tensor, "batch items"]:
    """Each row: the items ``found`` (in their order), then the rest of ``orders``'s row, in
    its order, without them. ``found`` holds distinct items of the catalog."""
    ranked = torch.empty_like(orders)
    for row, (items, order) in enumerate(zip(found, orders, strict=True)):
        head = torch.tensor(items, dtype=torch.long, device=order.device)
        taken = torch.zeros(order.numel(), dtype=torch.bool, device=order.device)
        taken[head] = True
        ranked[row] = torch.cat([head, order[~taken[order]]])
    return ranked
