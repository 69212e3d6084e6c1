"""Grounding generated text to real catalog items: three ways to rank the whole catalog.

All grounders implement :class:`automr.interfaces.Grounder` and run through a
:class:`~automr.interfaces.SplitLLM` with an optional ``insert`` (memory joined at layer L), so a
memory-free recommender and AutoMR use them unchanged.
"""

from automr.grounding.constrained import ConstrainedGrounder
from automr.grounding.embedding import embed_texts
from automr.grounding.l2 import L2Grounder
from automr.grounding.likelihood import LikelihoodGrounder
from automr.grounding.targets import CatalogTargets, catalog_targets

GROUNDER_KINDS = ("l2", "constrained", "likelihood")
"""The grounders the CLI exposes (built by :func:`automr.experiments.generative.build_grounder`)."""

__all__ = [
    "GROUNDER_KINDS",
    "CatalogTargets",
    "ConstrainedGrounder",
    "L2Grounder",
    "LikelihoodGrounder",
    "catalog_targets",
    "embed_texts",
]
