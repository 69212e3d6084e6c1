"""How much wider the committed intervals get when the bootstrap resamples users, not samples.

Samples of one user share most of their history, so their values are correlated and an
interval that resamples samples is too narrow. For every export under ``docs/results/`` (the
tables of ``automr evaluate`` / ``automr compare``), every interval of its tables (each method's
metrics, each paired difference against its reference, ranks and target log-likelihoods) is
recomputed from its per-sample values with its own bootstrap (resamples, seed), once resampling
samples (as committed) and once resampling users; prints the median (10%, 90%, max) ratio of the
user interval's width to the sample interval's, for the seeded subsets and for exports of the
whole split, and every paired difference whose interval excludes 0 one way and not the other;
with ``--out``, writes every interval both ways (keyed by export, kind, method and metric) and
the table as JSON::

    python examples/resample_users.py docs/results --out docs/results/resample-users.json

(the table of docs/concepts/evaluation.md#resampling-users).
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

from automr.errors import AutomrError
from automr.evaluation.bootstrap import Interval, PairedDifference
from automr.evaluation.folder import EXPORT_FORMAT, exported_reports
from automr.evaluation.likelihood import compare_likelihoods
from automr.evaluation.report import compare_reports
from automr.storage import write_json_atomic

WHOLE_SPLIT = 14_600  # ML-100K's test samples: an export of them all


def intervals(exported: dict, resample: str
              ) -> dict[tuple[str, str, str], Interval | PairedDifference]:
    """(single|paired, method, metric) -> its interval, resampling ``resample``."""
    results = exported["results"]
    reference = results["reference"]
    reports = {m: exported_reports(exported, m) for m in {*exported["ranks"],
                                                           *exported["loglik"]}}
    ref_ranks, ref_lls = reports.get(reference, (None, None))
    found: dict[tuple[str, str, str], Interval | PairedDifference] = {}
    for method, (ranks, lls) in reports.items():
        if ranks is not None and method in results.get("methods", {}):
            again = ranks.resampled(ranks.ks, ranks.n_resamples, ranks.seed, resample=resample)
            found.update({("single", method, k): v for k, v in again.metrics.items()})
        if lls is not None and method in results.get("likelihood", {}):
            again_lls = lls.resampled(lls.n_resamples, lls.seed, resample=resample)
            found.update({("single", method, k): v for k, v in again_lls.metrics.items()})
        if method == reference:
            continue
        if ranks is not None and ref_ranks is not None and method in results.get(
                "paired_vs_reference", {}):
            found.update({("paired", method, k): v for k, v in compare_reports(
                ranks, ref_ranks, n_resamples=ranks.n_resamples, seed=ranks.seed,
                resample=resample).items()})
        if lls is not None and ref_lls is not None and method in results.get(
                "likelihood_paired_vs_reference", {}):
            found.update({("paired", method, k): v for k, v in compare_likelihoods(
                lls, ref_lls, n_resamples=lls.n_resamples, seed=lls.seed,
                resample=resample).items()})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("results", type=Path, help="docs/results")
    parser.add_argument("--out", type=Path, help="a JSON file for every interval and the table")
    args = parser.parse_args()
    ratios: dict[tuple[str, str], list[float]] = {}
    both_ways: dict[str, dict] = {}
    for path in sorted(args.results.rglob("*.json")):
        exported = json.loads(path.read_text(encoding="utf-8"))
        if exported.get("format") != EXPORT_FORMAT:
            continue
        samples, users = intervals(exported, "samples"), intervals(exported, "users")
        split = "whole split" if exported["results"]["samples"] >= WHOLE_SPLIT else "subsets"
        for key, plain in samples.items():
            by_users = users[key]
            both_ways[" ".join((path.relative_to(args.results).as_posix(), *key))] = {
                "split": split, "samples": [plain.low, plain.high],
                "users": [by_users.low, by_users.high]}
            if plain.high > plain.low:
                ratios.setdefault((split, key[0]), []).append(
                    (by_users.high - by_users.low) / (plain.high - plain.low))
            if key[0] == "paired" and ((plain.low > 0 or plain.high < 0)
                                       != (by_users.low > 0 or by_users.high < 0)):
                print(f"{path.relative_to(args.results)} {key[1]} {key[2]}: {plain.mean:+.4g} "
                      f"[{plain.low:+.4g}, {plain.high:+.4g}] -> users [{by_users.low:+.4g}, "
                      f"{by_users.high:+.4g}]")
    table = [width_ratios(split, kind, values) for (split, kind), values in sorted(ratios.items())]
    print("| samples | intervals | width ratio, median (10% - 90%; max) |")
    for row in table:
        print(f"| {row['split']} | {row['intervals']} {row['kind']} | {row['median']:.2f} "
              f"({row['p10']:.2f} - {row['p90']:.2f}; {row['max']:.2f}) |")
    if args.out:
        write_json_atomic(args.out, {
            "format": "automr.resample-users/1",
            "commands": [["python", "examples/resample_users.py", *sys.argv[1:]]],
            "table": table, "intervals": both_ways})


def width_ratios(split: str, kind: str, values: list[float]) -> dict:
    """One row of the table: the ratios' median, 10th and 90th percentiles and maximum."""
    ordered = sorted(values)
    tenth, ninetieth = (ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.1, 0.9))
    return {"split": split, "kind": kind, "intervals": len(values),
            "median": statistics.median(values), "p10": tenth, "p90": ninetieth,
            "max": max(values)}

if __name__ == "__main__":
    try:
        main()
    except AutomrError as error:  # a mistake in the input: its message, no traceback
        raise SystemExit(f"error: {error}") from None
