"""Annotation (eq. 5): which memory elements make the true next item more likely."""

from automr.annotation.labels import LABEL_FORMS, deltas, labels
from automr.annotation.likelihood import SampleLikelihoods, UpperAnnotator

__all__ = ["LABEL_FORMS", "SampleLikelihoods", "UpperAnnotator", "deltas", "labels"]
