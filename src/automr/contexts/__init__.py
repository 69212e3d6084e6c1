"""Prompt contexts: extra text per sample in the BIGRec prompt (the ReLLa and TRSR baselines).

A context (:class:`~automr.interfaces.PromptContext`) goes at the start of the prompt's input
section, before the recent-history line; a baseline is BIGRec fine-tuned and evaluated with its
context in the prompt. :class:`ContextSpec` is what ``finetune.json`` records, and
:func:`build_context` rebuilds the same context from it.

- :class:`ReLLaContext`: the ``k`` long-term items most similar to the short-term history.
- :class:`TRSRContext`: an untuned-LM summary of the long-term history, block by block.
"""

from automr.contexts.build import build_context
from automr.contexts.rella import ReLLaContext, rella_context, rella_scores
from automr.contexts.spec import CONTEXT_KINDS, TRSR_MODES, ContextSpec
from automr.contexts.summaries import SummaryCache, SummaryWriter
from automr.contexts.trsr import (
    TRSRContext,
    block_prompt,
    merge_prompt,
    trsr_blocks,
    trsr_context,
)

__all__ = [
    "CONTEXT_KINDS",
    "TRSR_MODES",
    "ContextSpec",
    "ReLLaContext",
    "SummaryCache",
    "SummaryWriter",
    "TRSRContext",
    "block_prompt",
    "build_context",
    "merge_prompt",
    "rella_context",
    "rella_scores",
    "trsr_blocks",
    "trsr_context",
]
