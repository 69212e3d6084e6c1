"""BIGRec's gamma search (:func:`~automr.grounding.prior.choose_gamma`) on a large catalog.

    OMP_NUM_THREADS=1 python benchmarks/gamma.py --samples 100 --items 50000 --repeats 3

Chooses gamma from BIGRec's grid (199 values) on seeded validation distances, a popularity
prior and seen-item masks, the way :func:`choose_gamma` does now (the distances min-max
normalised once; each gamma's ranks counted in one comparison of the adjusted distances) and,
as the reference, the way it did before (automr commit 6fa47e3: every gamma through
:func:`~automr.grounding.prior.adjusted_distances`, which normalises again, and
:func:`~automr.evaluation.metrics.ranks_from_scores`; :func:`plain_choice` below).
Interleaved rounds after a warm-up (ratio: median [min, max]); both ways must choose the same
gamma with bit-equal values.

Writes ``gamma-cpu.json`` and ``gamma-cpu.md`` to ``--out``.
"""

import argparse
import math
from pathlib import Path

import torch

from automr.evaluation.metrics import per_sample_metrics, ranks_from_scores
from automr.experiments.bench import machine, speedup_of, write_result
from automr.grounding.prior import GAMMA_GRID, adjusted_distances, choose_gamma, min_max


def plain_choice(distances, prior, targets, exclude) -> tuple[float, dict[float, float]]:
    """The reference: each gamma's adjusted distances from scratch (the code it replaced)."""
    values = {}
    for gamma in GAMMA_GRID:
        ranks = ranks_from_scores(-adjusted_distances(distances, prior, gamma), targets,
                                  exclude)
        per_sample = per_sample_metrics(ranks, (5,))["ndcg@5"].tolist()
        values[gamma] = math.fsum(per_sample) / len(per_sample)
    best = max(values.values())
    return min(g for g, v in values.items() if v == best), values


def bench_gamma(samples: int, items: int, repeats: int, seed: int = 0) -> dict[str, object]:
    generator = torch.Generator().manual_seed(seed)
    distances = torch.rand(samples, items, generator=generator)
    prior = min_max(torch.rand(items, generator=generator))[None]
    targets = torch.randint(0, items, (samples,), generator=generator)
    exclude = torch.rand(samples, items, generator=generator) < 0.001
    ways = {"now": lambda: choose_gamma(distances, prior, targets, exclude=exclude),
            "per_gamma": lambda: plain_choice(distances, prior, targets, exclude)}
    if ways["now"]() != ways["per_gamma"]():
        raise AssertionError("the two ways chose differently")
    return {"benchmark": "gamma", "samples": samples, "items": items, "grid": len(GAMMA_GRID),
            "repeats": repeats, "device": "cpu", "machine": machine(),
            **speedup_of(ways, "now", "per_gamma", repeats), "equal_choice": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    print(write_result(bench_gamma(args.samples, args.items, args.repeats), args.out,
                       "gamma-cpu"))


if __name__ == "__main__":
    main()
