"""The constrained grounder's order of the catalog after the beams, at a large catalog.

    OMP_NUM_THREADS=1 python benchmarks/fallback.py --items 98700 --hidden 576 --repeats 3

Ranks the whole catalog after each sample's beams the way :class:`ConstrainedGrounder` does
now (:meth:`~ConstrainedGrounder.fallback_orders` for the batch, then
:func:`~automr.grounding.constrained.found_first`: one batched exact distance, an argsort per
row, the beams' items masked out) and, as the reference, the way it did before (automr commit
917c4bc: per sample, the distances' argsort as a Python list, a set filter, ``torch.tensor`` of
the rows; :func:`plain_rankings` below), on the same seeded catalog embeddings, popularity
prior and beams (10 found items per sample). Interleaved rounds after a warm-up (ratio:
median [min, max]), with and without the prior (``gamma``); both ways must give equal ranks.

Writes ``fallback-cpu.json`` and ``fallback-cpu.md`` to ``--out``.
"""

import argparse
import statistics
from pathlib import Path

import torch

from automr.experiments.bench import interleaved, machine, ratio, write_result
from automr.grounding.constrained import ConstrainedGrounder, found_first
from automr.grounding.embedding import l2_distances
from automr.grounding.prior import adjusted_distances
from automr.grounding.targets import CatalogTargets


def plain_rankings(grounder: ConstrainedGrounder, found: list[list[int]]) -> torch.Tensor:
    """The reference: one sample at a time, in Python lists (the code it replaced)."""
    emb, prior, gamma = grounder.catalog_embeddings, grounder.prior, grounder.gamma
    rows = []
    for items in found:
        distances = l2_distances(emb[items[0]: items[0] + 1], emb)
        if prior is not None and gamma:
            distances = adjusted_distances(distances, prior, gamma)
        rest = distances[0].argsort(stable=True).tolist()
        seen = set(items)
        rows.append(items + [i for i in rest if i not in seen])
    return torch.tensor(rows, dtype=torch.long)


def bench_fallback(items: int, hidden: int, batch: int, beams: int, repeats: int,
                   seed: int = 0) -> dict[str, object]:
    generator = torch.Generator().manual_seed(seed)
    targets = CatalogTargets(tuple(map(str, range(items))),
                             tuple((i + 3, 2) for i in range(items)), eos_token_id=2)
    embeddings = torch.randn(items, hidden, generator=generator)
    prior = torch.rand(items, generator=generator)
    found = [torch.randperm(items, generator=generator)[:beams].tolist() for _ in range(batch)]
    result: dict[str, object] = {
        "benchmark": "fallback", "items": items, "hidden": hidden, "batch": batch,
        "found_per_sample": beams, "repeats": repeats, "device": "cpu", "machine": machine()}
    for gamma in (0.0, 3.0):
        grounder = ConstrainedGrounder(targets, embeddings, prior=prior, gamma=gamma)
        ways = {
            "batched": lambda g=grounder: found_first(
                found, g.fallback_orders([f[0] for f in found])),
            "per_sample_lists": lambda g=grounder: plain_rankings(g, found),
        }
        if not torch.equal(ways["batched"](), ways["per_sample_lists"]()):
            raise AssertionError(f"the two ways rank differently at gamma {gamma}")
        seconds = interleaved(ways, repeats, torch.device("cpu"))
        speedup = ratio(seconds["per_sample_lists"], seconds["batched"])
        result[f"gamma_{gamma:g}"] = {
            "batched_ms_per_sample": 1e3 * statistics.median(seconds["batched"]) / batch,
            "per_sample_lists_ms_per_sample":
                1e3 * statistics.median(seconds["per_sample_lists"]) / batch,
            "speedup": speedup["median"], "speedup_min": speedup["min"],
            "speedup_max": speedup["max"], "equal_ranks": True}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=98_700)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--beams", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    result = bench_fallback(args.items, args.hidden, args.batch, args.beams, args.repeats)
    print(write_result(result, args.out, "fallback-cpu"))


if __name__ == "__main__":
    main()
