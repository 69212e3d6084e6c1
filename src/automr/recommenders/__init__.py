"""Recommenders: the paper's conventional baseline, SASRec, exported here; the generative ones
are in their modules (imported only when used, as they need peft): BIGRec's fine-tuning in
:mod:`~automr.recommenders.finetune`, a finished fine-tune in :mod:`~automr.recommenders.runs`,
AutoMR's memory retrieval in :mod:`~automr.recommenders.automr` (``automr.finetune``,
``automr.FinetunedRun``, ``automr.MemoryRetrieval`` at the top level)."""

from automr.recommenders.sasrec import (
    SASRec,
    SASRecConfig,
    SASRecTrainingLog,
    fit_sasrec,
)

__all__ = ["SASRec", "SASRecConfig", "SASRecTrainingLog", "fit_sasrec"]
