"""Annotation (eq. 5): which memory elements make the true next item more likely.

- :class:`UpperAnnotator` (the :class:`~automr.interfaces.Annotator`): every element's
  log-likelihood of the true title, the upper half only; :class:`SampleLikelihoods`.
- :func:`deltas`, :func:`labels` (:data:`LABEL_FORMS`): gains and labels from likelihoods.
- :func:`annotate_dataset` with :class:`AnnotateConfig`: a split's samples into a resumable
  folder; :class:`Annotations` reads it back; :func:`retrieval_dataset` turns it into the
  retriever's training rows (queries, annotated keys, labels S'). These are imported on first
  use (they read memories and datasets).
"""

from automr._lazy import lazy_exports
from automr.annotation.labels import LABEL_FORMS, deltas, labels
from automr.annotation.likelihood import SampleLikelihoods, UpperAnnotator

__all__ = ["LABEL_FORMS", "AnnotateConfig", "Annotations", "SampleLikelihoods", "UpperAnnotator",
           "annotate_dataset", "deltas", "labels", "retrieval_dataset"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "AnnotateConfig": "automr.annotation.run",
    "Annotations": "automr.annotation.run",
    "annotate_dataset": "automr.annotation.run",
    "retrieval_dataset": "automr.annotation.run",
})
