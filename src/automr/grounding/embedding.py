"""Text embeddings from the base LM (last layer, last token), as BIGRec's grounding uses."""

import contextlib
from collections.abc import Sequence

import torch
from jaxtyping import Float, jaxtyped
from torch import Tensor

from automr.checks import beartype
from automr.data.prompts import encode_texts, text_token_ids
from automr.llm.split import HFSplitLLM


def base_model(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """A context in which a peft model runs without its adapter (a no-op for plain models)."""
    disable = getattr(model, "disable_adapter", None)
    return disable() if disable is not None else contextlib.nullcontext()


@torch.no_grad()
@jaxtyped(typechecker=beartype)
def embed_texts(
    model: torch.nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 32,
    progress=None,
) -> Float[Tensor, "n hidden"]:
    """The final-layer hidden state (after the final norm) at each text's last token.

    Texts are tokenized as the tokenizer does by default, with the BOS that Llama's and
    Gemma's add (as BIGRec's code does: their states without it are not the model's; SmolLM2's
    and Qwen's add none); batching with padding gives the same vectors as one at a time
    (positions and masks come from the split's exact forward) in float32; in bfloat16 padding
    changes the rounding (SmolLM2's title vectors, of length ~49, moved by up to 1.07 between
    a batch of 32 and one at a time).

    Texts are batched shortest first (rows in the order given): ML-100K's titles in catalog
    order padded to 1.78 times their tokens, sorted to 1.03 (``benchmarks/embed_texts.py``).
    """
    llm = HFSplitLLM(model)
    lengths = [len(ids) for ids in text_token_ids(tokenizer, texts)]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    embeddings = torch.empty(len(texts), llm.hidden_size, dtype=torch.float32, device=llm.device)
    with base_model(model):
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = encode_texts(tokenizer, [texts[i] for i in rows], padding=True,
                                 return_tensors="pt")
            ids = batch["input_ids"].to(llm.device)
            mask = batch["attention_mask"].to(llm.device)
            state = llm.lower(ids, mask, 0)
            hidden = llm.final_hidden(state)
            last = state.last_positions()
            # each row in its place: no list of batches, their concatenation and its reorder
            embeddings[torch.tensor(rows, device=llm.device)] = hidden.gather(
                1, last[..., None].expand(-1, -1, hidden.shape[-1]))[:, 0].float()
            if progress is not None:
                progress(len(rows))
    return embeddings


@jaxtyped(typechecker=beartype)
def l2_distances(
    queries: Float[Tensor, "rows hidden"], catalog: Float[Tensor, "items hidden"]
) -> Float[Tensor, "rows items"]:
    """Euclidean distance of every catalog embedding to each query, from the differences.

    ``torch.cdist``'s default turns to ``|a|^2 + |b|^2 - 2ab`` past 25 rows, which cancels:
    with title embeddings of norm ~50 it was off by up to 0.04 (a title's distance to itself
    0.03), enough to reorder near ties; the differences are exact to float rounding.
    """
    return torch.cdist(queries, catalog, compute_mode="donot_use_mm_for_euclid_dist")
