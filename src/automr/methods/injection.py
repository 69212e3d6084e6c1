"""BIGRec's statistical information injection on the L2 grounding (Bao et al. 2023, §3.3): the
distances re-weighted by a prior, popularity (``l2-pop``, their ``adjust_pda.py``) or, per
sample, a conventional model's scores (``l2-sasrec``, their ``adjust_ci.py`` with SASRec).

The formula is :func:`~automr.grounding.prior.adjusted_distances`: the prior min-max
normalised over the catalog (per sample for scores), ``gamma`` chosen on validation samples.
``gamma = 0`` is BIGRec's plain L2 ranking; a large ``gamma`` hands the ranking to the prior
(after the nearest title, whose normalised distance is 0), so a ``gamma`` chosen on
validation sits where the two together rank best. Every injection of one LM shares its
generations: ``plain`` keeps the distances it computed per sample.
"""

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import torch

from automr.checks import is_real, to_float
from automr.data import Sample
from automr.errors import AutomrError, WrongTypeError
from automr.grounding.l2 import L2Grounder
from automr.grounding.prior import adjusted_distances, min_max
from automr.methods.generative import GenerativeMethod

Scores = Callable[[Sequence[Sample]], torch.Tensor]
"""``samples -> [samples or 1, catalog items]`` scores, higher is better (e.g.
:meth:`~automr.methods.SASRecMethod.scores`; one row: the same prior for every sample)."""


@attrs.define(eq=False)
class PriorWeightedMethod:
    """``plain``'s L2 distances weighted by ``(1 + min_max(scores)) ** -gamma`` per sample.

    ``plain`` is a :class:`GenerativeMethod` with an L2 grounder (BIGRec, or AutoMR and its
    variants with their memory); its likelihoods and details are this method's, with
    ``grounding`` (the gamma and how it was chosen) added.
    """

    plain: GenerativeMethod
    scores: Scores
    gamma: float = attrs.field(converter=to_float, validator=[
        is_real, attrs.validators.gt(-math.inf), attrs.validators.lt(math.inf)])
    grounding: Mapping[str, Any] = attrs.field(factory=dict)
    settings: Mapping[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        grounder = getattr(self.plain, "grounder", None)
        if not callable(getattr(self.plain, "distances", None)) or (
                grounder is not None and not isinstance(grounder, L2Grounder)):
            shown = type(grounder if grounder is not None else self.plain).__name__
            raise AutomrError(f"plain is a {type(self.plain).__name__} ({shown}), which gives no "
                              f"L2 distances for the prior to weigh: give a GenerativeMethod "
                              f"with the l2 grounder")
        if not callable(self.scores):
            raise WrongTypeError(f"scores must be a function of the samples (e.g. "
                                 f"SASRecMethod(...).scores), not {self.scores!r}")

    def rank(self, samples: Iterable[Sample]) -> list[int]:
        """Each target's 0-based rank when the catalog is ordered by ``plain``'s L2 distances
        weighted by the prior (:func:`~automr.grounding.prior.adjusted_distances` with
        ``min_max(scores(samples))`` and ``gamma``; smallest first, ties pessimistic)."""
        samples = list(samples)  # a generator's samples are read more than once
        distances = self.plain.distances(samples)
        scores = torch.as_tensor(self.scores(samples))  # a numpy array too
        weighted = adjusted_distances(distances, min_max(scores.to(distances)),
                                      self.gamma)
        return self.plain.ranks_by_distance(samples, weighted)

    def target_log_likelihoods(self, samples: Iterable[Sample]) -> list[tuple[float, int]]:
        """``plain``'s (the prior changes the ranking only): ``(log P(true title + EOS |
        prompt [+ memory]), its token count)`` per sample."""
        return self.plain.target_log_likelihoods(samples)

    def details(self) -> Mapping[str, Mapping[str, Any]]:
        """``plain``'s details, with ``grounding``: the ``gamma`` used and ``grounding``'s
        entries (e.g. the prior and each gamma's validation NDCG@5)."""
        return {**self.plain.details(), "grounding": {"gamma": self.gamma, **self.grounding}}
