"""Recommenders: the generative ones (BIGRec, AutoMR) and the paper's baselines."""

from automr.recommenders.sasrec import (
    SASRec,
    SASRecConfig,
    SASRecTrainingLog,
    fit_sasrec,
)

__all__ = ["SASRec", "SASRecConfig", "SASRecTrainingLog", "fit_sasrec"]
