"""Defaults shared by the library and every command (kept free of heavy imports)."""

DEFAULT_MODEL = "smollm2-135m"
"""Name of the embedded default model (SmolLM2-135M-Instruct, its Q4_1 GGUF from a PyPI wheel
dequantised), usable with no model hub."""

DEFAULT_LAYER = 15
"""The split layer L used unless told otherwise: the middle of SmolLM2-135M's 30 layers (the
paper splits Llama-2-7B's 32 layers near the middle too). Memory, annotation, retrievers and
evaluation must agree on it; artifacts record the layer they were made at."""

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
"""Cut-offs reported by default: Recall@{1,5,10} and NDCG@{1,5,10} (NDCG@1 == Recall@1)."""

DEFAULT_RESAMPLES = 1000
"""Bootstrap resamples of every interval and paired difference."""

DEFAULT_CONFIDENCE = 0.95
"""Coverage of every bootstrap interval (percentile method)."""

MEASURES = ("ranks", "likelihood")
"""What an evaluation measures: ``ranks`` (Recall/NDCG of the full ranking) and ``likelihood``
(the LM methods' target log-likelihoods)."""
SASREC_LOSSES = ("bce", "ce")
"""SASRec's training losses: the paper's binary cross-entropy with a sampled negative, or
softmax cross-entropy over the catalog (:class:`~automr.recommenders.sasrec.SASRecConfig`)."""
