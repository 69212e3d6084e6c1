"""Grounding generated text to real catalog items: three ways to rank the whole catalog.

All grounders implement :class:`automr.interfaces.Grounder` and run through a
:class:`~automr.interfaces.SplitLLM` with an optional ``insert`` (memory joined at layer L), so a
memory-free recommender and AutoMR use them unchanged.
"""

from automr.grounding.catalog import (
    GROUNDER_KINDS,
    build_grounder,
    catalog_embeddings,
    dataset_targets,
)
from automr.grounding.constrained import ConstrainedGrounder
from automr.grounding.embedding import embed_texts
from automr.grounding.l2 import L2Grounder
from automr.grounding.likelihood import (
    LikelihoodGrounder,
    LoweredBatches,
    target_log_likelihoods,
)
from automr.grounding.targets import CatalogTargets, catalog_targets

__all__ = [
    "GROUNDER_KINDS",
    "CatalogTargets",
    "ConstrainedGrounder",
    "L2Grounder",
    "LikelihoodGrounder",
    "LoweredBatches",
    "build_grounder",
    "catalog_embeddings",
    "catalog_targets",
    "dataset_targets",
    "embed_texts",
    "target_log_likelihoods",
]
