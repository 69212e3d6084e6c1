"""Recommenders: the generative ones (BIGRec fine-tuning, a finished fine-tune, AutoMR's
memory retrieval) and the paper's conventional baseline, SASRec.

Names are imported on first use, so SASRec does not pull in peft or transformers.
"""

from automr._lazy import lazy_exports

_EXPORTS = {
    "FinetuneConfig": "automr.recommenders.finetune",
    "FinetunedRun": "automr.recommenders.runs",
    "MemoryRetrieval": "automr.recommenders.automr",
    "SASRec": "automr.recommenders.sasrec",
    "SASRecConfig": "automr.recommenders.sasrec",
    "SASRecTrainingLog": "automr.recommenders.sasrec",
    "fit_sasrec": "automr.recommenders.sasrec",
}
# BIGRec's fine-tuning function is automr.finetune (here, the name is its module's)

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
