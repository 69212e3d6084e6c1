"""Prompt contexts: extra text per sample in the BIGRec prompt (the ReLLa and TRSR baselines).

A context (:class:`~automr.interfaces.PromptContext`) goes at the start of the prompt's input
section, before the recent-history line; a baseline is BIGRec fine-tuned and evaluated with its
context in the prompt. :class:`ContextSpec` is what ``finetune.json`` records, and
:func:`build_context` rebuilds the same context from it (names are imported on first use, so
the spec does not pull in torch).

- :class:`ReLLaContext`: the ``k`` long-term items most similar to the short-term history.
- :class:`TRSRContext`: an untuned-LM summary of the long-term history, block by block.
"""

from typing import TYPE_CHECKING

from automr._lazy import lazy_exports, typed_exports

if TYPE_CHECKING:  # the exports, as type checkers read them; imported on first use
    from automr.contexts.build import (
        build_context as build_context,
    )
    from automr.contexts.rella import (
        ReLLaContext as ReLLaContext,
        rella_context as rella_context,
        rella_scores as rella_scores,
    )
    from automr.contexts.spec import (
        CONTEXT_KINDS as CONTEXT_KINDS,
        TRSR_MODES as TRSR_MODES,
        ContextSpec as ContextSpec,
    )
    from automr.contexts.summaries import (
        SummaryCache as SummaryCache,
        SummaryWriter as SummaryWriter,
    )
    from automr.contexts.trsr import (
        TRSRContext as TRSRContext,
        block_prompt as block_prompt,
        merge_prompt as merge_prompt,
        trsr_blocks as trsr_blocks,
        trsr_context as trsr_context,
    )

_EXPORTS = typed_exports(__file__)
__all__ = sorted(_EXPORTS)
if not TYPE_CHECKING:  # a checker reads the imports above, not a __getattr__ of any name
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
