"""Annotation (eq. 5): which memory elements make the true next item more likely.

- :class:`UpperAnnotator` (the :class:`~automr.interfaces.Annotator`): every element's
  log-likelihood of the true title, the upper half only; :class:`SampleLikelihoods`.
- :func:`deltas`, :func:`labels` (:data:`LABEL_FORMS`): gains and labels from likelihoods.
- :func:`annotate_dataset` with :class:`AnnotateConfig`: a split's samples into a resumable
  folder; :class:`Annotations` reads it back; :func:`retrieval_dataset` turns it into the
  retriever's training rows (queries, annotated keys, labels S'). These are imported on first
  use (they read memories and datasets).
"""

from typing import TYPE_CHECKING

from automr._lazy import lazy_exports, typed_exports
from automr.annotation.labels import (  # at once: the function labels names a submodule too
    LABEL_FORMS as LABEL_FORMS,
    deltas as deltas,
    labels as labels,
)
from automr.annotation.likelihood import (
    SampleLikelihoods as SampleLikelihoods,
    UpperAnnotator as UpperAnnotator,
)

if TYPE_CHECKING:  # the exports, as type checkers read them; imported on first use
    from automr.annotation.run import (
        AnnotateConfig as AnnotateConfig,
        Annotations as Annotations,
        annotate_dataset as annotate_dataset,
        retrieval_dataset as retrieval_dataset,
    )

_EXPORTS = typed_exports(__file__)
__all__ = sorted(_EXPORTS)
if not TYPE_CHECKING:  # a checker reads the imports above, not a __getattr__ of any name
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
