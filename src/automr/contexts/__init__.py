"""Prompt contexts: extra text per sample in the BIGRec prompt (the ReLLa and TRSR baselines).

A context (:class:`~automr.interfaces.PromptContext`) goes at the start of the prompt's input
section, before the recent-history line; a baseline is BIGRec fine-tuned and evaluated with its
context in the prompt. :class:`ContextSpec` is what ``finetune.json`` records, and
:func:`build_context` rebuilds the same context from it (names are imported on first use, so
the spec does not pull in torch).

- :class:`ReLLaContext`: the ``k`` long-term items most similar to the short-term history.
- :class:`TRSRContext`: an untuned-LM summary of the long-term history, block by block.
"""

from automr._lazy import lazy_exports

_EXPORTS = {
    **{name: "automr.contexts.spec" for name in ("CONTEXT_KINDS", "TRSR_MODES", "ContextSpec")},
    "build_context": "automr.contexts.build",
    **{name: "automr.contexts.rella" for name in (
        "ReLLaContext", "rella_context", "rella_scores")},
    **{name: "automr.contexts.summaries" for name in ("SummaryCache", "SummaryWriter")},
    **{name: "automr.contexts.trsr" for name in (
        "TRSRContext", "block_prompt", "merge_prompt", "trsr_blocks", "trsr_context")},
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
