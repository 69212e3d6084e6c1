"""Full-ranking evaluation: target ranks, Recall/NDCG@K, bootstrap intervals, paired comparisons.

Typical use::

    ranks = ranks_from_scores(scores, targets)          # [batch items] scores -> [batch] ranks
    report = build_report("sasrec", sample_ids, ranks, n_items)
    report.save("results/sasrec.json")
    diffs = compare_reports(MetricReport.load("results/automr.json"), report)

or, for whole methods (:class:`~automr.interfaces.Method`) on the same samples::

    evaluation = evaluate({"bigrec": bigrec, "automr": automr}, samples, n_items, out="runs/e")
    print(evaluation.markdown())
"""

from automr.evaluation.bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    Interval,
    PairedDifference,
    bootstrap_ci,
    paired_bootstrap,
)
from automr.evaluation.combine import combine_folders
from automr.evaluation.folder import EvaluationFolder, ExportedEvaluation, open_evaluation
from automr.evaluation.metrics import (
    DEFAULT_KS,
    mean_metrics,
    metric_names,
    ndcg_at_k,
    per_sample_metrics,
    rank_in_list,
    ranks_from_scores,
    recall_at_k,
    seen_mask,
)
from automr.evaluation.report import MetricReport, build_report, compare_reports
from automr.evaluation.run import Evaluation, evaluate

__all__ = [
    "DEFAULT_CONFIDENCE",
    "DEFAULT_KS",
    "DEFAULT_RESAMPLES",
    "Evaluation",
    "EvaluationFolder",
    "ExportedEvaluation",
    "Interval",
    "MetricReport",
    "PairedDifference",
    "bootstrap_ci",
    "build_report",
    "combine_folders",
    "compare_reports",
    "evaluate",
    "mean_metrics",
    "metric_names",
    "ndcg_at_k",
    "open_evaluation",
    "paired_bootstrap",
    "per_sample_metrics",
    "rank_in_list",
    "ranks_from_scores",
    "recall_at_k",
    "seen_mask",
]
