"""Recommenders: the paper's conventional baseline, SASRec, exported here; the generative ones
are in their modules (imported only when used, as they need peft): BIGRec's fine-tuning in
:mod:`~automr.recommenders.finetune`, a finished fine-tune in :mod:`~automr.recommenders.runs`,
AutoMR's memory retrieval in :mod:`~automr.recommenders.automr` (``automr.finetune``,
``automr.FinetunedRun``, ``automr.MemoryRetrieval`` at the top level). A fine-tune's settings
are in :mod:`~automr.recommenders.finetune_config`, which needs no torch; names here are imported
on first use."""

from typing import TYPE_CHECKING

from automr._lazy import lazy_exports, typed_exports

if TYPE_CHECKING:  # the exports, as type checkers read them; imported on first use
    from automr.recommenders.sasrec import (
        SASRec as SASRec,
        SASRecConfig as SASRecConfig,
        SASRecTrainingLog as SASRecTrainingLog,
        fit_sasrec as fit_sasrec,
    )

_EXPORTS = typed_exports(__file__)
__all__ = sorted(_EXPORTS)
if not TYPE_CHECKING:  # a checker reads the imports above, not a __getattr__ of any name
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
