"""Recommenders: the paper's conventional baseline, SASRec, exported here; the generative ones
are in their modules (imported only when used, as they need peft): BIGRec's fine-tuning in
:mod:`~automr.recommenders.finetune`, a finished fine-tune in :mod:`~automr.recommenders.runs`,
AutoMR's memory retrieval in :mod:`~automr.recommenders.automr` (``automr.finetune``,
``automr.FinetunedRun``, ``automr.MemoryRetrieval`` at the top level). A fine-tune's settings
are in :mod:`~automr.recommenders.finetune_config`, which needs no torch; names here are imported
on first use."""

from automr._lazy import lazy_exports

__all__ = ["SASRec", "SASRecConfig", "SASRecTrainingLog", "fit_sasrec"]
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(__all__, "automr.recommenders.sasrec"))
