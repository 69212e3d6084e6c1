"""Catalog titles as the generative recommender writes them: token ids per item, and a trie."""

from collections.abc import Sequence

import attrs
import torch

from automr.checks import beartype
from automr.data.prompts import text_token_ids
from automr.llm.beam import TokenTrie


@beartype
@attrs.frozen
class CatalogTargets:
    """Each catalog item's response text and its token ids (title tokens + EOS).

    Built the same way as training targets (the response tokenized without special tokens,
    then EOS), so generation, constrained decoding and likelihood scoring all see the exact
    token sequence the model was trained to produce. Index ``i`` is catalog item ``i``.
    """

    texts: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]
    eos_token_id: int
    groups: torch.Tensor = attrs.field(init=False, repr=False, eq=False)
    """``[items]``: each index's first index holding the same token sequence, so items with
    equal values are one sequence the model writes (a title shared by several items, or
    titles the tokenizer normalizes alike, e.g. NFC and NFD forms under Qwen's tokenizer)."""

    def __attrs_post_init__(self) -> None:
        if len(self.texts) != len(self.token_ids):
            raise ValueError("CatalogTargets: one token sequence per text")
        first: dict[tuple[int, ...], int] = {}
        object.__setattr__(self, "groups", torch.tensor(
            [first.setdefault(ids, index) for index, ids in enumerate(self.token_ids)],
            dtype=torch.long))

    def __len__(self) -> int:
        return len(self.texts)

    def trie(self) -> TokenTrie:
        """A trie over the catalog's distinct token sequences; each one's value is the first
        catalog index holding it (:meth:`sharing` gives them all)."""
        firsts = self.sharing()
        return TokenTrie([self.token_ids[i] for i in firsts], list(firsts))

    def sharing(self) -> dict[int, tuple[int, ...]]:
        """Each distinct token sequence's first catalog index -> every index holding it, in
        catalog order: items with the same title (Amazon keeps editions apart by default)
        are one sequence the model can write."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, ids in enumerate(self.token_ids):
            groups.setdefault(ids, []).append(index)
        return {indices[0]: tuple(indices) for indices in groups.values()}


def catalog_targets(tokenizer, texts: Sequence[str]) -> CatalogTargets:
    """Tokenize each response text (no special tokens) and append the tokenizer's EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; generative grounding needs one")
    encoded = text_token_ids(tokenizer, texts, add_special_tokens=False)
    return CatalogTargets(
        texts=tuple(texts), token_ids=tuple((*ids, eos) for ids in encoded), eos_token_id=eos
    )
