"""Methods: what :func:`automr.evaluate` ranks (:class:`~automr.interfaces.Method`).

- :class:`GenerativeMethod`: an LM + a grounder, optionally memory retrieval (AutoMR with any
  retriever object) and a prompt context (ReLLa, TRSR). BIGRec, the base model and every
  retrieval variant are this class with other parts.
- :class:`SASRecMethod`: the conventional baseline; :class:`PopularityMethod` and
  :class:`CooccurrenceMethod`: the floors (``pop``, ``cooc``).
- :class:`PriorWeightedMethod`: an L2 method with BIGRec's statistical information injection
  (popularity, or SASRec's scores per sample).
- :data:`METHODS`: the kinds the CLI names (``sasrec``, ``bigrec:l2``, ...), each one builder;
  :func:`build_method` builds one by name from a :class:`Workspace` (data + artifact folders).

Names are imported on first use, so the floors and the registry do not pull in transformers.
"""

from automr._lazy import lazy_exports

_EXPORTS = {
    "Artifacts": "automr.methods.registry",
    "CooccurrenceMethod": "automr.methods.baselines",
    "GenerativeMethod": "automr.methods.generative",
    "METHODS": "automr.methods.registry",
    "MethodKind": "automr.methods.registry",
    "MethodOptions": "automr.methods.registry",
    "PopularityMethod": "automr.methods.baselines",
    "PriorWeightedMethod": "automr.methods.injection",
    "SASRecMethod": "automr.methods.sasrec",
    "Workspace": "automr.methods.registry",
    "build_method": "automr.methods.registry",
    "left_padded_prompts": "automr.methods.generative",
    "method_settings": "automr.methods.registry",
    "parse_method": "automr.methods.registry",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
