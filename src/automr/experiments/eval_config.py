"""The settings of an evaluation (:func:`~automr.experiments.evaluate.evaluate_methods`), apart
from its code so that the CLI's defaults need no torch."""

from typing import TYPE_CHECKING

import attrs

from automr.checks import (
    beartype,
    int_field,
    is_int_tuple,
    is_str_tuple,
    subset_of,
    to_ints,
    to_strs,
)
from automr.combiners.names import COMBINER_NAMES
from automr.defaults import DEFAULT_KS, DEFAULT_RESAMPLES, MEASURES, SASREC_LOSSES

if TYPE_CHECKING:  # the registry imports torch, which this module must not at run time
    import automr.methods.registry


@beartype
@attrs.frozen(kw_only=True)
class EvalConfig:
    """Which samples, and how methods run on them."""

    split: str = "test"
    max_samples: int | None = int_field(default=200, optional=True)
    seed: int = int_field(default=0)
    batch_size: int = int_field(attrs.validators.gt(0), default=8)
    layer: int | None = int_field(attrs.validators.ge(0), default=None, optional=True)
    """Split layer; None: the memory's when one is given, else 15 (what was used is in each
    method's settings; a memory-free method of a model with fewer layers splits at its last,
    as it ranks the same at any layer)."""
    num_beams: int | None = int_field(attrs.validators.gt(0), default=None, optional=True)
    """Beams of the l2 and constrained grounders (None: the grounder's default)."""
    exclude_seen: bool = False
    ks: tuple[int, ...] = attrs.field(converter=to_ints, validator=is_int_tuple,
                                      default=DEFAULT_KS)
    measures: tuple[str, ...] = attrs.field(
        converter=to_strs, validator=[is_str_tuple, subset_of(MEASURES)], default=("ranks",))
    """``ranks`` and/or ``likelihood`` (the LM methods' target log-likelihoods)."""
    n_resamples: int = int_field(default=DEFAULT_RESAMPLES)
    resample: str = attrs.field(default="samples",
                                validator=attrs.validators.in_(("samples", "users")))
    """What the bootstrap draws: ``samples``, or ``users`` (all of a drawn user's samples)."""
    combiner: str = attrs.field(default="concat",
                                validator=attrs.validators.in_(COMBINER_NAMES))
    k: int = int_field(attrs.validators.gt(0), default=1)
    sasrec_loss: str = attrs.field(default="ce", validator=attrs.validators.in_(SASREC_LOSSES))
    """SASRec's training loss (``sasrec``, ``l2-sasrec``): ``ce``, or the paper's ``bce``."""
    retrieval_seed: int | None = int_field(default=None, optional=True)
    """Seed of ``random:*`` retrieval only (``None``: ``seed``, which also picks the samples)."""
    tune_samples: int = int_field(attrs.validators.gt(0), default=200)
    """Validation samples on which the ``-pop`` grounders choose their popularity weight."""
    reference: str | None = None
    """The method every other is paired with (None: the first ``bigrec*``, else the first)."""

    def method_options(self) -> "automr.methods.registry.MethodOptions":
        """The options every method of the evaluation is built with."""
        from automr.methods.registry import MethodOptions

        return MethodOptions(layer=self.layer, num_beams=self.num_beams,
                             batch_size=self.batch_size, exclude_seen=self.exclude_seen,
                             combiner=self.combiner, k=self.k, seed=self.seed,
                             sasrec_loss=self.sasrec_loss, retrieval_seed=self.retrieval_seed,
                             tune_samples=self.tune_samples)
