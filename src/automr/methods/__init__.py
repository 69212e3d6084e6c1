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
"""

from automr.methods.baselines import CooccurrenceMethod, PopularityMethod
from automr.methods.generative import GenerativeMethod, KeptLikelihoods, left_padded_prompts
from automr.methods.injection import PriorWeightedMethod
from automr.methods.registry import (
    METHODS,
    Artifacts,
    MethodKind,
    MethodOptions,
    SharedModels,
    Workspace,
    build_method,
    method_settings,
    parse_method,
)
from automr.methods.sasrec import SASRecMethod

__all__ = [
    "METHODS",
    "Artifacts",
    "CooccurrenceMethod",
    "GenerativeMethod",
    "KeptLikelihoods",
    "MethodKind",
    "MethodOptions",
    "PopularityMethod",
    "PriorWeightedMethod",
    "SASRecMethod",
    "SharedModels",
    "Workspace",
    "build_method",
    "left_padded_prompts",
    "method_settings",
    "parse_method",
]
